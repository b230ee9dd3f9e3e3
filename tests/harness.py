"""Real servers for the tests: the Temporal dev server, moto's S3 server, the GCS emulator,
flyaway workers, and fault-injecting proxies in front of them. Each runs on a free loopback port."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import boto3
import psutil
from botocore.config import Config
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from flyaway.activities.storage.activities import CopyStateNames, weights_workflow_id
from flyaway.activities.storage.base import STATE_DIR
from flyaway.activities.storage.runpod import RUNPOD_MAX_BODY
from flyaway.connection import TemporalOptions, connect
from flyaway.models.status import MigrationResult, MigrationStatus
from flyaway.starter.dev import free_port, start_moto, start_temporal, stop_process, wait_for_port
from flyaway.starter.display import snapshot

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
FLYAWAY = [sys.executable, "-m", "flyaway.starter.cli"]
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing-access-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
#: the worker policy of the test suite: its servers listen on loopback, its secrets files lie in the temp
#: folder, and the tests name a few credential and secret variables of their own
TEST_POLICY_ENV = {
    "FLYAWAY_ALLOW_HOSTS": "127.0.0.1,localhost,::1",
    "FLYAWAY_ALLOW_DOTENV_DIRS": tempfile.gettempdir(),
    "FLYAWAY_ALLOW_SECRET_ENV": "APP_*,TEST_*,HF_TOKEN_COPY",
    "FLYAWAY_ALLOW_CREDENTIALS": ",".join([
        "probe=PROBE_TOKEN", "probe=METRICS_TOKEN", "cloudflare=CF_READ_ONLY_TOKEN", "temporal=TEMPORAL_CLOUD_KEY",
        "tigris=TIGRIS_KEY_ID", "tigris=TIGRIS_SECRET", "s3=READER_KEY_ID", "s3=READER_SECRET",
        "registry=TEST_SOURCE_PASSWORD", "registry=TEST_READER_PASSWORD", "registry=TEST_PUSHER_PASSWORD",
        "agent_env=MODEL_DIR", "agent_env=STORAGE_EMULATOR_HOST", "s3=UNSET_TEST_KEY", "hf=UNSET_TEST_HF_TOKEN", "modal=UNSET_TEST_MODAL_SECRET",
        "temporal=UNSET_TEST_TEMPORAL_KEY", "temporal=TEST_AGENT_TEMPORAL_KEY"]),
}
#: a RunPod S3 API key as the runpod_volume kind reads it by default (moto takes any)
TEST_RUNPOD_ENV = {"RUNPOD_S3_ACCESS_KEY": "user_testing", "RUNPOD_S3_SECRET_KEY": "rps_testing"}


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def eventually(check: Callable[[], T | None], timeout: float, interval: float = 0.25, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)


class TemporalDevServer:
    """``temporal server start-dev`` with a database file, so it can be restarted; headless unless
    given a UI port (and then a codec endpoint for the UI, if any)."""

    def __init__(self, workdir: Path, ui_port: int | None = None, codec_endpoint: str | None = None) -> None:
        self.db_file = workdir / "temporal.db"
        self.log_path = workdir / "temporal.log"
        self.port = free_port()
        self.ui_port = ui_port
        self.codec_endpoint = codec_endpoint
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_temporal(self.db_file, self.port, self.ui_port, log,
                                          codec_endpoint=self.codec_endpoint)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def options(self) -> TemporalOptions:
        return TemporalOptions(address=self.address, namespace="default", tls=False)

    async def client(self) -> Client:
        return await connect(self.options())

    async def stored_input(self, workflow_id: str) -> Payloads:
        """The workflow's input as the server stores it (no codec applied)."""
        raw = await Client.connect(self.address, namespace="default")
        history = await raw.get_workflow_handle(workflow_id).fetch_history()
        return history.events[0].workflow_execution_started_event_attributes.input


class LoopbackServer:
    """A server process on a free loopback port, logging to ``workdir/<log_name>``; ``start`` runs it."""

    log_name = "server.log"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / self.log_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class MotoServer(LoopbackServer):
    log_name = "moto.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_moto(self.port, log)


