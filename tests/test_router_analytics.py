"""Router analytics: Cloudflare Load Balancing request counts (GraphQL Analytics API) as a passive source.

The API is the fake in ``tests/fakes/cloudflare.py``, which executes the queries with
graphql-core against the part of Cloudflare's schema flyaway reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from flyaway.activities.traffic.analysis import combine
from flyaway.activities.traffic.analytics import analyse_window, read_lb_requests
from flyaway.errors import AccessDenied, InvalidPlan
from flyaway.models.canary import (
    AnalysisResult,
    AnalyticsWindow,
    CanaryStage,
    CloudflareRouterConfig,
    SideStats,
    Thresholds,
    Verdict,
)
from flyaway.providers.cloudflare import CloudflareApi
from tests.fakes.cloudflare import FakeCloudflare

ZONE, BALANCER = "zone0123", "lb0123"
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WINDOW = AnalyticsWindow(start=START, end=START + timedelta(seconds=60))


@pytest.fixture
def cloudflare(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as fake:
        fake.tokens = {"read-token-3c1d": "read"}
        fake.add_pool("pool1", [{"name": "fly", "address": "app.fly.dev", "weight": 0.75},
                                {"name": "new", "address": "new.example.net", "weight": 0.25}])
        fake.add_pool("pool2", [{"name": "new", "address": "other.example.net", "weight": 1}])
        fake.add_load_balancer(ZONE, BALANCER, ["pool1"], "pool1")
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "read-token-3c1d")
        yield fake


def config(fake: FakeCloudflare, **overrides: Any) -> CloudflareRouterConfig:
    fields: dict[str, Any] = {"kind": "cloudflare", "account_id": fake.account_id, "pool_id": "pool1",
                              "fly_origin_name": "fly", "new_origin_name": "new", "zone_id": ZONE,
                              "load_balancer_id": BALANCER, "api_base_url": fake.api_base_url}
    return CloudflareRouterConfig(**(fields | overrides))


def test_requests_of_the_window_are_counted_per_origin_of_the_plans_pool(cloudflare: FakeCloudflare) -> None:
    record = cloudflare.record_requests
    record(ZONE, "api.example.com", "pool1", "fly", 30, at=START)  # the window's bounds are inclusive
    record(ZONE, "api.example.com", "pool1", "fly", 45, at=START + timedelta(seconds=60))
    record(ZONE, "api.example.com", "pool1", "new", 25, at=START + timedelta(seconds=20))
    record(ZONE, "api.example.com", "pool1", "new", 500, at=START - timedelta(seconds=1))  # the interval before
    record(ZONE, "api.example.com", "pool1", "new", 500, at=START + timedelta(seconds=61))  # the next one
    record(ZONE, "api.example.com", "pool2", "new", 700, at=START + timedelta(seconds=5))  # another pool
    record(ZONE, "api.example.com", "pool1", "spare", 9, at=START + timedelta(seconds=5))  # another origin

    assert read_lb_requests(config(cloudflare), WINDOW) == (75, 25)
    sent = cloudflare.graphql_queries[-1]
    assert sent["variables"] == {"zoneTag": ZONE, "start": "2026-11-23T12:00:00Z", "end": "2026-11-23T12:01:00Z"}
    assert "loadBalancingRequestsAdaptiveGroups" in sent["query"]


def test_serve_splits_requests_by_the_pools_weights_and_the_analysis_judges_the_counts(
        cloudflare: FakeCloudflare) -> None:
    before = datetime.now(UTC)
    cloudflare.serve(ZONE, BALANCER, 200)
    window = AnalyticsWindow(start=before, end=datetime.now(UTC))
    analysis = analyse_window(config(cloudflare), window, Thresholds(min_requests=20, max_latency_ratio=1.5))

    assert analysis.verdict == Verdict.SUCCESSFUL, analysis.reasons
    assert analysis.new == SideStats(requests=50, successes=None, success_rate=None, p50_ms=None, p95_ms=None,
                                     p99_ms=None)
    assert analysis.old is not None and analysis.old.requests == 150
    # the dataset has no latency: a latency ratio is left to the probes, not made Inconclusive here


def test_a_new_origin_without_traffic_is_inconclusive(cloudflare: FakeCloudflare) -> None:
    cloudflare.record_requests(ZONE, "api.example.com", "pool1", "fly", 400, at=START + timedelta(seconds=10))
    analysis = analyse_window(config(cloudflare), WINDOW, Thresholds(min_requests=20))

    assert analysis.verdict == Verdict.INCONCLUSIVE
    assert analysis.reasons == ["new side had 0 requests, fewer than min_requests 20"]
    assert analysis.new is not None and analysis.new.requests == 0 and analysis.seconds == 60.0
    assert analysis.old is not None and analysis.old.requests == 400


def test_an_errors_answer_is_a_clear_error(cloudflare: FakeCloudflare) -> None:
    api = CloudflareApi(cloudflare.api_base_url, "CLOUDFLARE_API_TOKEN")
    with pytest.raises(InvalidPlan, match=r"Cloudflare analytics rejected the test query \(Cannot query field "
                                          r"'originResponseDurationMs' on type 'LoadBalancingGroup'"):
        api.graphql("{ viewer { zones(filter: {zoneTag: \"zone0123\"}) { loadBalancingRequestsAdaptiveGroups("
                       "limit: 10) { originResponseDurationMs } } } }", {}, "the test query")

    with pytest.raises(AccessDenied) as denied:
        read_lb_requests(config(cloudflare, zone_id="zone-elsewhere"), WINDOW)
    message = str(denied.value)
    assert "does not have access to the path" in message and "$CLOUDFLARE_API_TOKEN" in message
    assert "Analytics: Read" in message and "router.zone_id" in message and "read-token-3c1d" not in message


def test_analytics_that_cannot_be_read_make_the_interval_inconclusive(
        cloudflare: FakeCloudflare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "revoked-token-88aa")
    analysis = analyse_window(config(cloudflare), WINDOW, Thresholds())
    assert analysis.verdict == Verdict.INCONCLUSIVE and analysis.new is None
    assert analysis.reasons[0].startswith("the load balancer's analytics could not be read: Cloudflare analytics "
                                          "refused")
    assert "revoked-token-88aa" not in analysis.reasons[0]


def test_the_router_verdict_joins_the_probes_the_worse_wins(cloudflare: FakeCloudflare) -> None:
    probes = AnalysisResult(verdict=Verdict.SUCCESSFUL, old=None, new=None)
    router = analyse_window(config(cloudflare), WINDOW, Thresholds())  # nothing served: Inconclusive
    result = combine(probes, None, None, router)
    assert result.verdict == Verdict.INCONCLUSIVE and result.router == router
    assert result.reasons == ["router: new side had 0 requests, fewer than min_requests 20"]


@pytest.mark.parametrize("router", [{"kind": "manual"},
                                    {"kind": "cloudflare", "account_id": "a", "pool_id": "p",
                                     "fly_origin_name": "f", "new_origin_name": "n"}])
def test_router_analytics_need_a_cloudflare_load_balancer(router: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"analysis.router_analytics reads Cloudflare Load Balancing "
                                              "analytics: it needs router kind cloudflare with zone_id"):
        CanaryStage.model_validate({"router": router, "old_endpoint": "https://app.fly.dev",
                                    "steps": [{"weight": 100}], "analysis": {"router_analytics": True}})
