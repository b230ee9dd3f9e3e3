"""``flyaway report``: the page and its JSON for real migrations (local -> moto S3, a migration waiting for
the operator then aborted), parsed back and checked against the workflow's status and the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from flyaway.models.status import MigrationState
from flyaway.report.model import MigrationReport
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from tests.fixtures import make_tree
from tests.harness import (
    S3FaultProxy,
    TemporalDevServer,
    WorkerProcess,
    abort_migration,
    eventually,
    migration_status,
    run_async,
    run_migration,
    s3_location,
    start_migration,
    weights_plan,
)

MiB = 1024 * 1024
runner = CliRunner()


def write_report(server: TemporalDevServer, name: str, output: Path, *extra: str) -> MigrationReport:
    """Run `flyaway report` and parse the JSON it wrote beside the page."""
    result = runner.invoke(app, ["report", name, "--output", str(output), "--address", server.address, *extra])
    assert result.exit_code == 0, result.output + result.stderr
    assert str(output) in result.output and str(output.with_suffix(".json")) in result.output
    assert output.read_text().startswith("<!doctype html>")
    return MigrationReport.model_validate_json(output.with_suffix(".json").read_text())


def manifest_lines(s3: Any, bucket: str, prefix: str) -> tuple[bytes, list[dict[str, Any]]]:
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/.flyaway/manifest.jsonl")["Body"].read()
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
    body, entries = manifest_lines(s3, bucket, "models/demo")
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
    assert verification.manifest_location.startswith(f"s3://{bucket}/models/demo")
    assert verification.manifest_location.endswith("/.flyaway/manifest.jsonl")
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
