"""The workflow side of a source read inside a Fly app: start its agent, hand it the work, remove it.

A ``fly_volume`` source's copy activities run on the agent's own task queue and receive the
stage as the agent sees it: the source rewritten to the fork's mount, a ``local`` folder. A
``fly_app`` source's sync activity runs there too, reading the values from the agent's env.
Agents and forks belong to a migration (the id of ``MigrationWorkflow``, or of a copy started on
its own), so the stage, the migration's abort path and any later run can all remove them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.fly.agent import cleanup_fly_source, prepare_fly_source, wait_for_agent
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.fly_agent import AgentCleanupRequest, AgentRequest, FlyAgent
    from flyaway.models.locations import FlyVolumeLocation
    from flyaway.models.plan import WeightsStage
    from flyaway.models.secrets import FlyAppSource, SecretsStage

T = TypeVar("T")
#: Fly outages are waited out; bad input, missing rights and deadlines are the operator's
FLY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1),
                        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)
#: cleanup after a failure or an abort must not hold it forever during a Fly outage
BEST_EFFORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5,
                                  non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)
FLY_HEARTBEAT = timedelta(minutes=1)
#: an agent that stops polling (its Machine died) fails the activity instead of leaving it queued forever
AGENT_SCHEDULE_TO_START = timedelta(minutes=10)


def migration_id() -> str:
    """The migration this workflow works for: its parent's id, or its own when started alone."""
    parent = workflow.info().parent
    return parent.workflow_id if parent is not None else workflow.info().workflow_id


def agent_stage(stage: WeightsStage, agent: FlyAgent | None) -> WeightsStage:
    """The stage as the activities that run on ``agent`` must see it (unchanged without an agent)."""
    if agent is None or not isinstance(stage.source, FlyVolumeLocation):
        return stage
    return stage.model_copy(update={"source": stage.source.mounted()})


async def start_agent(stage: WeightsStage | SecretsStage) -> FlyAgent:
    """Start the agent (on a fork of the volume, for a volume; ``agents`` of them) and wait until they poll."""
    source = stage.source
    assert isinstance(source, (FlyVolumeLocation, FlyAppSource))
    waits = source.agent_start_timeout
    if isinstance(source, FlyVolumeLocation):
        waits += source.fork_timeout
    agent: FlyAgent = await workflow.execute_activity(
        prepare_fly_source, AgentRequest(stage=stage, migration_id=migration_id(), run_id=workflow.info().run_id),
        start_to_close_timeout=waits + timedelta(minutes=15), heartbeat_timeout=FLY_HEARTBEAT,
        retry_policy=FLY_RETRY)
    await workflow.execute_activity(
        wait_for_agent, args=[agent, source.agent_start_timeout.total_seconds()],
        start_to_close_timeout=source.agent_start_timeout + timedelta(minutes=2), heartbeat_timeout=FLY_HEARTBEAT,
        retry_policy=FLY_RETRY)
    return agent


async def remove_agents(stage: WeightsStage | SecretsStage, migration: str, *, best_effort: bool = False) -> None:
    """Destroy the migration's agent Machines for the stage's source (and delete their forks); nothing to do
    for a source read without an agent.

    ``best_effort`` (a stage that failed, an abort) tries a few times and only logs a failure, so
    the error being reported stays the one that matters; a later run removes what is left.
    """
    if not isinstance(stage.source, (FlyVolumeLocation, FlyAppSource)):
        return
    try:
        await workflow.execute_activity(
            cleanup_fly_source, AgentCleanupRequest(source=stage.source, migration_id=migration),
            start_to_close_timeout=timedelta(minutes=15), heartbeat_timeout=FLY_HEARTBEAT,
            retry_policy=BEST_EFFORT_RETRY if best_effort else FLY_RETRY)
    except ActivityError as error:
        if not best_effort:
            raise
        workflow.logger.warning("could not remove the agents of %s (a later run will): %s", migration, error)


async def run_on_agent(stage: WeightsStage | SecretsStage, agent: FlyAgent | None,
                       work: Callable[[FlyAgent], Awaitable[T]]) -> T:
    """Run ``work`` on the stage's agent (started first unless ``agent`` runs already), then remove the
    agent: also when ``work`` fails or is cancelled, best effort, so its error stays the one reported."""
    try:
        result = await work(agent or await start_agent(stage))
    except (Exception, asyncio.CancelledError):
        await remove_agents(stage, migration_id(), best_effort=True)
        raise
    await remove_agents(stage, migration_id())
    return result
