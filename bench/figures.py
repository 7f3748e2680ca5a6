"""What a benchmark hands back, and how it is printed.

Every benchmark returns one `Result`: a few lines saying what was set up, and rows of figures,
each with the baseline measured in the same run where there is one, their ratio, and the
issue's target with whether it was met. Printed as a plain table; `markdown` gives the rows
for the README's table of latest results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

NO_VALUE = "-"


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    value: str
    baseline: str = NO_VALUE
    ratio: str = NO_VALUE
    target: str = NO_VALUE
    met: bool | None = None  # None: the figure has no target

    @property
    def verdict(self) -> str:
        if self.met is None:
            return NO_VALUE
        return "met" if self.met else "MISSED"


@dataclass(slots=True)
class Result:
    name: str  # the name `--only` selects it by
    title: str
    setup: list[str] = field(default_factory=list)  # what was measured, in one line each
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how to read a figure, caveats

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: a value that was actually measured, never interpolated."""
    if not samples:
        raise ValueError("no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    ordered = sorted(samples)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def ms(seconds: float) -> str:
    """A duration in milliseconds with three significant digits or more."""
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.3f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def rate(count: float, seconds: float, unit: str) -> str:
    per_second = count / seconds if seconds > 0 else math.inf
    return f"{per_second:,.0f} {unit}/s" if per_second >= 100 else f"{per_second:.1f} {unit}/s"


def size(nbytes: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def ratio(value: float, baseline: float) -> str:
    """`value / baseline` as "N.NNx" (how many times the baseline's cost)."""
    if baseline <= 0:
        return "n/a"
    return f"{value / baseline:.2f}x"


def count(n: int) -> str:
    return f"{n:,}"


def render(result: Result) -> str:
    lines = [f"== {result.title} ==", *(f"  {line}" for line in result.setup), ""]
    header = ("figure", "measured", "baseline", "ratio", "target", "")
    table = [header] + [
        (r.figure, r.value, r.baseline, r.ratio, r.target, r.verdict) for r in result.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * width for width in widths).rstrip())
    if result.notes:
        lines.append("")
        lines.extend(f"  * {note}" for note in result.notes)
    return "\n".join(lines)


def markdown(results: Sequence[Result], machine: str) -> str:
    """The rows of every result as one Markdown table, for the README."""
    lines = [
        f"Machine: {machine}",
        "",
        "| benchmark | figure | measured | baseline | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for r in result.rows:
            target = r.target if r.met is None else f"{r.target} ({r.verdict})"
            cells = (result.name, r.figure, r.value, r.baseline, r.ratio, target)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
