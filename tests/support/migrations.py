"""Starting migrations on the test dev server and waiting for their status, result or failure."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from flyaway.models.status import MigrationResult, MigrationStatus
from flyaway.starter.display import snapshot
from tests.support.servers import TemporalDevServer, WorkerProcess

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
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


#: two activities per worker: of the 4 units a fan-out plan keeps in flight, each of two workers must take some
TWO_ACTIVITIES = ("--max-activities", "2")


@contextlib.contextmanager
def running_workers(server: TemporalDevServer, task_queue: str, folder: Path, count: int, env: dict[str, str],
                    options: tuple[str, ...] = ()) -> Iterator[list[WorkerProcess]]:
    """``count`` workers on one task queue (logs ``folder/worker-N.log``), each polling before this yields;
    stopped afterwards."""
    workers = [WorkerProcess(server, task_queue, folder / f"worker-{n}.log", env, options) for n in range(1, count + 1)]
    for process in workers:
        process.start()
    try:
        for process in workers:
            eventually(lambda process=process: "worker started" in process.logs(), 60,
                       what=f"all {count} workers to poll")
        yield workers
    finally:
        for process in workers:
            process.stop()

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
    status: MigrationStatus = await client.get_workflow_handle(workflow_id).query("status", result_type=MigrationStatus)
    return status


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
