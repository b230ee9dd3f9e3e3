"""The worker SIGKILLed at 5 random points of a weights (local -> S3) and secrets (dotenv -> GCP
Secret Manager) migration, and started again each time."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationState, StageState
from flyaway.starter.dev import write_random_file
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.support.figures import report
from tests.support.migrations import eventually, migration_result, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import RecordingProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import MiB

pytestmark = pytest.mark.slow
SEED = 9
KILLS = 5
SIZE = 144 * MiB
PART = 8 * MiB
CONCURRENCY = 4
PROJECT = "kill-test"
SECRETS = {"HF_TOKEN": "hf_kill_test_token", "DATABASE_URL": "postgres://app:pw@db/app"}


@pytest.fixture
def gcp() -> Iterator[FakeSecretManager]:
    with FakeSecretManager() as fake:
        yield fake


def kill_plan(tmp_path: Path, endpoint: str, bucket: str, gcp: FakeSecretManager) -> tuple[dict[str, Any], str]:
    folder = tmp_path / "w"
    folder.mkdir()
    sha = write_random_file(folder / "model.safetensors", SIZE)
    dotenv = tmp_path / "app.env"
    dotenv.write_text("".join(f"{name}='{value}'\n" for name, value in SECRETS.items()))
    plan = weights_plan("worker-kills", {"kind": "local", "path": str(folder)}, s3_location(endpoint, bucket, "m"),
                        part_size="8MiB", concurrency=CONCURRENCY,
                        bandwidth_limit="32MiB")  # slow enough that every kill point falls mid-copy
    plan["secrets"] = {"source": {"kind": "dotenv", "path": str(dotenv)},
                       "destination": {"kind": "gcp_secret_manager", "project": PROJECT, "endpoint": gcp.endpoint,
                                       "prefix": "kill-"}}
    return plan, sha


def test_five_sigkills_cost_at_most_the_parts_in_flight(
        temporal_server: TemporalDevServer, worker: WorkerProcess, recording_proxy: RecordingProxy, s3: Any,
        bucket: str, gcp: FakeSecretManager, tmp_path: Path) -> None:
    plan, sha = kill_plan(tmp_path, recording_proxy.endpoint, bucket, gcp)
    kill_points = sorted(random.Random(SEED).sample(range(1, SIZE // PART), KILLS))  # parts landed
    started = time.monotonic()
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    killed_at, recovery = [], []
    for point in kill_points:
        eventually(lambda: recording_proxy.landed_parts() >= point, 90, interval=0.02,  # noqa: B023 (polled now)
                   what=f"{point} parts to land")
        worker.kill()
        kill_time, landed = time.monotonic(), recording_proxy.landed_parts()
        assert landed < SIZE // PART, "every part landed before this kill; it proves nothing"
        killed_at.append(landed)
        worker.start()
        restarted = time.monotonic()  # a whole request arriving from now on comes from the new worker
        eventually(lambda: recording_proxy.received_at > restarted, 90, interval=0.05,  # noqa: B023 (polled now)
                   what="the new worker to take up the copy")
        recovery.append(round(recording_proxy.received_at - kill_time, 1))
    result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
    elapsed = time.monotonic() - started

    assert result.status.state == MigrationState.completed
    assert result.status.stage_status("secrets").state == StageState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    for name, value in SECRETS.items():
        assert gcp.value(PROJECT, f"kill-{name}") == value.encode()
    resent = recording_proxy.uploaded - SIZE
    bound = KILLS * CONCURRENCY * PART
    report("worker_kills", kills=KILLS, killed_at_parts_landed=killed_at, parts=SIZE // PART, resent_bytes=resent,
           resent_bound_bytes=bound, recovery_seconds=recovery, migration_seconds=round(elapsed, 1),
           worker_peak_rss_mib=worker.peak_rss // MiB)
    assert 0 <= resent <= bound
    assert "resuming upload" in worker.logs()
