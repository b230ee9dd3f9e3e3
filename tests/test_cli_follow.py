"""`start --wait` and `status --watch` follow a migration to its end, whatever its activities heartbeat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flyaway.models.status import MigrationState, MigrationStatus
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from flyaway.starter.display import ActivityProgress, Snapshot, activity_progress, one_line
from tests.harness import TemporalDevServer, WorkerProcess, run_async, start_migration, weights_plan

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
