"""The agent: a worker inside a Fly Machine of the app a source is read from.

It polls only its run's task queue (shared by the run's agents when a volume is read by several,
each on its own fork) and runs only the activities that must run inside the app: the copy activities of a ``fly_volume`` source, which it reads from the fork it
mounts (the copy workflow hands it the stage with the source rewritten to the mount, a ``local``
folder), and the sync of a ``fly_app`` source's secrets, whose values Fly put into its env. Its
Temporal connection and the destination's credentials arrive as the Machine's env (``TEMPORAL_*``
and the names the plan uses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from flyaway.activities.secrets.activities import sync_secrets
from flyaway.activities.storage.activities import copy_batch, list_source, verify_copy
from flyaway.connection import TemporalOptions, connect
from flyaway.workers.main import HEARTBEAT_THROTTLE, run_until_signalled, worker_interceptors

log = structlog.get_logger(__name__)

AGENT_ACTIVITIES: list[Callable[..., Any]] = [list_source, copy_batch, verify_copy, sync_secrets]


def build_agent_worker(client: Client, task_queue: str, max_activities: int = 4) -> Worker:
    return Worker(client, task_queue=task_queue, activities=AGENT_ACTIVITIES,
                  interceptors=worker_interceptors(),
                  max_concurrent_activities=max_activities, max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                  default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE)


async def run_agent(options: TemporalOptions, task_queue: str, max_activities: int = 4) -> None:
    """Serve the agent's activities on ``task_queue`` until SIGINT or SIGTERM (Fly stops Machines with SIGINT)."""
    client = await connect(options)
    log.info("agent started", task_queue=task_queue, namespace=client.namespace, address=options.target)
    await run_until_signalled(build_agent_worker(client, task_queue, max_activities))
    log.info("agent stopped")
