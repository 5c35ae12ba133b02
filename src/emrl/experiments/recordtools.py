"""Small helpers the rq2, rq5 and gtrxl-gating reports share: select records by their
configuration, collect one measurement per seed, average curves over runs."""

from __future__ import annotations

import math
from collections.abc import Sequence


def by_config(records: list[dict], **match) -> list[dict]:
    """The records whose ``config`` has every ``key=value`` of ``match``."""
    return [r for r in records if all(r["config"].get(k) == v for k, v in match.items())]


def seed_map(records: list[dict], key: str) -> dict[int, float]:
    """``{seed: result[key]}`` over the records whose ``key`` is a finite number."""
    out = {}
    for r in records:
        v = r["result"].get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[int(r["seed"])] = float(v)
    return out


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[list[float], list[float]]:
    """``(xs, mean ys)`` of curves given as ``[[x, y], ...]``: at each x, the mean of the
    curves that have a point there."""
    xs = sorted({x for c in curves for x, _ in c})
    ys = []
    for x in xs:
        vals = [y for c in curves for x2, y in c if x2 == x]
        ys.append(sum(vals) / len(vals))
    return xs, ys
