"""Passive metrics: what each endpoint's own Prometheus page says about the traffic it served.

Counters and histogram buckets only grow, so the traffic of an analysis interval is the
difference between two readings of a page: the one at the end of the previous analysis (or
right after the step's weight was set) and the one at the end of this analysis. The interval's
latency percentiles come from the differences of the bucket counts, interpolated within a
bucket as Prometheus's ``histogram_quantile`` does. A counter that went down, changed buckets or
a new ``process_start_time_seconds`` mean the server restarted in between: the interval cannot
be measured (Inconclusive), and the new reading starts the next one.

The page is parsed with ``prometheus_client``'s parser of the text exposition format. Series
are summed over every label but ``le`` after ``match_labels`` selects them, like
``sum by (le) (...)`` in PromQL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from typing import Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from flyaway.activities.traffic.analysis import judge, stats_of
from flyaway.activities.traffic.probes import request_headers
from flyaway.errors import AccessDenied, FlyawayError, InvalidPlan, NotFound, Unreachable
from flyaway.models.canary import (
    CanaryStage,
    MetricsSnapshot,
    MetricsSnapshots,
    PassiveAnalysis,
    PassiveMetrics,
    SideStats,
    Thresholds,
    Verdict,
)
from flyaway.redaction import scrub

Side = Literal["old", "new"]
SIDES: tuple[Side, Side] = ("old", "new")
FIELD = "canary.analysis.metrics"
#: a page's reading, or why it could not be read
Reading = MetricsSnapshot | str
_START_TIME = "process_start_time_seconds"


# --- pure: a page's text to a snapshot -----------------------------------------------------------

def _selected(samples: Iterable[Sample], names: set[str], match_labels: dict[str, str]) -> list[Sample]:
    return [sample for sample in samples if sample.name in names
            and all(sample.labels.get(label, "") == value for label, value in match_labels.items())]


def parse_page(text: str, metrics: PassiveMetrics, taken_at: datetime) -> MetricsSnapshot:
    """The totals a metrics page shows; InvalidPlan when the counter or the histogram is not on it."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        raise InvalidPlan(f"{FIELD}: the page is not in the Prometheus text format ({error})") from None
    kinds = {family.name: family.type for family in families}
    kinds |= {name + "_total": kind for name, kind in kinds.items() if kind == "counter"}  # the parser drops it
    counter = metrics.requests_counter
    if counter not in kinds:
        raise InvalidPlan(f"{FIELD}.requests_counter: '{counter}' is not on the page")
    histogram = metrics.latency_histogram
    if kinds.get(histogram) != "histogram":
        found = "not on the page" if histogram not in kinds else f"a {kinds[histogram]}, not a histogram"
        raise InvalidPlan(f"{FIELD}.latency_histogram: '{histogram}' is {found}")
    samples = [sample for family in families for sample in family.samples]
    counted = _selected(samples, {counter, counter + "_total"}, metrics.match_labels)
    success = re.compile(metrics.success_values)
    buckets: dict[float, float] = {}
    for sample in _selected(samples, {histogram + "_bucket"}, metrics.match_labels):
        bound = float(sample.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + sample.value
    bounds = sorted(bound for bound in buckets if bound != float("inf"))
    started = [sample.value for sample in samples if sample.name == _START_TIME]
    return MetricsSnapshot(taken_at=taken_at, requests=sum(sample.value for sample in counted),
                           successes=sum(sample.value for sample in counted
                                         if success.fullmatch(sample.labels.get(metrics.outcome_label, ""))),
                           bounds=bounds, buckets=[buckets[bound] for bound in bounds],
                           count=buckets.get(float("inf"), 0.0), process_started=started[0] if started else None)


# --- pure: the interval between two snapshots -----------------------------------------------------

def histogram_quantile(q: float, bounds: Sequence[float], buckets: Sequence[float], count: float) -> float | None:
    """The ``q`` quantile of one histogram as Prometheus's ``histogram_quantile`` computes it.

    ``bounds`` are the finite upper bounds (ascending), ``buckets`` their cumulative counts and
    ``count`` the +Inf bucket. The value is interpolated linearly within the bucket that holds
    the rank (the first bucket starts at 0); a rank in the +Inf bucket gives the highest finite
    bound. None without observations.
    """
    if count <= 0 or not bounds:
        return None
    rank = q * count
    cumulative = list(accumulate(buckets, max))  # made monotonic, as Prometheus does
    for i, (bound, at_bound) in enumerate(zip(bounds, cumulative, strict=True)):
        if at_bound >= rank:
            if i == 0 and bound <= 0:
                return bound
            lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], cumulative[i - 1])
            return lower + (bound - lower) * (rank - below) / (at_bound - below)
    return bounds[-1]


def interval_stats(start: MetricsSnapshot, end: MetricsSnapshot) -> SideStats | None:
    """The traffic between two readings of one page; None when the server restarted in between."""
    if start.process_started is not None and end.process_started not in (None, start.process_started):
        return None
    start_buckets = start.buckets if start.bounds else [0.0] * len(end.bounds)  # no bucket had a series yet
    if start.bounds and start.bounds != end.bounds:
        return None
    deltas = [after - before for before, after in zip(start_buckets, end.buckets, strict=True)]
    requests, successes = end.requests - start.requests, end.successes - start.successes
    count = end.count - start.count
    if min([requests, successes, count, *deltas]) < 0:
        return None
    p50, p95, p99 = (histogram_quantile(q, end.bounds, deltas, count) for q in (0.5, 0.95, 0.99))
    return stats_of(round(requests), round(successes), *(None if value is None else value * 1000
                                                       for value in (p50, p95, p99)))


