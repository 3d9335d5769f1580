"""Charts of the funnel, as SVG or PNG bytes (matplotlib, Agg: no display needed).

``funnel_chart`` draws one funnel row: leads reaching each stage, with the
conversion to the next. ``conversion_chart`` draws each step's conversion per
entry cohort; the bottleneck's step can be flagged and the plan's rates drawn
as dashed lines. Text stays text in the SVG (``svg.fonttype: none``), so the
labels are searchable and Cyrillic stage names show as written; the files carry
no date, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .chain import AnalyticsError
from .funnel import Funnel, FunnelRow

FORMATS = ("svg", "png")
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "nurture", "font.family": "DejaVu Sans"}
_METADATA = {"svg": {"Date": None, "Creator": "nurture"}, "png": {"Software": "nurture"}}
FLAG_COLOUR = "#c0392b"


def funnel_chart(row: FunnelRow, names: dict[str, str], title: str = "Funnel") -> Figure:
    """Horizontal bars, first stage on top: leads reaching each stage and the conversion onward."""
    figure = Figure(figsize=(8, 0.6 * len(row.stages) + 1.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = [names.get(s.stage, s.stage) for s in row.stages]
    reached = [s.reached for s in row.stages]
    bars = axes.barh(range(len(reached)), reached, color="#2e86c1")
    axes.set_yticks(range(len(labels)), labels)
    axes.invert_yaxis()
    top = max(reached) or 1
    for bar, figures in zip(bars, row.stages):
        conversion = figures.conversion
        text = f"{figures.reached:,}" + (f"  → {conversion:.0%}" if conversion is not None else "")
        axes.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, text, va="center")
    axes.set_xlim(0, top * 1.25)
    axes.set_xlabel("leads reaching the stage")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def conversion_chart(funnel: Funnel, names: dict[str, str], flagged: str | None = None,
                     reference: dict[str, float] | None = None, title: str = "Conversion by entry cohort") -> Figure:
    """One line per step: its conversion in each cohort; ``flagged`` (a stage) is drawn bold and red."""
    if funnel.by is None or funnel.group_by:
        raise AnalyticsError("the conversion-over-time chart needs cohorts (--by week or month) and no grouping")
    figure = Figure(figsize=(9, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cohorts = [row.cohort for row in funnel.rows]
    palette = matplotlib.colormaps["tab10"]
    for i, (stage, following) in enumerate(zip(funnel.stages, funnel.stages[1:])):
        points = [row.figures(stage).conversion for row in funnel.rows]
        if all(p is None for p in points):
            continue
        label = f"{names.get(stage, stage)} → {names.get(following, following)}"
        is_flagged = stage == flagged
        colour = FLAG_COLOUR if is_flagged else palette(i % 10)
        axes.plot(cohorts, [float("nan") if p is None else p for p in points], marker="o", color=colour,
                  linewidth=3 if is_flagged else 1.5, label=label + ("  (bottleneck)" if is_flagged else ""))
        if reference and stage in reference:
            axes.axhline(reference[stage], color=colour, linestyle="--", linewidth=1)
    axes.set_ylim(0, 1.05)
    axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes.set_xlabel(f"entry cohort ({funnel.by} starting)")
    axes.set_ylabel("conversion to the next stage")
    axes.set_title(title + ("  (dashed: plan)" if reference else ""))
    axes.tick_params(axis="x", labelrotation=45)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    return figure


def render(figure: Figure, fmt: str) -> bytes:
    """The figure as ``svg`` or ``png`` bytes."""
    if fmt not in FORMATS:
        raise AnalyticsError(f"chart format {fmt!r}: use svg or png")
    buffer = io.BytesIO()
    with matplotlib.rc_context(_STYLE):
        figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt], dpi=100)
    return buffer.getvalue()


def save(figure: Figure, path: Path) -> None:
    """Write the figure to ``path``; its suffix (.svg or .png) picks the format."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AnalyticsError(f"{path}: a chart file must end in .svg or .png")
    data = render(figure, fmt)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise AnalyticsError(f"{path}: cannot write the chart: {exc.strerror}") from None
