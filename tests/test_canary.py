"""The canary stage end to end: a migration on the Temporal dev server moves traffic through its steps.

Two loopback servers play the Fly endpoint and the new one (healthy, failing every fifth
request, or slow); Route53 runs on moto, Cloudflare on the fake API v4, and the manual router
is steered through the CLI. Intervals are short: there is no time-skipping server offline.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from temporalio.client import WorkflowFailureError
from typer.testing import CliRunner

from flyaway.models.canary import CanaryState, CanaryStatus, StepOutcome, Verdict
from flyaway.models.deploy import DeployOutcome, DeployResult
from flyaway.models.status import ControlResult, MigrationState, MigrationStatus
from flyaway.starter.cli import app
from flyaway.workflows.stages.canary import deployed_endpoint
from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.endpoint import FakeEndpoint, client_traffic
from tests.fakes.fly_machines import FakeFlyMachinesAPI
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import weights_plan
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess

INTERVAL = 1.0
RECORD = "api.example.com."
WRITE_TOKEN, READ_TOKEN = "cf-write-token-51d7", "cf-read-token-0b93"
WORKER_ENV = {**TEST_AWS_ENV, "CLOUDFLARE_API_TOKEN": WRITE_TOKEN, "CF_READ_ONLY_TOKEN": READ_TOKEN}
runner = CliRunner()


# --- servers, routers and plans --------------------------------------------------------------

@pytest.fixture(scope="module")
def canary_worker(temporal_server: TemporalDevServer, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[WorkerProcess]:
    """One worker for this module's tests that do not kill it; its env holds the router credentials."""
    process = WorkerProcess(temporal_server, f"flyaway-canary-{uuid.uuid4().hex[:8]}",
                            tmp_path_factory.mktemp("canary-worker") / "worker.log", WORKER_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def endpoints() -> Iterator[tuple[FakeEndpoint, FakeEndpoint]]:
    with FakeEndpoint() as old, FakeEndpoint() as new:
        yield old, new


@pytest.fixture
def route53(moto_server: MotoServer) -> Any:
    return boto3.client("route53", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def zone(route53: Any) -> str:
    """A hosted zone with the Fly record at weight 100 and the new one at 0."""
    zone_id = route53.create_hosted_zone(Name="example.com.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    changes = [{"Action": "CREATE", "ResourceRecordSet": {
        "Name": RECORD, "Type": "CNAME", "SetIdentifier": identifier, "Weight": weight, "TTL": 60,
        "ResourceRecords": [{"Value": target}]}}
        for identifier, weight, target in (("fly", 100, "app.fly.dev"), ("new", 0, "new.example.net"))]
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    return zone_id


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as fake:
        fake.tokens = {WRITE_TOKEN: "write", READ_TOKEN: "read"}
        fake.add_pool("pool1", [{"name": "fly", "address": "app.fly.dev", "weight": 1, "enabled": True},
                                {"name": "new", "address": "new.example.net", "weight": 1, "enabled": False}])
        yield fake


def route53_router(moto: MotoServer, zone_id: str, **overrides: Any) -> dict[str, Any]:
    return {"kind": "route53", "hosted_zone_id": zone_id, "record_name": "api.example.com",
            "fly_set_identifier": "fly", "new_set_identifier": "new", "endpoint_url": moto.endpoint} | overrides


def cloudflare_router(fake: FakeCloudflare, **overrides: Any) -> dict[str, Any]:
    return {"kind": "cloudflare", "account_id": fake.account_id, "pool_id": "pool1", "fly_origin_name": "fly",
            "new_origin_name": "new", "api_base_url": fake.api_base_url} | overrides


