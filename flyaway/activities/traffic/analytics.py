"""Router analytics: how many requests the Cloudflare load balancer sent each origin in an interval.

Cloudflare's GraphQL Analytics API keeps Load Balancing requests per zone in the
``loadBalancingRequestsAdaptiveGroups`` dataset: a ``count`` per group of dimensions, among
them the pool and the origin the balancer selected. The dataset has no origin response status
and no request latency, so this source gives each side's request count only: its success rate
and percentiles stay None and the thresholds on them (and ``max_latency_ratio``) are left to
the probes and the metrics pages. What it adds is ``min_requests`` over the traffic clients
really sent: a new origin the balancer hardly uses is Inconclusive, never Successful.

The interval comes from the workflow's clock (:class:`AnalyticsWindow`), so a replayed
workflow asks about the same span. The dataset is sampled (the counts are Cloudflare's
estimates) and lags real time by a minute or so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from flyaway.activities.traffic.analysis import judge
from flyaway.errors import FlyawayError
from flyaway.models.canary import (
    AnalyticsWindow,
    CloudflareRouterConfig,
    PassiveAnalysis,
    SideStats,
    Thresholds,
    Verdict,
)
from flyaway.providers.cloudflare import CloudflareApi
from flyaway.redaction import scrub

#: one group per (pool, origin) pair of the zone: far fewer than the limit of 1000
LB_REQUESTS_QUERY = """
query LoadBalancerRequests($zoneTag: string, $start: Time, $end: Time) {
  viewer {
    zones(filter: {zoneTag: $zoneTag}) {
      loadBalancingRequestsAdaptiveGroups(limit: 1000, filter: {datetime_geq: $start, datetime_leq: $end}) {
        count
        dimensions { selectedPoolId selectedOriginName }
      }
    }
  }
}
"""


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def query_variables(config: CloudflareRouterConfig, window: AnalyticsWindow) -> dict[str, Any]:
    return {"zoneTag": config.zone_id, "start": _timestamp(window.start), "end": _timestamp(window.end)}


def origin_counts(config: CloudflareRouterConfig, data: dict[str, Any]) -> tuple[int, int]:
    """The (old, new) requests of the plan's pool in a query's ``data``; other pools and origins are left out."""
    zones = (data.get("viewer") or {}).get("zones") or []
    counts = {config.fly_origin_name: 0, config.new_origin_name: 0}
    for zone in zones:
        for group in zone.get("loadBalancingRequestsAdaptiveGroups") or []:
            dimensions = group.get("dimensions") or {}
            origin = dimensions.get("selectedOriginName")
            if dimensions.get("selectedPoolId") == config.pool_id and origin in counts:
                counts[origin] += int(group.get("count") or 0)
    return counts[config.fly_origin_name], counts[config.new_origin_name]


def judge_counts(old: int, new: int, window: AnalyticsWindow, thresholds: Thresholds) -> PassiveAnalysis:
    """The interval's verdict from request counts alone: ``min_requests`` decides between Inconclusive and
    Successful; thresholds on what the dataset does not hold (success rate, latency) are not judged here."""
    old_stats, new_stats = (SideStats(requests=count, successes=None, success_rate=None, p50_ms=None, p95_ms=None,
                                      p99_ms=None) for count in (old, new))
    verdict, reasons = judge(new_stats, old_stats, thresholds.model_copy(update={"max_latency_ratio": None}))
    return PassiveAnalysis(verdict=verdict, old=old_stats, new=new_stats,
                           seconds=window.seconds, reasons=reasons)


def read_lb_requests(config: CloudflareRouterConfig, window: AnalyticsWindow) -> tuple[int, int]:
    """The (old, new) requests the load balancer sent the pool's two origins in ``window``; blocking."""
    data = CloudflareApi(config.api_base_url, config.token_env).graphql(
        LB_REQUESTS_QUERY, query_variables(config, window),
        f"the load balancing requests of zone {config.zone_id} (router.zone_id)")
    return origin_counts(config, data)


def analyse_window(config: CloudflareRouterConfig, window: AnalyticsWindow, thresholds: Thresholds) -> PassiveAnalysis:
    """The verdict of the load balancer's analytics on ``window``; Inconclusive when they cannot be read."""
    try:
        old, new = read_lb_requests(config, window)
    except (FlyawayError, httpx.HTTPError) as error:
        return PassiveAnalysis(verdict=Verdict.INCONCLUSIVE, old=None, new=None,
                               seconds=window.seconds,
                               reasons=[f"the load balancer's analytics could not be read: {scrub(str(error))}"])
    return judge_counts(old, new, window, thresholds)
