"""The main worker: every workflow and every activity that runs outside Fly."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Interceptor, Worker

from flyaway.activities.deploy.activities import DEPLOY_ACTIVITIES
from flyaway.activities.fly.agent import FLY_AGENT_ACTIVITIES
from flyaway.activities.fly.teardown import FLY_TEARDOWN_ACTIVITIES
from flyaway.activities.image.activities import IMAGE_ACTIVITIES
from flyaway.activities.secrets.activities import SECRETS_ACTIVITIES
from flyaway.activities.storage.activities import COPY_ACTIVITIES
from flyaway.activities.traffic.activities import TRAFFIC_ACTIVITIES
from flyaway.connection import TASK_QUEUE, TemporalOptions, connect
from flyaway.failures import FailureInterceptor
from flyaway.workers.policy import PolicyInterceptor, start_policy
from flyaway.workflows.canary import CanaryWorkflow
from flyaway.workflows.copy_weights import CopyWeightsWorkflow
from flyaway.workflows.migration import SEARCH_ATTRIBUTES, MigrationWorkflow

log = structlog.get_logger(__name__)

WORKFLOWS = [MigrationWorkflow, CopyWeightsWorkflow, CanaryWorkflow]
#: An activity learns that it was cancelled (pause, abort) only from the answer to a heartbeat the
#: worker sends; by default the worker sends one at most every 0.8 x the heartbeat timeout (up to
#: 60 s), so a pause would take that long to stop the bytes. Copies heartbeat every 2 s; sending at
#: most one a second lets a cancellation through within a few seconds, at a small cost per activity.
HEARTBEAT_THROTTLE = timedelta(seconds=1)
_INDEXED_TYPES = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
                  "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE}


async def ensure_search_attributes(client: Client) -> None:
    """Register flyaway's search attributes; a worker without operator rights only warns."""
    wanted = {key.name: "Double" if key.value_type is float else "Keyword" for key in SEARCH_ATTRIBUTES}
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace))
        missing = {name: kind for name, kind in wanted.items() if name not in existing.custom_attributes}
        if missing:
            await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: _INDEXED_TYPES[kind] for name, kind in missing.items()}))
            log.info("registered search attributes", names=sorted(missing))
    except RPCError as error:
        log.warning("could not register search attributes; create them with `temporal operator search-attribute "
                    "create` or migrations will fail to record their stage", names=sorted(wanted), error=str(error))


def worker_interceptors() -> list[Interceptor]:
    """Every worker's: exceptions leave activities through the one failure path (outermost, so it also maps the
    policy's refusals), and this process's policy (``FLYAWAY_ALLOW_*``) is checked on every activity's input."""
    return [FailureInterceptor(), PolicyInterceptor(start_policy())]


def build_worker(client: Client, task_queue: str = TASK_QUEUE, max_activities: int = 20) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=WORKFLOWS, interceptors=worker_interceptors(),
                  activities=[*COPY_ACTIVITIES, *SECRETS_ACTIVITIES, *FLY_AGENT_ACTIVITIES, *FLY_TEARDOWN_ACTIVITIES,
                              *TRAFFIC_ACTIVITIES, *IMAGE_ACTIVITIES, *DEPLOY_ACTIVITIES],
                  activity_executor=ThreadPoolExecutor(max_activities),
                  max_concurrent_activities=max_activities, max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                  # a copy's units go through matching, so they spread over every worker on the queue instead
                  # of running where the workflow task that scheduled them ran
                  disable_eager_activity_execution=True,
                  default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE)


async def run_worker(options: TemporalOptions, task_queue: str = TASK_QUEUE, max_activities: int = 20) -> None:
    """Run until SIGINT or SIGTERM, then finish gracefully."""
    client = await connect(options)
    await ensure_search_attributes(client)
    worker = build_worker(client, task_queue, max_activities)
    log.info("worker started", task_queue=task_queue, namespace=client.namespace, address=options.target)
    await run_until_signalled(worker)
    log.info("worker stopped")


async def run_until_signalled(worker: Worker) -> None:
    """Run ``worker`` until SIGINT or SIGTERM, then let it finish gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        await stop.wait()
