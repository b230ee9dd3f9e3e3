"""Errors classified once, by kind: input no retry can fix ends at once with one line naming it (keys
the destination cannot hold, flyaway's own state that does not decode, file-system errors such as a
name too long), transient trouble (EIO, ENOSPC) is retried, and no attempt leaves a partial file."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError

from flyaway.activities.storage.activities import (
    CopyStateNames,
    copy_batch,
    verify_copy,
)
from flyaway.activities.storage.base import STATE_DIR
from flyaway.activities.storage.checksums import part_checksum
from flyaway.activities.storage.engine import CopyEngine
from flyaway.activities.storage.gcs import GcsDestination
from flyaway.activities.storage.local import LocalDestination, LocalSource
from flyaway.activities.storage.names import KeysTheDestinationRefuses
from flyaway.activities.storage.runpod import RunPodVolumeDestination
from flyaway.activities.storage.s3 import S3Destination
from flyaway.activities.storage.stall import CopyStalled, cut_when_stalled, stalled_after
from flyaway.errors import DataCorruption, InvalidPlan
from flyaway.failures import WorkerActivityEnvironment, activity_failure
from flyaway.models.copy import UNIT_WIDTH, BatchRequest, CopySettings, ListingResult, ListingUnit
from flyaway.models.locations import LocalLocation
from flyaway.models.plan import WeightsStage
from flyaway.models.status import MigrationState, StageState
from flyaway.starter.dev import write_random_file
from tests.support.migrations import (
    eventually,
    migration_result,
    migration_status,
    run_async,
    shown_status,
    start_migration,
)
from tests.support.plans import s3_location, weights_plan
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess

LONG_NAME = "n" * 300
MiB = 1024 * 1024


def refusal(limits: Any, keys: list[str]) -> str | None:
    """The one-line refusal of ``keys`` by a destination with ``limits``, or None when it holds them all."""
    check = KeysTheDestinationRefuses(limits, "dest")
    held = [check.holds(key) for key in keys]
    try:
        check.raise_if_any()
    except InvalidPlan as error:
        assert not all(held)
        return str(error)
    assert all(held)
    return None


def test_a_file_system_destination_refuses_a_key_that_is_a_file_and_a_folder_whichever_comes_first() -> None:
    for keys in (["a", "a/b"], ["a/b", "a"], ["x/a/b/c", "x/a"]):
        message = refusal(LocalDestination.limits, keys)
        assert message is not None and "keys that are a file and a folder" in message, keys
        assert "\n" not in message and message.endswith("rename them at the source or leave them out with "
                                                        "weights.exclude")
    assert refusal(LocalDestination.limits, ["a/b", "a/c", "ab", "a.txt"]) is None
    assert refusal(RunPodVolumeDestination.limits, ["a", "a/b"]) is not None
    assert refusal(S3Destination.limits, ["a", "a/b"]) is None  # an object store holds both


def test_names_too_long_forbidden_characters_and_non_utf8_are_refused_naming_them() -> None:
    message = refusal(LocalDestination.limits, [f"dir/{LONG_NAME}", "ok.bin", "bad-\udcff.bin"])
    assert message is not None
    assert "names over 255 bytes: 'dir/nnnn" in message and "(304 bytes)" in message
    assert "names that are not UTF-8: 'bad-\\udcff.bin'" in message
    assert "ok.bin" not in message
    gcs = refusal(GcsDestination.limits, ["line\nbreak.bin", "k" * 1025, LONG_NAME])
    assert gcs is not None and "characters it forbids" in gcs and "'line\\nbreak.bin'" in gcs
    assert "keys over 1024 bytes" in gcs and "names over" not in gcs  # GCS has no per-name limit
    many = refusal(LocalDestination.limits, [f"{n}-{LONG_NAME}" for n in range(10)])
    assert many is not None and "and 7 more" in many


def test_keys_a_local_destination_cannot_hold_stop_the_copy_at_listing_with_one_try(
        temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: MotoServer, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    for key in ("src/a", "src/a/b", f"src/{LONG_NAME}", "src/fine.bin"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"weights")
    out = tmp_path / "out"
    plan = weights_plan("unholdable-keys", s3_location(moto_server.endpoint, bucket, "src"),
                        {"kind": "local", "path": str(out)})
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 60, what="waiting_for_operator")
    assert status.last_error is not None
    assert f"local:{out} cannot hold these source keys: keys that are a file and a folder: 'a' and 'a/b'" \
        in status.last_error
    assert "names over 255 bytes: 'nnnn" in status.last_error and "InvalidPlan" in status.last_error
    assert list_attempts(temporal_server, workflow_id) == [1]
    assert not (out / "fine.bin").exists()
    assert not list(out.glob(f"{STATE_DIR}/partial/*"))


@pytest.mark.parametrize("make, shown", [
    (lambda odd, outside: os.mkfifo(odd), "AccessDenied: source file odd"),
    (lambda odd, outside: odd.symlink_to(odd.parent / "gone"), "SourceObjectMissing: source file odd"),
    (lambda odd, outside: odd.symlink_to(outside), "AccessDenied: source file odd"),
], ids=["fifo", "dangling-link", "link-out-of-the-root"])
def test_a_source_entry_that_is_no_file_stops_the_copy_at_listing_with_one_try(
        temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path, make: Any, shown: str) -> None:
    """End to end: the status names the entry while the migration waits for the operator; no retry, no byte."""
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    write_random_file(source / "fine.bin", 4096)
    (tmp_path / "outside.bin").write_bytes(b"not the source's")
    make(source / "odd", tmp_path / "outside.bin")
    plan = weights_plan(f"odd-{uuid.uuid4().hex[:6]}", {"kind": "local", "path": str(source)},
                        {"kind": "local", "path": str(out)})
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(shown_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 60, what="waiting_for_operator")
    weights = status.stage_status("weights")
    assert weights.state == StageState.waiting_for_operator and weights.error is not None
    assert weights.error.startswith(shown), weights.error
    assert status.last_error == f"weights: {weights.error}"
    assert list_attempts(temporal_server, workflow_id) == [1]
    assert not (out / "fine.bin").exists() and not (out / "odd").exists()
    assert not list(out.glob(f"{STATE_DIR}/partial/*"))


def test_state_that_does_not_decode_stops_the_copy_with_one_try_and_the_status_says_so(
        temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    """End to end: another migration's manifest at the destination does not decode; the listing reads it
    (skip-unchanged) and stops there, DataCorruption naming it, without a retry loop."""
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    write_random_file(source / "fine.bin", 4096)
    garbled = out / STATE_DIR / "migrations" / "migration-earlier-weights" / "manifest.jsonl"
    garbled.parent.mkdir(parents=True)
    garbled.write_bytes(b"\xff\xfe not utf-8\n")
    plan = weights_plan("garbled-state", {"kind": "local", "path": str(source)}, {"kind": "local", "path": str(out)})
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(shown_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 60, what="waiting_for_operator")
    error = status.stage_status("weights").error
    assert error is not None and error.startswith("DataCorruption: "), error
    assert "migrations/migration-earlier-weights/manifest.jsonl: flyaway's state there does not decode" in error
    assert list_attempts(temporal_server, workflow_id) == [1]
    assert not (out / "fine.bin").exists()


def list_attempts(server: TemporalDevServer, workflow_id: str) -> list[int]:
    """The attempt numbers of every started listing activity, across the migration and its children."""

    async def attempts() -> list[int]:
        client = await server.client()
        found: list[int] = []
        async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{workflow_id}'"):
            scheduled: dict[int, str] = {}
            async for event in client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                    started = event.activity_task_started_event_attributes
                    if scheduled.get(started.scheduled_event_id) == "flyaway.weights.list":
                        found.append(started.attempt)
        return found

    return run_async(attempts())


def local_stage(tmp_path: Path) -> WeightsStage:
    (tmp_path / "src").mkdir(exist_ok=True)
    return WeightsStage(source=LocalLocation(kind="local", path=str(tmp_path / "src")),
                        destination=LocalLocation(kind="local", path=str(tmp_path / "dest")))


@pytest.mark.parametrize("garbage", [b"\xff\xfe not utf-8\n", b"{\"key\": \"half a line\n", b"[1, 2]\n"])
def test_state_that_does_not_decode_is_data_corruption_of_that_state(tmp_path: Path, garbage: bytes) -> None:
    stage = local_stage(tmp_path)
    dest = LocalDestination(stage.destination)  # type: ignore[arg-type]
    env = WorkerActivityEnvironment()
    state = CopyStateNames(env.info.workflow_id)
    dest.put_state(state.listing("l1"), garbage)
    dest.put_state(f"{state.shards('l1')}0000000000000000-0001-000000.jsonl", garbage)
    with pytest.raises(ApplicationError) as verify:
        run_async(env.run(verify_copy, stage, ListingResult(listing_id="l1", files_total=1, bytes_total=1)))
    unit = ListingUnit(start=0, end=len(garbage)).model_dump_json().encode()
    dest.put_state(state.units("l1"), unit.ljust(UNIT_WIDTH - 1) + b"\n")
    request = BatchRequest(stage=stage, listing_id="l1", unit=0,
                           settings=CopySettings(concurrency=1, bandwidth_limit=None))
    with pytest.raises(ApplicationError) as batch:
        run_async(env.run(copy_batch, request))
    for failure in (verify.value, batch.value):
        assert failure.type == "DataCorruption" and failure.non_retryable
        assert f"local:{tmp_path / 'dest'} {STATE_DIR}/{state.prefix}runs/l1/" in failure.message
        assert "does not decode" in failure.message and "delete it and retry the stage" in failure.message


@pytest.mark.parametrize(("code", "kind"), [(errno.ENAMETOOLONG, "LimitExceeded"), (errno.ENOTDIR, "InvalidPlan"),
                                            (errno.EEXIST, "InvalidPlan"), (errno.EISDIR, "InvalidPlan"),
                                            (errno.EROFS, "AccessDenied")])
def test_file_system_errors_no_retry_fixes_end_the_activity_naming_the_path(code: int, kind: str) -> None:
    failure = activity_failure(OSError(code, os.strerror(code), "/data/weights/model.bin"))
    assert isinstance(failure, ApplicationError)
    assert failure.type == kind and failure.non_retryable
    assert failure.message.startswith(f"/data/weights/model.bin: {os.strerror(code)}; ")


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.ECONNRESET, errno.ESTALE])
def test_transient_os_errors_stay_retryable(code: int) -> None:
    error = OSError(code, os.strerror(code))
    failure = activity_failure(error)
    assert isinstance(failure, ApplicationError)
    assert failure.type == type(error).__name__ and not failure.non_retryable
    assert failure.message == f"[Errno {code}] {os.strerror(code)}"


def test_temporal_s_own_errors_and_cancellations_pass_through() -> None:
    for error in (ApplicationError("raised as it is", type="Aborted", non_retryable=True), asyncio.CancelledError()):
        assert activity_failure(error) is error


def test_a_failed_put_leaves_no_partial_file(tmp_path: Path) -> None:
    dest = LocalDestination(LocalLocation(kind="local", path=str(tmp_path / "dest")))
    dest.check()
    (tmp_path / "dest" / "a").write_bytes(b"a file where a folder goes")
    with pytest.raises(FileExistsError):  # its folder 'a' is a file
        dest.put("a/b", b"weights", part_checksum("crc32c", b"weights"), "0" * 64)
    with pytest.raises(DataCorruption):
        dest.put("c", b"weights", "00000000", "0" * 64)
    assert not list((tmp_path / "dest" / STATE_DIR / "partial").iterdir())


def test_a_copy_that_moves_no_bytes_is_cut_and_one_that_moves_is_not(tmp_path: Path) -> None:
    local = LocalLocation(kind="local", path=str(tmp_path))
    engine = CopyEngine(LocalSource(local), LocalDestination(local), part_size=MiB, concurrency=2)

    async def hang() -> None:  # a hang no socket timeout sees
        await asyncio.Event().wait()

    async def progress() -> str:
        for _ in range(6):
            await asyncio.sleep(0.1)
            engine.counters.bytes_done += 1
        return "done"

    started = time.monotonic()
    with pytest.raises(CopyStalled, match=r"no bytes moved for \d+ s; this attempt is cut"):
        run_async(cut_when_stalled(engine, hang(), floor=0.3, check_seconds=0.05))
    assert time.monotonic() - started < 5
    assert run_async(cut_when_stalled(engine, progress(), floor=0.3, check_seconds=0.05)) == "done"
    engine.bandwidth.rate = MiB  # 2 streams of 1 MiB parts at 1 MiB/s: a part may wait 8 s for its turn
    assert stalled_after(engine, floor=0.3) == 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, grown with ``grow_disk`` (skipped where the tests may not mount one)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, check=False)


def grow_disk(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=32m", str(folder)], capture_output=True, check=True)


def test_a_full_disk_is_waited_out_and_the_copy_ends_once_space_is_freed(
        temporal_server: TemporalDevServer, worker: WorkerProcess, small_disk: Path, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    sha = write_random_file(tmp_path / "w" / "model.safetensors", 6 * MiB)
    plan = weights_plan("full-disk", {"kind": "local", "path": str(tmp_path / "w")},
                        {"kind": "local", "path": str(small_disk / "out")}, part_size="1MiB", concurrency=2)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    retrying = eventually(lambda: (s := run_async(shown_status(temporal_server, workflow_id))).stage_status(
        "weights").attempt >= 2 and s, 60, what="the copy retrying on a full disk")
    error = retrying.stage_status("weights").error
    assert retrying.stage_status("weights").state == StageState.retrying
    assert error is not None and "No space left on device" in error

    grow_disk(small_disk)  # space is freed: the next attempt resumes and ends
    result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
    assert result.status.state == MigrationState.completed
    assert local_sha256(small_disk / "out" / "model.safetensors") == sha
    assert not list((small_disk / "out" / STATE_DIR).rglob("partial/*"))


def local_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
