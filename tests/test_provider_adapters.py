"""Tigris, RunPod volume and GCS adapters without Temporal: their plan shape, the limits the engine
honours for them, their resumable uploads, and clear errors before any byte moves."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage
from typer.testing import CliRunner

from flyaway.activities.storage import open_destination, open_source, s3 as s3_module
from flyaway.activities.storage.base import UploadGone
from flyaway.activities.storage.checksums import crc32c_combine
from flyaway.activities.storage.engine import CopyEngine, part_checksum
from flyaway.activities.storage.gcs import GcsDestination
from flyaway.activities.storage.local import LocalDestination, LocalSource
from flyaway.activities.storage.runpod import (
    RUNPOD_LIMITS,
    RUNPOD_MAX_BODY,
    RunPodVolumeDestination,
)
from flyaway.activities.storage.s3 import S3Destination, multipart_etag
from flyaway.errors import (
    DataCorruption,
    LimitExceeded,
    MissingCredentials,
    NotFound,
)
from flyaway.models.copy import ListingLine
from flyaway.models.locations import GcsLocation, LocalLocation, RunPodVolumeLocation, S3Location, TigrisLocation
from flyaway.models.plan import parse_plan
from flyaway.providers.google import GcsBucket, MultipartBody, SessionRequestFailed
from flyaway.providers.s3 import s3_client as s3_client_of, s3_settings
from flyaway.starter.cli import app
from flyaway.starter.dev import free_port
from tests.support.env import TEST_RUNPOD_ENV
from tests.support.plans import s3_location
from tests.support.proxies import RunPodLimitsProxy
from tests.support.s3 import s3_client
from tests.support.servers import GcsEmulator

MiB = 1024 * 1024
GiB = 1024 * MiB
TB = 10**12


@pytest.fixture
def runpod_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TEST_RUNPOD_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def emulator_env(monkeypatch: pytest.MonkeyPatch, gcs_emulator: GcsEmulator) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)


def runpod_volume(endpoint: str, volume: str, prefix: str = "") -> RunPodVolumeLocation:
    return RunPodVolumeLocation(kind="runpod_volume", volume_id=volume, datacenter="EUR-IS-1", prefix=prefix,
                                endpoint_url=endpoint)


def plan_with(destination: dict[str, Any], source: dict[str, Any] | None = None) -> Any:
    return parse_plan({"name": "p", "weights": {"source": source or {"kind": "local", "path": "/w"},
                                                "destination": destination}})


# ---- plan shape ------------------------------------------------------------------------------

def test_tigris_defaults_to_its_endpoint_region_auto_and_virtual_hosts() -> None:
    source = plan_with({"kind": "local", "path": "/d"}, {"kind": "tigris", "bucket": "weights"}).weights.source
    settings = s3_settings(source)
    assert (str(settings.endpoint_url), settings.region, settings.addressing_style) == (
        "https://t3.storage.dev/", "auto", "virtual")
    assert settings.credentials.access_key_id_env == "AWS_ACCESS_KEY_ID"
    legacy = plan_with({"kind": "local", "path": "/d"}, {"kind": "tigris", "bucket": "weights", "endpoint_url":
                                                          "https://fly.storage.tigris.dev"}).weights.source
    assert str(s3_settings(legacy).endpoint_url) == "https://fly.storage.tigris.dev/"
    assert legacy.describe() == "tigris://weights/"


def test_runpod_volume_endpoint_and_region_come_from_the_datacenter() -> None:
    dest = plan_with({"kind": "runpod_volume", "volume_id": "agv6w2qcg7", "datacenter": "us-ks-2"}).weights.destination
    settings = s3_settings(dest)
    assert (str(settings.endpoint_url), settings.region, settings.bucket, settings.addressing_style) == (
        "https://s3api-us-ks-2.runpod.io/", "US-KS-2", "agv6w2qcg7", "path")
    assert settings.credentials.access_key_id_env == "RUNPOD_S3_ACCESS_KEY"
    with pytest.raises(ValueError, match=r"plan.weights.destination.datacenter: 'Iceland' is not a RunPod datacenter"):
        plan_with({"kind": "runpod_volume", "volume_id": "agv6w2qcg7", "datacenter": "Iceland"})


# ---- limits the engine honours ---------------------------------------------------------------

def test_runpod_parts_never_exceed_500_mb_whatever_the_file_or_plan(runpod_env: None, tmp_path: Path) -> None:
    dest = RunPodVolumeDestination(runpod_volume(f"http://127.0.0.1:{free_port()}", "vol"))
    source = LocalSource(LocalLocation(kind="local", path=str(tmp_path)))
    for plan_part in (16 * MiB, 1 * GiB, 5 * GiB):
        engine = CopyEngine(source, dest, part_size=plan_part, concurrency=1)
        for size in (600 * 1000 * 1000, 10 * GiB, 1 * TB, 4 * TB, RUNPOD_LIMITS.max_object_size):
            part = engine.effective_part_size(size)
            assert part <= RUNPOD_MAX_BODY and math.ceil(size / part) <= 10_000, (plan_part, size, part)
        engine.close()
    with pytest.raises(LimitExceeded, match="500000000-byte limit"):
        CopyEngine(source, dest, part_size=16 * MiB, concurrency=1).effective_part_size(6 * TB)
    # the listing refuses a file over the object limit, so no byte of the copy moves
    assert 4 * TB < dest.limits.max_object_size < 6 * TB
    assert dest.limits.max_single_put < RUNPOD_MAX_BODY


def test_gcs_session_parts_are_whole_256_kib_chunks(emulator_env: None, tmp_path: Path) -> None:
    dest = GcsDestination(GcsLocation(kind="gcs", bucket="any-bucket", composite_uploads=False))
    engine = CopyEngine(LocalSource(LocalLocation(kind="local", path=str(tmp_path))), dest,
                        part_size=5_000_000, concurrency=1)
    assert engine.effective_part_size(50 * MiB) == 5 * MiB
    assert engine.effective_part_size(100 * GiB) % (256 * 1024) == 0
    engine.close()


class OrderRecordingDestination(LocalDestination):
    """A local destination that records how many parts it is sent at once, and in what order."""

    def __init__(self, location: LocalLocation, sequential: bool) -> None:
        super().__init__(location)
        self.limits = dataclasses.replace(self.limits, sequential_parts=sequential)
        self.order: list[int] = []
        self.active = self.most_active = 0
        self.lock = threading.Lock()

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes, checksum: str) -> Any:
        with self.lock:
            self.order.append(number)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.2 if number == 1 else 0.02)  # the first part is slow: later ones must wait for it
        try:
            return super().upload_part(key, upload_id, number, offset, data, checksum)
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize("sequential", [True, False])
def test_a_sequential_destination_gets_its_parts_one_at_a_time_in_order(tmp_path: Path, sequential: bool) -> None:
    data = os.urandom(8 * MiB + 3)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(LocalLocation(kind="local", path=str(tmp_path / "src")))
    dest = OrderRecordingDestination(LocalLocation(kind="local", path=str(tmp_path / "dst")), sequential)
    engine = CopyEngine(source, dest, part_size=MiB, concurrency=4)
    try:
        entry = asyncio.run(engine.copy_file(ListingLine(file=source.stat("model.bin"))))
    finally:
        engine.close()
    assert (tmp_path / "dst" / "model.bin").read_bytes() == data
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    if sequential:
        assert (dest.order, dest.most_active) == (list(range(1, 10)), 1)
    else:
        assert dest.most_active > 1  # the control: without the capability parts overlap


def test_crc32c_combine_matches_the_crc32c_of_the_whole() -> None:
    pieces = [os.urandom(n) for n in (1, 1000, 0, 256 * 1024, 77_777)]
    crc = 0
    for piece in pieces:
        crc = crc32c_combine(crc, google_crc32c.value(piece), len(piece))
    assert crc == google_crc32c.value(b"".join(pieces))


# ---- RunPod's S3 API, through a proxy with its limits -----------------------------------------

def test_the_runpod_proxy_refuses_what_runpod_refuses(runpod_proxy: RunPodLimitsProxy, bucket: str, s3: Any) -> None:
    client = s3_client(runpod_proxy.endpoint)
    for attempt in (lambda: client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}]}),
                    lambda: client.create_bucket(Bucket="made-through-runpod")):
        with pytest.raises(Exception, match="NotImplemented"):
            attempt()
    runpod_proxy.max_body = MiB
    with pytest.raises(Exception, match="EntityTooLarge"):
        client.put_object(Bucket=bucket, Key="one-mib", Body=b"x" * MiB)
    client.put_object(Bucket=bucket, Key="under", Body=b"x" * (MiB - 1))
    assert len(runpod_proxy.refused) == 3


def test_a_part_over_the_limit_fails_the_copy_for_good(runpod_env: None, runpod_proxy: RunPodLimitsProxy,
                                                        bucket: str, s3: Any, tmp_path: Path) -> None:
    """With the proxy's limit at 8 MiB the engine's 16 MiB parts stand for parts over 500 MB: refused,
    non-retryable; 5 MiB parts pass."""
    runpod_proxy.max_body = 8 * MiB
    data = os.urandom(20 * MiB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.bin").write_bytes(data)
    source = LocalSource(LocalLocation(kind="local", path=str(tmp_path / "src")))
    dest = RunPodVolumeDestination(runpod_volume(runpod_proxy.endpoint, bucket, "m"))

    def copy(part_size: int) -> None:
        engine = CopyEngine(source, dest, part_size=part_size, concurrency=2)
        try:
            asyncio.run(engine.copy_file(ListingLine(file=source.stat("model.bin"))))
        finally:
            engine.close()

    with pytest.raises(BaseException) as failed:
        copy(16 * MiB)
    error = failed.value
    while isinstance(error, BaseExceptionGroup):  # the engine's task group may wrap it
        error = error.exceptions[0]
    assert isinstance(error, LimitExceeded) and "refused the request body as too large" in str(error)
    copy(5 * MiB)
    assert s3.get_object(Bucket=bucket, Key="m/model.bin")["Body"].read() == data


def test_a_complete_whose_answer_times_out_is_found_landed(runpod_env: None, runpod_proxy: RunPodLimitsProxy,
                                                           bucket: str, s3: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "COMPLETE_READ_TIMEOUT_SECONDS", 1)
    runpod_proxy.complete_delay = 2.5  # moto completes at once; its answer comes after the client gave up
    dest = RunPodVolumeDestination(runpod_volume(runpod_proxy.endpoint, bucket))
    chunks = [os.urandom(5 * MiB), os.urandom(MiB)]
    upload = dest.begin_upload("slow.bin", 6 * MiB)
    parts = [dest.upload_part("slow.bin", upload, n, (n - 1) * 5 * MiB, chunk, part_checksum("md5", chunk))
             for n, chunk in enumerate(chunks, start=1)]
    started = time.monotonic()
    etag = dest.complete("slow.bin", upload, parts, hashlib.sha256(b"".join(chunks)).hexdigest())
    assert time.monotonic() - started >= 1  # the first answer did time out
    assert etag == multipart_etag([p.checksum for p in parts])
    assert s3.get_object(Bucket=bucket, Key="slow.bin")["Body"].read() == b"".join(chunks)


# ---- GCS resumable sessions (composite_uploads: false) -----------------------------------------

def test_a_gcs_session_resumes_in_a_new_process_from_the_persisted_offset(
        emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    location = GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w", composite_uploads=False)
    data = os.urandom(3 * MiB + 5)
    chunks = [data[i:i + MiB] for i in range(0, len(data), MiB)]
    first = GcsDestination(location)
    token = first.begin_upload("big.bin", len(data))
    records = [first.upload_part("big.bin", token, n, (n - 1) * MiB, chunk, part_checksum("crc32c", chunk))
               for n, chunk in enumerate(chunks[:2], start=1)]
    assert "upload_id" not in token and first.list_state("") == [f"gcs-sessions/{token}.json"]

    second = GcsDestination(location)  # what a retried activity on another worker sees
    landed = second.list_parts("big.bin", token)
    assert {n: (p.size, p.checksum) for n, p in landed.items()} == {1: (MiB, ""), 2: (MiB, "")}
    records += [second.upload_part("big.bin", token, n, (n - 1) * MiB, chunks[n - 1],
                                   part_checksum("crc32c", chunks[n - 1])) for n in (3, 4)]
    generation = second.complete("big.bin", token, records, hashlib.sha256(data).hexdigest())

    blob = gcs.bucket(gcs_bucket).get_blob("w/big.bin")
    assert str(blob.generation) == generation
    assert blob.download_as_bytes() == data
    assert second.list_state("") == []  # the session's record is gone with it


def test_a_gcs_session_the_server_will_not_resume_is_given_up_not_retried_forever(
        emulator_env: None, gcs_bucket: str) -> None:
    """The emulator answers a status query on an empty session with 'bytes=0-0' and then refuses
    offset 1: the adapter must say the upload is gone (the engine starts the file again), not loop."""
    location = GcsLocation(kind="gcs", bucket=gcs_bucket, prefix="w", composite_uploads=False)
    token = GcsDestination(location).begin_upload("empty-session.bin", 2 * MiB)
    second = GcsDestination(location)
    second.list_parts("empty-session.bin", token)
    chunk = os.urandom(MiB)
    with pytest.raises(UploadGone):
        second.upload_part("empty-session.bin", token, 1, 0, chunk, part_checksum("crc32c", chunk))


def test_gcs_catches_bytes_that_are_not_the_source_bytes(emulator_env: None, gcs_bucket: str) -> None:
    """A session holds no checksum per chunk: the whole object is checked at complete (composite parts: see
    tests/test_gcs_composite.py)."""
    dest = GcsDestination(GcsLocation(kind="gcs", bucket=gcs_bucket, composite_uploads=False))
    with pytest.raises(DataCorruption, match="crc32c"):
        dest.put("small.bin", b"what arrived", part_checksum("crc32c", b"what was read"), "")
    chunks = [os.urandom(MiB), os.urandom(10)]
    token = dest.begin_upload("big.bin", MiB + 10)
    records = [dest.upload_part("big.bin", token, 1, 0, chunks[0], part_checksum("crc32c", b"\0" * MiB)),
               dest.upload_part("big.bin", token, 2, MiB, chunks[1], part_checksum("crc32c", chunks[1]))]
    with pytest.raises(DataCorruption, match="the source bytes are"):
        dest.complete("big.bin", token, records, "")


# ---- bad input, before any byte moves ---------------------------------------------------------

def test_unknown_volume_and_bucket_are_named(runpod_env: None, runpod_proxy: RunPodLimitsProxy, emulator_env: None,
                                             moto_server: Any) -> None:
    with pytest.raises(NotFound, match="network volume no-such-volume in datacenter EUR-IS-1 does not exist"):
        RunPodVolumeDestination(runpod_volume(runpod_proxy.endpoint, "no-such-volume")).check()
    with pytest.raises(NotFound, match="bucket gs://no-such-bucket does not exist"):
        open_destination(GcsLocation(kind="gcs", bucket="no-such-bucket")).check()
    tigris = TigrisLocation(kind="tigris", bucket="no-such-bucket", endpoint_url=moto_server.endpoint,
                            addressing_style="path")
    with pytest.raises(NotFound, match="bucket tigris://no-such-bucket does not exist"):
        open_source(tigris).check()


def test_an_upload_session_request_without_an_answer_or_with_503_is_sent_again_and_a_400_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    bucket = GcsBucket("weights", "GOOGLE_APPLICATION_CREDENTIALS", "weights-project", "gs://weights", 1)
    answers: list[Exception | str] = [SessionRequestFailed(None, "reset"), SessionRequestFailed(503, "busy"), "held"]

    def send() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert bucket.call("a session", send) == "held" and not answers
    answers[:] = [SessionRequestFailed(400, "bad offset"), "never asked"]
    with pytest.raises(SessionRequestFailed, match="HTTP 400"):
        bucket.call("a session", send)
    assert answers == ["never asked"]


def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNPOD_S3_ACCESS_KEY", raising=False)
    with pytest.raises(MissingCredentials, match="variable RUNPOD_S3_ACCESS_KEY is not set"):
        RunPodVolumeDestination(runpod_volume("http://127.0.0.1:1", "vol"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    location = GcsLocation(kind="gcs", bucket="weights")
    with pytest.raises(MissingCredentials, match="variable GOOGLE_APPLICATION_CREDENTIALS is not set"):
        GcsDestination(location)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    with pytest.raises(MissingCredentials, match=r"key.json, which is not a file"):
        GcsDestination(location)
    (tmp_path / "key.json").write_text('{"type": "nonsense"}')
    with pytest.raises(MissingCredentials, match="is not a service account key or user credentials file"):
        GcsDestination(location)
    (tmp_path / "key.json").write_text(json.dumps(service_account_key()))
    assert GcsDestination(location).bucket.client.project == "weights-project"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(MissingCredentials, match="tigris://weights/: environment variable AWS_ACCESS_KEY_ID"):
        open_source(TigrisLocation(kind="tigris", bucket="weights"))


def service_account_key() -> dict[str, str]:
    """A well-formed service account key file's content (its key is made here and opens nothing)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "weights-project", "private_key_id": "k1",
            "private_key": pem, "client_email": "flyaway@weights-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}


