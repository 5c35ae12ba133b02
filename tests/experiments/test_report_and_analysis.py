"""The shared report writer (emrl.report) and the analysis helpers (bootstrap intervals, verdicts)."""

from __future__ import annotations

import pytest

from emrl.errors import EmrlError
from emrl.experiments.analysis import compare, estimate, loglog_slope, paired_difference
from emrl.report import Report, format_value, markdown_table


def test_table_formats_numbers_and_escapes_pipes():
    md = markdown_table(["what", "max |Δw|"], [["a|b", 0.000012345], ["c", 1234.5678]])
    lines = md.splitlines()
    assert lines[0] == "| what | max \\|Δw\\| |"
    assert lines[1] == "| :--- | ---: |"  # numbers right-aligned
    assert "a\\|b" in lines[2] and "1.23e-05" in lines[2]
    assert "1.23e+03" in lines[3]
    assert format_value(None) == "–" and format_value(float("nan")) == "–" and format_value(0.5) == "0.5"
    with pytest.raises(EmrlError, match="row 0 has 1 cells, expected 2"):
        markdown_table(["a", "b"], [[1]])


def test_figures_need_labelled_axes_and_markdown_is_reproducible(tmp_path):
    def build(out):
        rep = Report("T", out)
        rep.paragraph("text")
        fig, ax = rep.new_figure()
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("update")
        ax.set_ylabel("accuracy (fraction)")
        rep.figure(fig, "a.png", "caption")
        rep.raw_data("records.jsonl", "records")
        rep.provenance({"packages": {"torch": "2"}, "machine": {"cpu_model": "X"}}, command="emrl x",
                       recorded="2026-01-01")
        return rep.write()

    p1, p2 = build(tmp_path / "1"), build(tmp_path / "2")
    assert p1.read_bytes() == p2.read_bytes()
    assert (tmp_path / "1" / "a.png").read_bytes() == (tmp_path / "2" / "a.png").read_bytes()
    text = p1.read_text()
    assert "![caption](a.png)" in text and "```bash\nemrl x\n```" in text and "CPU: X" in text
    rep = Report("T", tmp_path / "3")
    fig, ax = rep.new_figure()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("update")
    with pytest.raises(EmrlError, match="needs a label on both axes"):
        rep.figure(fig, "b.png", "no y label")


def test_bootstrap_interval_is_deterministic_and_covers_the_mean():
    vals = [0.50, 0.52, 0.55, 0.47, 0.51]
    e1, e2 = estimate(vals), estimate(vals)
    assert e1 == e2
    assert e1.lo < e1.mean < e1.hi and e1.n == 5
    assert min(vals) <= e1.lo and e1.hi <= max(vals)
    one = estimate([0.3])
    assert one.lo == one.hi == 0.3 and not one.excludes(0.0)
    with pytest.raises(EmrlError):
        estimate([float("nan")])


def test_verdicts_follow_the_data():
    a = {0: 0.60, 1: 0.62, 2: 0.61, 3: 0.63}
    b = {0: 0.50, 1: 0.51, 2: 0.52, 3: 0.50}
    v = compare("adaptive", a, "fixed", b, "accuracy")
    assert "adaptive is higher (better); the interval excludes 0" in v
    assert "0.615 [" in v and "difference 0.107 [" in v
    noisy = {0: 0.50, 1: 0.62, 2: 0.45, 3: 0.60}
    assert "within noise" in compare("adaptive", noisy, "fixed", b, "accuracy")
    assert "lower (better)" in compare("kl", b, "other", a, "KL", higher_is_better=False)
    assert "single seed" in compare("x", {0: 1.0}, "y", {0: 0.0}, "m")
    d = paired_difference({0: 1.0, 1: 2.0}, {1: 1.5, 2: 0.0})  # only seed 1 is shared
    assert d.n == 1 and d.mean == 0.5


def test_loglog_slope():
    xs = [1e-1, 1e-2, 1e-3]
    assert loglog_slope(xs, [2 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [x * x for x in xs]) == pytest.approx(2.0)
    with pytest.raises(EmrlError):
        loglog_slope([1.0], [1.0])
