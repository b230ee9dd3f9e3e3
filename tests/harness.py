"""Real servers for the tests: the Temporal dev server, moto's S3 server, flyaway workers,
and a fault-injecting proxy in front of S3. Each runs on a free loopback port."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client

from flyaway.connection import TemporalOptions, connect
from flyaway.models.status import MigrationResult, MigrationStatus
from flyaway.starter.dev import free_port, start_moto, start_temporal, stop_process, wait_for_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
FLYAWAY = [sys.executable, "-m", "flyaway.starter.cli"]
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


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
    """``temporal server start-dev`` (headless) with a database file, so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.db_file = workdir / "temporal.db"
        self.log_path = workdir / "temporal.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_temporal(self.db_file, self.port, None, log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def options(self) -> TemporalOptions:
        return TemporalOptions(address=self.address, namespace="default", tls=False)

    async def client(self) -> Client:
        return await connect(self.options())


class MotoServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_moto(self.port, log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class WorkerProcess:
    """A ``flyaway worker`` subprocess that a test can SIGKILL and start again."""

    def __init__(self, server: TemporalDevServer, task_queue: str, log_path: Path, env: dict[str, str]) -> None:
        self.server = server
        self.task_queue = task_queue
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*FLYAWAY, "worker", "--address", self.server.address, "--namespace", "default",
                 "--task-queue", self.task_queue, "--json-logs"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)

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
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.uploaded = 0
        self.requests = 0
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
                    if self.command == "PUT" and "/.flyaway/" not in self.path:
                        proxy.uploaded += len(body)
                if proxy.mode == "deny":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                               b"<Message>Access Denied</Message></Error>")
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (the point of some tests) is not news

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        wait_for_port(self.port, 5)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def run_migration(server: TemporalDevServer, plan: dict[str, Any], task_queue: str,
                  timeout: float = 300) -> MigrationResult:
    async def go() -> MigrationResult:
        return await migration_result(server, await start_migration(server, plan, task_queue), timeout)

    return run_async(go())
