"""Integrity end to end, in process against real servers: bytes read are checked against the source's own
checksum, resume finds what landed, state belongs to its migration and is checked for shape, verify counts
against the listing, reads stay on the listed commit, SSE-KMS buckets work."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.response import StreamingBody

from flyaway.activities.storage import open_destination, open_source
from flyaway.activities.storage.activities import (
    CopyStateNames,
    _abort_uploads,
    _verify,
    _write_listing,
)
from flyaway.activities.storage.base import STATE_DIR, Destination, Source
from flyaway.activities.storage.engine import CopyEngine, upload_state_name
from flyaway.activities.storage.hf import HfSource
from flyaway.activities.storage.local import LocalDestination, LocalSource
from flyaway.activities.storage.modal_volume import ModalVolumeDestination
from flyaway.activities.storage.s3 import S3Destination, S3Source
from flyaway.errors import DataCorruption, InvalidPlan
from flyaway.models.copy import (
    ListingLine,
    ListingResult,
    ManifestEntry,
    PartRecord,
    SourceChecksum,
    SourceFile,
    UploadState,
)
from flyaway.models.locations import HfLocation, LocalLocation, ModalVolumeLocation, S3Location
from flyaway.models.plan import WeightsStage, parse_plan
from tests.fakes import modal_volume as fake_modal
from tests.fakes.hf_hub import FakeHub
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy, SseKmsProxy
from tests.support.s3 import plain_client, put_multipart, s3_client
from tests.support.servers import GcsEmulator, HttpServer, QuietHandler

MiB = 1024 * 1024


class Killed(Exception):
    """Stands for a worker killed after a file landed and before it was recorded."""


def copy(source: Source, dest: Destination, *, part_size: int = 2 * MiB, concurrency: int = 1,
         check_landed: bool = False, kill_before_recording: str | None = None,
         state_prefix: str = "migrations/t/") -> list[ManifestEntry]:
    """Copy every file of ``source`` with one engine; the entries it would record. ``kill_before_recording``:
    the key whose entry stops the copy as a kill would (the files before it landed, none of them recorded)."""
    entries: list[ManifestEntry] = []

    async def record(entry: ManifestEntry) -> None:
        if entry.key == kill_before_recording:
            raise Killed(entry.key)
        entries.append(entry)

    engine = CopyEngine(source, dest, part_size=part_size, concurrency=concurrency, check_landed=check_landed,
                        state_prefix=state_prefix)
    try:
        asyncio.run(engine.copy_all([ListingLine(file=file) for file in source.list()], record))
    finally:
        engine.close()
    return entries


def local(path: Path) -> LocalLocation:
    return LocalLocation(kind="local", path=str(path))


def s3_plan_location(endpoint: str, bucket: str, prefix: str) -> S3Location:
    return S3Location.model_validate(s3_location(endpoint, bucket, prefix))


@pytest.fixture
def s3_tree(moto_server: Any, bucket: str) -> dict[str, bytes]:
    """A single-part object (its ETag is its MD5), one with a SHA256 checksum and a 3-part object."""
    client = plain_client(moto_server.endpoint)
    contents = {"plain.bin": os.urandom(100_000), "sha.bin": os.urandom(100_000)}
    client.put_object(Bucket=bucket, Key="src/plain.bin", Body=contents["plain.bin"])
    client.put_object(Bucket=bucket, Key="src/sha.bin", Body=contents["sha.bin"], ChecksumAlgorithm="SHA256")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    put_multipart(client, bucket, "src/multi.bin", parts)
    contents["multi.bin"] = b"".join(parts)
    return contents


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and STATE_DIR not in p.relative_to(folder).parts}


# ---- source checksums --------------------------------------------------------------------------

def test_s3_source_publishes_etag_md5_additional_checksums_and_multipart_composites(
        s3_proxy: S3FaultProxy, bucket: str, s3_tree: dict[str, bytes], tmp_path: Path) -> None:
    source = S3Source(s3_plan_location(s3_proxy.endpoint, bucket, "src"))
    published = {file.key: source.published_checksum(file) for file in source.list()}
    assert published["plain.bin"] is not None and published["plain.bin"].label() == (
        f"md5:{hashlib.md5(s3_tree['plain.bin']).hexdigest()}")
    assert published["sha.bin"] is not None and published["sha.bin"].label() == (
        f"sha256:{hashlib.sha256(s3_tree['sha.bin']).hexdigest()}")
    assert published["multi.bin"] is not None and published["multi.bin"].label().startswith(f"md5/{5 * MiB}:")


def test_a_multipart_checksum_without_its_part_count_or_full_object_type_is_not_taken_for_the_whole_file(
        moto_server: Any, bucket: str, tmp_path: Path) -> None:
    """boto3's own multipart upload adds a CRC32 that moto reports with neither a part count nor
    ChecksumType FULL_OBJECT: the multipart ETag is checked instead, and a clean copy lands."""
    data = os.urandom(6 * MiB)
    s3_client(moto_server.endpoint).upload_fileobj(io.BytesIO(data), bucket, "src/crc.bin", Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    source = S3Source(s3_plan_location(moto_server.endpoint, bucket, "src"))
    [file] = list(source.list())
    published = source.published_checksum(file)
    assert published is not None and published.label().startswith(f"md5/{5 * MiB}:")
    copy(source, LocalDestination(local(tmp_path / "out")))
    assert tree(tmp_path / "out") == {"crc.bin": data}


def test_a_flipped_byte_read_from_s3_is_read_again_and_every_byte_lands_right(
        s3_proxy: S3FaultProxy, bucket: str, s3_tree: dict[str, bytes], tmp_path: Path) -> None:
    """One file at a time, the 7th data GET is the only one flipped in the first round: the file it hit is
    read again; the multipart object is read in 2 MiB ranges across its 5 MiB parts."""
    s3_proxy.flip_every = 7
    source = S3Source(s3_plan_location(s3_proxy.endpoint, bucket, "src"))
    entries = copy(source, LocalDestination(local(tmp_path / "out")))

    assert s3_proxy.flipped >= 1
    assert tree(tmp_path / "out") == s3_tree
    assert {entry.key: entry.sha256 for entry in entries} == {
        key: hashlib.sha256(data).hexdigest() for key, data in s3_tree.items()}
    assert all(entry.source_checksum != "none" for entry in entries)


def test_a_ranged_get_answered_with_more_bytes_than_the_range_is_sent_again(
        moto_server: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body longer than its range is as wrong as a short one: the request is retried, never cut to fit."""
    client = plain_client(moto_server.endpoint)
    data = os.urandom(3 * MiB)
    client.put_object(Bucket=bucket, Key="src/model.bin", Body=data)
    source = S3Source(s3_plan_location(moto_server.endpoint, bucket, "src"))
    [file] = list(source.list())
    answers = []
    get_object = source.client.get_object

    def one_byte_too_many_once(**request: Any) -> Any:
        response = get_object(**request)
        if not answers:
            body = response["Body"].read() + b"!"
            response["Body"] = StreamingBody(io.BytesIO(body), len(body))
        answers.append(request["Range"])
        return response

    monkeypatch.setattr(source.client, "get_object", one_byte_too_many_once)
    buffer = bytearray(MiB)
    source.read_into(file, MiB, memoryview(buffer))

    assert answers == [f"bytes={MiB}-{2 * MiB - 1}"] * 2, "the overlong answer was asked for again"
    assert bytes(buffer) == data[MiB:2 * MiB]


