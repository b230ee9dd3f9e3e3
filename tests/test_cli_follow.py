"""`start --wait` and `status --watch` follow a migration to its end, whatever its activities heartbeat."""

from __future__ import annotations

import json
import re
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from rich.console import Console
from typer.testing import CliRunner

from flyaway.models.status import MigrationState, MigrationStatus, StageState, StageStatus
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from flyaway.starter.display import ActivityProgress, Snapshot, activity_progress, one_line, render
from tests.fakes.endpoint import FakeEndpoint
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import run_async, start_migration
from tests.support.plans import weights_plan
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess

MiB = 1024 * 1024
runner = CliRunner()


@pytest.mark.parametrize(("activity", "details", "expected"), [
    ("flyaway.weights.list", [1000], ActivityProgress("flyaway.weights.list", 1, note="1,000 files listed so far")),
    ("flyaway.weights.copy_batch", [{"bytes_done": 5 * MiB, "files_done": 2, "rate_bytes_per_second": 1e6,
                                     "uploads": {"a": "b"}, "something_new": [1]}],
     ActivityProgress("flyaway.weights.copy_batch", 1, bytes_done=5 * MiB, files_done=2, rate=1e6)),
    ("flyaway.deploy.health", ["llama: 3 of 5 healthy"],
     ActivityProgress("flyaway.deploy.health", 1, note="llama: 3 of 5 healthy")),
    ("flyaway.image.copy", [17], ActivityProgress("flyaway.image.copy", 1, note="17")),
    ("x", [{"bytes_done": "many", "files_done": -3, "rate_bytes_per_second": "fast"}], ActivityProgress("x", 1)),
    ("x", [None], ActivityProgress("x", 1)),
    ("x", [True], ActivityProgress("x", 1)),
    ("x", [[1, 2, 3]], ActivityProgress("x", 1)),
    ("x", [], ActivityProgress("x", 1)),
])
def test_a_heartbeat_is_shown_or_skipped_never_fatal(activity: str, details: list[Any],
                                                     expected: ActivityProgress) -> None:
    assert activity_progress(activity, 1, details) == expected


def test_progress_adds_the_batch_in_flight_to_the_finished_batches_without_counting_twice() -> None:
    status = MigrationStatus(name="m", state=MigrationState.running, stage="weights", bytes_total=100 * MiB,
                             files_total=4, bytes_done=30 * MiB, files_done=1)
    in_flight = [ActivityProgress("flyaway.weights.copy_batch", 1, bytes_done=25 * MiB, files_done=1, rate=MiB)]
    lagging = Snapshot(status=status, run_status=None, activities=in_flight, finished_batches=(30 * MiB, 1))
    assert (lagging.bytes_done, lagging.files_done, lagging.rate) == (55 * MiB, 2, MiB)
    live = Snapshot(status=status.model_copy(update={"bytes_done": 60 * MiB}), run_status=None,
                    activities=in_flight, finished_batches=(30 * MiB, 1))
    assert live.bytes_done == 60 * MiB  # the query is ahead of the heartbeat: it wins
    unknown = Snapshot(status=status, run_status=None, activities=in_flight * 9)
    assert unknown.bytes_done == 100 * MiB  # never more than the total
    assert one_line(lagging).startswith("migration-m running (stage weights) | ")


def progress_lines(output: str) -> list[tuple[float, str]]:
    return [(float(m.group(1)), m.group(2)) for m in re.finditer(r"\| ([\d.]+) (B|KiB|MiB) of 40\.0 MiB", output)]