def judge_interval(baseline: MetricsSnapshots | None, readings: dict[Side, Reading],
                   thresholds: Thresholds) -> tuple[PassiveAnalysis, MetricsSnapshots]:
    """The passive verdict on the interval since ``baseline``, and the readings the next interval starts from.

    A broken threshold on the new side counts even when the old side could not be measured;
    otherwise a side that could not be measured makes the interval Inconclusive. A page that
    could not be read keeps its earlier reading as the start, so the next interval spans both.
    """
    stats: dict[Side, SideStats | None] = {}
    following: dict[Side, MetricsSnapshot | None] = {}
    problems: list[str] = []
    for side in SIDES:
        before, reading = getattr(baseline, side) if baseline else None, readings[side]
        stats[side], following[side] = None, before
        if isinstance(reading, str):
            problems.append(f"the {side} side's metrics could not be read: {reading}")
            continue
        following[side] = reading
        if before is None:
            problems.append(f"no earlier reading of the {side} side's metrics: its interval starts now")
        elif (measured := interval_stats(before, reading)) is None:
            problems.append(f"the {side} side's counters went down or its process restarted since "
                            f"{before.taken_at:%H:%M:%S}: this interval is not judged")
        else:
            stats[side] = measured
    new, old = stats["new"], stats["old"]
    verdict, reasons = (Verdict.INCONCLUSIVE, []) if new is None else judge(new, old, thresholds)
    if problems and verdict is not Verdict.FAILED:
        verdict, reasons = Verdict.INCONCLUSIVE, problems
    new_before, new_reading = (baseline.new if baseline else None), readings["new"]
    seconds = (None if new is None or new_before is None or isinstance(new_reading, str)
               else round((new_reading.taken_at - new_before.taken_at).total_seconds(), 1))
    return (PassiveAnalysis(verdict=verdict, old=old, new=new, seconds=seconds, reasons=reasons),
            MetricsSnapshots(old=following["old"], new=following["new"]))


# --- I/O: reading the pages ----------------------------------------------------------------------

def page_url(stage: CanaryStage, side: Side) -> str:
    """The side's metrics page: the plan's URL, or the side's endpoint + /metrics."""
    metrics = stage.analysis.metrics
    assert metrics is not None and stage.new_endpoint is not None
    endpoint = stage.old_endpoint if side == "old" else stage.new_endpoint
    return getattr(metrics, side).url or f"{endpoint}/metrics"


async def read_page(client: httpx.AsyncClient, stage: CanaryStage, side: Side) -> MetricsSnapshot:
    """One side's page, read now; raises FlyawayError for a page that cannot serve, httpx errors for outages."""
    metrics = stage.analysis.metrics
    assert metrics is not None
    url, field = page_url(stage, side), f"{FIELD}.{side}"
    response = await client.get(url, headers=request_headers(getattr(metrics, side), "metrics page"))
    if response.status_code in (401, 403):
        raise AccessDenied(f"{field}: {url} refused the request (HTTP {response.status_code}); name its token in "
                           f"{field}.bearer_token_env or {field}.headers_from_env")
    if 400 <= response.status_code < 500:
        raise NotFound(f"{field}: {url} answered HTTP {response.status_code}; set {field}.url to the metrics page")
    response.raise_for_status()
    try:
        return parse_page(response.text, metrics, datetime.now(UTC))
    except InvalidPlan as error:
        raise InvalidPlan(f"{error} ({url})") from None


async def _read_both(stage: CanaryStage, strict: bool) -> dict[Side, Reading]:
    metrics = stage.analysis.metrics
    assert metrics is not None

    async def read(client: httpx.AsyncClient, side: Side) -> Reading:
        try:
            return await read_page(client, stage, side)
        except httpx.TransportError as error:
            if strict:
                raise Unreachable(f"{FIELD}.{side}: {page_url(stage, side)} did not answer "
                                  f"({type(error).__name__}); check the URL") from None
            return f"{type(error).__name__}: {scrub(str(error))}"
        except (httpx.HTTPStatusError, FlyawayError) as error:
            if strict:
                raise
            return scrub(str(error))

    async with httpx.AsyncClient(timeout=metrics.timeout_seconds) as client:
        old, new = await asyncio.gather(read(client, "old"), read(client, "new"))
    return {"old": old, "new": new}


async def check_pages(stage: CanaryStage) -> None:
    """Both pages answer and hold the plan's counter and histogram; raises naming the field otherwise."""
    await _read_both(stage, strict=True)


async def read_pages(stage: CanaryStage) -> dict[Side, Reading]:
    """Both pages as they are now; a page that cannot be read gives the reason instead."""
    return await _read_both(stage, strict=False)


def snapshots_of(readings: dict[Side, Reading]) -> MetricsSnapshots:
    """The readings that could be taken, as the start of the next interval."""
    old, new = readings["old"], readings["new"]
    return MetricsSnapshots(old=None if isinstance(old, str) else old, new=None if isinstance(new, str) else new)
