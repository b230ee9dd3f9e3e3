"""``flyaway report``: the page and its JSON for real migrations (local -> moto S3, a migration waiting for
the operator then aborted), parsed back and checked against the workflow's status and the manifest."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flyaway.codec import ENCODING, KEYS_ENV, generate_key
from flyaway.models.status import MigrationState, MigrationStatus
from flyaway.report.model import MigrationReport
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from flyaway.starter.display import snapshot
from tests.fakes.endpoint import FakeEndpoint
from tests.fakes.fly_machines import FakeFlyMachinesAPI
from tests.support.browser import chromium_page, needs_chromium
from tests.support.env import REPO, TEST_AWS_ENV
from tests.support.migrations import (
    abort_migration,
    eventually,
    migration_result,
    migration_status,
    run_async,
    run_migration,
    start_migration,
)
from tests.support.plans import canary_section, manifest_key, s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

MiB = 1024 * 1024
runner = CliRunner()


def write_report(server: TemporalDevServer, name: str, output: Path, *extra: str) -> MigrationReport:
    """Run `flyaway report` and parse the JSON it wrote beside the page."""
    result = runner.invoke(app, ["report", name, "--output", str(output), "--address", server.address, *extra])
    assert result.exit_code == 0, result.output + result.stderr
    assert str(output) in result.output and str(output.with_suffix(".json")) in result.output
    assert output.read_text().startswith("<!doctype html>")
    return MigrationReport.model_validate_json(output.with_suffix(".json").read_text())


def manifest_lines(s3: Any, bucket: str, prefix: str, plan_name: str) -> tuple[bytes, list[dict[str, Any]]]:
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{manifest_key(plan_name)}")["Body"].read()
    return body, [json.loads(line) for line in body.splitlines()]


def test_report_of_a_completed_copy_matches_its_status_and_manifest(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    make_tree(tmp_path / "w")
    write_random_file(tmp_path / "w" / "model.safetensors", 24 * MiB)
    s3_proxy.corrupt = 1  # one upload arrives damaged and is sent again: the report counts the bytes re-sent
    plan = weights_plan("report-demo", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "models/demo"), part_size="8MiB", concurrency=2)
    result = run_migration(temporal_server, plan, worker.task_queue)
    assert result.status.state == MigrationState.completed

    report = write_report(temporal_server, "report-demo", tmp_path / "out" / "demo.html")
    body, entries = manifest_lines(s3, bucket, "models/demo", "report-demo")
    status, weights = result.status, report.weights
    assert (report.state, report.run_status) == ("completed", "completed")
    assert (weights.files_total, weights.bytes_total) == (status.files_total, status.bytes_total)
    assert (weights.files_done, weights.bytes_done) == (len(entries), sum(entry["size"] for entry in entries))
    assert (weights.files_copied, weights.bytes_copied, weights.files_skipped) == (len(entries), status.bytes_total, 0)
    assert s3_proxy.corrupted == 1 and weights.bytes_resent > 0
    assert weights.bytes_uploaded == weights.bytes_copied + weights.bytes_resent
    verification = weights.verification
    assert verification is not None
    assert (verification.files_verified, verification.bytes_verified) == (len(entries), status.bytes_total)
    assert verification.files_without_source_checksum == len(entries)  # a local folder publishes none
    assert f"{len(entries)} of them from a source that publishes no checksum" in (tmp_path / "out" / "demo.html").read_text()
    assert verification.manifest_location.startswith(f"s3://{bucket}/models/demo")
    assert verification.manifest_location.endswith(f"/{manifest_key('report-demo')}")
    assert verification.manifest_sha256 == hashlib.sha256(body).hexdigest()
    assert weights.throughput and weights.throughput[-1].bytes_done == status.bytes_total
    stages = {stage.name: stage for stage in report.stages}
    assert stages["weights"].state == "completed" and stages["weights"].runs == 1
    assert stages["weights"].started_at is not None and stages["weights"].ended_at is not None
    assert stages["weights"].activity_attempts >= 3  # list, a batch, verify
    assert stages["canary"].state == "skipped" and report.canary is None and report.cost == []

    # the same files again, under another migration: what it skipped as unchanged and what it sent add up
    again = run_migration(temporal_server, plan | {"name": "report-demo-again"}, worker.task_queue)
    assert again.status.state == MigrationState.completed
    second = write_report(temporal_server, "migration-report-demo-again", tmp_path / "again.html").weights
    assert second.files_skipped >= 1 and second.files_skipped + second.files_copied == len(entries)
    assert second.bytes_skipped + second.bytes_copied == status.bytes_total == second.bytes_done


def test_report_of_a_copy_in_flight(temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy,
                                    bucket: str, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    write_random_file(tmp_path / "w" / "model.safetensors", 32 * MiB)
    plan = weights_plan("report-running", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=1,
                        bandwidth_limit="2MiB")
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))

    async def shown_by_status() -> int:
        return (await snapshot(await temporal_server.client(), workflow_id)).bytes_done

    eventually(lambda: run_async(shown_by_status()) >= 8 * MiB, 60, what="`flyaway status` to show a part landed")
    report = write_report(temporal_server, "report-running", tmp_path / "running.html")
    assert (report.state, report.run_status, report.closed_at) == ("running", "running", None)
    weights = next(stage for stage in report.stages if stage.name == "weights")
    assert weights.state == "running" and weights.started_at is not None and weights.ended_at is None
    assert report.weights.bytes_total == 32 * MiB and 8 * MiB <= report.weights.bytes_done < 32 * MiB
    assert report.weights.verification is None
    abort_migration(temporal_server, workflow_id, "test over")


def test_report_of_a_migration_waiting_for_the_operator_then_aborted(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, bucket: str,
        tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    write_random_file(tmp_path / "w" / "model.safetensors", 24 * MiB)
    s3_proxy.corrupt = -1  # every upload arrives damaged: the copy gives up and waits for the operator
    plan = weights_plan("report-waiting", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=2)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 120, what="waiting_for_operator")

    report = write_report(temporal_server, "report-waiting", tmp_path / "waiting.html")
    assert (report.state, report.run_status) == ("waiting_for_operator", "running")
    assert report.last_error == status.last_error and "DataCorruption" in (report.last_error or "")
    weights = next(stage for stage in report.stages if stage.name == "weights")
    assert weights.state == "waiting_for_operator" and weights.error == status.stage_status("weights").error
    assert len(weights.waits) == 1 and weights.waits[0].ended_at is None
    assert report.weights.verification is None
    assert (report.weights.files_total, report.weights.bytes_total) == (status.files_total, status.bytes_total)
    page = (tmp_path / "waiting.html").read_text()
    assert "Waiting for the operator" in page and "Not verified yet" in page

    s3_proxy.corrupt = 0
    abort_migration(temporal_server, workflow_id, "moving to another bucket")
    report = write_report(temporal_server, workflow_id, tmp_path / "aborted.html")
    assert (report.state, report.run_status) == ("aborted", "failed")
    assert report.failure is not None and "moving to another bucket" in report.failure
    weights = next(stage for stage in report.stages if stage.name == "weights")
    assert weights.state == "aborted" and weights.waits[0].ended_at is not None
    [abort] = [action for action in report.operator_actions if action.action == "abort"]
    assert abort.argument == "moving to another bucket" and abort.identity

    worker.stop()  # no worker left to answer the status query: the history alone tells the same
    alone = write_report(temporal_server, workflow_id, tmp_path / "alone.html")
    assert (alone.state, alone.failure, alone.operator_actions) == (report.state, report.failure,
                                                                   report.operator_actions)
    assert [(stage.name, stage.state, stage.started_at, stage.ended_at) for stage in alone.stages] == [
        (stage.name, stage.state, stage.started_at, stage.ended_at) for stage in report.stages]


def assert_rolled_back(report: MigrationReport, status: MigrationStatus) -> None:
    """The report of a canary rolled back at 60% says what the status says, interval by interval."""
    canary, expected = report.canary, status.canary
    assert canary is not None and expected is not None and expected.last_analysis is not None
    assert (canary.state, canary.rolled_back) == ("rolled_back", True)
    assert canary.rollback_reason == expected.message
    assert "rolled back at step 2 (60%)" in (canary.rollback_reason or "")
    assert [(step.weight, step.outcome) for step in canary.steps] == [(20, "passed"), (60, "rolled_back")]
    verdicts = [interval.verdict for interval in canary.intervals]
    expected_counts = [sum(getattr(step, kind) for step in expected.history)
                       for kind in ("successful", "failed", "inconclusive")]
    assert [verdicts.count(v) for v in ("Successful", "Failed", "Inconclusive")] == expected_counts
    last = canary.intervals[-1]
    assert (last.verdict, last.weight) == ("Failed", 60)
    assert last.new == expected.last_analysis.new and last.old == expected.last_analysis.old
    assert last.new is not None and last.old is not None
    assert (last.new.success_rate, last.old.success_rate) == (80.0, 100.0)
    assert all(i.new and i.new.p50_ms and i.new.p50_ms >= 50 for i in canary.intervals[:-1]), "the slow new side"
    assert {i.weight for i in canary.intervals} == {20, 60}
    stage = next(stage for stage in report.stages if stage.name == "canary")
    assert stage.state == "waiting_for_operator" and stage.error == status.stage_status("canary").error
    assert report.fly.dns_ttl_seconds is None, "no canary finished: nothing says Fly's DNS answers expire"


def test_report_of_a_canary_rolled_back_then_retried(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                      moto_server: MotoServer, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"model": "tiny"}')
    plan = weights_plan("report-canary", {"kind": "local", "path": str(tmp_path / "w")},
                        {"kind": "local", "path": str(tmp_path / "dst")})
    with FakeEndpoint() as old, FakeEndpoint(mode="slow", slow_seconds=0.05) as new:
        plan["canary"] = canary_section(moto_server, old, new, [{"weight": 20, "pause_seconds": 1.5},
                                                               {"weight": 60, "pause_seconds": 6}, {"weight": 100}])
        workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
        eventually(lambda: (c := run_async(migration_status(temporal_server, workflow_id)).canary) is not None
                   and c.step == 1 and c.history[-1].analyses >= 1, 60, what="the canary's second step")
        new.mode = "failing"  # every fifth request fails: 80% < 99%
        status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                            == MigrationState.waiting_for_operator and s, 60, what="the rollback")
        assert_rolled_back(write_report(temporal_server, "report-canary", tmp_path / "canary.html"), status)

        new.mode = "healthy"
        retried = runner.invoke(app, ["retry", "report-canary", "--address", temporal_server.address])
        assert retried.exit_code == 0, retried.output
        result = run_async(migration_result(temporal_server, workflow_id, 120))

    report = write_report(temporal_server, "report-canary", tmp_path / "after-retry.html")
    canary = report.canary
    assert canary is not None and result.status.canary is not None
    assert [(run.number, run.state) for run in canary.runs] == [(1, "rolled_back"), (2, "completed")]
    assert canary.rolled_back and canary.rollback_reason == canary.runs[0].rollback_reason
    assert "rolled back at step 2 (60%)" in (canary.rollback_reason or "")
    assert canary.steps == result.status.canary.history
    assert {i.canary_run for i in canary.intervals} == {1, 2} and canary.intervals[-1].weight == 100
    stage = next(stage for stage in report.stages if stage.name == "canary")
    assert (stage.state, stage.runs, len(stage.waits)) == ("completed", 2, 1) and stage.waits[0].ended_at
    [retry] = [action for action in report.operator_actions if action.action == "retry"]
    assert stage.waits[0].started_at <= retry.at <= stage.waits[0].ended_at
    assert (report.fly.dns_name, report.fly.dns_ttl_seconds) == ("api.example.com", 60)


def test_report_of_a_teardown_names_what_is_left_on_fly(temporal_server: TemporalDevServer, task_queue: str,
                                                         tmp_path: Path) -> None:
    """The operator approves the teardown with the CLI: the report says who, and what Fly still holds."""
    token = "fo1_report-test-token"
    with FakeFlyMachinesAPI(token) as fly:
        fly.add_app("old-app")
        volume = fly.add_volume("old-app", "data", region="ord")
        fly.add_machine("old-app", "web-1", region="ord", state="started", config={
            "image": "registry.fly.io/old-app:deployment-7", "mounts": [{"volume": volume.id, "path": "/data"}]})
        fly.add_ip("old-app", "137.66.1.1")
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "config.json").write_text('{"model": "tiny"}')
        plan = weights_plan("report-teardown", {"kind": "local", "path": str(tmp_path / "w")},
                            {"kind": "local", "path": str(tmp_path / "dst")})
        plan["teardown"] = {"app": "old-app", "no_traffic_stage_ok": True, "heartbeat_timeout": "3s"}
        worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log",
                               {"FLY_API_TOKEN": token, "FLY_API_BASE_URL": fly.base_url})
        worker.start()
        try:
            workflow_id = run_async(start_migration(temporal_server, plan, task_queue))
            eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).stage_status(
                "teardown").detail.startswith("waiting for `flyaway approve"), 60, what="the approval gate")
            approved = runner.invoke(app, ["approve", "report-teardown", "teardown", "--address",
                                           temporal_server.address])
            assert approved.exit_code == 0, approved.output
            assert run_async(migration_result(temporal_server, workflow_id, 60)).status.state == "completed"
        finally:
            worker.stop()
        snapshots = {volume.id: fly.apps["old-app"].snapshots[volume.id][-1]["id"]}

    report = write_report(temporal_server, "report-teardown", tmp_path / "teardown.html")
    teardown = next(stage for stage in report.stages if stage.name == "teardown")
    assert (teardown.runs, teardown.activity_attempts) == (1, 5)  # inventory, stop, snapshot, destroy, release IPs
    [approval] = teardown.approvals
    assert approval.action == "approve" and approval.argument == "teardown" and "@" in approval.identity
    fly_left = report.fly
    assert (fly_left.app, fly_left.teardown_state) == ("old-app", "completed")
    assert (fly_left.machines_found, fly_left.machines_destroyed, fly_left.machines_left) == (1, 1, 0)
    assert fly_left.volumes_kept == [volume.id] and fly_left.snapshots == snapshots
    assert (fly_left.ips_released, fly_left.app_deleted) == (1, False)
    page = (tmp_path / "teardown.html").read_text()
    assert snapshots[volume.id] in page and approval.identity in page

# --- the page in a browser ---------------------------------------------------------------------------------

SCREENSHOT = REPO / "artifacts" / "report-page.png"


@pytest.fixture
def encrypting_worker(temporal_server: TemporalDevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      ) -> Iterator[WorkerProcess]:
    """A worker that encrypts every payload; the test's own clients (and the CLI) hold the same keys."""
    keys = generate_key()
    monkeypatch.setenv(KEYS_ENV, keys)
    process = WorkerProcess(temporal_server, f"flyaway-report-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log",
                            {**TEST_AWS_ENV, KEYS_ENV: keys})
    process.start()
    yield process
    process.stop()


