"""Helpers of the bad-input catalogue: run the CLI in-process, fingerprint directories.

Every catalogue case asserts three things: the exit status (2), the one-line message
(``error: ...``, no traceback) and that the run directory is unchanged (same files, same
bytes) or absent.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import uuid
from pathlib import Path

from emrl.cli import main

#: a small LM run: the tiny model, few prompts, short completions, one thread.
LM_SMALL = ("num_threads: 1\nbatch_size: 8\neval_num_prompts: 4\neval_samples: 0\nmax_new_tokens: 4\n"
            "num_eval: 8\n")
#: a small control run: CartPole, 2 updates of 2 x 64 steps, a checkpoint after each.
CONTROL_SMALL = ["--env", "CartPole-v1", "--total-steps", "256", "--num-envs", "2", "--unroll-length", "64",
                 "--epochs", "1", "--eval-every", "0", "--eval-episodes", "1", "--save-every", "128",
                 "--keep-checkpoints", "5"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``emrl ARGS`` in this process: ``(exit status, stdout, stderr)`` (argparse's own
    usage errors exit through SystemExit; that status is returned too)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear_error(rc: int, err: str, *fragments: str) -> None:
    """Exit status 2, one ``error:`` line naming every fragment, no traceback."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:") or "error:" in ln]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def fingerprint(path: Path) -> dict[str, str] | None:
    """SHA-256 of every file under ``path`` by relative name (``None``: absent)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def write_task(path: Path, n: int = 32) -> Path:
    """A JSONL task: prompts ``"p<i>>"``, demonstration and answer ``"<i % 10>7"``."""
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"p{i}>", "completion": f"{i % 10}7", "answer": f"{i % 10}7"}) + "\n")
    return path


def write_module(directory: Path, source: str, stem: str = "emrl_user") -> str:
    """Write ``source`` as a uniquely named module in ``directory``; return its name."""
    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    (Path(directory) / f"{name}.py").write_text(source)
    return name


class Payload:
    """Unpickling this creates the marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def write_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"state": Payload(marker)}, fh)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
