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
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from emrl.checkpoint import atomic_write_json, latest_checkpoint
from emrl.config import save_config
from emrl.errors import EmrlError


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a directory that already holds (part of) a run."""
    p = Path(path)
    return p.is_dir() and (any((p / n).exists() for n in ("config.yaml", "metrics.jsonl", "final"))
                           or any(p.glob("checkpoint-*")))


class RunDir:
    """A run directory; see the module docstring for its layout."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        if self.path.exists() and not self.path.is_dir():
            raise EmrlError(f"output directory {self.path} exists and is not a directory")
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
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

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
