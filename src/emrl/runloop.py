"""The chores of a training loop, shared by the language-model loop (:mod:`emrl.lm`) and
the control loop (:mod:`emrl.control.train`): when to log, evaluate and checkpoint,
writing and pruning checkpoints, and the checks a ``--resume`` must pass.

* :class:`Cadence` — "every N units" of a counter (updates, environment steps), with 0
  meaning never (the loops then act only at the end of the run).
* :func:`write_checkpoint` — ``checkpoint-<step>/`` through :mod:`emrl.checkpoint`
  (atomic, manifest-verified, data only), then pruning to ``keep`` checkpoints.
* :func:`load_resume_checkpoint` — the latest complete checkpoint of a run directory,
  refused when it was written by another run (its ``meta`` differs on a key that
  identifies the run: environment, algorithm, model ...).
* :func:`check_resume` — the one strictness on ``--resume``: a changed hyperparameter is
  refused, naming the field and both values; only the fields the loop lists as free
  (how often to log, evaluate and save; threads) may change, and the run length only
  where no schedule runs over it. To change anything else, start a new run.
* :func:`resume_config_values` — the saved ``config.yaml`` of a run directory with the
  options typed now, old field names renamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emrl.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from emrl.config import apply_aliases, load_yaml, to_dict
from emrl.errors import CheckpointError
from emrl.rundir import RunDir, check_resume_config

__all__ = ["Cadence", "next_multiple", "write_checkpoint", "load_resume_checkpoint", "check_resume",
           "resume_config_values"]


def next_multiple(count: int, every: int) -> int:
    """The smallest multiple of ``every`` above ``count`` (``every = 0``: never)."""
    if not every:
        return 1 << 62
    return (count // every + 1) * every


class Cadence:
    """Something a loop does every ``every`` units of a counter that only grows.

    ``due(count)``: whether ``count`` reached the next multiple of ``every`` since the last
    time it was done; ``done(count)`` moves the next one past ``count``. With a counter
    that grows by 1 (updates) this is ``count % every == 0``; with one that grows by a
    batch (environment steps) it fires once per multiple crossed. ``every = 0``: never
    due. ``count0``: where a resumed run starts.
    """

    def __init__(self, every: int, count0: int = 0) -> None:
        if every < 0:
            raise ValueError(f"a cadence must be >= 0 (0: never), got {every}")
        self.every = int(every)
        self.next = next_multiple(count0, self.every)

    def due(self, count: int) -> bool:
        return bool(self.every) and count >= self.next

    def done(self, count: int) -> None:
        self.next = next_multiple(count, self.every)

    def __call__(self, count: int) -> bool:
        """``due(count)``, and if so ``done(count)``."""
        if self.due(count):
            self.done(count)
            return True
        return False


def write_checkpoint(run: RunDir, step: int, state: dict[str, Any], *, meta: dict[str, Any],
                     keep: int) -> Path:
    """Write ``run/checkpoint-<step>/`` (atomically; ``meta`` goes into the manifest, with
    ``step``) and keep the ``keep`` newest checkpoints (``keep <= 0``: all)."""
    path = run.checkpoint_dir(step)
    save_checkpoint(path, state, meta={**meta, "step": step})
    prune_checkpoints(run.path, keep)
    return path


def load_resume_checkpoint(run: RunDir, expected: dict[str, Any], *, trust_pickle: bool = False,
                           ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(path, state, meta)`` of the latest complete checkpoint of ``run``.

    Raises:
        CheckpointError: no checkpoint (the run stopped before its first one), or its
            ``meta`` differs from ``expected`` on a key (written by another run).
    """
    path = run.latest_checkpoint()
    if path is None:
        raise CheckpointError(f"--resume: no complete checkpoint in {run.path} (the run stopped before "
                              "its first checkpoint): start it again with --overwrite")
    state, meta = load_checkpoint(path, trust_pickle=trust_pickle)
    for k, v in expected.items():
        if meta.get(k) != v:
            raise CheckpointError(
                f"checkpoint {path} was trained with {k}={meta.get(k)!r}, but this run has "
                f"{k}={v!r}; resume with the same {k} or start a new run")
    return path, state, meta


def check_resume(cfg: Any, saved: dict[str, Any], *, free: Iterable[str], where: str, horizon: str,
                 horizon_ok: bool, horizon_why: str) -> None:
    """Refuse a resume whose config ``cfg`` differs from the run's ``saved`` config (a
    mapping, old field names allowed) on a field other than ``free`` (and the run length
    ``horizon`` unless ``horizon_ok``): :func:`emrl.rundir.check_resume_config`.

    Raises:
        CheckpointError: naming the first changed field with its saved and new values.
    """
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume: the saved config of {where} is not a mapping")
    saved = apply_aliases(type(cfg), saved, source=f"the saved config of {where}", warn=False)
    check_resume_config(saved, to_dict(cfg), free=free, where=where, horizon=horizon,
                        horizon_ok=horizon_ok, horizon_why=horizon_why)


def resume_config_values(run_dir: str | Path, overrides: dict[str, Any], cls: type) -> dict[str, Any]:
    """The values of ``run_dir/config.yaml`` updated with ``overrides`` (options typed for
    the resumed run; old field names renamed), for :func:`emrl.config.from_dict`."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"--resume: {run_dir} has no config.yaml (is it an emrl run directory?)")
    values = apply_aliases(cls, load_yaml(path), source=str(path), warn=False)
    values.update(apply_aliases(cls, overrides, source="the command line"))
    return values