def canary_plan(name: str, tmp_path: Path, router: dict[str, Any], endpoints: tuple[FakeEndpoint, FakeEndpoint],
                steps: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
    """A plan with a one-file weights copy (the stage every plan has) and a canary with short intervals."""
    source = tmp_path / "weights"
    source.mkdir()
    (source / "config.json").write_text('{"model": "tiny"}')
    plan = weights_plan(name, {"kind": "local", "path": str(source)}, {"kind": "local", "path": str(tmp_path / "dst")})
    old, new = endpoints
    plan["canary"] = {"router": router, "old_endpoint": old.endpoint, "new_endpoint": new.endpoint, "steps": steps,
                      "analysis": {"interval_seconds": INTERVAL, "requests_per_probe": 20, "concurrency": 10,
                                   "probes": [{"path": "/v1/completions", "method": "POST", "timeout_seconds": 2,
                                               "body": {"model": "tiny", "prompt": "hi", "max_tokens": 1}}],
                                   "thresholds": {"min_requests": 20, "min_success_rate": 99, "max_p99_ms": 2000}}
                      | analysis}
    return plan


def cli(server: TemporalDevServer, *args: str) -> Any:
    return runner.invoke(app, [*args, "--address", server.address])


def status_of(server: TemporalDevServer, workflow_id: str) -> MigrationStatus:
    return run_async(migration_status(server, workflow_id))


def canary_when(server: TemporalDevServer, workflow_id: str, what: str, check: Any,
                timeout: float = 30) -> CanaryStatus:
    """Poll the migration's status query until its canary section passes ``check``."""
    def probe() -> CanaryStatus | None:
        canary = status_of(server, workflow_id).canary
        return canary if canary is not None and check(canary) else None

    return eventually(probe, timeout, what=what)


def holding(index: int, analyses: int = 1) -> Any:
    """The canary holds step ``index`` with its weight in place after ``analyses`` analyses."""
    return lambda canary: (canary.history and canary.history[-1].index == index
                           and canary.history[-1].applied_at is not None
                           and canary.history[-1].analyses >= analyses and canary.history[-1].ended_at is None)


def route53_weights(route53: Any, zone_id: str) -> tuple[int, int]:
    """(new, fly) weights as Route53 serves them."""
    listed = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    weights = {r["SetIdentifier"]: r["Weight"] for r in listed if r["Name"] == RECORD}
    return weights["new"], weights["fly"]


def pool_weights(fake: FakeCloudflare) -> tuple[float, float]:
    """(new, fly) origin weights of the pool; a disabled origin gets nothing."""
    new, fly = fake.origin("pool1", "new"), fake.origin("pool1", "fly")
    return (new["weight"] if new["enabled"] else 0.0), (fly["weight"] if fly["enabled"] else 0.0)


# --- Route53 on moto ---------------------------------------------------------------------------

def test_route53_failure_rolls_back_within_an_interval_and_retry_finishes(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, moto_server: MotoServer, route53: Any,
        zone: str, endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    new = endpoints[1]
    plan = canary_plan("canary-r53", tmp_path, route53_router(moto_server, zone), endpoints,
                       [{"weight": 10}, {"weight": 50, "pause_seconds": 4}, {"weight": 100}])
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))

    canary_when(temporal_server, workflow_id, "step 2 at 50%", holding(1))
    assert route53_weights(route53, zone) == (50, 50)
    new.mode = "failing"
    failed_at = time.monotonic()
    eventually(lambda: route53_weights(route53, zone) == (0, 100), 10, interval=0.05, what="the rollback")
    assert time.monotonic() - failed_at < INTERVAL + 2.0  # the next analysis, its verdict, one weight change

    status = eventually(lambda: (s := status_of(temporal_server, workflow_id)).state
                        == MigrationState.waiting_for_operator and s, 10, what="waiting_for_operator")
    canary = status.canary
    assert canary is not None and canary.state == CanaryState.ROLLED_BACK
    assert canary.last_analysis is not None and canary.last_analysis.verdict == Verdict.FAILED
    assert (canary.last_analysis.new.success_rate, canary.last_analysis.old.success_rate) == (80.0, 100.0)
    assert [(r.weight, r.outcome) for r in canary.history] == [(10, StepOutcome.PASSED),
                                                               (50, StepOutcome.ROLLED_BACK)]
    assert status.stage_status("canary").error.startswith("RolledBack: canary rolled back at step 2 (50%)")
    assert "flyaway retry canary-r53" in status.stage_status("canary").error

    new.mode = "healthy"
    assert cli(temporal_server, "retry", "canary-r53").exit_code == 0
    result = run_async(migration_result(temporal_server, workflow_id, timeout=60))
    assert result.status.state == MigrationState.completed
    assert route53_weights(route53, zone) == (100, 0)
    canary = result.status.canary
    assert canary is not None and canary.state == CanaryState.COMPLETED
    assert [(r.weight, r.outcome) for r in canary.history] == [(w, StepOutcome.PASSED) for w in (10, 50, 100)]
    assert all(r.successful >= 1 and r.failed == 0 for r in canary.history)
    assert canary.message is not None and f"clients should use {new.endpoint}" in canary.message
    assert "keep using api.example.com" in canary.message and "60 s (the DNS TTL)" in canary.message