class Md5PartsDestination(S3Destination):
    """A store that checks what arrives by MD5 only, as RunPod's S3 API: the part checksum of a small file is
    the MD5 its source's ETag publishes, so the engine hashes the bytes once for both checks."""

    additional_checksums = False


def md5_parts_destination(moto_server: Any, bucket: str) -> Md5PartsDestination:
    return Md5PartsDestination(s3_plan_location(moto_server.endpoint, bucket, "out"))


@pytest.mark.parametrize(("key", "message", "to"), [
    ("plain.bin", r"plain\.bin: bytes read have md5 .* \(read 3 times ", "local"),  # a single-part object: its ETag
    ("plain.bin", r"plain\.bin: bytes read have md5 .* \(read 3 times ", "md5 parts"),
    ("crc.bin", r"crc\.bin: part 1 read wrong 3 times; its bytes do not have the crc32 ", "local"),  # a part's CRC32
])
def test_bytes_that_keep_reading_wrong_end_as_data_corruption_naming_the_file_and_never_land(
        key: str, message: str, to: str, s3_proxy: S3FaultProxy, moto_server: Any, bucket: str,
        tmp_path: Path) -> None:
    """Every data GET flipped the same way, as a store that keeps bad bytes serves them: the reads agree with
    each other and never with the source's checksum."""
    client = plain_client(moto_server.endpoint)
    client.put_object(Bucket=bucket, Key="src/plain.bin", Body=os.urandom(100_000))
    put_multipart(client, bucket, "src/crc.bin", [os.urandom(5 * MiB), os.urandom(1000)], checksum="CRC32")
    s3_proxy.flip_every = 1
    source = S3Source(s3_plan_location(s3_proxy.endpoint, bucket, "src"))
    dest = LocalDestination(local(tmp_path / "out")) if to == "local" else md5_parts_destination(moto_server, bucket)
    engine = CopyEngine(source, dest, part_size=5 * MiB, concurrency=1)
    try:
        with pytest.raises(DataCorruption, match=message):
            asyncio.run(engine.copy_file(ListingLine(file=source.stat(key))))
    finally:
        engine.close()
    assert not (tmp_path / "out" / key).exists()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"out/{key}")


