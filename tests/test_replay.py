"""Upgrades: every history recorded in tests/histories/ (real migrations, see scripts/record_histories.py)
replays against today's workflow code. A change that issues other commands, or the same ones in
another order, fails here, as it would fail a migration running while the new version is deployed.
docs/upgrades.md says what to do then."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, Worker
from temporalio.workflow import NondeterminismError

from flyaway.workers.main import WORKFLOWS
from tests.support.histories import HISTORIES, recorded_histories, replay_converter
from tests.support.servers import TemporalDevServer

SCENARIOS = {"every_stage", "copy_continued", "retry", "canary_rollback", "image_missing", "abort"}
#: an activity each stage schedules (the canary's run in its child workflow)
STAGE_ACTIVITIES = {"weights": "flyaway.weights.copy_batch", "image": "flyaway.image.copy",
                    "secrets": "flyaway.secrets.sync", "deploy": "flyaway.deploy.service",
                    "canary": "flyaway.traffic.set_weight", "teardown": "flyaway.fly.teardown.destroy"}


def replay(histories: list[tuple[Path, WorkflowHistory]]) -> dict[Path, BaseException | None]:
    """Each file's replay failure (None: it replayed), with flyaway's workflows and data converter."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=replay_converter())

    async def each() -> AsyncIterator[WorkflowHistory]:
        for _, history in histories:
            yield history

    async def go() -> dict[Path, BaseException | None]:
        results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
        return {path: results.replay_failures.get(history.run_id) for path, history in histories}

    return asyncio.run(go())


def test_every_scenario_is_recorded() -> None:
    recorded = {path.parent.name for path, _ in recorded_histories()}
    assert recorded == SCENARIOS, f"re-record: .venv/bin/python scripts/record_histories.py (in {HISTORIES})"
    types = {history.events[0].workflow_execution_started_event_attributes.workflow_type.name
             for _, history in recorded_histories()}
    assert types == {"MigrationWorkflow", "CopyWeightsWorkflow", "CanaryWorkflow"}
    scheduled = {event.activity_task_scheduled_event_attributes.activity_type.name
                 for _, history in recorded_histories() for event in history.events
                 if event.HasField("activity_task_scheduled_event_attributes")}
    assert {stage for stage, activity in STAGE_ACTIVITIES.items() if activity not in scheduled} == set()
    continued = [path for path, history in recorded_histories() if history.events[-1].HasField(
        "workflow_execution_continued_as_new_event_attributes")]
    assert any("-weights" in path.name for path in continued), "a copy that continued as new"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_recorded_histories_replay_on_todays_workflows(scenario: str) -> None:
    histories = [(path, history) for path, history in recorded_histories() if path.parent.name == scenario]
    assert histories, f"nothing recorded for {scenario}: .venv/bin/python scripts/record_histories.py {scenario}"
    failures = [f"{path.parent.name}/{path.name}: {_nondeterminism(error)}"
                for path, error in replay(histories).items() if error is not None]
    assert not failures, "these recorded runs no longer replay (docs/upgrades.md):\n" + "\n".join(failures)


def _nondeterminism(error: BaseException) -> str:
    """The core's one-line reason ("Nondeterminism error: ... does not handle this event: ..."), or the error."""
    text = str(error)
    start = text.find("Nondeterminism error")
    return text[start:text.find('", source', start)] if start >= 0 else text


# ---- the upgrade path docs/upgrades.md shows: a new command behind workflow.patched ------------------

@workflow.defn(name="Upgraded", sandboxed=False)
class Before:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(0.01)
        return "done"


@workflow.defn(name="Upgraded", sandboxed=False)
class AfterUnpatched:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(0.02)  # a new timer before the old one: another command first
        await workflow.sleep(0.01)
        return "done"


@workflow.defn(name="Upgraded", sandboxed=False)
class AfterPatched:
    @workflow.run
    async def run(self) -> str:
        if workflow.patched("extra-timer"):  # true for new runs, false while replaying an old one
            await workflow.sleep(0.02)
        await workflow.sleep(0.01)
        return "done"


def test_a_new_command_behind_workflow_patched_replays_an_old_history(temporal_server: TemporalDevServer,
                                                                      task_queue: str) -> None:
    async def go() -> tuple[WorkflowHistory, WorkflowHistory]:
        client = await Client.connect(temporal_server.address)
        histories = []
        for version in (Before, AfterPatched):
            async with Worker(client, task_queue=task_queue, workflows=[version]):
                handle = await client.start_workflow("Upgraded", id=f"upgraded-{uuid.uuid4().hex[:8]}",
                                                     task_queue=task_queue)
                assert await handle.result() == "done"
                histories.append(await handle.fetch_history())
        return histories[0], histories[1]

    old, new = asyncio.run(go())
    with pytest.raises(NondeterminismError):
        asyncio.run(Replayer(workflows=[AfterUnpatched]).replay_workflow(old))
    asyncio.run(Replayer(workflows=[AfterPatched]).replay_workflow(old))  # the old run: no marker, no new timer
    asyncio.run(Replayer(workflows=[AfterPatched]).replay_workflow(new))  # a new run: marker and both timers
