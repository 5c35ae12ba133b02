"""The run directory contract (DESIGN.md "Contracts").

::

    DIR/config.yaml        fully resolved config
    DIR/metrics.jsonl      one JSON object per logged update
    DIR/checkpoint-<step>/ atomic checkpoints (manifest-verified)
    DIR/final/             the finished model, written atomically at the very end
    DIR/eval.json          where evaluated

A run refuses to start in a directory that already holds a run unless asked to
``resume`` (continue from the latest checkpoint) or ``overwrite``. ``final/`` only
appears when a run completes, so a failed run never looks complete.

Nothing is lost to a bad flag: ``RunDir(..., defer=True)`` only checks (the directory is
a directory, can be written, holds a run or not); the trainers then build and validate
everything (config, model, task, environment, the checkpoint to resume) and only then
call :meth:`RunDir.prepare`, which removes the old run (``overwrite``) and the temporary
directories a killed run left behind. :func:`check_resume_config` is the one rule for
which config fields may change on ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emrl.checkpoint import atomic_write_json, latest_checkpoint
from emrl.config import save_config
from emrl.errors import CheckpointError, EmrlError

#: name prefixes of the hidden temporary files/directories of atomic writes in a run dir.
_TEMP_PREFIXES = (".checkpoint-", ".final.", ".metrics.jsonl.", ".config.yaml.", ".eval.json.")


def _check_writable(path: Path) -> None:
    """Raise :class:`EmrlError` if ``path`` could not be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise EmrlError(f"output directory {path} cannot be created: {probe} is a file, not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".emrl-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise EmrlError(f"output directory {path} is not writable ({probe}: {e.strerror or e})") from e


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a directory that already holds (part of) a run."""
    p = Path(path)
    return p.is_dir() and (any((p / n).exists() for n in ("config.yaml", "metrics.jsonl", "final"))
                           or any(p.glob("checkpoint-*")))


class RunDir:
    """A run directory; see the module docstring for its layout."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False,
                 defer: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self._remove_old = False
        if self.path.exists() and not self.path.is_dir():
            raise EmrlError(f"output directory {self.path} exists and is not a directory")
        _check_writable(self.path)
        has_run = holds_run(self.path)
        if resume:
            if not has_run:
                raise EmrlError(f"--resume: no run to resume in {self.path}")
        elif has_run:
            if not overwrite:
                raise EmrlError(
                    f"output directory {self.path} already holds a run; pass --resume to "
                    "continue it or --overwrite to replace it"
                )
            self._remove_old = True
        if not defer:
            self.prepare()

    def prepare(self) -> None:
        """Make the directory ready to write: remove the old run (``overwrite``) and the
        temporary files of interrupted atomic writes. Call it once everything is validated."""
        try:
            if self._remove_old:
                shutil.rmtree(self.path)
                self._remove_old = False
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmrlError(f"cannot prepare output directory {self.path}: {e.strerror or e}") from e
        self.remove_stale_temps()

    def remove_stale_temps(self) -> list[str]:
        """Delete ``.checkpoint-N.*.tmp``, ``.final.*.tmp`` (and the like) left by a killed run."""
        removed = []
        for p in self.path.iterdir():
            if p.name.startswith(_TEMP_PREFIXES) and (p.name.endswith(".tmp") or ".old-" in p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    # layout -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / f"checkpoint-{step}"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    # writers ----------------------------------------------------------------
    def write_config(self, cfg: Any) -> None:
        save_config(cfg, self.config_path)

    def write_eval(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.eval_path, results)


def check_resume_config(
    saved: dict[str, Any], now: dict[str, Any], *, free: Iterable[str], where: str,
    horizon: str, horizon_ok: bool, horizon_why: str,
) -> None:
    """The one rule for ``--resume``: only the fields in ``free`` (how often to log, save,
    evaluate; threads) may differ from the run's saved config. ``horizon`` (the run length:
    ``max_steps`` / ``total_steps``) may change only when ``horizon_ok`` (the schedules do
    not depend on it); ``horizon_why`` says why not otherwise.

    Raises:
        CheckpointError: naming the first changed field, its saved and new values.
    """
    free = set(free)
    changed = [k for k, v in saved.items() if k not in free and now.get(k) != v]
    for k in sorted(changed, key=lambda k: k == horizon):  # the horizon last
        v = saved[k]
        if k == horizon:
            if horizon_ok:
                continue
            raise CheckpointError(
                f"--resume: {where} was started with {k}={v!r}; changing it to {now.get(k)!r} would "
                f"change {horizon_why} of the steps already taken, so the resumed run would not "
                f"be the run that was started. Resume with {k}={v!r}, or start a new run")
        raise CheckpointError(
            f"--resume: {where} was started with {k}={v!r} but this run has {k}={now.get(k)!r}; "
            f"resume with the same settings (only {', '.join(sorted(free | {horizon}))} may change) "
            "or start a new run")
