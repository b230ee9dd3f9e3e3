"""Copies through a proxy that fails 20% of object-data requests at random (503 SlowDown, a reset,
or a stall that holds the connection open for a minute), in front of an S3 destination and then an
S3 source. Each copy is run clean first; the faulty one must end verified within a bound relative
to it, which it can only do when stalls are cut within seconds (each held stall would cost a minute)."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from flyaway.activities.storage.base import STATE_DIR
from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.figures import STALL_SECONDS, report
from tests.support.migrations import run_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import RecordingProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import MiB

pytestmark = pytest.mark.slow
SEED = 9
SMALL_FILES = 50
CONCURRENCY = 4
#: the faulty copy may take this many times the clean one plus the stalls' own cost
BOUND_MULTIPLE = 3  # generous for a loaded 2-core machine; a stall waited out costs 60 s


def weights_folder(folder: Path) -> dict[str, str]:
    """A 96 MiB file and small files, by key with their sha256."""
    folder.mkdir()
    shas = {"model.safetensors": write_random_file(folder / "model.safetensors", 96 * MiB)}
    for number in range(SMALL_FILES):
        key = f"tokenizer/piece-{number:02d}.bin"
        (folder / "tokenizer").mkdir(exist_ok=True)
        shas[key] = write_random_file(folder / key, 1024 + number * 997)
    return shas


def timed_copy(server: TemporalDevServer, worker: WorkerProcess, name: str, source: dict[str, Any],
               destination: dict[str, Any]) -> float:
    plan = weights_plan(name, source, destination, part_size="8MiB", concurrency=CONCURRENCY)
    started = time.monotonic()
    result = run_migration(server, plan, worker.task_queue, timeout=240)
    assert result.status.state == MigrationState.completed
    return time.monotonic() - started


def bound(clean_seconds: float, stalls: int) -> float:
    """How long the faulty copy may take: a small multiple of the clean copy plus what the stalls cost
    when each is cut after ``STALL_SECONDS``, spread over the streams. A stall waited out would cost the
    proxy's minute instead."""
    return BOUND_MULTIPLE * (clean_seconds + stalls * STALL_SECONDS / CONCURRENCY)


def local_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_faults_in_front_of_an_s3_destination_cost_a_small_multiple_of_the_clean_copy(
        temporal_server: TemporalDevServer, stall_cutting_worker: WorkerProcess, recording_proxy: RecordingProxy,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    shas = weights_folder(tmp_path / "w")
    total = sum(os.path.getsize(path) for path in (tmp_path / "w").rglob("*") if path.is_file())
    source = {"kind": "local", "path": str(tmp_path / "w")}
    clean = timed_copy(temporal_server, stall_cutting_worker, "dest-clean", source,
                       s3_location(recording_proxy.endpoint, bucket, "clean"))
    uploaded_clean = recording_proxy.uploaded

    recording_proxy.chaos(0.2, SEED)
    faulty = timed_copy(temporal_server, stall_cutting_worker, "dest-chaos", source,
                        s3_location(recording_proxy.endpoint, bucket, "m"))

    for key, sha in shas.items():
        assert s3_sha256(s3, bucket, f"m/{key}") == sha, key
    resent = recording_proxy.uploaded - uploaded_clean - total
    recovery = recording_proxy.recovery_seconds()
    report("storage_faults_s3_destination", faults=dict(recording_proxy.faults),
           failed_request_bytes=recording_proxy.failed_bytes, resent_bytes=resent, copied_bytes=total,
           clean_seconds=round(clean, 1), faulty_seconds=round(faulty, 1), multiple=round(faulty / clean, 2),
           bound_seconds=round(bound(clean, recording_proxy.faults["stall"]), 1), stall_cut_seconds=STALL_SECONDS,
           recovery_seconds_median=round(statistics.median(recovery), 2),
           recovery_seconds_max=round(max(recovery), 2))
    assert set(recording_proxy.faults) == {"slowdown", "reset", "stall"}, recording_proxy.faults
    assert 0 < resent <= recording_proxy.failed_bytes  # each failed request sent again, nothing else
    assert max(recovery) < recording_proxy.stall_seconds / 2  # a held stall was cut, not waited out
    assert faulty <= bound(clean, recording_proxy.faults["stall"]), (faulty, clean)


def test_faults_in_front_of_an_s3_source_cost_a_small_multiple_of_the_clean_copy(
        temporal_server: TemporalDevServer, stall_cutting_worker: WorkerProcess, recording_proxy: RecordingProxy,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    shas = weights_folder(tmp_path / "w")
    for path in (tmp_path / "w").rglob("*"):
        if path.is_file():  # one PUT each: moto gives a multipart object a CRC32 neither whole nor composite
            s3.put_object(Bucket=bucket, Key=f"src/{path.relative_to(tmp_path / 'w')}", Body=path.read_bytes())
    source = s3_location(recording_proxy.endpoint, bucket, "src")
    clean = timed_copy(temporal_server, stall_cutting_worker, "source-clean", source,
                       {"kind": "local", "path": str(tmp_path / "clean")})

    recording_proxy.chaos(0.2, SEED)
    faulty = timed_copy(temporal_server, stall_cutting_worker, "source-chaos", source,
                        {"kind": "local", "path": str(tmp_path / "out")})

    for key, sha in shas.items():
        assert local_sha256(tmp_path / "out" / key) == sha, key
    assert not list((tmp_path / "out" / STATE_DIR).glob("partial/*"))  # no attempt left a partial file
    report("storage_faults_s3_source", faults=dict(recording_proxy.faults),
           failed_request_bytes=recording_proxy.failed_bytes, clean_seconds=round(clean, 1),
           faulty_seconds=round(faulty, 1), multiple=round(faulty / clean, 2),
           bound_seconds=round(bound(clean, recording_proxy.faults["stall"]), 1), stall_cut_seconds=STALL_SECONDS)
    assert set(recording_proxy.faults) == {"slowdown", "reset", "stall"}, recording_proxy.faults
    assert faulty <= bound(clean, recording_proxy.faults["stall"]), (faulty, clean)