def test_a_small_file_read_wrong_once_lands_right_where_the_destination_checks_md5s(
        s3_proxy: S3FaultProxy, moto_server: Any, bucket: str) -> None:
    """The source check of a small file takes the destination's MD5 of the bytes read: a flipped read still
    fails it and is read again (one file at a time, every 2nd GET flipped: the 2nd and 3rd files once each)."""
    client = plain_client(moto_server.endpoint)
    contents = {f"{name}.bin": os.urandom(50_000) for name in "abc"}
    for key, data in contents.items():
        client.put_object(Bucket=bucket, Key=f"src/{key}", Body=data)
    s3_proxy.flip_every = 2
    source = S3Source(s3_plan_location(s3_proxy.endpoint, bucket, "src"))
    entries = copy(source, md5_parts_destination(moto_server, bucket))

    assert s3_proxy.flipped == 2
    assert {key: client.get_object(Bucket=bucket, Key=f"out/{key}")["Body"].read() for key in contents} == contents
    assert {entry.key: entry.sha256 for entry in entries} == {
        key: hashlib.sha256(data).hexdigest() for key, data in contents.items()}
    assert all(entry.source_checksum.startswith("md5") for entry in entries)


class ReadCountingProxy(S3FaultProxy):
    """Counts the object bytes GETs brought back (``read``)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.read = 0

    def maybe_flip(self, command: str, path: str, data: bytes) -> bytes:
        if command == "GET" and "partNumber" not in path and "uploadId" not in path and "list-type" not in path:
            self.read += len(data)
        return super().maybe_flip(command, path, data)


@pytest.fixture
def counting_proxy(moto_server: Any) -> Iterator[ReadCountingProxy]:
    proxy = ReadCountingProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("checksum", ["CRC32", None])
def test_a_multipart_source_read_with_a_flip_in_every_5th_get_lands_right(
        checksum: str | None, counting_proxy: ReadCountingProxy, moto_server: Any, bucket: str, tmp_path: Path) -> None:
    """20 parts of 5 MiB. With a CRC32 each (as the AWS SDKs upload by default) the engine reads whole source
    parts (10 MiB here), each checked against its own checksum, and a flipped one is read again on its own.
    With only the multipart ETag, the first read of the file fails its check, and the second reads each range
    until two reads agree. Reading the whole file again instead meets a new flip every time: DataCorruption."""
    parts = [os.urandom(5 * MiB) for _ in range(20)]
    put_multipart(s3_client(moto_server.endpoint), bucket, "src/model.bin", parts, checksum=checksum)
    counting_proxy.flip_every = 5
    source = S3Source(s3_plan_location(counting_proxy.endpoint, bucket, "src"))
    [entry] = copy(source, LocalDestination(local(tmp_path / "out")), part_size=12 * MiB, concurrency=2)

    data = b"".join(parts)
    read, flips, size = counting_proxy.read, counting_proxy.flipped, len(data)
    print(f"\n{checksum or 'ETag only'}: {flips} flips, {read / size:.2f} x the file read")
    assert flips >= 2
    assert (tmp_path / "out" / "model.bin").read_bytes() == data
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.source_checksum.startswith(f"md5/{5 * MiB}:")
    if checksum:
        assert read <= size + flips * 5 * MiB  # one part again per flip
    else:  # read once, then each range twice, and a flipped range twice more
        assert read <= 3 * size + flips * 2 * 10 * MiB


def test_a_multipart_etag_source_read_with_flips_lands_right_where_each_part_s_md5_serves_both_checks(
        counting_proxy: ReadCountingProxy, moto_server: Any, bucket: str) -> None:
    """Parts of the source's own size into a store that checks MD5s: each part's MD5, computed once for the
    destination, stands for that part in the source's multipart ETag; a flipped read still fails the ETag."""
    parts = [os.urandom(5 * MiB) for _ in range(6)] + [os.urandom(1000)]
    put_multipart(s3_client(moto_server.endpoint), bucket, "src/model.bin", parts)
    counting_proxy.flip_every = 5
    source = S3Source(s3_plan_location(counting_proxy.endpoint, bucket, "src"))
    [entry] = copy(source, md5_parts_destination(moto_server, bucket), part_size=5 * MiB, concurrency=2)

    data = b"".join(parts)
    assert counting_proxy.flipped >= 1
    assert plain_client(moto_server.endpoint).get_object(Bucket=bucket, Key="out/model.bin")["Body"].read() == data
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.source_checksum.startswith(f"md5/{5 * MiB}:")


def test_an_s3_object_overwritten_during_its_copy_is_never_mixed_the_reads_are_pinned_to_the_listed_etag(
        moto_server: Any, bucket: str, tmp_path: Path) -> None:
    """Overwritten after its first part was read: the next read, pinned by If-Match, fails (412), and the file
    is copied again whole at its new version, not finished with the new object's bytes."""
    client = plain_client(moto_server.endpoint)
    put_multipart(client, bucket, "src/model.bin", [os.urandom(5 * MiB) for _ in range(3)])
    new = os.urandom(12 * MiB)

    class OverwrittenAfterOneRead(S3Source):
        overwritten = False

        def read_into(self, file: SourceFile, offset: int, buffer: memoryview) -> None:
            super().read_into(file, offset, buffer)
            if not self.overwritten:
                self.overwritten = True
                client.put_object(Bucket=bucket, Key="src/model.bin", Body=new)

    source = OverwrittenAfterOneRead(s3_plan_location(moto_server.endpoint, bucket, "src"))
    [entry] = copy(source, LocalDestination(local(tmp_path / "out")), part_size=5 * MiB)
    assert (tmp_path / "out" / "model.bin").read_bytes() == new
    assert entry.source_version == hashlib.md5(new).hexdigest() and entry.sha256 == hashlib.sha256(new).hexdigest()