def test_passive_metrics_alone_pause_without_traffic_and_roll_back_a_failing_new_side(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, moto_server: MotoServer, route53: Any,
        zone: str, endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    old, new = endpoints
    plan = canary_plan("canary-passive", tmp_path, route53_router(moto_server, zone), endpoints,
                       [{"weight": 10}, {"weight": 50, "pause_seconds": 600}, {"weight": 100}],
                       probes=[], metrics={})  # vLLM's metric names, each endpoint's /metrics
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))

    canary = canary_when(temporal_server, workflow_id, "a paused canary", lambda c: c.state == CanaryState.PAUSED)
    assert canary.message is not None and "metrics: new side had 0 requests, fewer than min_requests 20" in canary.message
    assert (old.requests, new.requests) == (0, 0)  # no probes: nothing but the clients' traffic is judged

    with client_traffic(old, new):
        assert cli(temporal_server, "resume", "canary-passive").exit_code == 0
        canary = canary_when(temporal_server, workflow_id, "step 2 at 50%", holding(1))
        assert route53_weights(route53, zone) == (50, 50)
        analysis = canary.last_analysis
        assert analysis is not None and analysis.verdict == Verdict.SUCCESSFUL and analysis.new is None
        assert analysis.passive is not None and analysis.passive.new is not None
        assert analysis.passive.new.requests >= 20 and analysis.passive.new.success_rate == 100.0

        new.mode = "failing"
        failed_at = time.monotonic()
        eventually(lambda: route53_weights(route53, zone) == (0, 100), 10, interval=0.05, what="the rollback")
        assert time.monotonic() - failed_at < INTERVAL + 2.0  # the interval's end, its verdict, one weight change

    status = eventually(lambda: (s := status_of(temporal_server, workflow_id)).state
                        == MigrationState.waiting_for_operator and s, 10, what="waiting_for_operator")
    canary = status.canary
    assert canary is not None and canary.state == CanaryState.ROLLED_BACK
    analysis = canary.last_analysis
    assert analysis is not None and analysis.verdict == Verdict.FAILED and analysis.passive is not None
    assert analysis.passive.new is not None and analysis.passive.old is not None
    assert 75 <= (analysis.passive.new.success_rate or 0) < 99 and analysis.passive.old.success_rate == 100.0
    assert analysis.reasons[0].startswith("metrics: success rate") and analysis.readings is None
    assert f"metrics new {analysis.passive.new.requests} req {analysis.passive.new.success_rate}% ok" in \
        canary.summary()
    assert [(r.weight, r.outcome) for r in canary.history] == [(10, StepOutcome.PASSED),
                                                               (50, StepOutcome.ROLLED_BACK)]
    assert cli(temporal_server, "abort", "canary-passive", "--reason", "test over").exit_code == 0


@pytest.mark.parametrize(("router_overrides", "field"), [({"new_set_identifier": "canary"}, "new_set_identifier"),
                                                         ({"hosted_zone_id": "/hostedzone/ZNOSUCH"}, "hosted_zone_id")])
def test_missing_records_fail_the_plan_before_any_weight_changes(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, moto_server: MotoServer, route53: Any,
        zone: str, endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path,
        router_overrides: dict[str, str], field: str) -> None:
    plan = canary_plan(f"canary-missing-{field.replace('_', '-')}", tmp_path,
                       route53_router(moto_server, zone, **router_overrides), endpoints, [{"weight": 100}])
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))
    with pytest.raises(WorkflowFailureError) as failure:
        run_async(migration_result(temporal_server, workflow_id, timeout=60))
    message = str(failure.value.cause)
    assert "invalid plan: NotFound: " in message and f"router.{field}" in message
    assert route53_weights(route53, zone) == (0, 100)
    assert not (tmp_path / "dst" / "config.json").exists()  # no stage ran: the plan's check comes first


# --- Cloudflare through its fake ----------------------------------------------------------------

