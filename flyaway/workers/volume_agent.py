"""The volume agent: a worker inside a Fly Machine that mounts a fork of the volume being copied.

It polls only its own task queue (unique to the fork) and runs only the copy activities, so
the bytes go straight from the mounted fork to the destination. The copy workflow hands it
the stage with the source rewritten to the mount, a ``local`` folder. Its Temporal connection
and the destination's credentials arrive as the Machine's env (``TEMPORAL_*`` and the names the
plan uses).
"""

from __future__ import annotations

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from flyaway.activities.storage.activities import copy_batch, list_source, verify_copy
from flyaway.connection import TemporalOptions, connect
from flyaway.workers.main import run_until_signalled

log = structlog.get_logger(__name__)

AGENT_ACTIVITIES = [list_source, copy_batch, verify_copy]


def build_agent_worker(client: Client, task_queue: str, max_activities: int = 4) -> Worker:
    return Worker(client, task_queue=task_queue, activities=AGENT_ACTIVITIES,
                  max_concurrent_activities=max_activities)


async def run_volume_agent(options: TemporalOptions, task_queue: str, max_activities: int = 4) -> None:
    """Serve the copy activities on ``task_queue`` until SIGINT or SIGTERM (Fly stops Machines with SIGINT)."""
    client = await connect(options)
    log.info("volume agent started", task_queue=task_queue, namespace=client.namespace, address=options.target)
    await run_until_signalled(build_agent_worker(client, task_queue, max_activities))
    log.info("volume agent stopped")
