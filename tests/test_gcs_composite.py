"""GCS parallel composite uploads on the real emulator: parts as temporary objects in flyaway's state,
from any worker and in any order, composed in levels, checked by crc32c, and cleaned up.

What gcp-storage-emulator does differently from GCS with a composed object: it concatenates the
sources' bytes and computes the crc32c of the result (GCS combines the components' crc32c: the same
value), but it also gives the object an ``md5Hash`` (GCS gives a composite object none) and no
``componentCount``, and it ignores the 1,024-component limit. So these tests show the bytes and the
crc32c check, not the absence of an MD5 or the component limit (``max_parts`` holds that).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flyaway.activities.storage.base import STATE_DIR, UploadGone
from flyaway.activities.storage.checksums import part_checksum
from flyaway.activities.storage.engine import CopyEngine, begin_recorded_upload
from flyaway.activities.storage.gcs import COMPOSE_SOURCES, GcsDestination
from flyaway.activities.storage.local import LocalSource
from flyaway.activities.storage.pieces import PieceCopy, pieces_folder
from flyaway.errors import DataCorruption, InvalidPlan
from flyaway.models.copy import ListingLine, ListingUnit, ManifestEntry, PartRecord
from flyaway.models.locations import GcsLocation, LocalLocation
from flyaway.models.status import MigrationState
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import TWO_ACTIVITIES, run_migration, running_workers
from tests.support.plans import gcs_location, manifest_key, weights_plan
from tests.support.servers import GcsEmulator, TemporalDevServer, WorkerProcess
from tests.test_fanout import check_manifest, source_tree

KiB = 1024
MiB = 1024 * KiB
PART = 256 * KiB


@pytest.fixture
def emulator_env(monkeypatch: pytest.MonkeyPatch, gcs_emulator: GcsEmulator) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)


def temporaries(gcs: Any, bucket: str, prefix: str = "w/") -> list[str]:
    return [blob.name for blob in gcs.bucket(bucket).list_blobs(prefix=f"{prefix}{STATE_DIR}/gcs-parts")]


def send(dest: GcsDestination, upload_id: str, data: bytes, numbers: list[int]) -> list[PartRecord]:
    records = []
    for number in numbers:
        chunk = data[(number - 1) * PART:number * PART]
        records.append(dest.upload_part("big.bin", upload_id, number, (number - 1) * PART, chunk,
                                        part_checksum("crc32c", chunk)))
    return records


def test_parts_from_two_workers_in_any_order_compose_in_levels(emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    location = GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w")
    data = os.urandom(40 * PART + 77)  # 41 parts: more than one compose takes
    count = 41
    assert count > COMPOSE_SOURCES
    first, second = GcsDestination(location), GcsDestination(location)
    upload_id = first.begin_upload("big.bin", len(data))
    records = send(first, upload_id, data, list(range(count, 0, -2)))  # odd parts, last first
    assert [obj.key for obj in second.list()] == []  # the temporaries are flyaway's state, not the user's data
    records += send(second, upload_id, data, list(range(2, count, 2)))

    landed = second.list_parts("big.bin", upload_id)  # size and crc32c, from the temporaries' metadata
    assert {n: (p.size, p.checksum) for n, p in landed.items()} == {p.number: (p.size, p.checksum) for p in records}
    parts = sorted(records, key=lambda part: part.number)
    generation = second.complete("big.bin", upload_id, parts, "")

    blob = gcs.bucket(gcs_bucket).get_blob("w/big.bin")
    assert str(blob.generation) == generation  # before the download: the emulator's answer to it clears it
    assert blob.download_as_bytes() == data
    assert temporaries(gcs, gcs_bucket) == []
    # completed again (a piece that also saw every piece recorded, or a retried attempt): the same object
    assert GcsDestination(location).complete("big.bin", upload_id, parts, "") == generation
    with pytest.raises(UploadGone):
        first.list_parts("big.bin", upload_id)


def test_abort_leaves_no_temporaries(emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w"))
    data = os.urandom(3 * PART)
    upload_id = dest.begin_upload("big.bin", len(data))
    send(dest, upload_id, data, [1, 3])
    assert len(temporaries(gcs, gcs_bucket)) == 3  # two parts and the upload's record

    dest.abort("big.bin", upload_id)

    assert temporaries(gcs, gcs_bucket) == [] and gcs.bucket(gcs_bucket).get_blob("w/big.bin") is None
    with pytest.raises(UploadGone):
        dest.list_parts("big.bin", upload_id)
    dest.abort("big.bin", upload_id)  # already gone: fine


def test_a_corrupted_part_is_refused(emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w"))
    data = os.urandom(2 * PART)
    upload_id = dest.begin_upload("big.bin", len(data))
    with pytest.raises(DataCorruption, match="crc32c"):  # GCS checks the crc32c each part carries
        dest.upload_part("big.bin", upload_id, 1, 0, b"\0" * PART, part_checksum("crc32c", data[:PART]))
    parts = send(dest, upload_id, data, [1, 2])
    # a part that changed after it landed (or a record that does not match it) is refused at complete
    gcs.bucket(gcs_bucket).blob(f"w/{STATE_DIR}/gcs-parts/{upload_id.removeprefix('compose-')}/000002").upload_from_string(
        b"\1" * PART)
    with pytest.raises(DataCorruption, match="part 2"):
        dest.complete("big.bin", upload_id, parts, "")
    assert gcs.bucket(gcs_bucket).get_blob("w/big.bin") is None  # nothing made visible


class KilledAfterComplete(Exception):
    pass


class DyingDestination(GcsDestination):
    """Completes the upload, then dies before the engine can record the file."""

    def complete(self, key: str, upload_id: str, parts: list[PartRecord], sha256: str) -> str:
        super().complete(key, upload_id, parts, sha256)
        raise KilledAfterComplete()


class CountingDestination(GcsDestination):
    def __init__(self, location: GcsLocation) -> None:
        super().__init__(location)
        self.parts_sent = 0

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        self.parts_sent += 1
        return super().upload_part(key, upload_id, number, offset, data, checksum)


def test_a_kill_between_compose_and_record_finds_the_object_and_sends_nothing(
        emulator_env: None, gcs: Any, gcs_bucket: str, tmp_path: Path) -> None:
    data = os.urandom(33 * MiB + 5)  # 34 parts of 1 MiB (the engine's parts are whole MiB): two compose levels
    (tmp_path / "model.bin").write_bytes(data)
    source = LocalSource(LocalLocation(kind="local", path=str(tmp_path)))
    location = GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w")

    def engine(dest: GcsDestination) -> CopyEngine:
        return CopyEngine(source, dest, part_size=MiB, concurrency=4, state_prefix="migration/")

    dying = engine(DyingDestination(location))
    with pytest.raises(KilledAfterComplete):
        asyncio.run(dying.copy_file(ListingLine(file=source.stat("model.bin"))))
    dying.close()
    composed = str(gcs.bucket(gcs_bucket).get_blob("w/model.bin").generation)
    assert gcs.bucket(gcs_bucket).blob("w/model.bin").download_as_bytes() == data

    counting = CountingDestination(location)
    again = engine(counting)
    entry = asyncio.run(again.copy_file(ListingLine(file=source.stat("model.bin"))))
    again.close()

    assert counting.parts_sent == 0 and again.counters.bytes_uploaded == 0
    assert entry.dest_version == composed == str(gcs.bucket(gcs_bucket).get_blob("w/model.bin").generation)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.parts == 34
    assert temporaries(gcs, gcs_bucket) == []


class CompletedMeanwhile(CountingDestination):
    """Before this piece lists the parts that landed in order to complete, another piece completes the upload."""

    def __init__(self, location: GcsLocation, other_piece: Callable[[], object]) -> None:
        super().__init__(location)
        self.other_piece = other_piece
        self.listings = 0

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        self.listings += 1
        if self.listings == 2:  # the first is the piece's own, before it sends
            self.other_piece()
        return super().list_parts(key, upload_id)


def test_two_pieces_completing_at_once_make_one_object_and_send_no_part_again(
        emulator_env: None, gcs: Any, gcs_bucket: str, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    (tmp_path / "model.bin").write_bytes(data)
    source = LocalSource(LocalLocation(kind="local", path=str(tmp_path)))
    location = GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w")
    line = ListingLine(file=source.stat("model.bin"))
    begin_recorded_upload(GcsDestination(location), "migration/", line.file, MiB)
    folder = pieces_folder("migration/runs/r/", "model.bin")

    def piece(dest: GcsDestination, number: int) -> ManifestEntry | None:
        engine = CopyEngine(source, dest, part_size=MiB, concurrency=4, state_prefix="migration/")
        unit = ListingUnit(start=0, end=0, first_part=2 * number + 1, last_part=2 * number + 2, piece=number, pieces=2)
        try:
            return asyncio.run(PieceCopy(engine, line, unit, folder).run())
        finally:
            engine.close()

    assert piece(GcsDestination(location), 1) is None  # parts 3 and 4 sent; piece 0 not recorded yet
    completed_by_the_other: list[ManifestEntry | None] = []
    first = CompletedMeanwhile(location, lambda: completed_by_the_other.append(piece(GcsDestination(location), 1)))

    entry = piece(first, 0)

    made = gcs.bucket(gcs_bucket).get_blob("w/model.bin")
    assert completed_by_the_other[0] is not None and completed_by_the_other[0].dest_version == str(made.generation)
    assert entry is not None and entry.dest_version == str(made.generation)
    assert first.parts_sent == 2  # its own two, once: none sent again into an upload already completed
    assert made.download_as_bytes() == data
    assert temporaries(gcs, gcs_bucket) == []


def test_check_refuses_a_bucket_whose_temporaries_would_cost_early_deletion(
        emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    bucket = gcs.bucket(gcs_bucket)
    bucket.storage_class = "NEARLINE"
    bucket.patch()
    with pytest.raises(InvalidPlan, match=r"NEARLINE.*composite_uploads: false"):
        GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket)).check()
    GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, composite_uploads=False)).check()


def test_check_refuses_a_bucket_whose_temporaries_could_not_be_deleted(
        emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    bucket = gcs.bucket(gcs_bucket)
    bucket.retention_period = 3600
    bucket.patch()
    with pytest.raises(InvalidPlan, match=r"retention policy.*could not be deleted"):
        GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket)).check()


@pytest.fixture
def gcs_workers(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path,
                gcs_emulator: GcsEmulator) -> Iterator[list[WorkerProcess]]:
    env = {**TEST_AWS_ENV, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    with running_workers(temporal_server, task_queue, tmp_path, 2, env, TWO_ACTIVITIES) as workers:
        yield workers


def test_a_file_split_among_two_workers_lands_on_gcs(temporal_server: TemporalDevServer,
                                                     gcs_workers: list[WorkerProcess], gcs: Any, gcs_bucket: str,
                                                     tmp_path: Path) -> None:
    contents = source_tree(tmp_path / "weights")
    plan = weights_plan("fan-out-gcs", {"kind": "local", "path": str(tmp_path / "weights")},
                        gcs_location(gcs_bucket, "m"), part_size="5MiB", piece_size="10MiB", concurrency=2,
                        parallelism=4, batch_files=3)

    result = run_migration(temporal_server, plan, gcs_workers[0].task_queue)

    assert result.status.state == MigrationState.completed, result.status.last_error
    bucket = gcs.bucket(gcs_bucket)
    for key, data in contents.items():
        assert bucket.blob(f"m/{key}").download_as_bytes() == data, key
    body = bucket.blob(f"m/{manifest_key(plan['name'])}").download_as_bytes()
    manifest = {entry["key"]: entry for entry in map(json.loads, body.decode().splitlines())}
    check_manifest(manifest, contents)
    assert temporaries(gcs, gcs_bucket, "m/") == []
    assert all("unit copied" in process.logs() for process in gcs_workers)


def test_a_second_completer_finds_the_object_another_composed(emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    """Two pieces that both saw every piece recorded complete at once: the one that comes second, while the
    temporaries are still there, returns the generation the first made rather than composing a second one."""
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w"))
    data = os.urandom(3 * PART)
    upload_id = dest.begin_upload("big.bin", len(data))
    parts = send(dest, upload_id, data, [1, 2, 3])
    bucket = gcs.bucket(gcs_bucket)
    first = bucket.blob("w/big.bin")
    first.compose([bucket.blob(name) for name in sorted(temporaries(gcs, gcs_bucket)) if name[-1].isdigit()])

    assert dest.complete("big.bin", upload_id, parts, "") == str(first.generation)
    assert str(bucket.get_blob("w/big.bin").generation) == str(first.generation)
    assert temporaries(gcs, gcs_bucket) == []


def test_two_completers_composing_at_the_same_moment_make_one_generation(
        emulator_env: None, gcs: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read the object as absent before either composes: the final compose's generation precondition
    lets one make the object, and the other takes that object (the CI failure of a split file, whose two
    pieces each recorded their own generation, and verify found the manifest's generation replaced)."""
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w"))
    data = os.urandom(3 * PART)
    upload_id = dest.begin_upload("big.bin", len(data))
    parts = send(dest, upload_id, data, [1, 2, 3])
    both_read = threading.Barrier(2, timeout=30)
    reads = iter(range(2))
    read_object = dest.bucket.get

    def get(name: str) -> Any:
        found = read_object(name)
        if name == "w/big.bin" and next(reads, None) is not None:  # the first read of each completer
            both_read.wait()
        return found

    monkeypatch.setattr(dest.bucket, "get", get)
    with ThreadPoolExecutor(2) as pool:
        versions = list(pool.map(lambda _: dest.complete("big.bin", upload_id, parts, ""), range(2)))

    blob = gcs.bucket(gcs_bucket).get_blob("w/big.bin")
    assert versions == [str(blob.generation)] * 2, "both completers return the one object's generation"
    assert blob.download_as_bytes() == data
    assert temporaries(gcs, gcs_bucket) == []