def test_cloudflare_pauses_when_inconclusive_then_approve_and_promote(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, cloudflare: FakeCloudflare,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    old = endpoints[0]
    old.mode = "failing"  # 16 of 20 answers: too few to compare latencies with, so Inconclusive
    plan = canary_plan("canary-cf", tmp_path, cloudflare_router(cloudflare), endpoints,
                       [{"weight": 20, "wait_for_approval": True}, {"weight": 60, "pause_seconds": 600},
                        {"weight": 100}],
                       thresholds={"min_requests": 20, "max_p99_ms": None, "max_latency_ratio": 50})
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))

    canary = canary_when(temporal_server, workflow_id, "a paused canary", lambda c: c.state == CanaryState.PAUSED)
    assert status_of(temporal_server, workflow_id).state == MigrationState.paused
    assert canary.message is not None and "inconclusive_limit 0" in canary.message
    assert pool_weights(cloudflare) == (0.2, 0.8)
    refused = cli(temporal_server, "approve", "canary-cf", "canary")
    assert refused.exit_code == 2 and "the canary is not waiting for an approval (it is paused)" in refused.stderr

    old.mode = "healthy"
    assert cli(temporal_server, "resume", "canary-cf").exit_code == 0
    canary = canary_when(temporal_server, workflow_id, "the approval gate",
                         lambda c: c.state == CanaryState.WAITING_FOR_APPROVAL)
    assert canary.approval is not None and "holds 20% on the new side" in canary.approval
    assert status_of(temporal_server, workflow_id).state == MigrationState.running
    assert cli(temporal_server, "approve", "canary-cf", "canary").exit_code == 0
    canary_when(temporal_server, workflow_id, "step 2 at 60%", holding(1))
    assert pool_weights(cloudflare) == (0.6, 0.4)

    assert cli(temporal_server, "promote", "canary-cf").exit_code == 0
    result = run_async(migration_result(temporal_server, workflow_id, timeout=30))
    assert pool_weights(cloudflare) == (1.0, 0.0)
    canary = result.status.canary
    assert canary is not None and canary.state == CanaryState.COMPLETED
    assert [(r.weight, r.outcome) for r in canary.history] == [
        (20, StepOutcome.PASSED), (60, StepOutcome.PROMOTED), (100, StepOutcome.PROMOTED)]
    assert canary.history[0].inconclusive >= 1 and canary.history[0].approved
    assert canary.history[2].analyses == 0  # promotion skips the remaining analyses
    assert "the router's change is immediate" in (canary.message or "")
    ended = cli(temporal_server, "promote", "canary-cf")
    assert ended.exit_code == 2 and "has ended" in ended.stderr


def test_cloudflare_analytics_pause_a_new_origin_without_client_traffic_until_it_gets_some(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, cloudflare: FakeCloudflare,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    cloudflare.add_load_balancer("zone1", "lb1", ["pool1"], "pool1")
    plan = canary_plan("canary-cf-analytics", tmp_path,
                       cloudflare_router(cloudflare, zone_id="zone1", load_balancer_id="lb1"), endpoints,
                       [{"weight": 50, "pause_seconds": 600}, {"weight": 100}], router_analytics=True)
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))

    # the probes pass, but the load balancer sent the new origin nothing: not Successful
    canary = canary_when(temporal_server, workflow_id, "a paused canary", lambda c: c.state == CanaryState.PAUSED)
    assert canary.message is not None and "router: new side had 0 requests, fewer than min_requests 20" in \
        canary.message
    analysis = canary.last_analysis
    assert analysis is not None and analysis.new is not None and analysis.new.success_rate == 100.0
    assert analysis.router is not None and analysis.router.seconds is not None
    assert INTERVAL <= analysis.router.seconds < INTERVAL + 3  # one interval of the workflow's clock
    assert pool_weights(cloudflare) == (0.5, 0.5)

    stop = threading.Event()

    def clients() -> None:  # 40 requests every 0.2 s through the balancer, split by the origin weights
        while not stop.wait(0.2):
            cloudflare.serve("zone1", "lb1", 40)

    sender = threading.Thread(target=clients, daemon=True)
    sender.start()
    try:
        assert cli(temporal_server, "resume", "canary-cf-analytics").exit_code == 0
        canary = canary_when(temporal_server, workflow_id, "a successful analysis with traffic", lambda c: (
            c.last_analysis is not None and c.last_analysis.verdict == Verdict.SUCCESSFUL))
    finally:
        stop.set()
        sender.join()
    router = canary.last_analysis.router if canary.last_analysis else None
    assert router is not None and router.new is not None and router.old is not None
    assert router.new.requests >= 20 and router.new.success_rate is None and router.new.p95_ms is None
    assert abs(router.new.requests - router.old.requests) <= 40  # 50/50: one serve() at an edge at most
    assert f"router new {router.new.requests} req - ok" in canary.summary()
    queried = [q["variables"] for q in cloudflare.graphql_queries]
    assert all(q["zoneTag"] == "zone1" for q in queried)
    spans = [(q["start"], q["end"]) for q in queried[1:]]  # the first is the check before any weight change
    assert all(later[0] == earlier[1] for earlier, later in itertools.pairwise(spans))  # back to back
    assert cli(temporal_server, "abort", "canary-cf-analytics", "--reason", "test over").exit_code == 0


