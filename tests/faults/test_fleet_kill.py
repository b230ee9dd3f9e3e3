"""One of three workers SIGKILLed while a migration's units run on all three: the other two finish it,
and the bytes sent again stay within the parts the killed worker had in flight."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.env import TEST_AWS_ENV
from tests.support.figures import report
from tests.support.migrations import eventually, migration_result, run_async, running_workers, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import RecordingProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import MiB

pytestmark = pytest.mark.slow
SIZE = 192 * MiB
PART = 8 * MiB
CONCURRENCY = 2
PARALLELISM = 3


@pytest.fixture
def fleet(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    with running_workers(temporal_server, task_queue, tmp_path, 3, TEST_AWS_ENV) as workers:
        yield workers


def units(process: WorkerProcess, event_name: str) -> set[int]:
    """Units the worker's log names in events ``event_name``."""
    found = set()
    for line in process.logs().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == event_name:
            found.add(event["unit"])
    return found


def units_in_flight(process: WorkerProcess) -> set[int]:
    return units(process, "copying unit") - units(process, "unit copied")


def test_a_killed_worker_costs_only_its_parts_in_flight(
        temporal_server: TemporalDevServer, fleet: list[WorkerProcess], recording_proxy: RecordingProxy, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    sha = write_random_file(folder / "model.safetensors", SIZE)
    plan = weights_plan("fleet-kill", {"kind": "local", "path": str(folder)},
                        s3_location(recording_proxy.endpoint, bucket, "m"), part_size="8MiB", piece_size="16MiB",
                        concurrency=CONCURRENCY, parallelism=PARALLELISM,
                        bandwidth_limit="24MiB")  # about 8 s: the kill falls mid-copy
    started = time.monotonic()
    workflow_id = run_async(start_migration(temporal_server, plan, fleet[0].task_queue))
    eventually(lambda: recording_proxy.landed_parts() >= 4, 90, interval=0.02, what="4 parts to land")
    victim = eventually(lambda: next((p for p in fleet if units_in_flight(p)), None), 30, interval=0.02,
                        what="a worker with a unit in flight")
    in_flight = units_in_flight(victim)
    victim.kill()
    landed = recording_proxy.landed_parts()
    result = run_async(migration_result(temporal_server, workflow_id, timeout=180))
    elapsed = time.monotonic() - started

    assert result.status.state == MigrationState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    assert landed < SIZE // PART, "every part landed before the kill; it proves nothing"
    resent = recording_proxy.uploaded - SIZE
    bound = len(in_flight) * CONCURRENCY * PART
    survivors = [p for p in fleet if p is not victim]
    report("fleet_kill", workers=len(fleet), killed_units_in_flight=sorted(in_flight), parts_landed_at_kill=landed,
           resent_bytes=resent, resent_bound_bytes=bound, migration_seconds=round(elapsed, 1))
    assert 0 <= resent <= bound
    assert in_flight <= set().union(*(units(p, "unit copied") for p in survivors)), "the others took its units over"
