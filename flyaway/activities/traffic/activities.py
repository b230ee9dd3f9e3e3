"""The canary's activities: check the router, set a weight, run one analysis.

Routers are synchronous and hold no state between calls, so each activity builds the router
from the plan and runs it in a thread while it heartbeats: a worker that dies in the middle of
a weight change (a rollback above all) is noticed within the heartbeat timeout, not the much
longer start-to-close timeout a Route53 change needs. The analysis probes both endpoints, reads
their metrics pages and judges them in one activity, so only the verdict, its numbers and the
pages' totals enter the workflow history, never the raw samples or pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from temporalio import activity

from flyaway.activities.traffic import analyse, probe_both, router_for
from flyaway.activities.traffic.analysis import combine
from flyaway.activities.traffic.analytics import analyse_window, read_lb_requests
from flyaway.activities.traffic.metrics import check_pages, judge_interval, read_pages, snapshots_of
from flyaway.models.canary import (
    AnalysisResult,
    AnalyticsWindow,
    CanaryStage,
    CloudflareRouterConfig,
    MetricsSnapshots,
    PassiveAnalysis,
    WeightChange,
    WeightState,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 5.0
#: the span the router analytics' check asks about: any recent one shows the token, zone and dataset work
ANALYTICS_CHECK_SPAN = timedelta(minutes=5)


async def _heartbeating(work: Awaitable[T]) -> T:
    """Await ``work``, heartbeating every few seconds until it is done."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()


@activity.defn(name="flyaway.traffic.check")
async def check_router(stage: CanaryStage) -> WeightState:
    """The records or pool exist and the credentials may change them; changes nothing, returns the split."""
    return await _heartbeating(asyncio.to_thread(lambda: router_for(stage).check()))


@activity.defn(name="flyaway.traffic.set_weight")
async def set_weight(stage: CanaryStage, new_percent: int) -> WeightChange:
    """Give the new side ``new_percent``: idempotent, read back (the manual router only describes it)."""

    def change() -> WeightChange:
        router = router_for(stage)
        state = router.set_weight(new_percent)
        return WeightChange(state=state, change=router.describe_change(new_percent),
                            propagation_seconds=router.propagation_seconds())

    result = await _heartbeating(asyncio.to_thread(change))
    log.info("canary weight set", new_percent=new_percent, confirmed=result.state.confirmed, change=result.change)
    return result


@activity.defn(name="flyaway.traffic.check_metrics")
async def check_metrics(stage: CanaryStage) -> None:
    """Both metrics pages answer and hold the plan's counter and histogram, and the router's analytics answer
    for its zone; changes nothing. (The check's own clock is fine here: its answer is not kept.)"""
    if stage.analysis.metrics is not None:
        await _heartbeating(check_pages(stage))
    if stage.analysis.router_analytics:
        assert isinstance(stage.router, CloudflareRouterConfig), "the plan's validator requires it"
        now = datetime.now(UTC)
        window = AnalyticsWindow(start=now - ANALYTICS_CHECK_SPAN, end=now)
        await _heartbeating(asyncio.to_thread(read_lb_requests, stage.router, window))


@activity.defn(name="flyaway.traffic.read_metrics")
async def read_metrics(stage: CanaryStage) -> MetricsSnapshots:
    """Both metrics pages now, the start of a step's first interval; a page that cannot be read is None."""
    return snapshots_of(await _heartbeating(read_pages(stage)))


@activity.defn(name="flyaway.traffic.analyse")
async def run_analysis(stage: CanaryStage, baseline: MetricsSnapshots | None = None,
                       window: AnalyticsWindow | None = None) -> AnalysisResult:
    """Probe both endpoints, read their metrics pages and the router's analytics for ``window``, and judge the
    new side against the thresholds.

    The pages are read after the probes, so the interval since ``baseline`` ends now and holds the
    probes' own requests where the metrics count them. ``window`` comes from the workflow's clock.
    """
    assert stage.new_endpoint is not None, "the canary workflow resolves the new endpoint first"
    settings = stage.analysis
    probes: AnalysisResult | None = None
    if settings.probes:
        old_samples, new_samples = await _heartbeating(probe_both(stage.old_endpoint, stage.new_endpoint, settings))
        probes = analyse(old_samples, new_samples, settings.thresholds)
    passive: PassiveAnalysis | None = None
    readings: MetricsSnapshots | None = None
    if settings.metrics is not None:
        passive, readings = judge_interval(baseline, await _heartbeating(read_pages(stage)), settings.thresholds)
    router: PassiveAnalysis | None = None
    if settings.router_analytics and window is not None:
        assert isinstance(stage.router, CloudflareRouterConfig), "the plan's validator requires it"
        router = await _heartbeating(asyncio.to_thread(analyse_window, stage.router, window, settings.thresholds))
    result = combine(probes, passive, readings, router)
    log.info("canary analysis", verdict=result.verdict.value, reasons=result.reasons,
             new_success_rate=result.new.success_rate if result.new else None,
             new_p95_ms=result.new.p95_ms if result.new else None,
             metrics_new_success_rate=passive.new.success_rate if passive and passive.new else None,
             metrics_new_p95_ms=passive.new.p95_ms if passive and passive.new else None,
             router_new_requests=router.new.requests if router and router.new else None)
    return result


TRAFFIC_ACTIVITIES: list[Callable[..., Any]] = [check_router, set_weight, run_analysis, check_metrics, read_metrics]
