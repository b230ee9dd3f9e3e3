"""The report's charts as inline SVG (pygal), with no script: the page needs no network to show them."""

from __future__ import annotations

import re

import pygal
from pygal.graph.graph import Graph
from pygal.style import Style

from flyaway.report.model import CanaryInterval, ThroughputPoint

MIB = 1024 * 1024
#: old (Fly) in warm colours, new in cool ones, so the two sides read apart in every chart
STYLE = Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
              colors=("#c2410c", "#ea580c", "#fb923c", "#1d4ed8", "#3b82f6", "#93c5fd"))
RATE_STYLE = Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
                   colors=("#c2410c", "#1d4ed8"))


#: pygal writes its config for the tooltips script inline even without the script: dead weight, dropped
_CONFIG_SCRIPT = re.compile(r"<script[^>]*>.*?</script>", re.DOTALL)


def _static(chart: Graph) -> str:
    """The chart as SVG without script."""
    return _CONFIG_SCRIPT.sub("", str(chart.render(is_unicode=True)))


def _options(title: str) -> dict[str, object]:
    # js=[]: pygal would otherwise link its tooltip script from the web
    return {"title": title, "js": [], "width": 860, "height": 320, "disable_xml_declaration": True,
            "explicit_size": False, "legend_at_bottom": True, "truncate_legend": -1, "show_dots": True}


def throughput_chart(points: list[ThroughputPoint]) -> str | None:
    """MiB/s of each batch over the time since the listing, as steps (one level per batch), and the bytes
    done so far on the second axis."""
    if not points:
        return None
    unit, scale = ("minutes", 60.0) if points[-1].ended_seconds >= 600 else ("seconds", 1.0)
    amount, size = ("GiB", 1024.0 * MIB) if points[-1].bytes_done >= 1024 * MIB else ("MiB", float(MIB))
    chart = pygal.XY(style=RATE_STYLE, x_title=f"{unit} since the listing", y_title="MiB/s",
                     value_formatter=lambda value: f"{value:.3g}", x_value_formatter=lambda value: f"{value:.3g}",
                     **_options("Copy throughput"))
    steps: list[tuple[float, float]] = []
    for point in points:
        rate = point.rate_bytes_per_second / MIB
        steps += [(point.started_seconds / scale, rate), (point.ended_seconds / scale, rate)]
    chart.add("MiB/s per batch", steps)
    chart.add(f"{amount} done", [(0.0, 0.0)] + [(point.ended_seconds / scale, point.bytes_done / size)
                                                for point in points], secondary=True)
    return _static(chart)


def _labels(intervals: list[CanaryInterval]) -> list[str]:
    return [f"#{i.number} {i.weight}%" if i.weight is not None else f"#{i.number}" for i in intervals]


def latency_chart(intervals: list[CanaryInterval]) -> str | None:
    """p50/p95/p99 of the old and the new side per analysis interval, in ms."""
    if not intervals:
        return None
    chart = pygal.Line(style=STYLE, x_title="analysis interval (new side's weight)", y_title="ms",
                       **_options("Latency per interval: Fly (old) vs new"))
    chart.x_labels = _labels(intervals)
    for side in ("old", "new"):
        for quantile in ("p50", "p95", "p99"):
            values = [getattr(getattr(i, side), f"{quantile}_ms") if getattr(i, side) else None for i in intervals]
            chart.add(f"{side} {quantile}", values)
    return _static(chart)


def success_chart(intervals: list[CanaryInterval]) -> str | None:
    """The success rate of each side per analysis interval, in percent."""
    if not intervals:
        return None
    chart = pygal.Line(style=RATE_STYLE, x_title="analysis interval (new side's weight)", y_title="% successful",
                       range=(0, 100), **_options("Success rate per interval"))
    chart.x_labels = _labels(intervals)
    for side in ("old", "new"):
        chart.add(side, [getattr(i, side).success_rate if getattr(i, side) else None for i in intervals])
    return _static(chart)
