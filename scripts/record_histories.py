"""Record real workflow histories into tests/histories/ for the replay test (tests/test_replay.py).

Each scenario runs a real migration: the Temporal dev server, a ``flyaway worker`` subprocess, moto and
the fakes of tests/fakes, as the test suite runs them. Payloads are encrypted with the committed,
test-only key of tests/support/histories.py. Before a file is written, its history (raw and decoded)
is searched for every credential and secret value the scenario handed the worker; one found stops the
recording.

    .venv/bin/python scripts/record_histories.py            # every scenario, replacing tests/histories/
    .venv/bin/python scripts/record_histories.py abort      # only the named ones

docs/upgrades.md says when to re-record.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for tests.support

from flyaway.codec import KEYS_ENV
from flyaway.models.status import MigrationState
from tests.fakes.endpoint import FakeEndpoint
from tests.fakes.fly_machines import FakeFlyMachinesAPI
from tests.fakes.health import StartingService
from tests.fakes.runpod_secrets import FakeRunpodSecrets
from tests.fakes.runpod_serverless import FakeRunpodServerless
from tests.support.env import TEST_AWS_ENV
from tests.support.histories import HISTORIES, REPLAY_CODEC_KEYS, history_file, replay_codec
from tests.support.leaks import assert_no_value, payloads_in
from tests.support.migrations import (
    abort_migration,
    eventually,
    migration_result,
    migration_status,
    run_async,
    start_migration,
)
from tests.support.plans import canary_section, s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.s3 import s3_client
from tests.support.servers import HttpServer, JsonHandler, MotoServer, TemporalDevServer, WorkerProcess

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|KEY")
MiB = 1024 * 1024


@dataclass
class Lab:
    """What a scenario runs against: one dev server, moto, a folder, and the workers it starts."""

    server: TemporalDevServer
    moto: MotoServer
    folder: Path
    task_queue: str = field(default_factory=lambda: f"record-{uuid.uuid4().hex[:8]}")
    #: every credential and secret value handed to a worker or written to a secrets source
    secrets: dict[str, str] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)

    def worker(self, env: dict[str, str] | None = None) -> WorkerProcess:
        env = {**TEST_AWS_ENV, **(env or {})}
        self.secrets |= {name: value for name, value in env.items() if _SECRET_NAME.search(name)}
        worker = WorkerProcess(self.server, self.task_queue, self.folder / "worker.log", env)
        worker.start()
        self.stack.callback(worker.stop)
        return worker

    def weights(self, name: str, files: int = 1, size: int = 4096, **fields: Any) -> dict[str, Any]:
        source = self.folder / f"{name}-weights"
        source.mkdir()
        for index in range(files):
            (source / f"shard-{index}.bin").write_bytes(os.urandom(size))
        return weights_plan(name, {"kind": "local", "path": str(source)},
                            {"kind": "local", "path": str(self.folder / f"{name}-copy")}, **fields)

    def wait_for(self, workflow_id: str, what: str, check: Callable[[Any], bool], timeout: float = 90) -> None:
        eventually(lambda: check(run_async(migration_status(self.server, workflow_id))), timeout, what=what)

    def update(self, workflow_id: str, name: str, *args: str) -> None:
        async def go() -> None:
            await (await self.server.client()).get_workflow_handle(workflow_id).execute_update(name, args=list(args))
        run_async(go())

    def retry_once_waiting(self, workflow_id: str, repair: Callable[[], None]) -> None:
        """Once the migration waits for the operator, ``repair`` what failed, send ``retry`` and let it finish."""
        self.wait_for(workflow_id, "waiting_for_operator", lambda s: s.state == MigrationState.waiting_for_operator)
        repair()
        self.update(workflow_id, "retry")
        self.finish(workflow_id)

    def finish(self, workflow_id: str) -> None:
        result = run_async(migration_result(self.server, workflow_id, 180))
        assert result.status.state == MigrationState.completed, result.status


def every_stage(lab: Lab) -> None:
    """weights, secrets, deploy, canary and teardown in one migration, teardown approved."""
    plan = lab.weights("every-stage")
    service = lab.stack.enter_context(StartingService())
    runpod = lab.stack.enter_context(FakeRunpodServerless(endpoint_base=service.endpoint))
    runpod_secrets = lab.stack.enter_context(FakeRunpodSecrets(api_key=runpod.api_key))
    values = {"APP_API_TOKEN": f"app-token-{uuid.uuid4().hex}"}
    lab.secrets |= values
    (lab.folder / "app.env").write_text("".join(f"{key}='{value}'\n" for key, value in values.items()))
    plan["secrets"] = {"source": {"kind": "dotenv", "path": str(lab.folder / "app.env")},
                       "destination": {"kind": "runpod", "api_url": runpod_secrets.api_url}}
    plan["deploy"] = {"platform": "runpod", "endpoint_name": "every-stage", "api_url": runpod.api_url,
                      "image": "registry.example.com/llm/every-stage:v1",
                      "mount_weights": False, "health": {"interval": "0.05s", "deadline": "10s"}}
    old, new = (lab.stack.enter_context(FakeEndpoint()) for _ in range(2))
    plan["canary"] = canary_section(lab.moto, old, new, [{"weight": 50, "pause_seconds": 1}, {"weight": 100}])
    fly = lab.stack.enter_context(FakeFlyMachinesAPI("fly-replay-token"))
    fly.add_app("old-app")
    fly.add_machine("old-app", "web-1", region="ord", state="started", config={"image": "registry.fly.io/old-app:v1"})
    plan["teardown"] = {"app": "old-app", "heartbeat_timeout": "3s"}
    lab.worker({"RUNPOD_API_KEY": runpod.api_key, "FLY_API_TOKEN": fly.token, "FLY_API_BASE_URL": fly.base_url})
    workflow_id = run_async(start_migration(lab.server, plan, lab.task_queue))
    lab.wait_for(workflow_id, "the teardown approval gate",
                 lambda s: s.stage_status("teardown").detail.startswith("waiting for `flyaway approve"))
    lab.update(workflow_id, "approve", "teardown")
    lab.finish(workflow_id)


def copy_continued(lab: Lab) -> None:
    """Three one-file batches on a server that suggests continuing as new after five events."""
    lab.worker()
    lab.finish(run_async(start_migration(lab.server, lab.weights("copy-continued", files=3, batch_files=1),
                                         lab.task_queue)))


def retry_after_operator(lab: Lab) -> None:
    """Access denied mid-copy: the migration waits for the operator, access comes back, ``retry`` ends it."""
    s3 = s3_client(lab.moto.endpoint)
    s3.create_bucket(Bucket="replay-retry")
    proxy = S3FaultProxy(lab.moto.port)
    proxy.start()
    lab.stack.callback(proxy.stop)
    source = lab.weights("retry", size=8 * MiB)["weights"]["source"]
    plan = weights_plan("retry", source, s3_location(proxy.endpoint, "replay-retry", "m"), part_size="5MiB",
                        bandwidth_limit="2MiB")
    lab.worker()
    workflow_id = run_async(start_migration(lab.server, plan, lab.task_queue))
    eventually(lambda: proxy.uploaded > 0, 60, interval=0.05, what="the first part")
    proxy.mode = "deny"
    lab.retry_once_waiting(workflow_id, lambda: setattr(proxy, "mode", "pass"))


def canary_rollback(lab: Lab) -> None:
    """The new side fails at the second step: the canary rolls back, the new side recovers, ``retry`` ends it."""
    plan = lab.weights("rollback")
    old, new = (lab.stack.enter_context(FakeEndpoint()) for _ in range(2))
    plan["canary"] = canary_section(lab.moto, old, new, [{"weight": 20, "pause_seconds": 1.5},
                                                          {"weight": 60, "pause_seconds": 6}, {"weight": 100}])
    lab.worker()
    workflow_id = run_async(start_migration(lab.server, plan, lab.task_queue))
    lab.wait_for(workflow_id, "the second step", lambda s: s.canary is not None and s.canary.step == 1
                 and s.canary.history[-1].analyses >= 1)
    new.mode = "failing"
    lab.retry_once_waiting(workflow_id, lambda: setattr(new, "mode", "healthy"))


class _EmptyRegistryHandler(JsonHandler):
    """A registry that holds no image: its API root answers, every manifest is unknown."""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_json(200, {})
        else:
            self.send_json(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

    do_HEAD = do_GET


class EmptyRegistry(HttpServer):
    handler = _EmptyRegistryHandler


def image_missing(lab: Lab) -> None:
    """The image stage finds no source image: it waits for the operator, who aborts."""
    registry = lab.stack.enter_context(EmptyRegistry())
    host = registry.endpoint.removeprefix("http://")
    plan = lab.weights("image-missing")
    plan["image"] = {"source": f"{host}/fly/app:deployment-404", "destination": f"{host}/team/app:migrated"}
    lab.worker()
    workflow_id = run_async(start_migration(lab.server, plan, lab.task_queue))
    lab.wait_for(workflow_id, "waiting_for_operator", lambda s: s.state == MigrationState.waiting_for_operator)
    error = abort_migration(lab.server, workflow_id, "no image to copy")
    assert error.type == "Aborted", error


def abort(lab: Lab) -> None:
    """``abort`` while the copy runs: unfinished uploads dropped, the migration ends aborted."""
    lab.worker()
    plan = lab.weights("abort", size=32 * MiB, bandwidth_limit="1MiB")
    workflow_id = run_async(start_migration(lab.server, plan, lab.task_queue))
    lab.wait_for(workflow_id, "the copy", lambda s: s.stage == "weights" and s.state == MigrationState.running)
    time.sleep(2)  # a part or two on their way
    error = abort_migration(lab.server, workflow_id, "recorded for the replay test")
    assert error.type == "Aborted", error


SCENARIOS: dict[str, Callable[[Lab], None]] = {"every_stage": every_stage, "copy_continued": copy_continued,
                                              "retry": retry_after_operator, "canary_rollback": canary_rollback,
                                              "image_missing": image_missing, "abort": abort}


async def record(lab: Lab, scenario: str) -> list[Path]:
    """Write every run of every workflow of the scenario's task queue, oldest run first, after checking it."""
    client = await lab.server.client()
    executions = [e async for e in client.list_workflows(f'TaskQueue = "{lab.task_queue}"')]
    codec, written, runs = replay_codec(), [], dict[str, int]()
    for execution in sorted(executions, key=lambda e: (e.id, e.start_time)):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        text = history.to_json()
        payloads = await codec.decode([p for event in history.events for p in payloads_in(event)])
        for where, blob in (("history", text), ("its decoded payloads", "\n".join(
                p.data.decode("utf-8", errors="replace") for p in payloads))):
            assert_no_value(lab.secrets, f"{execution.id} {where}", blob)
        runs[execution.id] = runs.get(execution.id, 0) + 1
        path = history_file(scenario, execution.id, runs[execution.id])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        written.append(path)
    return written


@contextmanager
def lab_for(scenario: str, moto: MotoServer, folder: Path) -> Iterator[Lab]:
    server = TemporalDevServer(folder, dynamic_config={"limit.historyCount.suggestContinueAsNew": "5"}
                               if scenario == "copy_continued" else None)
    server.start()
    with ExitStack() as stack:
        stack.callback(server.stop)
        lab = Lab(server, moto, folder, stack=stack)
        yield lab


def main(names: list[str]) -> None:
    os.environ[KEYS_ENV] = REPLAY_CODEC_KEYS  # the workers and this process's clients encrypt with the test key
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    with tempfile.TemporaryDirectory(prefix="flyaway-record-") as temp:
        moto = MotoServer(Path(temp))
        moto.start()
        try:
            for name in names or list(SCENARIOS):
                shutil.rmtree(HISTORIES / name, ignore_errors=True)
                folder = Path(temp) / name
                folder.mkdir()
                started = time.monotonic()
                with lab_for(name, moto, folder) as lab:
                    SCENARIOS[name](lab)
                    written = asyncio.run(record(lab, name))
                print(f"{name}: {len(written)} histories in {time.monotonic() - started:.0f} s")
        finally:
            moto.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
