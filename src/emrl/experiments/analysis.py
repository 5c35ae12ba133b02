"""Effect sizes with 95% bootstrap intervals over seeds, and verdicts computed from them.

::

    from emrl.experiments.analysis import estimate, paired_difference, compare

    a = estimate([0.52, 0.50, 0.55])                    # mean and 95% bootstrap interval
    d = paired_difference({0: .52, 1: .50, 2: .55}, {0: .47, 1: .49, 2: .45})
    print(compare("adaptive η", a_by_seed, "best fixed η", b_by_seed, "final held-out accuracy"))

The bootstrap resamples seeds (percentile interval, 10 000 resamples, a fixed generator
seed, so a report regenerated from the same records prints the same numbers). With one
seed the interval is the point itself and verdicts say the evidence is a single seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from emrl.errors import EmrlError
from emrl.report import format_value

N_BOOT = 10_000
LEVEL = 0.95


class Estimate(NamedTuple):
    """A mean over seeds with its bootstrap interval; ``n`` seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{format_value(self.mean, digits)} [{format_value(self.lo, digits)}, {format_value(self.hi, digits)}]"

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies wholly on one side of ``value``."""
        return self.n > 1 and (self.lo > value or self.hi < value)


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float("nan") if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def estimate(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Estimate:
    """Mean of ``values`` (non-finite entries dropped) and its percentile bootstrap
    interval. Raises :class:`EmrlError` when no value is finite."""
    arr = _clean(values)
    if arr.size == 0:
        raise EmrlError("estimate: no finite value to summarise")
    mean = float(arr.mean())
    if arr.size == 1 or float(arr.std()) == 0.0:
        return Estimate(mean, mean, mean, int(arr.size))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    means = arr[idx].mean(axis=1)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [q, 1.0 - q])
    return Estimate(mean, float(lo), float(hi), int(arr.size))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], **kw) -> Estimate:
    """``a − b`` paired by seed (the seeds both have), with a bootstrap interval over seeds."""
    seeds = sorted(set(a) & set(b))
    diffs = [float(a[s]) - float(b[s]) for s in seeds
             if a[s] is not None and b[s] is not None and math.isfinite(float(a[s])) and math.isfinite(float(b[s]))]
    if not diffs:
        raise EmrlError("paired_difference: the two arms share no seed with finite values")
    return estimate(diffs, **kw)


def difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL,
               seed: int = 0) -> Estimate:
    """``mean(a) − mean(b)`` for unpaired arms, resampling each arm's seeds."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        raise EmrlError("difference: an arm has no finite value")
    d = float(x.mean() - y.mean())
    if x.size + y.size <= 2:
        return Estimate(d, d, d, 1)
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(mx - my, [q, 1.0 - q])
    return Estimate(d, float(lo), float(hi), int(min(x.size, y.size)))


def compare(name_a: str, a: Mapping[int, float], name_b: str, b: Mapping[int, float], metric: str, *,
            higher_is_better: bool = True, paired: bool = True, digits: int = 3) -> str:
    """A verdict sentence with its numbers: both arms' means with intervals, the
    (paired) difference with its interval, and whether the interval excludes 0.

    "… higher …" only when the interval of the difference excludes 0; otherwise the
    sentence says the difference is within noise (or that one seed cannot tell).
    """
    ea, eb = estimate(list(a.values())), estimate(list(b.values()))
    d = paired_difference(a, b) if paired else difference(list(a.values()), list(b.values()))
    how = "paired by seed" if paired else "unpaired"
    head = (f"{metric}: {name_a} {ea.text(digits)} vs {name_b} {eb.text(digits)} "
            f"(mean [95% bootstrap interval] over {ea.n} and {eb.n} seeds); difference {d.text(digits)} ({how})")
    if d.n < 2:
        return head + " — a single seed: no interval, no verdict."
    if not d.excludes(0.0):
        return head + " — within noise: the interval includes 0, so the data do not support a difference."
    better = (d.mean > 0) == higher_is_better
    word = "higher" if d.mean > 0 else "lower"
    return head + f" — {name_a} is {word} ({'better' if better else 'worse'}); the interval excludes 0."


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` over the positive finite pairs."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
           if x and y and x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 2:
        raise EmrlError("loglog_slope: fewer than 2 positive points")
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


__all__ = ["Estimate", "estimate", "paired_difference", "difference", "compare", "loglog_slope"]
