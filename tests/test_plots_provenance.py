"""Issue 17 items 6-7 helpers: data-scaled axes with the spike clipped, bands over seeds
(emrl.plots), and the package/machine record of a figure (emrl.provenance)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from emrl.errors import EmrlError
from emrl.plots import data_limits, mean_band, rolling_mean, scale_to_data
from emrl.provenance import (
    KEY_PACKAGES,
    constraint_lines,
    environment_info,
    format_environment,
    package_versions,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_data_limits_clip_the_first_update_spike_and_fit_the_data():
    loss = [16.0, 9.0] + list(np.linspace(5.0, 2.0, 200))
    lo, hi = data_limits(loss)
    assert 1.7 < lo < 2.0 and 5.0 < hi < 5.5  # the spike (16, 9) is off the scale
    lo, hi = data_limits([0.2, 0.25, 0.31, 0.35, 0.4], bounds=(0, 1))
    assert lo == pytest.approx(0.2 - 0.016) and hi == pytest.approx(0.4 + 0.016)
    assert data_limits(loss, spike_iqr=None)[1] > 16.0  # clipping off: every value shown
    assert data_limits(list(np.linspace(0.0, 0.6, 20)))[1] > 0.6  # a steady rise is kept whole
    assert data_limits([0.0, 0.01, None, float("nan")], bounds=(0, 1), min_span=0.1) == \
        pytest.approx((0.0, 0.005 + 0.05 + 0.008))
    with pytest.raises(EmrlError, match="no finite values"):
        data_limits([None, float("nan")])


def test_scale_to_data_notes_the_points_off_scale():
    fig, ax = plt.subplots()
    xs = list(range(1, 51))
    ys = [16.0] + list(np.linspace(5.0, 2.0, 49))
    ax.plot(xs, ys)
    lo, hi = scale_to_data(ax, [(xs, ys)])
    assert ax.get_ylim() == pytest.approx((lo, hi)) and hi < 16
    assert [t.get_text() for t in ax.texts] == ["off scale: 16 at update 1"]
    plt.close(fig)


def test_mean_band_over_seeds():
    fig, ax = plt.subplots()
    runs = [([0, 50, 100], [0.3, 0.35, 0.4]), ([0, 50, 100], [0.32, 0.33, 0.44]),
            ([0, 50, 100], [0.28, 0.37, 0.42])]
    xs, mean, lo, hi = mean_band(ax, runs, label="greedy", color="tab:blue")
    assert list(xs) == [0, 50, 100]
    assert mean == pytest.approx([0.3, 0.35, 0.42]) and lo == pytest.approx([0.28, 0.33, 0.4])
    assert hi == pytest.approx([0.32, 0.37, 0.44])
    assert len(ax.collections) == 1  # the shaded band
    assert ax.get_lines()[0].get_label() == "greedy (mean of 3 seeds, band: min-max)"
    _, mean, lo, hi = mean_band(ax, runs, band="ci95")
    sd = np.std([[0.3, 0.32, 0.28]], ddof=1)
    assert hi[0] - mean[0] == pytest.approx(1.96 * sd / np.sqrt(3))
    # runs logged at different steps: interpolated inside the common range
    xs, mean, _, _ = mean_band(ax, [([0, 10, 20], [0.0, 1.0, 2.0]), ([5, 15, 25], [0.0, 1.0, 2.0])])
    assert list(xs) == [5, 10, 15, 20] and mean == pytest.approx([0.25, 0.75, 1.25, 1.75])
    n = len(ax.collections)
    mean_band(ax, runs[:1], label="one seed")  # one run: a plain line
    assert len(ax.collections) == n and ax.get_lines()[-1].get_label() == "one seed"
    with pytest.raises(EmrlError, match="no common x range"):
        mean_band(ax, [([0, 1], [0, 1]), ([5, 6], [0, 1])])
    plt.close(fig)
    assert rolling_mean([1, 2, 3, 4], 2) == pytest.approx([1, 1.5, 2.5, 3.5])


def test_environment_info_records_packages_and_machine():
    info = environment_info()
    assert set(info["packages"]) == set(KEY_PACKAGES)
    assert info["packages"]["torch"] == metadata.version("torch")
    assert info["packages"]["numpy"] == metadata.version("numpy")
    m = info["machine"]
    assert m["logical_cpus"] >= m["usable_cpus"] >= 1 and m["cpu_model"] and m["python"]
    line = format_environment(info)
    assert f"torch {metadata.version('torch')}" in line and "CPU: " in line and "Python " in line
    assert package_versions(["surely-not-a-package-xyz"]) == {"surely-not-a-package-xyz": None}


def test_constraint_lines_and_the_records_constraints_file():
    freeze = ["torch==2.13.0+cpu", "-e /src/emrl", "emrl==0.1.0", "foo @ file:///x", "Numpy==2.4.6", ""]
    assert constraint_lines(freeze) == ["Numpy==2.4.6", "torch==2.13.0"]
    path = Path(__file__).resolve().parents[1] / "constraints-records.txt"
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for name in KEY_PACKAGES:
        if name != "emrl":
            assert name in pins, name