def test_hub_bytes_are_checked_and_reads_stay_on_the_listed_commit(
        hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The branch moves after the listing; a flipped read makes the engine try the file again, and that
    attempt still reads the listed commit."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    old = {"model.safetensors": os.urandom(3 * MiB), "config.json": b'{"layers": 2}'}
    hub.add_repo("acme/moving", old)
    source = HfSource(HfLocation(kind="hf", repo_id="acme/moving"))
    listed = list(source.list())
    hub.commit("acme/moving", {"model.safetensors": os.urandom(3 * MiB), "config.json": b'{"layers": 3}'})
    hub.corrupt(old["model.safetensors"], times=1)
    hub.corrupt(old["config.json"], times=1)
    dest = LocalDestination(local(tmp_path / "out"))
    engine = CopyEngine(source, dest, part_size=MiB, concurrency=2)
    try:
        entries = [asyncio.run(engine.copy_file(ListingLine(file=file))) for file in listed]
    finally:
        engine.close()

    assert tree(tmp_path / "out") == old
    assert {entry.source_version for entry in entries} == {file.version for file in listed}
    assert sorted(entry.source_checksum.split(":")[0] for entry in entries) == ["git-sha1", "sha256"]


# ---- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["s3", "s3-kms", "local"])
def test_files_that_landed_before_a_kill_are_recorded_without_sending_them_again(
        kind: str, s3: Any, kms_proxy: SseKmsProxy, bucket: str, tmp_path: Path) -> None:
    """Killed after the multipart object was completed and the small file put, before either was recorded;
    under SSE-KMS both are told by their CRC32, their ETags being no MD5s."""
    if kind == "s3-kms":
        kms_bucket(s3, bucket)
    kms_proxy.kms = kind == "s3-kms"
    (tmp_path / "src").mkdir()
    contents = {"config.json": os.urandom(10_000), "model.bin": os.urandom(9 * MiB)}
    for key, data in contents.items():
        (tmp_path / "src" / key).write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    dest: Destination = (LocalDestination(local(tmp_path / "out")) if kind == "local"
                         else S3Destination(s3_plan_location(kms_proxy.endpoint, bucket, "m")))
    with pytest.raises(Killed):
        copy(source, dest, kill_before_recording="model.bin", concurrency=1)
    sent = kms_proxy.uploaded
    assert dest.get_state(upload_state_name("migrations/t/", "model.bin")) is not None  # kept until recorded

    entries = copy(source, dest, check_landed=True)

    assert kms_proxy.uploaded == sent  # not one byte more
    assert sorted(entry.key for entry in entries) == sorted(contents)
    assert {entry.key: entry.sha256 for entry in entries} == {
        key: hashlib.sha256(data).hexdigest() for key, data in contents.items()}
    assert dest.get_state(upload_state_name("migrations/t/", "model.bin")) is None  # dropped once recorded


class KilledAfterCommit(ModalVolumeDestination):
    """With ``staged_copy_kept``, dies right after the volume committed a staged file, before its staged copy
    is removed: the copy is kept aside where a SIGKILL would have left it."""

    staged_copy_kept = False

    def _upload(self, path: str, local: Path | IO[bytes]) -> None:
        super()._upload(path, local)
        if self.staged_copy_kept and isinstance(local, Path):
            shutil.copy(local, f"{local}.kept")
            raise Killed(path)


@pytest.mark.parametrize("staged_copy", ["removed", "still there"])
def test_files_committed_to_a_modal_volume_before_a_kill_are_found_there_and_not_sent_again(
        staged_copy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The large file was committed to the volume (its staged copy removed, or not yet), the small file put,
    neither recorded: a retried attempt finds both on the volume by their size and crc32c, read back, and
    commits nothing."""
    for name, value in {fake_modal.ROOT_ENV: str(tmp_path / "modal"), "FLYAWAY_MODAL_VOLUME_FACTORY": fake_modal.FACTORY,
                        "MODAL_TOKEN_ID": fake_modal.TOKEN_ID, "MODAL_TOKEN_SECRET": fake_modal.TOKEN_SECRET}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "src").mkdir()
    contents = {"config.json": os.urandom(10_000), "model.bin": os.urandom(9 * MiB)}
    for key, data in contents.items():
        (tmp_path / "src" / key).write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    dest = KilledAfterCommit(ModalVolumeLocation(kind="modal_volume", volume="weights", create_if_missing=True,
                                                 prefix="m", staging_dir=str(tmp_path / "staging")))
    dest.staged_copy_kept = staged_copy == "still there"
    with pytest.raises(Killed):
        copy(source, dest, kill_before_recording="model.bin", concurrency=1)
    staged = dest.staging.path_of("model.bin")
    if dest.staged_copy_kept:
        Path(f"{staged}.kept").rename(staged)
    assert staged.exists() == dest.staged_copy_kept
    committed = fake_modal.read_uploads(tmp_path / "modal", "weights")
    assert {path for path, _ in committed} >= {"m/config.json", "m/model.bin"}

    dest.staged_copy_kept = False
    entries = copy(source, dest, check_landed=True)
    again = fake_modal.read_uploads(tmp_path / "modal", "weights")[len(committed):]
    assert [path for path, _ in again if f"/{STATE_DIR}/" not in path] == []  # no file committed again
    assert {entry.key: entry.sha256 for entry in entries} == {
        key: hashlib.sha256(data).hexdigest() for key, data in contents.items()}
    assert dest.get_state(upload_state_name("migrations/t/", "model.bin")) is None
    assert not staged.exists()


def test_an_upload_id_read_back_from_state_never_becomes_a_path(tmp_path: Path) -> None:
    """A planted checkpoint naming ``../../victim.txt`` as its upload: refused, the victim untouched, and
    abort drops the checkpoint without using it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(3 * MiB))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    dest = LocalDestination(local(tmp_path / "out"))
    source = LocalSource(local(tmp_path / "src"))
    file = source.stat("big.bin")
    planted = UploadState(key="big.bin", upload_id="../../../victim.txt", size=file.size, part_size=MiB,
                          source_version=file.version)
    dest.put_state(upload_state_name("migrations/t/", "big.bin"), planted.model_dump_json().encode())

    with pytest.raises(DataCorruption, match="is not one this destination makes"):
        copy(source, dest, part_size=MiB)
    stage = stage_of({"kind": "local", "path": str(tmp_path / "src")}, {"kind": "local", "path": str(tmp_path / "out")})
    assert _abort_uploads(stage, CopyStateNames("t")) == 0
    assert victim.read_text() == "keep me"
    assert dest.list_state("migrations/t/uploads/") == []


class _RecordingHandler(QuietHandler):
    owner: Listener

    def _record(self) -> None:
        self.owner.requests.append((self.command, dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_DELETE = _record


class Listener(HttpServer):
    """A loopback listener standing in for an attacker's host: it records every request it gets."""

    handler = _RecordingHandler

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as server:
        yield server


def test_a_planted_gcs_session_uri_is_never_sent_a_request(
        gcs_emulator: GcsEmulator, gcs_bucket: str, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    from flyaway.activities.storage.gcs import GcsDestination, session_state_name
    from flyaway.models.locations import GcsLocation

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="m"))
    token = dest.begin_upload("real.bin", 10)  # the emulator's own session URI passes the check
    dest.abort("real.bin", token)
    planted = "0123456789abcdef0123456789abcdef"
    for uri in (f"{listener.endpoint}/upload/storage/v1/b/{gcs_bucket}/o?uploadType=resumable",
                f"{gcs_emulator.endpoint}/upload/storage/v1/b/other-bucket/o?uploadType=resumable"):
        dest.put_state(session_state_name(planted), json.dumps({"uri": uri, "size": 10, "part_size": None}).encode())
        with pytest.raises(DataCorruption, match="not an upload URL of bucket"):
            dest.abort("x.bin", planted)
    with pytest.raises(DataCorruption, match="not one flyaway makes"):
        dest.abort("x.bin", "../../gcs-sessions/evil")
    assert listener.requests == []


# ---- state per migration, listing and verify -----------------------------------------------------

def stage_of(source: dict[str, Any], destination: dict[str, Any], **weights: Any) -> WeightsStage:
    plan = parse_plan(weights_plan("t", source, destination, **weights))
    assert plan.weights is not None
    return plan.weights


def list_and_copy(stage: WeightsStage, state: CopyStateNames, listing_id: str) -> ListingResult:
    """List into the migration's state, copy every line, record the entries as one batch's shard."""
    listing = _write_listing(stage, listing_id, state, lambda files: None)
    dest = open_destination(stage.destination)
    entries = copy(open_source(stage.source), dest, part_size=5 * MiB, state_prefix=state.prefix)
    body = b"".join(entry.model_dump_json().encode() + b"\n" for entry in entries)
    dest.put_state(f"{state.shards(listing_id)}{0:016d}-0001-000000.jsonl", body)
    return listing


def make_source(folder: Path, keys: list[str]) -> dict[str, Any]:
    for key in keys:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(os.urandom(1000))
    return {"kind": "local", "path": str(folder)}


def test_verify_counts_against_the_listing_and_names_the_first_file_a_truncated_one_lost(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", ["a.bin", "b.bin", "c.bin"])
    stage = stage_of(source, {"kind": "local", "path": str(tmp_path / "out")})
    state = CopyStateNames("migration-t-weights")
    listing = list_and_copy(stage, state, "L1")
    dest = LocalDestination(local(tmp_path / "out"))
    full = dest.get_state(state.listing("L1"))
    assert full is not None and full.count(b"\n") == 3
    dest.put_state(state.listing("L1"), full.split(b"\n", 1)[0] + b"\n")  # cut after its first line

    with pytest.raises(DataCorruption, match=r"holds 1 files .* written with 3 .* the first file missing "
                                             r"from it: b\.bin"):
        _verify(stage, listing, state)
    dest.put_state(state.listing("L1"), full)
    verified = _verify(stage, listing, state)
    assert (verified.files_verified, verified.bytes_verified) == (3, 3000)
    assert verified.files_without_source_checksum == 3  # a local folder publishes no checksum
    manifest = dest.get_state(state.manifest)
    assert manifest is not None and all(json.loads(line)["source_checksum"] == "none"
                                        for line in manifest.splitlines())
    assert dest.list_state("claims/") == [] and dest.list_state(f"{state.prefix}runs/") == []


def test_a_second_migration_writing_the_same_keys_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = {"kind": "local", "path": str(tmp_path / "out")}
    first = stage_of(make_source(tmp_path / "one", ["shared.bin", "a.bin"]), out)
    second = stage_of(make_source(tmp_path / "two", ["b.bin", "shared.bin"]), out)
    disjoint = stage_of(make_source(tmp_path / "three", ["c.bin"]), out)
    one, two = CopyStateNames("migration-one-weights"), CopyStateNames("migration-two-weights")
    listing = list_and_copy(first, one, "L1")

    with pytest.raises(InvalidPlan, match=r"migration migration-one-weights is writing the same keys "
                                          "\\('shared.bin' and maybe more\\)"):
        _write_listing(second, "L2", two, lambda files: None)
    _write_listing(disjoint, "L3", CopyStateNames("migration-three-weights"), lambda files: None)  # fine
    _verify(first, listing, one)  # the first is done: its claim goes
    assert _write_listing(second, "L2", two, lambda files: None).files_total == 2


def test_a_users_own_flyaway_folder_is_copied_and_a_key_in_flyaways_state_is_refused(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", ["model.bin", ".flyaway/uploads/planted.json"])
    stage = stage_of(source, {"kind": "local", "path": str(tmp_path / "out")})
    state = CopyStateNames("migration-t-weights")
    listing = list_and_copy(stage, state, "L1")
    assert listing.files_total == 2
    assert _verify(stage, listing, state).files_verified == 2
    assert (tmp_path / "out" / ".flyaway" / "uploads" / "planted.json").exists()

    make_source(tmp_path / "src", [f"{STATE_DIR}/migrations/x/uploads/evil.json"])
    with pytest.raises(InvalidPlan, match=f"would land in flyaway's state folder {STATE_DIR}/ .* exclude it"):
        _write_listing(stage, "L2", state, lambda files: None)
    excluded = stage_of(source, {"kind": "local", "path": str(tmp_path / "out")}, exclude=[f"{STATE_DIR}/*"])
    assert _write_listing(excluded, "L3", state, lambda files: None).files_total == 2


# ---- SSE-KMS -------------------------------------------------------------------------------------

def kms_bucket(s3: Any, bucket: str) -> None:
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})


@pytest.fixture
def kms_proxy(moto_server: Any) -> Iterator[SseKmsProxy]:
    """moto behind a proxy that answers as AWS does under SSE-KMS (ETags that are no MD5s, part checksums listed)."""
    proxy = SseKmsProxy(moto_server.port)
    proxy.kms = True
    proxy.start()
    yield proxy
    proxy.stop()


def test_a_bucket_with_default_kms_encryption_takes_small_and_multipart_files(
        s3: Any, bucket: str, kms_proxy: SseKmsProxy, tmp_path: Path) -> None:
    kms_bucket(s3, bucket)
    (tmp_path / "src").mkdir()
    contents = {"config.json": os.urandom(4000), "model.bin": os.urandom(7 * MiB)}
    for key, data in contents.items():
        (tmp_path / "src" / key).write_bytes(data)
    dest = S3Destination(s3_plan_location(kms_proxy.endpoint, bucket, "m"))
    entries = copy(LocalSource(local(tmp_path / "src")), dest, part_size=5 * MiB)

    assert sorted(entry.key for entry in entries) == sorted(contents)
    for key, data in contents.items():
        got = s3.get_object(Bucket=bucket, Key=f"m/{key}")
        assert got["ServerSideEncryption"] == "aws:kms"
        assert got["Body"].read() == data
    source = S3Source(s3_plan_location(kms_proxy.endpoint, bucket, "m"))
    back = copy(source, LocalDestination(local(tmp_path / "back")), part_size=5 * MiB)
    assert tree(tmp_path / "back") == contents
    assert sorted(entry.key for entry in back) == sorted(contents)


@pytest.fixture
def lock_bucket(s3: Any) -> Iterator[str]:
    """A bucket created with Object Lock and a default retention: a PUT without Content-MD5 or an
    x-amz-checksum is refused there."""
    name = f"lock-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    yield name
    versions = s3.list_object_versions(Bucket=name)
    for version in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=name, Key=version["Key"], VersionId=version["VersionId"],
                         BypassGovernanceRetention=True)
    s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("kind", ["object-lock", "sse-kms"])
def test_a_bucket_with_object_lock_or_kms_encryption_takes_a_copy_and_its_verify(
        kind: str, s3: Any, bucket: str, lock_bucket: str, kms_proxy: SseKmsProxy, tmp_path: Path) -> None:
    """Object Lock refuses a PUT without Content-MD5 or an x-amz-checksum; under SSE-KMS no ETag is an MD5."""
    if kind == "sse-kms":
        kms_bucket(s3, bucket)
    kms_proxy.kms = kind == "sse-kms"
    target = lock_bucket if kind == "object-lock" else bucket
    source = make_source(tmp_path / "src", ["config.json"])
    (tmp_path / "src" / "model.bin").write_bytes(os.urandom(7 * MiB))
    destination = s3_location(kms_proxy.endpoint, target, "m")
    S3Destination(S3Location.model_validate(destination)).check()
    stage = stage_of(source, destination)
    state = CopyStateNames("migration-t-weights")
    listing = list_and_copy(stage, state, "L1")

    verified = _verify(stage, listing, state)
    assert (verified.files_verified, verified.bytes_verified) == (2, 1000 + 7 * MiB)
    assert s3.get_object(Bucket=target, Key="m/model.bin")["Body"].read() == (
        tmp_path / "src" / "model.bin").read_bytes()
    head = s3.head_object(Bucket=target, Key="m/config.json")
    assert head.get("ObjectLockMode") == "GOVERNANCE" if kind == "object-lock" else (
        head["ServerSideEncryption"] == "aws:kms")


class PublishingLocalSource(LocalSource):
    """A local folder that publishes a checksum its bytes do not have."""

    def __init__(self, location: LocalLocation, published: SourceChecksum) -> None:
        super().__init__(location)
        self.published = published

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        return self.published


@pytest.mark.parametrize(("published", "lands"), [
    (SourceChecksum(algorithm="md5", value="0" * 32, part_size=MiB), True),  # an opaque multipart ETag
    (SourceChecksum(algorithm="sha256", value="0" * 64, part_size=MiB), False),  # a composite checksum
    (SourceChecksum(algorithm="md5", value="0" * 32), False),  # a single-part ETag
])
def test_a_multipart_etag_that_is_not_an_md5_of_parts_is_told_from_corruption_by_reading_twice(
        published: SourceChecksum, lands: bool, tmp_path: Path) -> None:
    """Two reads with the same bytes and the same mismatch: only S3's multipart ETag convention may be
    wrong about a store, and then the file lands recorded without a source checksum."""
    (tmp_path / "src").mkdir()
    data = os.urandom(3 * MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = PublishingLocalSource(local(tmp_path / "src"), published)
    dest = LocalDestination(local(tmp_path / "out"))
    if lands:
        [entry] = copy(source, dest, part_size=MiB)
        assert entry.source_checksum == "none"
        assert (tmp_path / "out" / "model.bin").read_bytes() == data
    else:
        with pytest.raises(DataCorruption, match=r"model\.bin: bytes read have .* \(read 3 times "):
            copy(source, dest, part_size=MiB)
        assert not (tmp_path / "out" / "model.bin").exists()


def test_a_fly_volume_is_read_twice_by_its_agent_and_each_read_checked_against_the_first(tmp_path: Path) -> None:
    from flyaway.models.locations import FlyVolumeLocation

    mounted = FlyVolumeLocation.model_construct(mount_path=str(tmp_path / "src"))  # as the agent sees it
    assert mounted.mounted().read_twice
    (tmp_path / "src").mkdir()
    data = os.urandom(3 * MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(mounted.mounted())
    [entry] = copy(source, LocalDestination(local(tmp_path / "out")), part_size=MiB)
    assert entry.source_checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert LocalSource(local(tmp_path / "src")).published_checksum(source.stat("model.bin")) is None


def test_under_kms_small_files_carry_their_crc32_so_a_killed_attempt_is_not_sent_again(
        s3: Any, bucket: str, kms_proxy: SseKmsProxy, tmp_path: Path) -> None:
    """Under SSE-KMS an ETag tells nothing: every put carries x-amz-checksum-crc32, which S3 keeps, and a
    retried attempt finds the files an earlier one landed by it."""
    kms_bucket(s3, bucket)
    (tmp_path / "src").mkdir()
    contents = {f"{i:02d}.json": os.urandom(5000) for i in range(4)}
    for key, data in contents.items():
        (tmp_path / "src" / key).write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    dest = S3Destination(s3_plan_location(kms_proxy.endpoint, bucket, "m"))
    with pytest.raises(Killed):
        copy(source, dest, kill_before_recording="03.json")
    sent = dict(kms_proxy.puts)
    head = s3.head_object(Bucket=bucket, Key="m/03.json", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms" and head["ChecksumCRC32"]

    entries = copy(source, S3Destination(s3_plan_location(kms_proxy.endpoint, bucket, "m")), check_landed=True)
    assert kms_proxy.puts == sent  # not one sent again
    assert sorted(entry.key for entry in entries) == sorted(contents)


class KilledAfterParts(S3Destination):
    """Dies, as a killed worker would, when it is about to send part ``parts + 1``."""

    def __init__(self, location: S3Location, parts: int) -> None:
        super().__init__(location)
        self.parts = parts

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        if number > self.parts:
            raise Killed(key)
        return super().upload_part(key, upload_id, number, offset, data, checksum)


@pytest.mark.parametrize("listed_checksums", [True, False])
def test_under_kms_parts_that_landed_before_a_kill_are_not_sent_again(
        listed_checksums: bool, s3: Any, bucket: str, kms_proxy: SseKmsProxy, tmp_path: Path) -> None:
    """Part ETags are not MD5s under SSE-KMS: landed parts are told by the CRC32 ListParts gives for each, or,
    where a store lists none, taken on their size and the object checked by its composite CRC32."""
    kms_bucket(s3, bucket)
    kms_proxy.list_part_checksums = listed_checksums
    (tmp_path / "src").mkdir()
    data = os.urandom(16 * MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    location = s3_plan_location(kms_proxy.endpoint, bucket, "m")
    with pytest.raises(Killed):
        copy(source, KilledAfterParts(location, parts=2), part_size=5 * MiB, concurrency=1)
    sent = kms_proxy.uploaded
    assert sent == 10 * MiB

    [entry] = copy(source, S3Destination(location), part_size=5 * MiB)
    assert kms_proxy.uploaded - sent == 6 * MiB  # parts 3 and 4 only
    got = s3.get_object(Bucket=bucket, Key="m/model.bin")
    assert got["ServerSideEncryption"] == "aws:kms" and got["Body"].read() == data
    assert entry.sha256 == hashlib.sha256(data).hexdigest()


class RefusingPartsOf(S3FaultProxy):
    """Refuses parts with a checksum for one upload, as AWS does for an upload begun without a checksum
    algorithm (moto takes them)."""

    upload_id = ""

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        refused = command == "PUT" and bool(self.upload_id) and f"uploadId={self.upload_id}" in path
        return (400, "InvalidRequest") if refused else None


def test_an_upload_begun_without_a_checksum_algorithm_is_started_over_not_stuck(
        moto_server: Any, bucket: str, tmp_path: Path) -> None:
    """An upload an older flyaway began (no ChecksumAlgorithm) and recorded: its parts with a CRC32 are
    refused, so the file starts over with a new upload and lands."""
    (tmp_path / "src").mkdir()
    data = os.urandom(12 * MiB)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    file = source.stat("model.bin")
    old = plain_client(moto_server.endpoint).create_multipart_upload(Bucket=bucket, Key="m/model.bin")["UploadId"]
    proxy = RefusingPartsOf(moto_server.port)
    proxy.upload_id = old
    proxy.start()
    try:
        dest = S3Destination(s3_plan_location(proxy.endpoint, bucket, "m"))
        dest.put_state(upload_state_name("migrations/t/", "model.bin"), UploadState(
            key="model.bin", upload_id=old, size=file.size, part_size=5 * MiB,
            source_version=file.version).model_dump_json().encode())
        [entry] = copy(source, dest, part_size=5 * MiB)
    finally:
        proxy.stop()
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_client(moto_server.endpoint).get_object(Bucket=bucket, Key="m/model.bin")["Body"].read() == data


def test_under_kms_a_landed_part_with_other_bytes_is_sent_again(
        s3: Any, bucket: str, kms_proxy: SseKmsProxy, tmp_path: Path) -> None:
    """A landed part whose listed CRC32 is not the one of the bytes read now is sent again, and the
    object holds the bytes read now."""
    kms_bucket(s3, bucket)
    (tmp_path / "src").mkdir()
    data = bytearray(os.urandom(12 * MiB))
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(local(tmp_path / "src"))
    location = s3_plan_location(kms_proxy.endpoint, bucket, "m")
    with pytest.raises(Killed):
        copy(source, KilledAfterParts(location, parts=2), part_size=5 * MiB, concurrency=1)
    listed = (tmp_path / "src" / "model.bin").stat()
    data[MiB] ^= 0xFF  # part 1 as landed is no longer what a read gives; the file keeps its version (mtime)
    (tmp_path / "src" / "model.bin").write_bytes(data)
    os.utime(tmp_path / "src" / "model.bin", ns=(listed.st_atime_ns, listed.st_mtime_ns))
    sent = kms_proxy.uploaded

    copy(source, S3Destination(location), part_size=5 * MiB)
    assert kms_proxy.uploaded - sent == 7 * MiB  # part 1 again and part 3
    assert s3.get_object(Bucket=bucket, Key="m/model.bin")["Body"].read() == bytes(data)
