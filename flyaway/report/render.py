"""The report as one self-contained HTML page (jinja2 template, inline CSS and SVG) and as JSON."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from flyaway.report import charts
from flyaway.report.model import MigrationReport, StageReport
from flyaway.starter.display import human_bytes, human_duration


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("flyaway.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(bytes=human_bytes, duration=human_duration, when=_when, money=_money)
    return environment


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def timeline(report: MigrationReport) -> list[dict[str, object]]:
    """Each stage that ran as a bar: left offset and width in percent of the migration's span so far."""
    spans = [stage for stage in report.stages if stage.started_at]
    if not spans:
        return []
    start = min(stage.started_at for stage in spans if stage.started_at)
    end = max([stage.ended_at or report.generated_at for stage in spans] + [report.closed_at or start])
    total = max((end - start).total_seconds(), 1e-6)

    def bar(stage: StageReport) -> dict[str, object]:
        assert stage.started_at is not None
        stop = stage.ended_at or report.closed_at or report.generated_at
        left = (stage.started_at - start).total_seconds() / total * 100
        width = max((stop - stage.started_at).total_seconds() / total * 100, 0.5)
        return {"stage": stage, "left": round(left, 2), "width": round(min(width, 100 - left), 2),
                "seconds": (stop - stage.started_at).total_seconds()}

    return [bar(stage) for stage in spans]


def render_html(report: MigrationReport) -> str:
    template = _environment().get_template("report.html.j2")
    intervals = report.canary.intervals if report.canary else []
    return template.render(report=report, timeline=timeline(report),
                           throughput_chart=charts.throughput_chart(report.weights.throughput),
                           latency_chart=charts.latency_chart(intervals),
                           success_chart=charts.success_chart(intervals))


def write_report(report: MigrationReport, html_path: Path) -> tuple[Path, Path]:
    """Write the page and, beside it with a .json suffix, the same facts as JSON."""
    json_path = html_path.with_suffix(".json")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return html_path, json_path
