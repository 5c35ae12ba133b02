"""A crafted pickle in any file of a checkpoint or run directory never executes.

Each payload, when unpickled, creates a marker file. For `lm sft --resume`,
`lm train --resume`, `control train --resume` and `control eval`, every file the command
could read is replaced in turn by such a pickle (the manifest rewritten to match, as a
forger would), and pickles are also added under the names pickle-based tools use
(state.pt, optimizer.pt, pytorch_model.bin, ...). The command either fails with a clear
error or ignores the extra file; the marker never appears.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_input_helpers import CONTROL_SMALL, LM_SMALL, run_cli, write_pickle, write_task

from emrl.checkpoint import MANIFEST, latest_checkpoint, write_manifest
from emrl.cli import main

EXTRA_NAMES = ("state.pt", "optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin",
               "training_args.bin", "env.pkl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pickles")
    task = write_task(base / "task.jsonl", n=24)
    small = base / "small.yaml"
    small.write_text(LM_SMALL)
    sft, rl, ctl = base / "sft", base / "rl", base / "control"
    assert main(["lm", "sft", "--model", "tiny", "--task", str(task), "--config", str(small), "--max-steps", "1",
                 "--output-dir", str(sft)]) == 0
    assert main(["lm", "train", "--algo", "vmpo", "--model", str(sft / "final"), "--config", str(small),
                 "--num-samples", "2", "--max-steps", "1", "--output-dir", str(rl)]) == 0
    assert main(["control", "train", *CONTROL_SMALL, "--output-dir", str(ctl)]) == 0
    return {"sft": sft, "rl": rl, "control": ctl}


COMMANDS = {
    "lm sft --resume": ("sft", lambda d: ["lm", "sft", "--output-dir", d, "--resume"]),
    "lm train --resume": ("rl", lambda d: ["lm", "train", "--output-dir", d, "--resume"]),
    "control train --resume": ("control", lambda d: ["control", "train", "--output-dir", d, "--resume"]),
    "control eval": ("control", lambda d: ["control", "eval", "--run", d, "--episodes", "1"]),
}


def _targets(run: Path, command: str) -> list[Path]:
    """The files ``command`` may read in ``run``: its config, metrics, the checkpoint it
    loads (``final/`` for control eval) and the run directory itself."""
    ck = run / "final" if command == "control eval" else latest_checkpoint(run)
    return [run / "config.yaml", run / "metrics.jsonl", *sorted(p for p in ck.iterdir() if p.is_file())]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_crafted_pickle_in_any_file_never_executes(runs, tmp_path, capsys, command):
    key, argv = COMMANDS[command]
    src = runs[key]
    n_files = len(_targets(src, command))
    outcomes = []
    for i in range(n_files):
        run = tmp_path / f"run{i}"
        shutil.copytree(src, run)
        target = _targets(run, command)[i]
        marker = tmp_path / f"marker{i}"
        in_checkpoint = target.parent != run
        meta = _meta(target.parent) if in_checkpoint else None
        write_pickle(target, marker)
        if in_checkpoint and target.name != MANIFEST:
            write_manifest(target.parent, meta)  # the forger keeps the manifest consistent
        rc, _, err = run_cli(argv(run), capsys)
        assert not marker.exists(), f"{command}: a pickle in {target.relative_to(run)} ran"
        assert "Traceback" not in err, err
        assert rc in (0, 2), (target, rc, err)
        outcomes.append((target.name, rc))
    # the pickled state files themselves are errors, not silently ignored
    by_name = dict(outcomes)
    for name in ("state.json", "tensors.safetensors", "config.yaml"):
        assert by_name[name] == 2, outcomes


@pytest.mark.parametrize("command", list(COMMANDS))
def test_pickles_added_under_familiar_names_are_never_read(runs, tmp_path, capsys, command):
    key, argv = COMMANDS[command]
    run = tmp_path / "run"
    shutil.copytree(runs[key], run)
    marker = tmp_path / "marker"
    ck = run / "final" if command == "control eval" else latest_checkpoint(run)
    for directory in (run, ck):
        for name in EXTRA_NAMES:
            write_pickle(directory / name, marker)
    write_manifest(ck, _meta(ck))
    rc, _, err = run_cli(argv(run), capsys)
    assert not marker.exists(), command
    assert rc == 0, err


def _meta(ck: Path) -> dict:
    import json

    return json.loads((ck / MANIFEST).read_text())["meta"]


def test_a_model_directory_with_pickled_weights_never_executes(runs, tmp_path, capsys, monkeypatch):
    """`lm eval` / `lm train --model DIR`: weights are read from safetensors; a pickled
    pytorch_model.bin (next to them, or alone) does not run."""
    monkeypatch.chdir(tmp_path)  # `lm eval` of a plain model directory writes eval.json here
    marker = tmp_path / "marker"
    beside = tmp_path / "beside"
    shutil.copytree(runs["sft"] / "final", beside)
    write_pickle(beside / "pytorch_model.bin", marker)
    rc, _, err = run_cli(["lm", "eval", "--model", beside, "--num-prompts", "2"], capsys)
    assert rc == 0, err
    assert (tmp_path / "eval.json").is_file() and not (beside / "eval.json").exists()
    alone = tmp_path / "alone"
    shutil.copytree(runs["sft"] / "final", alone)
    (alone / "model.safetensors").unlink()
    write_pickle(alone / "pytorch_model.bin", marker)
    rc, _, err = run_cli(["lm", "eval", "--model", alone, "--num-prompts", "2"], capsys)
    assert rc == 2 and "could not load a causal language model" in err
    assert not marker.exists()