def test_status_watch_and_start_wait_follow_every_stage(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    (folder / "tokenizer").mkdir(parents=True)
    write_random_file(folder / "model.safetensors", 40 * MiB - 1200 * 64)
    for index in range(1200):  # more than a listing heartbeat's 1,000 files
        (folder / "tokenizer" / f"piece-{index:04d}.json").write_bytes(b"x" * 64)
    plan = weights_plan("followed", {"kind": "local", "path": str(folder)},
                        {"kind": "local", "path": str(tmp_path / "out")}, part_size="4MiB", concurrency=2,
                        bandwidth_limit="3MiB")
    run_async(start_migration(temporal_server, plan, worker.task_queue))

    watched = runner.invoke(app, ["status", "followed", "--watch", "--address", temporal_server.address])
    output = watched.stdout + watched.stderr
    assert watched.exit_code == 0 and "Traceback" not in output, output
    lines = output.splitlines()
    assert lines[-1].startswith("migration-followed completed"), lines[-3:]
    assert any(line.startswith("migration-followed running (stage weights)") for line in lines), lines
    moving = [size for size, unit in progress_lines(output) if unit == "MiB" and 0 < size < 40]
    assert len(moving) >= 2 and moving == sorted(moving), output  # it moved while the copy ran, never back

    plan_file = tmp_path / "again.yaml"
    plan_file.write_text(f"name: followed-again\nweights:\n  source: {{kind: local, path: {folder}}}\n"
                         f"  destination: {{kind: local, path: {tmp_path / 'again'}}}\n  bandwidth_limit: 20MiB\n")
    waited = runner.invoke(app, ["start", str(plan_file), "--wait", "--task-queue", worker.task_queue,
                                 "--address", temporal_server.address])
    output = waited.stdout + waited.stderr
    assert waited.exit_code == 0 and "Traceback" not in output, output
    assert output.splitlines()[0] == "started migration-followed-again"
    assert output.splitlines()[-1].startswith("migration-followed-again completed")
    assert (tmp_path / "again" / "tokenizer" / "piece-1199.json").read_bytes() == b"x" * 64


def test_start_wait_follows_the_copy_and_the_canary_to_the_end(temporal_server: TemporalDevServer,
                                                               worker: WorkerProcess, moto_server: MotoServer,
                                                               tmp_path: Path) -> None:
    route53 = boto3.client("route53", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                           aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    zone = route53.create_hosted_zone(Name="example.com.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
        {"Action": "CREATE", "ResourceRecordSet": {"Name": "api.example.com.", "Type": "CNAME", "SetIdentifier": name,
                                                   "Weight": weight, "TTL": 60, "ResourceRecords": [{"Value": target}]}}
        for name, weight, target in (("fly", 100, "app.fly.dev"), ("new", 0, "new.example.net"))]})
    folder = tmp_path / "weights"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 12 * MiB)
    plan = weights_plan("two-stages", {"kind": "local", "path": str(folder)},
                        {"kind": "local", "path": str(tmp_path / "out")}, bandwidth_limit="3MiB")
    with FakeEndpoint() as old, FakeEndpoint() as new:
        plan["canary"] = {
            "router": {"kind": "route53", "hosted_zone_id": zone, "record_name": "api.example.com",
                       "fly_set_identifier": "fly", "new_set_identifier": "new", "endpoint_url": moto_server.endpoint},
            "old_endpoint": old.endpoint, "new_endpoint": new.endpoint,
            "steps": [{"weight": 50, "pause_seconds": 4}, {"weight": 100}],
            "analysis": {"interval_seconds": 1, "requests_per_probe": 20, "concurrency": 10,
                         "probes": [{"path": "/v1/completions", "method": "POST", "timeout_seconds": 2,
                                     "body": {"model": "tiny", "prompt": "hi", "max_tokens": 1}}],
                         "thresholds": {"min_requests": 20, "min_success_rate": 99, "max_p99_ms": 2000}}}
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(plan))
        waited = runner.invoke(app, ["start", str(plan_file), "--wait", "--task-queue", worker.task_queue,
                                     "--address", temporal_server.address])
    output = waited.stdout + waited.stderr
    assert waited.exit_code == 0 and "Traceback" not in output, output
    lines = output.splitlines()
    seen = [stage for stage in ("validate", "weights", "canary")
            if any(line.startswith(f"migration-two-stages {'validating' if stage == 'validate' else 'running'} "
                                   f"(stage {stage})") for line in lines)]
    assert seen == ["validate", "weights", "canary"], output
    assert lines[-1].startswith("migration-two-stages completed"), output
    assert any(line.startswith("migration-two-stages running (stage canary) | ") and "50% on the new side" in line
               for line in lines), output  # the canary's own account of its step


def test_the_terminal_view_draws_every_kind_of_snapshot() -> None:
    stages = [StageStatus(name="weights", state=StageState.waiting_for_operator, error="AccessDenied: s3://b"),
              StageStatus(name="canary", state=StageState.retrying)]
    status = MigrationStatus(name="m", state=MigrationState.waiting_for_operator, stage="weights", stages=stages,
                             bytes_total=10 * MiB, files_total=3, last_error="weights: AccessDenied: s3://b")
    notes = [ActivityProgress("flyaway.weights.list", 1, note="2,000 files listed so far")]
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    console.print(render(Snapshot(status=status, run_status=None, activities=notes)))
    console.print(render(Snapshot(status=status, run_status=None, failure="invalid plan: x",
                                  failure_type="InvalidPlan")))
    text = out.getvalue()
    assert "migration-m" in text and "waiting_for_operator" in text and "2,000 files listed so far" in text
    assert "flyaway retry m" in text
