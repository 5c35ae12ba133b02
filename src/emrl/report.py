"""One look for every report emrl writes: markdown tables, PNG figures, raw-data links.

Used by the experiments (``emrl experiment report``) and meant for the demo and the
benchmarks too::

    from emrl.report import Report

    rep = Report("RQ3: adaptive temperature", out_dir)
    rep.paragraph("What was run ...")
    rep.table(["method", "accuracy"], [["adaptive", 0.52], ["fixed η=0.3", 0.47]])
    fig, ax = rep.new_figure()
    ax.plot(steps, acc); ax.set_xlabel("update"); ax.set_ylabel("held-out accuracy (fraction)")
    rep.figure(fig, "accuracy.png", "Held-out accuracy over training.")
    rep.raw_data("records.jsonl", "one JSON record per cell")
    rep.provenance(environment, command="emrl experiment run rq3 --preset cpu ...")
    rep.write()                                  # out_dir/report.md

The markdown is a pure function of what was added (no clock is read here), so a report
regenerated from the same records is byte-identical. Figures are written as PNG with
no timestamp or software metadata, and every axis must carry a label on both axes
(a unit in parentheses is the convention: ``"KL per update (nats/token)"``); an
unlabelled axis raises :class:`~emrl.errors.EmrlError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emrl.errors import EmrlError
from emrl.provenance import format_environment


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits (scientific below 1e-3),
    ``None``/NaN as ``–``, everything else by ``str``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == 0.0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.{max(1, digits - 1)}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_interval(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.52 [0.49, 0.55]``."""
    return f"{format_value(mean, digits)} [{format_value(lo, digits)}, {format_value(hi, digits)}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                   align: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; ``align`` per column ``"l"``/``"r"`` (default:
    right for numbers, left otherwise, from the first row)."""
    if not headers:
        raise EmrlError("markdown_table: no columns")
    for i, r in enumerate(rows):
        if len(r) != len(headers):
            raise EmrlError(f"markdown_table: row {i} has {len(r)} cells, expected {len(headers)}")
    if align is None:
        first = rows[0] if rows else [""] * len(headers)
        align = ["r" if isinstance(v, (int, float)) and not isinstance(v, bool) else "l" for v in first]
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h).replace("|", "\\|") for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(format_value(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _check_labels(fig: Any, name: str) -> None:
    for i, ax in enumerate(fig.get_axes()):
        if not ax.get_visible() or not ax.has_data():
            continue
        if not ax.get_xlabel().strip() or not ax.get_ylabel().strip():
            raise EmrlError(f"figure {name}: axis {i} needs a label on both axes (with the unit), "
                            f"got x={ax.get_xlabel()!r}, y={ax.get_ylabel()!r}")


class Report:
    """A markdown report with figures next to it in ``out_dir``."""

    def __init__(self, title: str, out_dir: str | Path) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.parts: list[str] = [f"# {title}"]
        self.figures: list[str] = []

    # -- text
    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append("#" * level + " " + text)

    def paragraph(self, text: str) -> None:
        self.parts.append(text.strip())

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.parts.append("\n".join(f"- {it}" for it in items))

    def code(self, text: str, lang: str = "bash") -> None:
        self.parts.append(f"```{lang}\n{text.rstrip()}\n```")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None,
              **kw: Any) -> None:
        if caption:
            self.parts.append(f"*{caption.strip()}*")
        self.parts.append(markdown_table(headers, rows, **kw))

    # -- figures
    @staticmethod
    def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 3.6) -> tuple[Any, Any]:
        """``plt.subplots`` with the Agg backend and the report's size."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=True)

    def figure(self, fig: Any, filename: str, caption: str) -> Path:
        """Save ``fig`` as ``out_dir/filename`` (PNG, no metadata) and reference it."""
        import matplotlib.pyplot as plt

        if not filename.endswith(".png") or "/" in filename:
            raise EmrlError(f"figure file name must be a plain NAME.png, got {filename!r}")
        if filename in self.figures:
            raise EmrlError(f"figure {filename} added twice")
        _check_labels(fig, filename)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / filename
        fig.tight_layout()
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        self.figures.append(filename)
        self.parts.append(f"![{caption.strip()}]({filename})\n\n*{caption.strip()}*")
        return path

    # -- data and provenance
    def raw_data(self, relpath: str, what: str) -> None:
        self.parts.append(f"Raw data: [`{relpath}`]({relpath}) — {what}.")

    def provenance(self, environment: dict[str, Any] | None, *, command: str | None = None,
                   recorded: str | None = None) -> None:
        """The command that made the figures, when, and the machine/package line."""
        self.heading("Provenance")
        if command:
            self.code(command)
        items = []
        if recorded:
            items.append(f"Recorded: {recorded}")
        if environment:
            items.append(f"Environment: {format_environment(environment)}")
        self.bullets(items)

    def markdown(self) -> str:
        return "\n\n".join(self.parts).rstrip() + "\n"

    def write(self, filename: str = "report.md") -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / filename
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.markdown(), encoding="utf-8")
        tmp.replace(path)
        return path


__all__ = ["Report", "format_value", "format_interval", "markdown_table"]