class WorkerProcess:
    """A ``flyaway worker`` subprocess that a test can SIGKILL and start again."""

    def __init__(self, server: TemporalDevServer, task_queue: str, log_path: Path, env: dict[str, str]) -> None:
        self.server = server
        self.task_queue = task_queue
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0

    def start(self) -> None:
        env = {**os.environ, **TEST_POLICY_ENV, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*FLYAWAY, "worker", "--address", self.server.address, "--namespace", "default",
                 "--task-queue", self.task_queue, "--json-logs"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        threading.Thread(target=self._sample_rss, args=(self.process,), daemon=True).start()

    def _sample_rss(self, process: subprocess.Popen[bytes]) -> None:
        """Track the worker's peak resident memory, sampled every 0.1 s while it runs."""
        try:
            watched = psutil.Process(process.pid)
            while process.poll() is None:
                self.peak_rss = max(self.peak_rss, watched.memory_info().rss)
                time.sleep(0.1)
        except psutil.NoSuchProcess:
            pass

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no last heartbeat, exactly like a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class S3FaultProxy:
    """A reverse proxy in front of an S3 server that counts uploaded bytes and can deny access.

    ``mode`` is "pass" (forward everything) or "deny" (answer 403 AccessDenied to every
    request). ``uploaded`` counts request body bytes of PUTs of object data and parts.
    ``corrupt`` is how many object-data PUTs get one byte flipped on the way (-1: all of them).
    ``chaos(rate, seed)`` makes that share of object-data PUTs and GETs fail at random: a 503
    SlowDown, a reset (the socket closed without an answer) or a stall that holds the connection
    open for ``stall_seconds`` and then drops it (a PUT gets no answer; a GET gets its headers and
    half its body). ``faults`` counts them by kind; ``failed_bytes`` is the request bytes that failed.
    ``flip_every`` N flips one byte of every Nth object-data GET answer on its way back (``flipped``
    counts them); ``puts`` counts object-data PUTs by path (a part's path is the same on every try).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.uploaded = 0
        self.requests = 0
        self.corrupt = 0
        self.corrupted = 0
        self.flip_every = 0
        self.flipped = 0
        self._gets = 0
        self.puts: Counter[str] = Counter()
        self.fault_rate = 0.0
        self.stall_seconds = 60.0
        self.faults: Counter[str] = Counter()
        self.failed_bytes = 0
        self._random = random.Random(0)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    if self.command == "PUT" and f"/{STATE_DIR}/" not in self.path:
                        proxy.uploaded += len(body)
                        proxy.puts[self.path] += 1
                        if body and proxy.corrupt != 0:
                            body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
                            proxy.corrupt -= proxy.corrupt > 0
                            proxy.corrupted += 1
                if len(body) < length:  # the client died mid-body: forwarding it would leave the
                    return  # upstream waiting for the rest (the GCS emulator serves one request at a time)
                fault = proxy.draw_fault(self.command, self.path, len(body))
                if fault == "reset":
                    self.close_connection = True
                    return
                if fault == "stall" and self.command == "PUT":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                refusal = (503, "SlowDown") if fault == "slowdown" else proxy.refusal(self.command, self.path,
                                                                                       len(body))
                if refusal is not None:
                    status, code = refusal
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>refused by the test proxy</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                if len(body := proxy.rewrite_request(self.command, self.path, headers, body)) != length:
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                answer = dict(response.getheaders())
                data = proxy.rewrite_response(self.command, self.path, headers, response.status, answer,
                                              proxy.maybe_flip(self.command, self.path, response.read()))
                time.sleep(proxy.hold(self.command, self.path, response.status))
                self.send_response(response.status)
                for key, value in answer.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD answer has no body but tells the object's length (of a part, with partNumber)
                answered = (next((v for k, v in answer.items() if k.lower() == "content-length"), "0")
                            if self.command == "HEAD" else str(len(data)))
                self.send_header("Content-Length", answered)
                self.end_headers()
                upstream.close()
                if fault == "stall":  # a GET: half the body, then nothing
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (the point of some tests) is not news

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # stop() does not wait out a held stall
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        """(HTTP status, S3 error code) to answer instead of forwarding, or None to forward."""
        return (403, "AccessDenied") if self.mode == "deny" else None

    def chaos(self, rate: float, seed: int) -> None:
        self.fault_rate = rate
        self._random = random.Random(seed)

    def draw_fault(self, command: str, path: str, size: int) -> str | None:
        """The fault to inject into this request ("slowdown", "reset", "stall"), or None."""
        key = urllib.parse.urlsplit(path).path.strip("/")
        if command not in ("PUT", "GET") or "/" not in key or f"/{STATE_DIR}/" in path:
            return None  # only object data: not buckets, listings or flyaway's state
        with self._lock:
            if self._random.random() >= self.fault_rate:
                return None
            fault = self._random.choice(("slowdown", "reset", "stall"))
            self.faults[fault] += 1
            self.failed_bytes += size
        return fault

    def hold(self, command: str, path: str, status: int) -> float:
        """Seconds to sit on the upstream's answer (of HTTP ``status``) before passing it on."""
        return 0.0

    def rewrite_request(self, command: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        """The request body to forward; ``headers`` may be changed in place. As sent, by default."""
        return body

    def rewrite_response(self, command: str, path: str, request_headers: dict[str, str], status: int,
                         headers: dict[str, str], data: bytes) -> bytes:
        """The answer's body to pass on; ``headers`` may be changed in place. As the upstream gave it, by default."""
        return data

    def maybe_flip(self, command: str, path: str, data: bytes) -> bytes:
        """The answer's body, with one byte flipped if it is the ``flip_every``-th object-data GET."""
        key = urllib.parse.urlsplit(path).path.strip("/")
        if not self.flip_every or command != "GET" or "/" not in key or f"/{STATE_DIR}/" in path or not data:
            return data
        with self._lock:
            self._gets += 1
            if self._gets % self.flip_every:
                return data
            self.flipped += 1
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]

    def start(self) -> None:
        self._thread.start()
        wait_for_port(self.port, 5)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RunPodLimitsProxy(S3FaultProxy):
    """moto behind the limits RunPod's S3 API publishes, so a request RunPod would refuse fails here too:
    a body over ``max_body`` bytes (a PutObject of ``max_body`` too) gets 400 EntityTooLarge,
    DeleteObjects and CreateBucket get 501. ``complete_delay`` holds the answer to a
    CompleteMultipartUpload that succeeded (moto has made the object) that many seconds, the first
    time, like a slow RunPod."""

    def __init__(self, upstream_port: int, max_body: int = RUNPOD_MAX_BODY) -> None:
        super().__init__(upstream_port)
        self.max_body = max_body
        self.complete_delay = 0.0
        self.completed: set[str] = set()
        self.refused: list[str] = []

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        answer: tuple[int, str] | None = None
        batch_delete = command == "POST" and "delete" in query
        create_bucket = command == "PUT" and "/" not in url.path.strip("/") and not query
        if batch_delete or create_bucket:
            answer = (501, "NotImplemented")
        elif command == "PUT" and (size > self.max_body or ("partNumber" not in query and size >= self.max_body)):
            answer = (400, "EntityTooLarge")
        if answer is not None:
            self.refused.append(f"{command} {url.path} {answer[1]}")
            return answer
        return super().refusal(command, path, size)

    def hold(self, command: str, path: str, status: int) -> float:
        """The first successful complete of an upload is slow; a retry after it finds the work done."""
        if command != "POST" or "uploadId=" not in path or status != 200 or path in self.completed:
            return 0.0
        self.completed.add(path)
        return self.complete_delay


class GcsEmulator(LoopbackServer):
    """``gcp-storage-emulator`` in memory, standing in for Cloud Storage (``STORAGE_EMULATOR_HOST``)."""

    log_name = "gcs-emulator.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                 str(self.port), "--in-memory", "--quiet"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 30, self.process)


def plain_client(endpoint: str) -> Any:
    """A client that adds no checksum of its own, so an object's only checksum is its ETag."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                        config=Config(request_checksum_calculation="when_required"))


def put_multipart(client: Any, bucket: str, key: str, parts: list[bytes], checksum: str | None = None) -> None:
    """A multipart object; with ``checksum`` (e.g. "CRC32", what the AWS SDKs send by default) a COMPOSITE
    additional checksum, each part keeping its own."""
    algorithm = {"ChecksumAlgorithm": checksum} if checksum else {}
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **algorithm)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body, **algorithm)
        done.append({"PartNumber": number, "ETag": answer["ETag"],
                     **{name: value for name, value in answer.items() if name.startswith("Checksum")}})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})


def manifest_key(plan_name: str) -> str:
    """Where a migration's verified manifest lives, relative to its destination prefix."""
    return f"{STATE_DIR}/{CopyStateNames(weights_workflow_id(f'migration-{plan_name}')).manifest}"


def weights_plan(name: str, source: dict[str, Any], destination: dict[str, Any], **weights: Any) -> dict[str, Any]:
    """A plan dict as a user would write it, with test-friendly timeouts."""
    stage = {"source": source, "destination": destination, "heartbeat_timeout": "5s",
             "retry_max_interval": "2s", **weights}
    return {"name": name, "weights": stage}


def s3_location(endpoint: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    return {"kind": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint, "addressing_style": "path"}


async def start_migration(server: TemporalDevServer, plan: dict[str, Any], task_queue: str) -> str:
    client = await server.client()
    workflow_id = f"migration-{plan['name']}"
    await client.start_workflow("MigrationWorkflow", plan, id=workflow_id, task_queue=task_queue)
    return workflow_id


async def migration_result(server: TemporalDevServer, workflow_id: str, timeout: float = 300) -> MigrationResult:
    client = await server.client()
    return await asyncio.wait_for(client.get_workflow_handle(workflow_id, result_type=MigrationResult).result(),
                                  timeout)


async def migration_status(server: TemporalDevServer, workflow_id: str) -> MigrationStatus:
    client = await server.client()
    return await client.get_workflow_handle(workflow_id).query("status", result_type=MigrationStatus)


async def shown_status(server: TemporalDevServer, workflow_id: str) -> MigrationStatus:
    """The status ``flyaway status`` shows: the query, with what the activities in flight add (their retries)."""
    return (await snapshot(await server.client(), workflow_id)).status


async def _failure_of(server: TemporalDevServer, workflow_id: str, timeout: float) -> ApplicationError:
    try:
        await migration_result(server, workflow_id, timeout)
    except WorkflowFailureError as failure:
        assert isinstance(failure.cause, ApplicationError), failure.cause
        return failure.cause
    raise AssertionError(f"{workflow_id} completed; it should have failed")


def migration_failure(server: TemporalDevServer, plan: dict[str, Any], task_queue: str,
                      timeout: float = 60) -> ApplicationError:
    """Start ``plan`` and return the error it ends with (it must fail)."""
    async def go() -> ApplicationError:
        return await _failure_of(server, await start_migration(server, plan, task_queue), timeout)

    return run_async(go())


def abort_migration(server: TemporalDevServer, workflow_id: str, reason: str, timeout: float = 60) -> ApplicationError:
    """Send ``abort`` and return the error the migration then ends with."""
    async def go() -> ApplicationError:
        client = await server.client()
        await client.get_workflow_handle(workflow_id).execute_update("abort", reason)
        return await _failure_of(server, workflow_id, timeout)

    return run_async(go())


def run_migration(server: TemporalDevServer, plan: dict[str, Any], task_queue: str,
                  timeout: float = 300) -> MigrationResult:
    async def go() -> MigrationResult:
        return await migration_result(server, await start_migration(server, plan, task_queue), timeout)

    return run_async(go())


def s3_sha256(s3: Any, bucket: str, key: str) -> str:
    """The sha256 of an object as it is stored, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(8 * 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()