@pytest.mark.slow  # an endpoint that does not answer is retried for 20 s before it is called a typo
def test_a_wrong_datacenter_fails_validate_in_one_line(runpod_env: None, tmp_path: Path) -> None:
    plan = {"name": "wrong-dc", "weights": {
        "source": {"kind": "local", "path": str(tmp_path)},
        "destination": {"kind": "runpod_volume", "volume_id": "agv6w2qcg7", "datacenter": "US-KS-2",
                        "endpoint_url": f"http://127.0.0.1:{free_port()}"}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "plan.json")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not answer" in lines[0] and "check datacenter (US-KS-2)" in lines[0], lines


def test_an_s3_body_is_tied_to_its_signature_by_content_md5_not_by_a_second_hash(moto_server: Any,
                                                                                 bucket: str) -> None:
    """Over plain HTTP as over HTTPS, the signature covers a part's Content-MD5 (which the store checks the body
    against) and leaves the body's own sha256 out: one hash of each part fewer."""
    dest = S3Destination(S3Location.model_validate(s3_location(moto_server.endpoint, bucket, "out")))
    data = os.urandom(100_000)
    sent: list[Any] = []

    def keep(request: Any, **_: Any) -> None:
        sent.append(request.headers)

    dest.client.meta.events.register("before-send.s3.PutObject", keep)
    try:
        dest.put("model.bin", data, part_checksum("crc32", data), hashlib.sha256(data).hexdigest())
    finally:
        dest.client.meta.events.unregister("before-send.s3.PutObject", keep)

    [headers] = sent
    signed = str(headers["Authorization"]).partition("SignedHeaders=")[2].partition(",")[0].split(";")
    assert "content-md5" in signed and "x-amz-content-sha256" in signed
    assert headers["x-amz-content-sha256"] in ("UNSIGNED-PAYLOAD", b"UNSIGNED-PAYLOAD")
    assert s3_client(moto_server.endpoint).get_object(Bucket=bucket, Key="out/model.bin")["Body"].read() == data


def test_only_a_plain_http_endpoint_changes_how_bodies_are_signed(moto_server: Any) -> None:
    """Over HTTPS botocore's own choice stands (an upload with a checksum header is not hashed for its signature)."""
    def settings(endpoint: str) -> Any:
        return s3_client_of(S3Location.model_validate(s3_location(endpoint, "weights"))).meta.config.s3

    assert settings(moto_server.endpoint)["payload_signing_enabled"] is False
    assert "payload_signing_enabled" not in settings("https://s3.eu-west-1.amazonaws.com")


@pytest.mark.parametrize("size", [3 * MiB + 7, 9 * MiB + 7])  # one multipart request; a session of one chunk
def test_a_gcs_upload_sends_a_part_buffer_as_it_lies_and_gcs_keeps_its_bytes_and_crc32c(
        size: int, emulator_env: None, gcs: Any, gcs_bucket: str) -> None:
    """A view of a part buffer goes out as it is (in a multipart body, between its other pieces, never joined
    into one string with them); what lands is the buffer's bytes, whose crc32c GCS checked against the one
    sent, and bytes with another crc32c never land."""
    buffer = bytearray(os.urandom(size + MiB))
    view = memoryview(buffer)[MiB:]
    bucket = GcsBucket(gcs_bucket, "GOOGLE_APPLICATION_CREDENTIALS", None, f"gs://{gcs_bucket}", 4)
    expected = base64.b64encode(google_crc32c.Checksum(bytes(view)).digest()).decode()
    head, data, tail = MultipartBody({"name": "x"}, view)
    assert data is view and len(MultipartBody({"name": "x"}, view)) == len(head) + len(view) + len(tail)

    stored = bucket.upload("out/model.bin", view, crc32c=expected)

    assert (stored.name, stored.size, stored.crc32c) == ("out/model.bin", len(view), expected)
    assert bucket.get("out/model.bin") == stored
    assert gcs.bucket(gcs_bucket).blob("out/model.bin").download_as_bytes() == bytes(view)
    with pytest.raises(DataCorruption, match="do not have the crc32c of the source bytes"):
        bucket.upload("out/other.bin", view, crc32c=base64.b64encode(b"\0\0\0\1").decode())
    assert bucket.get("out/other.bin") is None


def test_a_new_upload_session_elsewhere_than_the_bucket_gets_no_byte(emulator_env: None, gcs_bucket: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage host that answers a new session with another host's URL (or another bucket's) is refused before
    the bytes, or the credentials, go to it: for a session of many parts and for a large object sent in one."""
    bucket = GcsBucket(gcs_bucket, "GOOGLE_APPLICATION_CREDENTIALS", None, f"gs://{gcs_bucket}", 4)
    monkeypatch.setattr(storage.Blob, "create_resumable_upload_session",
                        lambda *_, **__: "http://127.0.0.1:9/upload/storage/v1/b/other/o?uploadType=resumable")
    with pytest.raises(DataCorruption, match=r"not one of bucket .* refusing to use it"):
        bucket.create_session("out/big.bin", 9 * MiB)
    with pytest.raises(DataCorruption, match=r"not one of bucket .* refusing to use it"):
        bucket.upload("out/big.bin", memoryview(bytearray(9 * MiB)))
    assert bucket.get("out/big.bin") is None
