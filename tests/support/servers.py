"""Servers on a free loopback port, each started by ``start()`` (or ``with``) and ended by ``stop()``:
stdlib HTTP servers in a thread (the fakes and the proxies) and real servers in a subprocess (the
Temporal dev server, moto, the GCS emulator), plus the flyaway worker subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import psutil
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from flyaway.connection import TemporalOptions, connect
from flyaway.starter.dev import (
    free_port,
    start_moto,
    start_temporal,
    stop_process,
    wait_for_port,
)
from tests.support.env import FLYAWAY, REPO, TEST_POLICY_ENV


class LoopbackServer:
    """The base of every server the tests run on 127.0.0.1."""

    @property
    def port(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class QuietHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1, no access log, ``self.owner`` is the server object that started it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]


class JsonHandler(QuietHandler):
    """A handler that reads and answers JSON."""

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections of concurrent probes (1 s SYN retry)
    quiet_errors = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.quiet_errors:
            super().handle_error(request, client_address)


class HttpServer(LoopbackServer):
    """A ThreadingHTTPServer serving ``handler`` from a daemon thread. The port is bound on first use,
    so a test can build URLs before ``start()``."""

    handler: type[BaseHTTPRequestHandler]
    #: a client cut off mid-request (the point of some tests) prints no traceback
    quiet_errors = False
    _http: _ThreadingServer | None = None

    def _bound(self) -> _ThreadingServer:
        if self._http is None:
            self._http = _ThreadingServer(("127.0.0.1", 0), self.handler)
            self._http.owner = self  # type: ignore[attr-defined]
            self._http.quiet_errors = self.quiet_errors
        return self._http

    @property
    def port(self) -> int:
        return int(self._bound().server_address[1])

    def start(self) -> None:
        server = self._bound()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join()
            self._http = None


class ProcessServer(LoopbackServer):
    """A server subprocess on a free loopback port, logging to ``workdir/<log_name>``."""

    log_name = "server.log"

    def __init__(self, workdir: Path) -> None:
        self._port = free_port()
        self.log_path = workdir / self.log_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


class MotoServer(ProcessServer):
    log_name = "moto.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_moto(self.port, log)


class GcsEmulator(ProcessServer):
    """``gcp-storage-emulator`` in memory, standing in for Cloud Storage (``STORAGE_EMULATOR_HOST``), through
    ``bench/gcs_emulator.py``, which honours compose preconditions as Cloud Storage does."""

    log_name = "gcs-emulator.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "gcs_emulator.py"), "--host", "127.0.0.1", "--port",
                 str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 30, self.process)


class TemporalDevServer(ProcessServer):
    """``temporal server start-dev`` with a database file, so it can be restarted; headless unless
    given a UI port (and then a codec endpoint for the UI, if any)."""

    log_name = "temporal.log"

    def __init__(self, workdir: Path, ui_port: int | None = None, codec_endpoint: str | None = None,
                 dynamic_config: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.db_file = workdir / "temporal.db"
        self.ui_port = ui_port
        self.codec_endpoint = codec_endpoint
        #: the server's dynamic config values, e.g. to suggest continue-as-new early or fire short timers on time
        self.dynamic_config = dynamic_config

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = start_temporal(self.db_file, self.port, self.ui_port, log,
                                          codec_endpoint=self.codec_endpoint, dynamic_config=self.dynamic_config)

    def options(self) -> TemporalOptions:
        return TemporalOptions(address=self.address, namespace="default", tls=False)

    async def client(self) -> Client:
        return await connect(self.options())

    async def stored_input(self, workflow_id: str) -> Payloads:
        """The workflow's input as the server stores it (no codec applied)."""
        raw = await Client.connect(self.address, namespace="default")
        history = await raw.get_workflow_handle(workflow_id).fetch_history()
        return history.events[0].workflow_execution_started_event_attributes.input


class WorkerProcess:
    """A ``flyaway worker`` subprocess that a test can SIGKILL and start again."""

    def __init__(self, server: TemporalDevServer, task_queue: str, log_path: Path, env: dict[str, str],
                 options: tuple[str, ...] = ()) -> None:
        self.server = server
        self.task_queue = task_queue
        self.log_path = log_path
        self.env = env
        #: more ``flyaway worker`` options, e.g. ("--max-activities", "2")
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0

    def start(self) -> None:
        env = {**os.environ, **TEST_POLICY_ENV, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*FLYAWAY, "worker", "--address", self.server.address, "--namespace", "default",
                 "--task-queue", self.task_queue, "--json-logs", *self.options],
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