def open_in_chromium(page_file: Path, profile: Path) -> tuple[list[str], dict[str, int]]:
    """Open the page from disk; returns every URL chromium requested and the drawn size of each chart."""
    with chromium_page(profile, width=1100, height=900) as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_file.as_uri(), wait_until="networkidle")
        charts = {}
        for chart in ("throughput-chart", "latency-chart", "success-chart"):
            box = page.locator(f"#{chart} svg").bounding_box()
            lines = page.locator(f"#{chart} svg path.line").count()
            charts[chart] = int(box["height"]) if box and lines else 0
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        return requested, charts


@pytest.mark.slow
@needs_chromium
def test_the_page_of_an_encrypted_migration_opens_offline_and_draws_its_charts(
        temporal_server: TemporalDevServer, encrypting_worker: WorkerProcess, moto_server: MotoServer,
        s3_proxy: S3FaultProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "w")
    plan = weights_plan("report-page", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="5MiB", concurrency=2,
                        bandwidth_limit="8MiB")
    with FakeEndpoint() as old, FakeEndpoint(mode="slow", slow_seconds=0.02) as new:
        plan["canary"] = canary_section(moto_server, old, new, [{"weight": 25, "pause_seconds": 2},
                                                               {"weight": 100, "pause_seconds": 1}])
        result = run_migration(temporal_server, plan, encrypting_worker.task_queue, timeout=120)
    assert result.status.state == MigrationState.completed
    stored = run_async(temporal_server.stored_input("migration-report-page"))
    assert stored.payloads[0].metadata["encoding"] == ENCODING, "the worker did not encrypt the payloads"

    report = write_report(temporal_server, "report-page", tmp_path / "page.html")
    assert report.weights.bytes_done == result.status.bytes_total and report.weights.verification is not None
    assert report.canary is not None and report.canary.state == "completed" and len(report.canary.intervals) >= 2
    assert report.fly.dns_ttl_seconds == 60 and report.fly.dns_name == "api.example.com"
    monkeypatch.delenv(KEYS_ENV)
    refused = runner.invoke(app, ["report", "report-page", "-o", str(tmp_path / "x.html"), "--address",
                                  temporal_server.address])
    assert refused.exit_code == 2 and "its payloads are encrypted: set FLYAWAY_CODEC_KEYS" in refused.stderr
    assert not (tmp_path / "x.html").exists()

    assert "<script" not in (tmp_path / "page.html").read_text()
    requested, charts = open_in_chromium(tmp_path / "page.html", tmp_path / "chromium-profile")
    assert requested == [(tmp_path / "page.html").as_uri()], "the page asked for more than itself"
    assert all(height > 100 for height in charts.values()), charts
