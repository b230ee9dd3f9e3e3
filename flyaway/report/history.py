"""Reading a migration's workflow histories: every run of the migration and of its child workflows.

Payloads are decoded through the client's data converter, so an encrypted history (the codec
keys in the environment) reads like a plain one. Nothing here interprets what happened; see
:mod:`flyaway.report.collect` for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from flyaway.workflows.stages.base import failure_message

E = EventType


@dataclass
class ActivityRun:
    """One scheduled activity: its type, its last attempt's number and times, and how it ended."""

    name: str
    scheduled: HistoryEvent
    attempt: int = 1
    started_at: datetime | None = None
    closed: HistoryEvent | None = None

    @property
    def completed(self) -> bool:
        return self.closed is not None and self.closed.event_type == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED

    @property
    def closed_at(self) -> datetime | None:
        return self.closed.event_time.ToDatetime() if self.closed is not None else None


@dataclass
class RunHistory:
    """The events of one workflow run, with its activities gathered."""

    workflow_id: str
    run_id: str
    events: list[HistoryEvent]
    activities: list[ActivityRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_id: dict[int, ActivityRun] = {}
        for event in self.events:
            kind = event.event_type
            if kind == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                run = ActivityRun(event.activity_task_scheduled_event_attributes.activity_type.name, event)
                by_id[event.event_id] = run
                self.activities.append(run)
            elif kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attributes = event.activity_task_started_event_attributes
                run = by_id[attributes.scheduled_event_id]
                run.attempt, run.started_at = attributes.attempt, event.event_time.ToDatetime()
            elif kind in _ACTIVITY_CLOSED:
                run = by_id[_closed_attributes(event).scheduled_event_id]
                run.closed = event

    def of_type(self, kind: int) -> Iterator[HistoryEvent]:
        return (event for event in self.events if event.event_type == kind)

    def named(self, name: str) -> list[ActivityRun]:
        return [run for run in self.activities if run.name == name]

    @property
    def first(self) -> HistoryEvent:
        return self.events[0]

    @property
    def last(self) -> HistoryEvent:
        return self.events[-1]


_ACTIVITY_CLOSED = {
    E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    E.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    E.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def _closed_attributes(event: HistoryEvent) -> Any:
    return getattr(event, _ACTIVITY_CLOSED[event.event_type])


async def run_history(client: Client, workflow_id: str, run_id: str | None = None) -> RunHistory:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    events = list(history.events)
    run = run_id or history.run_id
    return RunHistory(workflow_id, run, events)


async def chain_from(client: Client, workflow_id: str, run_id: str | None) -> list[RunHistory]:
    """A run and the runs it continued as, in order (one workflow's life across continue-as-new)."""
    runs = [await run_history(client, workflow_id, run_id)]
    while runs[-1].last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        next_run = runs[-1].last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        runs.append(await run_history(client, workflow_id, next_run))
    return runs


async def migration_chain(client: Client, workflow_id: str) -> list[RunHistory]:
    """Every run of the migration's latest execution, first to latest."""
    description = await client.get_workflow_handle(workflow_id).describe()
    info = description.raw_description.workflow_execution_info
    return await chain_from(client, workflow_id, info.first_run_id or info.execution.run_id)


async def children(client: Client, parents: list[RunHistory], suffix: str) -> list[list[RunHistory]]:
    """Each child started by ``parents`` whose id ends with ``suffix`` (a stage's child: '-weights',
    '-canary'), in the order started; each as its chain of runs. A retried stage starts a new child."""
    found = []
    for parent in parents:
        for event in parent.of_type(E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED):
            execution = event.child_workflow_execution_started_event_attributes.workflow_execution
            if execution.workflow_id.endswith(suffix):
                found.append(await chain_from(client, execution.workflow_id, execution.run_id))
    return found


class ReportError(Exception):
    """What stops a report being written, in one line for the operator."""


class Decoder:
    """Decodes payloads and failures of a history with the client's data converter (codec included)."""

    def __init__(self, client: Client) -> None:
        self.converter = client.data_converter

    async def first(self, payloads: Any, type_hint: type | None = None) -> Any:
        """The first value of a ``Payloads``, or None when it holds none."""
        if payloads is None or not payloads.payloads:
            return None
        try:
            values = await self.converter.decode(list(payloads.payloads)[:1], [type_hint] if type_hint else None)
        except KeyError as error:  # the payload converter's word for an encoding it cannot read
            raise ReportError(f"cannot decode the history ({error.args[0]}); its payloads are encrypted: set "
                              f"FLYAWAY_CODEC_KEYS to the worker's keys") from None
        return values[0]

    async def result(self, run: ActivityRun, type_hint: type) -> Any:
        assert run.closed is not None and run.completed
        return await self.first(run.closed.activity_task_completed_event_attributes.result, type_hint)

    async def failure_message(self, failure: Any) -> str:
        """What went wrong, as the migration's status words it (activity and child wrappers unwrapped)."""
        return failure_message(await self.converter.decode_failure(failure))
