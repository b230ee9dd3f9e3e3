"""The agent's activities: start it, wait until its worker polls, remove it (see :mod:`flyaway.providers.fly.agent`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from flyaway.activities.fly import activity_client
from flyaway.errors import TimedOut
from flyaway.models.fly_agent import AgentCleanupReport, AgentCleanupRequest, AgentRequest, FlyAgent
from flyaway.providers.fly.agent import cleanup_agents, prepare_agent


@activity.defn(name="flyaway.fly.prepare_source")
def prepare_fly_source(request: AgentRequest) -> FlyAgent:
    """Start the agent Machine (on a fork of the volume, for a volume); reuses what a retry finds of its run.

    A failure that retrying cannot fix removes what this run made before it is reported.
    """
    with activity_client(request.source.app) as client:
        return prepare_agent(client, request, activity.info().namespace, activity.heartbeat)


@activity.defn(name="flyaway.fly.wait_for_agent")
async def wait_for_agent(agent: FlyAgent, timeout_seconds: float) -> None:
    """Return once every agent's worker polls the task queue: the Machines started *and* reached Temporal."""
    client = activity.client()
    request = DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=agent.task_queue),
                                       task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    machines = agent.machine_ids or [agent.machine_id]
    deadline = time.monotonic() + timeout_seconds
    while len(pollers := (await client.workflow_service.describe_task_queue(request)).pollers) < len(machines):
        if time.monotonic() > deadline:
            raise TimedOut(f"the agent Machines {', '.join(machines)} of Fly app '{agent.app}' started, but "
                           f"{len(pollers)} of {len(machines)} polled task queue {agent.task_queue} within "
                           f"{timeout_seconds:g} s; check the source's agent_temporal (the address must be "
                           f"reachable from Fly) and the agents' logs (`fly logs -a {agent.app} --machine "
                           f"{machines[0]}`)")
        activity.heartbeat()
        await asyncio.sleep(1.0)


@activity.defn(name="flyaway.fly.cleanup_source")
def cleanup_fly_source(request: AgentCleanupRequest) -> AgentCleanupReport:
    """Destroy every agent Machine of the migration for the source and delete their forks (unless ``keep_fork``)."""
    with activity_client(request.source.app) as client:
        return cleanup_agents(client, request.source, request.migration_id, activity.heartbeat)


FLY_AGENT_ACTIVITIES: list[Callable[..., Any]] = [prepare_fly_source, wait_for_agent, cleanup_fly_source]