def test_cloudflare_token_without_rights_fails_the_plan_before_any_weight_changes(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess, cloudflare: FakeCloudflare,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    plan = canary_plan("canary-cf-read-only", tmp_path, cloudflare_router(cloudflare, token_env="CF_READ_ONLY_TOKEN"),
                       endpoints, [{"weight": 100}])
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))
    with pytest.raises(WorkflowFailureError) as failure:
        run_async(migration_result(temporal_server, workflow_id, timeout=60))
    message = str(failure.value.cause)
    assert "invalid plan: AccessDenied: Cloudflare refused" in message and "$CF_READ_ONLY_TOKEN" in message
    assert READ_TOKEN not in message
    assert cloudflare.writes == [] and pool_weights(cloudflare) == (0.0, 1.0)


# --- manual router through the CLI ---------------------------------------------------------------

def test_manual_router_says_the_exact_change_and_waits_for_approve(
        temporal_server: TemporalDevServer, canary_worker: WorkerProcess,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    old, new = endpoints
    router = {"kind": "manual", "instructions": "haproxy.cfg: weight new {new_weight}, weight fly {old_weight}"}
    plan = canary_plan("canary-manual", tmp_path, router, endpoints, [{"weight": 50}, {"weight": 100}])
    workflow_id = run_async(start_migration(temporal_server, plan, canary_worker.task_queue))

    for weight in (50, 100):
        canary = canary_when(temporal_server, workflow_id, f"the change to {weight}%",
                             lambda c, w=weight: c.approval is not None and f"Send {w}%" in c.approval)
        assert f"to the new endpoint {new.endpoint} and {100 - weight}% to the Fly endpoint {old.endpoint}" in canary.approval
        assert f"weight new {weight}, weight fly {100 - weight}" in canary.approval
        detail = status_of(temporal_server, workflow_id).stage_status("canary").detail
        assert f"Send {weight}% of traffic" in detail
        requests_before = new.requests
        time.sleep(INTERVAL)
        assert new.requests == requests_before  # no analysis before the operator made the change
        approved = cli(temporal_server, "approve", "canary-manual", "canary")
        assert approved.exit_code == 0, approved.stderr

    result = run_async(migration_result(temporal_server, workflow_id, timeout=30))
    canary = result.status.canary
    assert canary is not None and canary.state == CanaryState.COMPLETED
    assert canary.weight is not None and (canary.weight.new_weight, canary.weight.confirmed) == (100, False)
    assert [(r.weight, r.outcome) for r in canary.history] == [(50, StepOutcome.PASSED), (100, StepOutcome.PASSED)]
    assert all(r.successful >= 1 for r in canary.history)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("canary", "message"), [
    ({"steps": [{"weight": 10}, {"weight": 50}]}, "plan.canary.steps: the last step must move all traffic"),
    ({"analysis": {"thresholds": {"min_success_rate": 101}}},
     "plan.canary.analysis.thresholds.min_success_rate: Input should be less than or equal to 100"),
    ({"analysis": {"failure_limit": -1}}, "plan.canary.analysis.failure_limit"),
    ({"new_endpoint": None}, "canary.new_endpoint: required, since the plan has no deploy stage"),
])
def test_bad_canary_plans_are_refused_before_anything_runs(tmp_path: Path, canary: dict[str, Any],
                                                           message: str) -> None:
    plan = weights_plan("bad-canary", {"kind": "local", "path": str(tmp_path)}, {"kind": "local", "path": "/tmp/x"})
    plan["canary"] = {"router": {"kind": "manual"}, "old_endpoint": "https://app.fly.dev",
                      "new_endpoint": "https://new.example.net", "steps": [{"weight": 100}]} | canary
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    result = runner.invoke(app, ["validate", "--offline", str(plan_file)])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_without_new_endpoint_the_canary_takes_the_deploy_stages() -> None:
    deployed = DeployResult(platform="cloud_run", service="llama", endpoint_url="https://llama-abc123-ez.a.run.app/",
                            image="registry/llama:1", outcome=DeployOutcome.created)
    assert deployed_endpoint(deployed) == "https://llama-abc123-ez.a.run.app"
    assert deployed_endpoint(None) is None


