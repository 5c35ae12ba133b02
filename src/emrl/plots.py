"""Figures that show the effect: axes scaled to the data, spikes clipped, bands over seeds.

Shared by the demo report and the benchmarks (matplotlib, imported lazily)::

    from emrl.plots import mean_band, scale_to_data

    fig, ax = plt.subplots()
    mean_band(ax, [(steps0, acc0), (steps1, acc1), (steps2, acc2)], label="V-MPO", color="tab:blue")
    scale_to_data(ax, [(steps0, acc0), (steps1, acc1), (steps2, acc2)], bounds=(0, 1))

* :func:`data_limits` -- y-limits that fit the bulk of the values: a few outliers at the
  top (the first update's loss spike) are left off the scale instead of squashing the
  curve, a range of 0.2-0.4 is shown as 0.2-0.4, not 0-1;
* :func:`scale_to_data` -- sets those limits on an axis and writes a small note naming
  the points left off the scale;
* :func:`mean_band` -- the mean over seeds as a line and the spread (min-max, ±1 std or
  a 95% interval of the mean) as a shaded band; one seed gives a plain line;
* :func:`rolling_mean` -- a trailing moving average for noisy per-update curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emrl.errors import EmrlError

Curve = tuple[Sequence[float], Sequence[float]]  # (xs, ys)


def _finite(values: Sequence[Any]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def data_limits(
    values: Sequence[Any], *, spike_iqr: float | None = 3.0, pad: float = 0.08,
    bounds: tuple[float | None, float | None] | None = None, min_span: float = 0.0,
) -> tuple[float, float]:
    """``(lo, hi)`` y-limits for ``values`` (``None`` / non-finite entries ignored).

    Spikes at the top are left off the scale: values above the upper quartile plus
    ``spike_iqr`` interquartile ranges (Tukey's far-out fence; ``None``: keep every value)
    do not set the top, so a first-update loss of 16 over a curve of 2-5 does not squash
    it, while a steadily rising or falling curve is kept whole. The range is widened to at
    least ``min_span``, padded by ``pad`` of its span on each side and clamped to
    ``bounds`` (e.g. ``(0, 1)`` for accuracies: 0.2-0.4 is shown as about 0.18-0.42).

    Raises:
        EmrlError: no finite value.
    """
    arr = _finite(values)
    if arr.size == 0:
        raise EmrlError("data_limits: no finite values to scale the axis to")
    lo, hi = float(arr.min()), float(arr.max())
    if spike_iqr is not None and arr.size >= 4:
        q1, q3 = (float(v) for v in np.quantile(arr, [0.25, 0.75]))
        fence = q3 + spike_iqr * (q3 - q1)
        if q3 > q1 and hi > fence:
            hi = float(arr[arr <= fence].max())
    span = hi - lo
    if span < min_span:
        mid = 0.5 * (lo + hi)
        lo, hi, span = mid - 0.5 * min_span, mid + 0.5 * min_span, min_span
    if span == 0.0:
        span = abs(hi) * 0.1 or 1.0
        lo, hi = lo - 0.5 * span, hi + 0.5 * span
        span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if bounds is not None:
        b_lo, b_hi = bounds
        if b_lo is not None:
            lo = max(lo, b_lo)
        if b_hi is not None:
            hi = min(hi, b_hi)
    return lo, hi


def scale_to_data(ax: Any, curves: Sequence[Curve], *, note: bool = True, unit: str = "update",
                  **limit_kw: Any) -> tuple[float, float]:
    """Set ``ax``'s y-limits by :func:`data_limits` over every curve's ys; with ``note``,
    write which points are off the scale (e.g. ``"off scale: 16.2 at update 1"``) in the
    axis' top-left corner. Returns the limits."""
    ys = [y for _, cys in curves for y in cys]
    lo, hi = data_limits(ys, **limit_kw)
    ax.set_ylim(lo, hi)
    if note:
        off = [(x, float(y)) for cxs, cys in curves for x, y in zip(cxs, cys, strict=True)
               if y is not None and math.isfinite(float(y)) and not lo <= float(y) <= hi]
        if off:
            x, y = max(off, key=lambda p: abs(p[1]))
            more = f" (+{len(off) - 1} more)" if len(off) > 1 else ""
            ax.text(0.01, 0.99, f"off scale: {y:.3g} at {unit} {x:g}{more}", transform=ax.transAxes,
                    ha="left", va="top", fontsize=7, color="0.35")
    return lo, hi


def _align(runs: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """The runs on one x grid: their shared xs, or the union of xs inside the range all
    runs cover, each run linearly interpolated there. Returns ``(xs[M], ys[R, M])``."""
    cleaned = []
    for xs, ys in runs:
        x = np.asarray(xs, dtype=float)
        y = np.asarray([np.nan if v is None else float(v) for v in ys], dtype=float)
        if x.shape != y.shape:
            raise EmrlError(f"mean_band: a run has {x.size} xs but {y.size} ys")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size == 0:
            continue
        order = np.argsort(x, kind="stable")
        cleaned.append((x[order], y[order]))
    if not cleaned:
        raise EmrlError("mean_band: no run has a finite point")
    first = cleaned[0][0]
    if all(x.shape == first.shape and np.array_equal(x, first) for x, _ in cleaned):
        return first, np.stack([y for _, y in cleaned])
    start = max(float(x[0]) for x, _ in cleaned)
    stop = min(float(x[-1]) for x, _ in cleaned)
    if start > stop:
        raise EmrlError(f"mean_band: the runs cover no common x range (latest start {start:g}, "
                        f"earliest end {stop:g})")
    grid = np.unique(np.concatenate([x[(x >= start) & (x <= stop)] for x, _ in cleaned]))
    return grid, np.stack([np.interp(grid, x, y) for x, y in cleaned])


def mean_band(
    ax: Any, runs: Sequence[Curve], *, label: str | None = None, color: Any = None, band: str = "minmax",
    alpha: float = 0.2, **plot_kw: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plot the mean over ``runs`` (one ``(xs, ys)`` per seed) with a shaded band.

    ``band``: ``"minmax"`` (the range over seeds), ``"std"`` (mean ± 1 std) or ``"ci95"``
    (mean ± 1.96 standard errors). With several runs the label gets ``"(mean of N seeds,
    band: ...)"``; one run is drawn as a plain line. Runs logged at different xs are
    interpolated onto the xs inside the range all of them cover.

    Returns ``(xs, mean, band_lo, band_hi)``.
    """
    if band not in ("minmax", "std", "ci95"):
        raise EmrlError(f"mean_band: band must be minmax, std or ci95, got {band!r}")
    xs, ys = _align(runs)
    n = ys.shape[0]
    mean = ys.mean(0)
    if n == 1:
        lo = hi = mean
    elif band == "minmax":
        lo, hi = ys.min(0), ys.max(0)
    else:
        sd = ys.std(0, ddof=1)
        half = sd if band == "std" else 1.96 * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    if label is not None and n > 1:
        what = {"minmax": "min-max", "std": "±1 std", "ci95": "95% CI of the mean"}[band]
        label = f"{label} (mean of {n} seeds, band: {what})"
    (line,) = ax.plot(xs, mean, label=label, color=color, **plot_kw)
    if n > 1:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=alpha, linewidth=0)
    return xs, mean, lo, hi


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first ``window - 1`` points average what exists)."""
    if window < 1:
        raise EmrlError(f"rolling_mean: window must be >= 1, got {window}")
    arr = np.asarray(values, dtype=float)
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    idx = np.arange(1, arr.size + 1)
    start = np.maximum(0, idx - window)
    return (csum[idx] - csum[start]) / (idx - start)


__all__ = ["data_limits", "scale_to_data", "mean_band", "rolling_mean"]
