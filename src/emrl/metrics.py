"""The metrics writer: one JSON object per logged update in ``metrics.jsonl``.

Metric names are shared across algorithms (see DESIGN.md): ``step``, ``samples``,
``wall_time``, ``reward/mean``, ``estep/eta``, ``mstep/kl``, ``ppo/clip_fraction`` ...
Optionally mirrors scalars to TensorBoard.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return v
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class MetricsWriter:
    """Append metrics to ``<run_dir>/metrics.jsonl``; ``wall_time`` is added automatically.

    ``start_time`` lets a resumed run continue its clock; ``truncate_after_step`` drops
    lines logged after the checkpoint a run resumes from, so the file stays consistent
    (``keep(record)``: also drop the earlier records it returns False for).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        tensorboard: bool = False,
        start_time: float | None = None,
        truncate_after_step: int | None = None,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= truncate_after_step
                    and (keep is None or keep(r))]
            from emrl.checkpoint import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", buffering=1)
        self._t0 = time.time() - (start_time or 0.0)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - optional dependency
                from emrl.errors import EmrlError

                raise EmrlError(
                    "TensorBoard logging needs the 'tensorboard' package: pip install 'emrl[report]'"
                ) from e
            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (continued across resumes)."""
        return time.time() - self._t0

    def log(self, metrics: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Write one record; returns it. Must contain ``step``."""
        rec = {**(metrics or {}), **kw}
        if "step" not in rec:
            raise ValueError("a metrics record needs a 'step'")
        rec.setdefault("wall_time", self.elapsed)
        rec = {k: _clean(v) for k, v in rec.items()}
        self._fh.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, rec["step"])
        return rec

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a ``metrics.jsonl`` (a torn last line, or any line that is not
    a JSON object, is ignored)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