# --- a worker killed mid-step --------------------------------------------------------------------

def test_worker_killed_mid_step_resumes_at_the_same_weight_and_abort_sends_traffic_back(
        temporal_server: TemporalDevServer, moto_server: MotoServer, route53: Any, zone: str,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    worker = WorkerProcess(temporal_server, f"flyaway-canary-kill-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log",
                           WORKER_ENV)
    worker.start()
    try:
        plan = canary_plan("canary-kill", tmp_path, route53_router(moto_server, zone), endpoints,
                           [{"weight": 10}, {"weight": 40, "pause_seconds": 600}, {"weight": 100}])
        workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
        before = canary_when(temporal_server, workflow_id, "step 2 at 40%", holding(1, analyses=2))
        worker.kill()  # right after an analysis was reported: in the interval's timer
        assert route53_weights(route53, zone) == (40, 60)
        worker.start()
        after = canary_when(temporal_server, workflow_id, "analyses after the restart",
                            holding(1, analyses=before.history[-1].analyses + 2), timeout=40)
        assert len(after.history) == 2 and after.history[1].applied_at == before.history[1].applied_at
        assert route53_weights(route53, zone) == (40, 60)

        assert cli(temporal_server, "abort", "canary-kill", "--reason", "not today").exit_code == 0
        with pytest.raises(WorkflowFailureError) as failure:
            run_async(migration_result(temporal_server, workflow_id, timeout=30))
        assert "aborted by the operator: not today" in str(failure.value.cause)
        assert route53_weights(route53, zone) == (0, 100)
        canary = status_of(temporal_server, workflow_id).canary
        assert canary is not None and canary.state == CanaryState.ABORTED
        assert [(r.weight, r.outcome) for r in canary.history] == [(10, StepOutcome.PASSED),
                                                                   (40, StepOutcome.ABORTED)]
    finally:
        worker.stop()


# --- the DNS TTL before teardown ------------------------------------------------------------------

def test_teardown_waits_out_the_dns_ttl_before_stopping_fly_machines(
        temporal_server: TemporalDevServer, moto_server: MotoServer, route53: Any, zone: str,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path) -> None:
    ttl, token = 5, "fo1_canary-ttl-token"
    with FakeFlyMachinesAPI(token) as fly:
        fly.add_app("old-app")
        fly.add_machine("old-app", "web-1", state="started", config={"image": "registry.fly.io/old-app:v1"})
        worker = WorkerProcess(temporal_server, f"flyaway-canary-ttl-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log",
                               {**WORKER_ENV, "FLY_API_TOKEN": token, "FLY_API_BASE_URL": fly.base_url})
        worker.start()
        try:
            plan = canary_plan("canary-ttl", tmp_path, route53_router(moto_server, zone, ttl=ttl), endpoints,
                               [{"weight": 100}])
            plan["teardown"] = {"app": "old-app", "approval_required": False, "heartbeat_timeout": "3s"}
            workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
            detail = eventually(lambda: (d := status_of(temporal_server, workflow_id).stage_status("teardown").detail)
                                and d.startswith("waiting for the DNS TTL until ") and d, 60, interval=0.1,
                                what="the teardown to wait out the TTL")
            seen_wall, seen_monotonic = time.time(), time.monotonic()
            match = re.match(r"waiting for the DNS TTL until (\S+):", detail)
            assert match is not None, detail
            not_before = datetime.fromisoformat(match.group(1)).timestamp()
            assert 0 < not_before - seen_wall <= ttl
            assert [r for r in fly.requests if r.method != "GET"] == [], "nothing on Fly moves before the TTL is over"

            result = run_async(migration_result(temporal_server, workflow_id, timeout=60))
            assert result.status.state == MigrationState.completed
            first_change = min(r.at for r in fly.requests if r.method != "GET")
            assert first_change >= seen_monotonic + (not_before - seen_wall) - 0.05  # wall and monotonic clocks
            assert {m.state for m in fly.apps["old-app"].machines.values()} == {"destroyed"}
        finally:
            worker.stop()


# --- bounded history ------------------------------------------------------------------------------

def run_histories(server: TemporalDevServer, workflow_id: str) -> list[int]:
    """The number of history events of every run of ``workflow_id``, continued-as-new ones included."""
    async def go() -> list[int]:
        client = await server.client()
        lengths = []
        async for run in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
            history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
            lengths.append(len(history.events))
        return lengths
    return run_async(go())


LONG_WAIT_ANALYSES = 2_000
#: the migration's own history while its canary analyses without end: the canary's state changes and
#: a log of its analyses (its first 10 and then at powers of two), not one signal per analysis
MIGRATION_EVENTS_BOUND = 200
#: a canary run continues as new past 2,000 events, before an analysis (6 events each: no timer when the
#: analysis itself takes longer than the interval)
CANARY_RUN_EVENTS_BOUND = 2_100


@pytest.fixture
def punctual_server(tmp_path: Path) -> Iterator[TemporalDevServer]:
    """A dev server that fires short timers on time: by default it fires a 10 ms timer a second late, which
    would make each analysis of the long wait below last a second."""
    (tmp_path / "temporal").mkdir()
    server = TemporalDevServer(tmp_path / "temporal",
                               dynamic_config={"history.timerProcessorMaxTimeShift": '"10ms"'})
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_long_approval_wait_keeps_every_history_bounded_and_still_rolls_back(
        punctual_server: TemporalDevServer, moto_server: MotoServer, route53: Any, zone: str,
        endpoints: tuple[FakeEndpoint, FakeEndpoint], tmp_path: Path, task_queue: str) -> None:
    """Thousands of analyses at a very short interval while the first step waits for approval: the canary
    continues as new and the migration hears of changes only; a failure after that still rolls back."""
    server, new = punctual_server, endpoints[1]
    worker = WorkerProcess(server, task_queue, tmp_path / "worker.log", WORKER_ENV)
    worker.start()
    plan = canary_plan("canary-long", tmp_path, route53_router(moto_server, zone), endpoints,
                       [{"weight": 10, "wait_for_approval": True}, {"weight": 100}], interval_seconds=0.01,
                       requests_per_probe=1, concurrency=1,
                       thresholds={"min_requests": 1, "min_success_rate": 99, "max_p99_ms": 2000})
    try:
        workflow_id = run_async(start_migration(server, plan, task_queue))
        canary_when(server, workflow_id, "the approval gate", lambda c: c.state == CanaryState.WAITING_FOR_APPROVAL)

        def analyses_so_far() -> int:
            async def go() -> int:
                client = await server.client()
                canary = await client.get_workflow_handle(f"{workflow_id}-canary").query("progress",
                                                                                          result_type=CanaryStatus)
                return canary.history[-1].analyses
            return run_async(go())

        eventually(lambda: analyses_so_far() >= LONG_WAIT_ANALYSES, 900, interval=2,
                   what=f"{LONG_WAIT_ANALYSES} analyses while waiting for approval")
        assert len(run_histories(server, f"{workflow_id}-canary")) >= LONG_WAIT_ANALYSES * 6 // 2_000, \
            "the canary continues as new every few hundred analyses"

        new.mode = "failing"
        eventually(lambda: route53_weights(route53, zone) == (0, 100), 30, what="the rollback")
        status = eventually(lambda: (s := status_of(server, workflow_id)).state
                            == MigrationState.waiting_for_operator and s, 30, what="waiting_for_operator")
        assert status.canary is not None and status.canary.state == CanaryState.ROLLED_BACK
        assert [(r.weight, r.outcome) for r in status.canary.history] == [(10, StepOutcome.ROLLED_BACK)]
        assert status.canary.history[0].analyses >= LONG_WAIT_ANALYSES
        canary_runs, migration_runs = (run_histories(server, f"{workflow_id}-canary"),
                                       run_histories(server, workflow_id))
        print(f"canary runs {len(canary_runs)}, longest {max(canary_runs)} events; migration runs "
              f"{migration_runs} events")
        assert max(canary_runs) <= CANARY_RUN_EVENTS_BOUND
        assert max(migration_runs) <= MIGRATION_EVENTS_BOUND

        async def abort() -> ControlResult:
            client = await server.client()
            return await client.get_workflow_handle(workflow_id).execute_update("abort", "enough",
                                                                                 result_type=ControlResult)
        assert run_async(abort()).state == MigrationState.aborted
    finally:
        worker.stop()
