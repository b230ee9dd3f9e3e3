"""Traffic routers, probes and canary analysis against local stand-ins.

Route53 runs on a real moto server, Cloudflare on the fake API v4 in ``tests/fakes``, and
the probes on two tiny HTTP servers playing the Fly endpoint and the new one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest
from pydantic import ValidationError

from flyaway.activities.traffic import analyse, probe_both, probe_endpoint, router_for
from flyaway.activities.traffic.analysis import combine
from flyaway.activities.traffic.cloudflare import CloudflareRouter
from flyaway.activities.traffic.manual import ManualRouter
from flyaway.activities.traffic.metrics import (
    check_pages,
    histogram_quantile,
    interval_stats,
    judge_interval,
    parse_page,
    read_pages,
    snapshots_of,
)
from flyaway.activities.traffic.route53 import Route53Router
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound, Unreachable
from flyaway.models.canary import (
    AnalysisSettings,
    CanaryStage,
    CloudflareRouterConfig,
    ManualRouterConfig,
    MetricsSnapshot,
    MetricsSnapshots,
    PassiveAnalysis,
    PassiveMetrics,
    Probe,
    ProbeSample,
    Route53RouterConfig,
    Thresholds,
    Verdict,
    WeightState,
)
from flyaway.starter.dev import free_port, start_moto, stop_process
from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.endpoint import FakeEndpoint, client_traffic
from tests.support.migrations import eventually

STEPS = (5, 25, 50, 100)
RECORD = "api.example.com."


# --- plan validation -----------------------------------------------------------------------

def stage(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "router": {"kind": "manual"},
        "old_endpoint": "https://app.fly.dev",
        "new_endpoint": "https://new.example.net/",
        "steps": [{"weight": 5, "pause_seconds": 60}, {"weight": 50, "wait_for_approval": True}, {"weight": 100}],
    }
    plan.update(overrides)
    return plan


def test_a_valid_stage_parses_with_defaults_close_to_flagger() -> None:
    parsed = CanaryStage.model_validate(stage(analysis={"probes": [{"path": "/v1/completions", "method": "POST",
                                                                    "body": {"prompt": "hi"}, "expected_status": 200}]}))
    assert parsed.new_endpoint == "https://new.example.net"
    assert parsed.analysis.thresholds.min_success_rate == 99.0
    assert parsed.analysis.thresholds.max_p99_ms == 500.0
    assert parsed.analysis.probes[0].expected_status == [200]
    assert "router" in json.dumps(CanaryStage.model_json_schema())


@pytest.mark.parametrize(("steps", "message"), [
    ([{"weight": 5}, {"weight": 50}], "steps[1].weight is 50, not 100"),
    ([{"weight": 50}, {"weight": 25}, {"weight": 100}], "steps[1].weight 25 follows 50"),
    ([{"weight": 50}, {"weight": 50}, {"weight": 100}], "must rise strictly"),
    ([{"weight": 5}, {"weight": 150}], "less than or equal to 100"),
    ([], "at least 1 item"),
])
def test_bad_weights_are_rejected_naming_the_steps(steps: list[dict[str, int]], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CanaryStage.model_validate(stage(steps=steps))
    assert message in str(info.value)
    assert "steps" in str(info.value)


@pytest.mark.parametrize(("thresholds", "field"), [
    ({"min_success_rate": 120}, "min_success_rate"),
    ({"min_requests": 0}, "min_requests"),
    ({"max_p99_ms": -1}, "max_p99_ms"),
    ({"max_latency_ratio": 0}, "max_latency_ratio"),
])
def test_thresholds_out_of_range_are_rejected(thresholds: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CanaryStage.model_validate(stage(analysis={"thresholds": thresholds}))
    assert f"analysis.thresholds.{field}" in str(info.value)


@pytest.mark.parametrize(("router", "message"), [
    ({"kind": "nginx"}, "does not match any of the expected tags"),
    ({"kind": "route53", "hosted_zone_id": "Z1", "record_name": "a.example.com",
      "fly_set_identifier": "x", "new_set_identifier": "x"}, "must differ"),
    ({"kind": "cloudflare", "account_id": "a", "pool_id": "p", "fly_origin_name": "f", "new_origin_name": "n",
      "zone_id": "z"}, "router.zone_id and router.load_balancer_id go together"),
    ({"kind": "cloudflare", "account_id": "a", "pool_id": "p", "fly_origin_name": "f", "new_origin_name": "n",
      "token_env": "my token"}, "not an environment variable name"),
])
def test_bad_routers_are_rejected(router: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CanaryStage.model_validate(stage(router=router))
    assert message in str(info.value)


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "Cookie"])
def test_probe_headers_hold_no_secret_values(header: str) -> None:
    with pytest.raises(ValidationError, match="headers_from_env"):
        Probe(headers={header: "sk-live-123"})


def test_endpoints_must_be_http_base_urls() -> None:
    with pytest.raises(ValidationError, match="new_endpoint"):
        CanaryStage.model_validate(stage(new_endpoint="new.example.net"))


# --- Route53 on moto -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server of this module's own: one test switches its authentication on and off."""
    port = free_port()
    with (tmp_path_factory.mktemp("moto") / "moto.log").open("wb") as log:
        process = start_moto(port, log)
    yield f"http://127.0.0.1:{port}"
    stop_process(process)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def aws_client(moto_url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def zone(moto_url: str, aws_env: None) -> str:
    """A fresh hosted zone with the Fly record at weight 100 and the new one at 0."""
    client = aws_client(moto_url, "route53")
    zone_id = client.create_hosted_zone(Name="example.com.", CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
    changes = [{"Action": "CREATE", "ResourceRecordSet": {
        "Name": RECORD, "Type": "CNAME", "SetIdentifier": identifier, "Weight": weight, "TTL": 60,
        "ResourceRecords": [{"Value": target}]}}
        for identifier, weight, target in (("fly", 100, "app.fly.dev"), ("new", 0, "new.example.net"))]
    client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    return zone_id


def route53_config(moto_url: str, zone_id: str, **overrides: Any) -> Route53RouterConfig:
    fields: dict[str, Any] = {"kind": "route53", "hosted_zone_id": zone_id, "record_name": "API.example.com",
                              "fly_set_identifier": "fly", "new_set_identifier": "new", "endpoint_url": moto_url}
    return Route53RouterConfig(**(fields | overrides))


def record_sets(moto_url: str, zone_id: str) -> dict[str, dict[str, Any]]:
    listed = aws_client(moto_url, "route53").list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {r["SetIdentifier"]: r for r in listed if r["Name"] == RECORD}


def counting_client(moto_url: str) -> tuple[Any, list[dict[str, Any]]]:
    """A Route53 client that records every ChangeResourceRecordSets it sends."""
    client = aws_client(moto_url, "route53")
    changes: list[dict[str, Any]] = []
    client.meta.events.register("provide-client-params.route53.ChangeResourceRecordSets",
                                lambda params, **_: changes.append(params))
    return client, changes


def test_route53_moves_through_the_steps_and_reads_back(moto_url: str, zone: str) -> None:
    router = Route53Router(route53_config(moto_url, zone))
    assert router.check() == WeightState(new_weight=0, old_weight=100, confirmed=True)
    for weight in STEPS:
        assert router.set_weight(weight) == WeightState(new_weight=weight, old_weight=100 - weight, confirmed=True)
        records = record_sets(moto_url, zone)
        assert (records["new"]["Weight"], records["fly"]["Weight"]) == (weight, 100 - weight)
        assert router.get_weight().new_weight == weight
    assert records["new"]["ResourceRecords"] == [{"Value": "new.example.net"}]
    assert router.propagation_seconds() == 60
    assert router.set_weight(0).new_weight == 0  # a rollback is just another weight


def test_route53_set_weight_is_idempotent(moto_url: str, zone: str) -> None:
    client, changes = counting_client(moto_url)
    router = Route53Router(route53_config(moto_url, zone), client=client)
    router.set_weight(25)
    router.set_weight(25)
    assert len(changes) == 1
    assert {c["ResourceRecordSet"]["SetIdentifier"]: c["ResourceRecordSet"]["Weight"]
            for c in changes[0]["ChangeBatch"]["Changes"]} == {"fly": 75, "new": 25}


def test_route53_writes_the_plan_ttl_and_waits_it_out(moto_url: str, zone: str) -> None:
    router = Route53Router(route53_config(moto_url, zone, ttl=30))
    router.set_weight(5)
    assert {r["TTL"] for r in record_sets(moto_url, zone).values()} == {30}
    assert router.propagation_seconds() == 30


def test_route53_missing_record_is_not_found_before_any_change(moto_url: str, zone: str) -> None:
    client, changes = counting_client(moto_url)
    router = Route53Router(route53_config(moto_url, zone, new_set_identifier="canary"), client=client)
    with pytest.raises(NotFound, match=r"router\.new_set_identifier.*'canary'.*\['fly', 'new'\]"):
        router.check()
    with pytest.raises(NotFound):
        router.set_weight(5)
    assert changes == []
    assert record_sets(moto_url, zone)["fly"]["Weight"] == 100


def test_route53_missing_zone_is_not_found(moto_url: str, aws_env: None) -> None:
    with pytest.raises(NotFound, match=r"router\.hosted_zone_id"):
        Route53Router(route53_config(moto_url, "/hostedzone/ZNOSUCHZONE")).check()


def test_route53_without_rights_is_access_denied_before_any_change(moto_url: str, zone: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    iam = aws_client(moto_url, "iam")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["route53:List*", "route53:Get*"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("READER_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("READER_SECRET", key["SecretAccessKey"])
    router = Route53Router(route53_config(moto_url, zone, access_key_id_env="READER_KEY_ID",
                                          secret_access_key_env="READER_SECRET"))
    httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with pytest.raises(AccessDenied, match="Route53 refused"):
            router.check()
    finally:
        httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert record_sets(moto_url, zone)["new"]["Weight"] == 0


def test_route53_unset_credentials_are_missing(moto_url: str, zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(MissingCredentials, match="AWS_SECRET_ACCESS_KEY"):
        Route53Router(route53_config(moto_url, zone))


# --- Cloudflare on the fake API ------------------------------------------------------------

@pytest.fixture
def cloudflare(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as fake:
        fake.tokens = {"write-token-9f2e": "write", "read-token-7a1c": "read"}
        fake.add_pool("pool1", [
            {"name": "fly", "address": "app.fly.dev", "weight": 1, "enabled": True},
            {"name": "new", "address": "new.example.net", "weight": 1, "enabled": False},
            {"name": "spare", "address": "203.0.113.7", "weight": 0.5, "enabled": False,
             "header": {"Host": ["app.example.com"]}},
        ])
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "write-token-9f2e")
        yield fake


def cloudflare_config(fake: FakeCloudflare, **overrides: Any) -> CloudflareRouterConfig:
    fields: dict[str, Any] = {"kind": "cloudflare", "account_id": fake.account_id, "pool_id": "pool1",
                              "fly_origin_name": "fly", "new_origin_name": "new", "api_base_url": fake.api_base_url}
    return CloudflareRouterConfig(**(fields | overrides))


def test_cloudflare_moves_through_the_steps_and_reads_back(cloudflare: FakeCloudflare) -> None:
    router = CloudflareRouter(cloudflare_config(cloudflare))
    assert router.check() == WeightState(new_weight=0, old_weight=100, confirmed=True)  # "new" is disabled
    for weight in STEPS:
        assert router.set_weight(weight) == WeightState(new_weight=weight, old_weight=100 - weight, confirmed=True)
        assert cloudflare.origin("pool1", "new")["weight"] == weight / 100
        assert cloudflare.origin("pool1", "fly")["weight"] == (100 - weight) / 100
    assert cloudflare.origin("pool1", "new")["enabled"] is True
    spare = cloudflare.origin("pool1", "spare")
    assert (spare["enabled"], spare["weight"], spare["header"]) == (False, 0.5, {"Host": ["app.example.com"]})
    assert router.propagation_seconds() == 0


def test_cloudflare_set_weight_is_idempotent_and_survives_a_503(cloudflare: FakeCloudflare) -> None:
    router = CloudflareRouter(cloudflare_config(cloudflare))
    cloudflare.fail_next = 1
    router.set_weight(50)
    router.set_weight(50)
    assert len(cloudflare.writes) == 1
    assert router.get_weight().new_weight == 50


@pytest.mark.parametrize("token", ["wrong-token-0000", "read-token-7a1c"])
def test_cloudflare_token_without_rights_is_access_denied_before_any_change(
        cloudflare: FakeCloudflare, monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", token)
    router = CloudflareRouter(cloudflare_config(cloudflare))
    with pytest.raises(AccessDenied, match=r"\$CLOUDFLARE_API_TOKEN") as info:
        router.check()
    assert token not in str(info.value)
    assert cloudflare.writes == []
    assert cloudflare.origin("pool1", "fly")["weight"] == 1


@pytest.mark.parametrize(("overrides", "field"), [
    ({"pool_id": "nosuchpool"}, "router.pool_id"),
    ({"account_id": "someoneelse"}, "router.account_id"),
    ({"new_origin_name": "modal"}, "router.new_origin_name"),
])
def test_cloudflare_missing_pool_or_origin_is_not_found(cloudflare: FakeCloudflare, overrides: dict[str, str],
                                                        field: str) -> None:
    router = CloudflareRouter(cloudflare_config(cloudflare, **overrides))
    with pytest.raises(NotFound, match=field):
        router.check()
    with pytest.raises(NotFound):
        router.set_weight(5)
    assert cloudflare.writes == []


def test_cloudflare_load_balancer_must_serve_the_pool(cloudflare: FakeCloudflare) -> None:
    cloudflare.add_load_balancer("zone1", "lb1", default_pools=["pool1"], fallback_pool="pool1",
                                 proxied=False, ttl=30)
    cloudflare.add_load_balancer("zone1", "lb2", default_pools=["other"], fallback_pool="other")
    router = CloudflareRouter(cloudflare_config(cloudflare, zone_id="zone1", load_balancer_id="lb1"))
    assert router.check().new_weight == 0
    assert router.propagation_seconds() == 30  # grey-clouded: DNS answers live for the TTL
    with pytest.raises(InvalidPlan, match="does not use pool pool1"):
        CloudflareRouter(cloudflare_config(cloudflare, zone_id="zone1", load_balancer_id="lb2")).check()
    with pytest.raises(NotFound, match=r"router.load_balancer_id"):
        CloudflareRouter(cloudflare_config(cloudflare, zone_id="zone1", load_balancer_id="lb9")).check()


def test_cloudflare_pool_with_other_live_origins_is_refused(cloudflare: FakeCloudflare) -> None:
    cloudflare.origin("pool1", "spare")["enabled"] = True
    with pytest.raises(InvalidPlan, match=r"other origins too \(spare\)"):
        CloudflareRouter(cloudflare_config(cloudflare)).check()


def test_cloudflare_unset_token_is_missing(cloudflare: FakeCloudflare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN")
    with pytest.raises(MissingCredentials, match="CLOUDFLARE_API_TOKEN"):
        CloudflareRouter(cloudflare_config(cloudflare))


# --- manual router and the factory ---------------------------------------------------------

def test_manual_router_describes_the_exact_change() -> None:
    config = ManualRouterConfig(kind="manual", instructions="Edit haproxy.cfg: new {new_weight}, fly {old_weight}")
    router = ManualRouter(config, "https://app.fly.dev", "https://new.example.net")
    text = router.describe_change(25)
    assert "25% of traffic to the new endpoint https://new.example.net" in text
    assert "75% to the Fly endpoint https://app.fly.dev" in text
    assert "Edit haproxy.cfg: new 25, fly 75" in text
    assert router.set_weight(25) == WeightState(new_weight=25, old_weight=75, confirmed=False)


def test_router_for_builds_the_router_the_plan_names(cloudflare: FakeCloudflare) -> None:
    assert isinstance(router_for(CanaryStage.model_validate(stage())), ManualRouter)
    cf = CanaryStage.model_validate(stage(router=cloudflare_config(cloudflare).model_dump()))
    assert isinstance(router_for(cf), CloudflareRouter)


# --- probes and analysis -------------------------------------------------------------------

@pytest.fixture
def endpoints() -> Iterator[tuple[FakeEndpoint, FakeEndpoint]]:
    with FakeEndpoint() as old, FakeEndpoint() as new:
        yield old, new


def settings(**overrides: Any) -> AnalysisSettings:
    fields: dict[str, Any] = {
        "requests_per_probe": 40, "concurrency": 8,
        "probes": [{"path": "/v1/completions", "method": "POST", "body": {"prompt": "hi", "max_tokens": 1}}],
        "thresholds": {"min_requests": 20, "min_success_rate": 99, "max_p99_ms": 1000}}
    return AnalysisSettings.model_validate(fields | overrides)


def run_analysis(old: FakeEndpoint, new: FakeEndpoint, analysis: AnalysisSettings) -> Any:
    old_samples, new_samples = asyncio.run(probe_both(old.endpoint, new.endpoint, analysis))
    return analyse(old_samples, new_samples, analysis.thresholds)


def test_healthy_new_side_is_successful(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    result = run_analysis(old, new, settings())
    assert result.verdict == Verdict.SUCCESSFUL, result.reasons
    assert (result.new.requests, result.new.success_rate) == (40, 100.0)
    assert (old.requests, new.requests) == (40, 40)
    assert result.new.p50_ms is not None and result.new.p50_ms <= result.new.p95_ms <= result.new.p99_ms


def test_new_side_failing_20_percent_fails(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    new.mode = "failing"
    result = run_analysis(old, new, settings())
    assert result.verdict == Verdict.FAILED
    assert (result.new.success_rate, result.old.success_rate) == (80.0, 100.0)
    assert "below min_success_rate 99.0%" in result.reasons[0]


def test_slow_new_side_fails_on_latency_and_on_ratio(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    new.mode, new.slow_seconds = "slow", 0.25
    quick = {"requests_per_probe": 24, "concurrency": 12}
    absolute = run_analysis(old, new, settings(**quick, thresholds={"min_requests": 20, "max_p95_ms": 150}))
    assert absolute.verdict == Verdict.FAILED
    assert any("p95 latency" in reason and "max_p95_ms 150" in reason for reason in absolute.reasons)
    new.slow_seconds = 0.6  # far above what a loaded machine adds to the old side's latency
    relative = run_analysis(old, new, settings(**quick, thresholds={"min_requests": 20, "max_p99_ms": None,
                                                                    "max_latency_ratio": 2}))
    assert relative.verdict == Verdict.FAILED
    assert "above max_latency_ratio 2" in relative.reasons[0]


def test_too_few_requests_is_inconclusive_even_when_healthy(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    result = run_analysis(old, new, settings(requests_per_probe=5))
    assert result.verdict == Verdict.INCONCLUSIVE
    assert "5 requests, fewer than min_requests 20" in result.reasons[0]


def test_unreachable_or_timing_out_new_side_fails(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    probe = Probe(path="/health")
    refused = asyncio.run(probe_endpoint(f"http://127.0.0.1:{free_port()}", probe, 20, 4))
    assert all(s.status is None and not s.ok and "ConnectError" in (s.error or "") for s in refused)
    new.mode, new.slow_seconds = "slow", 0.3
    timed_out = asyncio.run(probe_endpoint(new.endpoint, Probe(path="/health", timeout_seconds=0.05), 20, 10))
    assert all("Timeout" in (s.error or "") for s in timed_out)
    old_samples = asyncio.run(probe_endpoint(old.endpoint, probe, 20, 4))
    assert analyse(old_samples, refused, Thresholds()).verdict == Verdict.FAILED


def test_probe_tokens_come_from_the_environment(endpoints: tuple[FakeEndpoint, FakeEndpoint],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    old, _ = endpoints
    probe = Probe(bearer_token_env="PROBE_TOKEN", headers={"X-Probe": "flyaway"},
                  headers_from_env={"X-Tenant": "PROBE_TENANT"})
    monkeypatch.setenv("PROBE_TENANT", "acme")
    with pytest.raises(MissingCredentials, match=r"\$PROBE_TOKEN"):
        asyncio.run(probe_endpoint(old.endpoint, probe, 1, 1))
    monkeypatch.setenv("PROBE_TOKEN", "tok-5e3a-secret")
    samples = asyncio.run(probe_endpoint(old.endpoint, probe, 1, 1))
    assert samples[0].ok
    assert old.last_headers["Authorization"] == "Bearer tok-5e3a-secret"
    assert (old.last_headers["X-Probe"], old.last_headers["X-Tenant"]) == ("flyaway", "acme")


def samples(latencies: list[float], ok: bool = True) -> list[ProbeSample]:
    return [ProbeSample(status=200 if ok else 503, latency_ms=ms, ok=ok) for ms in latencies]


def test_analyse_percentiles_and_verdict_order() -> None:
    hundred = samples([float(ms) for ms in range(1, 101)])
    result = analyse(hundred, hundred, Thresholds(max_p99_ms=None))
    assert (result.new.p50_ms, result.new.p95_ms, result.new.p99_ms) == (50.5, 95.0, 99.0)
    assert result.verdict == Verdict.SUCCESSFUL
    # the old side failing entirely leaves no latency to compare with: Inconclusive, not Successful
    no_baseline = analyse(samples([10.0] * 30, ok=False), samples([10.0] * 30), Thresholds(max_latency_ratio=1.5))
    assert no_baseline.verdict == Verdict.INCONCLUSIVE
    assert "old side gave 0 successful answers" in no_baseline.reasons[0]
    # a broken threshold wins over an inconclusive comparison
    slow = analyse(samples([10.0] * 30, ok=False), samples([900.0] * 30), Thresholds(max_latency_ratio=1.5))
    assert slow.verdict == Verdict.FAILED


# --- passive metrics: the histogram math ------------------------------------------------------

def snapshot(requests: float, successes: float, buckets: list[float], count: float, at: float = 0.0,
             bounds: list[float] | None = None, started: float | None = 1.0) -> MetricsSnapshot:
    return MetricsSnapshot(taken_at=datetime.fromtimestamp(at, UTC), requests=requests, successes=successes,
                           bounds=[0.1, 0.5, 1.0] if bounds is None else bounds, buckets=buckets, count=count,
                           process_started=started)


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds, buckets = [0.1, 0.5, 1.0], [10.0, 60.0, 90.0]
    assert histogram_quantile(0.5, bounds, buckets, 100) == pytest.approx(0.1 + 0.4 * 40 / 50)  # in (0.1, 0.5]
    assert histogram_quantile(0.05, bounds, buckets, 100) == pytest.approx(0.05)  # the first bucket starts at 0
    assert histogram_quantile(0.95, bounds, buckets, 100) == 1.0  # in +Inf: the highest finite bound
    assert histogram_quantile(0.99, bounds, [0.0, 0.0, 0.0], 0) is None
    assert histogram_quantile(0.5, [-1.0, 1.0], [4.0, 4.0], 4) == -1.0  # a first bound <= 0 is the answer itself


def test_interval_stats_are_the_difference_of_two_readings() -> None:
    start = snapshot(100, 99, [50, 90, 100], 100, at=0)
    end = snapshot(200, 179, [60, 150, 200], 200, at=60)  # 100 requests: 10 <= 0.1 s, 50 more <= 0.5 s, 40 <= 1 s
    stats = interval_stats(start, end)
    assert stats is not None
    assert (stats.requests, stats.successes, stats.success_rate) == (100, 80, 80.0)
    # the interval's buckets, not the totals (whose median is in the first bucket)
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (100 + 400 * 40 / 50, 500 + 500 * 35 / 40,
                                                          500 + 500 * 39 / 40)
    quiet = interval_stats(end, end)
    assert quiet is not None and (quiet.requests, quiet.success_rate, quiet.p99_ms) == (0, None, None)
    first_series = interval_stats(snapshot(0, 0, [], 0, bounds=[]), snapshot(10, 10, [10, 10, 10], 10))
    assert first_series is not None and first_series.requests == 10  # buckets that had no series yet count as 0


@pytest.mark.parametrize("end", [
    snapshot(5, 5, [5, 5, 5], 5),  # counters went down: the server restarted
    snapshot(300, 280, [60, 150, 300], 300, started=2.0),  # higher again already, but a new process
    snapshot(300, 280, [60, 150, 300], 300, bounds=[0.2, 0.5, 1.0]),  # other buckets
    snapshot(300, 280, [40, 150, 300], 300),  # one bucket went down
])
def test_a_reset_between_readings_is_not_measured(end: MetricsSnapshot) -> None:
    assert interval_stats(snapshot(200, 179, [60, 150, 200], 200), end) is None


def test_passive_verdicts_inconclusive_without_traffic_or_after_a_reset() -> None:
    thresholds = Thresholds(min_requests=20, max_p99_ms=2000)
    healthy = snapshot(100, 100, [100, 100, 100], 100, at=60)
    baseline = MetricsSnapshots(old=snapshot(0, 0, [0, 0, 0], 0), new=snapshot(0, 0, [0, 0, 0], 0))
    passed, following = judge_interval(baseline, {"old": healthy, "new": healthy}, thresholds)
    assert (passed.verdict, passed.seconds, passed.new and passed.new.requests) == (Verdict.SUCCESSFUL, 60.0, 100)
    assert following == MetricsSnapshots(old=healthy, new=healthy)

    idle, _ = judge_interval(following, {"old": healthy, "new": healthy}, thresholds)
    assert idle.verdict == Verdict.INCONCLUSIVE
    assert idle.reasons == ["new side had 0 requests, fewer than min_requests 20"]

    restarted = snapshot(30, 30, [30, 30, 30], 30, at=120, started=2.0)
    reset, following = judge_interval(following, {"old": healthy, "new": restarted}, thresholds)
    assert reset.verdict == Verdict.INCONCLUSIVE and reset.new is None
    assert "the new side's counters went down or its process restarted" in reset.reasons[0]
    assert following.new == restarted  # the next interval starts at the restarted server's reading

    unread, kept = judge_interval(following, {"old": healthy, "new": "ConnectError: refused"}, thresholds)
    assert unread.verdict == Verdict.INCONCLUSIVE
    assert unread.reasons == ["the new side's metrics could not be read: ConnectError: refused"]
    assert kept.new == restarted  # kept: the next interval spans this one too

    failing = snapshot(130, 110, [130, 130, 130], 130, at=180, started=2.0)
    failed, _ = judge_interval(kept, {"old": "HTTP 503", "new": failing}, thresholds)
    assert failed.verdict == Verdict.FAILED  # a broken threshold counts even without the old side
    assert "success rate 80.0% is below min_success_rate 99.0% (80/100)" in failed.reasons[0]


def test_analysis_takes_the_worse_of_probes_and_metrics() -> None:
    hundred = samples([10.0] * 100)
    probes = analyse(hundred, hundred, Thresholds())
    passive = PassiveAnalysis(verdict=Verdict.INCONCLUSIVE, old=None, new=None, reasons=["no earlier reading"])
    both = combine(probes, passive, None)
    assert (both.verdict, both.reasons, both.new) == (Verdict.INCONCLUSIVE, ["metrics: no earlier reading"],
                                                     probes.new)
    failed = combine(analyse(hundred, samples([10.0] * 100, ok=False), Thresholds()), passive, None)
    assert failed.verdict == Verdict.FAILED and failed.reasons[-1] == "metrics: no earlier reading"
    alone = combine(None, passive.model_copy(update={"verdict": Verdict.SUCCESSFUL, "reasons": []}), None)
    assert (alone.verdict, alone.old, alone.new) == (Verdict.SUCCESSFUL, None, None)


# --- passive metrics: pages ---------------------------------------------------------------------

INSTRUMENTATOR_PAGE = """\
# HELP http_requests_total Total number of requests by method, status and handler.
# TYPE http_requests_total counter
http_requests_total{handler="/v1/completions",method="POST",status="2xx"} 95.0
http_requests_total{handler="/v1/completions",method="POST",status="5xx"} 5.0
http_requests_total{handler="/health",method="GET",status="2xx"} 1000.0
# HELP http_request_duration_seconds Latency with only few buckets by handler.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/v1/completions",le="0.1",method="POST"} 40.0
http_request_duration_seconds_bucket{handler="/v1/completions",le="1.0",method="POST"} 100.0
http_request_duration_seconds_bucket{handler="/v1/completions",le="+Inf",method="POST"} 100.0
http_request_duration_seconds_count{handler="/v1/completions",method="POST"} 100.0
http_request_duration_seconds_sum{handler="/v1/completions",method="POST"} 20.0
http_request_duration_seconds_bucket{handler="/health",le="0.1",method="GET"} 1000.0
http_request_duration_seconds_bucket{handler="/health",le="1.0",method="GET"} 1000.0
http_request_duration_seconds_bucket{handler="/health",le="+Inf",method="GET"} 1000.0
"""
INSTRUMENTATOR = PassiveMetrics(requests_counter="http_requests_total", outcome_label="status", success_values="2xx",
                                latency_histogram="http_request_duration_seconds",
                                match_labels={"handler": "/v1/completions"})


def test_a_generic_instrumented_page_with_label_selection() -> None:
    reading = parse_page(INSTRUMENTATOR_PAGE, INSTRUMENTATOR, datetime.now(UTC))
    assert (reading.requests, reading.successes, reading.count) == (100.0, 95.0, 100.0)  # /health left out
    assert (reading.bounds, reading.buckets, reading.process_started) == ([0.1, 1.0], [40.0, 100.0], None)
    with pytest.raises(InvalidPlan, match=r"canary\.analysis\.metrics\.latency_histogram: 'vllm:e2e_request_latency"
                                          r"_seconds' is not on the page"):
        parse_page(INSTRUMENTATOR_PAGE, INSTRUMENTATOR.model_copy(update={
            "latency_histogram": "vllm:e2e_request_latency_seconds"}), datetime.now(UTC))
    with pytest.raises(InvalidPlan, match=r"metrics\.latency_histogram: 'http_requests_total' is a counter"):
        parse_page(INSTRUMENTATOR_PAGE, INSTRUMENTATOR.model_copy(update={"latency_histogram": "http_requests_total"}),
                   datetime.now(UTC))
    with pytest.raises(InvalidPlan, match=r"metrics\.requests_counter: 'vllm:request_success_total' is not on"):
        parse_page(INSTRUMENTATOR_PAGE, PassiveMetrics(latency_histogram="http_request_duration_seconds"),
                   datetime.now(UTC))


def metrics_stage(endpoints: tuple[FakeEndpoint, FakeEndpoint], **metrics: Any) -> CanaryStage:
    """A stage judged by the two endpoints' metrics pages alone."""
    return CanaryStage.model_validate(stage(old_endpoint=endpoints[0].endpoint, new_endpoint=endpoints[1].endpoint,
                                            analysis={"probes": [], "metrics": metrics}))


def test_fake_endpoints_pages_judge_the_traffic_they_served(endpoints: tuple[FakeEndpoint, FakeEndpoint]) -> None:
    old, new = endpoints
    passive_stage = metrics_stage(endpoints)
    thresholds = Thresholds(min_requests=20, max_p99_ms=1000)
    baseline = snapshots_of(asyncio.run(read_pages(passive_stage)))
    with client_traffic(old, new):
        eventually(lambda: new.requests >= 40 and old.requests >= 40, 10, interval=0.05)
    healthy, baseline = judge_interval(baseline, asyncio.run(read_pages(passive_stage)), thresholds)
    assert healthy.verdict == Verdict.SUCCESSFUL, healthy.reasons
    assert healthy.new is not None and healthy.new.requests == new.requests and healthy.new.success_rate == 100.0
    assert healthy.new.p99_ms is not None and healthy.new.p99_ms <= 300  # every answer in vLLM's first bucket

    new.mode = "failing"
    with client_traffic(old, new):
        eventually(lambda: new.requests >= 100, 10, interval=0.05)
    failing, baseline = judge_interval(baseline, asyncio.run(read_pages(passive_stage)), thresholds)
    assert failing.verdict == Verdict.FAILED
    assert failing.new is not None and 75 <= (failing.new.success_rate or 0) <= 85

    new.restart()
    with client_traffic(new):
        eventually(lambda: new.requests >= 130, 10, interval=0.05)
    after_restart, _ = judge_interval(baseline, asyncio.run(read_pages(passive_stage)), thresholds)
    assert after_restart.verdict == Verdict.INCONCLUSIVE and after_restart.new is None
    assert "process restarted" in after_restart.reasons[0]


def test_metrics_pages_are_checked_before_the_canary_naming_the_field(
        endpoints: tuple[FakeEndpoint, FakeEndpoint], monkeypatch: pytest.MonkeyPatch) -> None:
    new = endpoints[1]
    asyncio.run(check_pages(metrics_stage(endpoints)))
    with pytest.raises(InvalidPlan, match=r"canary\.analysis\.metrics: the page is not in the Prometheus text "
                                          r"format .*\(http://.*/v1/models\)"):  # the fake answers JSON there
        asyncio.run(check_pages(metrics_stage(endpoints, new={"url": f"{new.endpoint}/v1/models"})))
    with pytest.raises(Unreachable, match=r"canary\.analysis\.metrics\.old: .* did not answer"):
        asyncio.run(check_pages(metrics_stage(endpoints, old={"url": f"http://127.0.0.1:{free_port()}/metrics"})))
    with pytest.raises(InvalidPlan, match=r"metrics\.latency_histogram: 'vllm:e2e_latency' is not on the page"):
        asyncio.run(check_pages(metrics_stage(endpoints, latency_histogram="vllm:e2e_latency")))
    with pytest.raises(MissingCredentials, match=r"metrics page header 'Authorization': \$METRICS_TOKEN"):
        asyncio.run(check_pages(metrics_stage(endpoints, new={"bearer_token_env": "METRICS_TOKEN"})))
    monkeypatch.setenv("METRICS_TOKEN", "metrics-token-42c1")
    asyncio.run(check_pages(metrics_stage(endpoints, new={"bearer_token_env": "METRICS_TOKEN"})))
    assert new.page_headers["Authorization"] == "Bearer metrics-token-42c1"


@pytest.mark.parametrize(("analysis", "message"), [
    ({"probes": []}, "analysis.probes is empty and analysis.metrics is not set"),
    ({"metrics": {"new": {"headers": {"Authorization": "Bearer x"}}}}, "headers_from_env"),
    ({"metrics": {"latency_histogram": "e2e latency"}}, "not a Prometheus metric name"),
    ({"metrics": {"success_values": "stop|("}}, "not a regular expression"),
    ({"metrics": {"new": {"url": "metrics.example.net"}}}, "not an http(s) URL"),
])
def test_bad_metrics_sections_are_rejected(analysis: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        CanaryStage.model_validate(stage(analysis=analysis))
