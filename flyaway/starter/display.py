"""Live progress of a migration in the terminal (rich): stages, files, bytes, rate, ETA.

The ``status`` query gives what the workflow knows; the activities in flight, of the migration
and of the child running its stage (read with ``describe()``, which adds nothing to history),
add what they have done since, so a single huge file still shows progress when the query lags.
A heartbeat is whatever its activity sent: a copy's progress, a count of files listed, a line of
text. What the display understands it shows, anything else it skips; it never fails on it.

They also say when the stage is being retried: an activity past its first attempt carries the
failure of the one before (Temporal keeps it with the pending activity, and the UI shows it
there too). The stage then shows ``retrying`` with that error, redacted, and the attempt under
way; once the activity succeeds it is no longer pending, and the error goes with it. Doing this
here rather than in the workflow costs no history event per failed attempt, however long an
outage lasts, and keeps every stage's retries, the copy's included, on one path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from flyaway.models.status import MigrationState, MigrationStatus, StageState
from flyaway.redaction import scrub
from flyaway.workflows.stages.base import failure_message

_STATE_STYLE = {"completed": "green", "running": "cyan", "skipped": "dim", "waiting_for_operator": "bold red",
                "aborted": "red", "pending": "white", "retrying": "yellow"}
_OPEN = WorkflowExecutionStatus.RUNNING
#: how the migration stands, for people and scripts, once its workflow has ended
_ENDED = {WorkflowExecutionStatus.COMPLETED: "completed", WorkflowExecutionStatus.FAILED: "failed",
          WorkflowExecutionStatus.CANCELED: "canceled", WorkflowExecutionStatus.TERMINATED: "terminated",
          WorkflowExecutionStatus.TIMED_OUT: "timed_out"}
#: the states in which ``flyaway status`` exits 0: the migration goes on by itself, or is done
HEALTHY_STATES = frozenset({MigrationState.validating.value, MigrationState.running.value,
                            MigrationState.completed.value})
#: what a heartbeat that is a bare number means, by activity type
_COUNT_HEARTBEATS = {"flyaway.weights.list": "{:,} files listed so far"}
QUERY_TIMEOUT = timedelta(seconds=10)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class ActivityProgress:
    """What one activity in flight said in its last heartbeat, as far as the display understands it."""

    activity: str
    attempt: int
    bytes_done: int = 0
    files_done: int = 0
    rate: float = 0.0
    note: str | None = None
    #: why the attempt before this one failed (redacted), while the activity is being retried
    last_failure: str | None = None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def activity_progress(activity: str, attempt: int, details: list[Any]) -> ActivityProgress:
    """Read decoded heartbeat details: a copy's progress (a mapping with ``bytes_done``), a count, or text."""
    progress = ActivityProgress(activity=activity, attempt=attempt)
    detail = details[0] if details else None
    if isinstance(detail, dict):
        progress.bytes_done, progress.files_done = _int(detail.get("bytes_done")), _int(detail.get("files_done"))
        rate = detail.get("rate_bytes_per_second")
        progress.rate = float(rate) if isinstance(rate, (int, float)) and rate > 0 else 0.0
    elif isinstance(detail, int) and not isinstance(detail, bool):
        progress.note = _COUNT_HEARTBEATS.get(activity, "{:,}").format(detail)
    elif isinstance(detail, str) and detail:
        progress.note = scrub(detail)[:120]
    return progress


async def decode_pending(converter: DataConverter, pending: PendingActivityInfo) -> ActivityProgress:
    """What the display understands of an activity in flight, its heartbeat and its last failure decoded."""
    details: list[Any] = []
    if pending.heartbeat_details.payloads:
        try:
            details = await converter.decode(pending.heartbeat_details.payloads)
        except Exception:  # noqa: BLE001 (a heartbeat this CLI cannot read is skipped, never fatal)
            details = []
    progress = activity_progress(pending.activity_type.name, pending.attempt, details)
    if pending.attempt > 1 and pending.HasField("last_failure"):
        progress.last_failure = await _failure_text(converter, pending)
    return progress


async def _failure_text(converter: DataConverter, pending: PendingActivityInfo) -> str:
    """The last failure of a retried activity, decoded (the codec may have encrypted it) and redacted."""
    try:
        error = await converter.decode_failure(pending.last_failure)
    except Exception:  # noqa: BLE001 (a failure this CLI cannot decode still says the stage retries)
        return f"{pending.activity_type.name} failed (the error could not be decoded here)"
    return scrub(failure_message(error))


def show_retries(status: MigrationStatus, activities: list[ActivityProgress]) -> None:
    """Mark the stage in flight ``retrying`` when one of its activities is past a failed attempt (see above)."""
    retried = [activity for activity in activities if activity.last_failure is not None]
    if not retried or status.state == MigrationState.waiting_for_operator:
        return
    latest = max(retried, key=lambda activity: activity.attempt)
    where = status.stage or "validate"
    status.last_error = f"{where}: {latest.last_failure} (attempt {latest.attempt}, retrying)"
    stage = next((stage for stage in status.stages if stage.name == status.stage), None)
    if stage is not None:
        stage.state, stage.error, stage.attempt = StageState.retrying, latest.last_failure, latest.attempt


@dataclass
class Snapshot:
    status: MigrationStatus
    run_status: WorkflowExecutionStatus | None
    activities: list[ActivityProgress] = field(default_factory=list)
    #: bytes and files of the copy's finished batches (the copy workflow's counters), when known
    finished_batches: tuple[int, int] | None = None
    failure: str | None = None
    failure_type: str | None = None

    @property
    def state(self) -> str:
        """The migration's state, also once its workflow ended (an invalid plan shows ``failed``)."""
        if self.run_status is None or self.run_status == _OPEN:
            return self.status.state.value
        if self.failure_type == "Aborted" or self.status.state == MigrationState.aborted:
            return MigrationState.aborted.value
        return _ENDED.get(self.run_status, "failed")

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY_STATES

    @property
    def finished(self) -> bool:
        return self.run_status is not None and self.run_status != _OPEN

    def _landed(self, attribute: str, known: int, batch_index: int) -> int:
        in_flight: int = sum(getattr(activity, attribute) for activity in self.activities)
        base = self.finished_batches[batch_index] if self.finished_batches else 0
        return max(known, base + in_flight)

    @property
    def bytes_done(self) -> int:
        done = self._landed("bytes_done", self.status.bytes_done, 0)
        return min(done, self.status.bytes_total) if self.status.bytes_total else done

    @property
    def files_done(self) -> int:
        done = self._landed("files_done", self.status.files_done, 1)
        return min(done, self.status.files_total) if self.status.files_total else done

    @property
    def rate(self) -> float:
        return sum(activity.rate for activity in self.activities) or self.status.rate_bytes_per_second


async def _pending_activities(client: Client, workflow_id: str) -> list[ActivityProgress]:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return []
    return [await decode_pending(client.data_converter, pending)
            for pending in description.raw_description.pending_activities]


async def _finished_batches(client: Client, copy_workflow_id: str) -> tuple[int, int] | None:
    """Bytes and files of the copy's finished batches, from its ``progress`` query (None when unknown)."""
    try:
        progress = await client.get_workflow_handle(copy_workflow_id).query("progress", result_type=dict,
                                                                            rpc_timeout=QUERY_TIMEOUT)
        counters = progress["counters"]
        return (_int(counters.get("bytes_copied")) + _int(counters.get("bytes_skipped")),
                _int(counters.get("files_copied")) + _int(counters.get("files_skipped")))
    except Exception:  # noqa: BLE001 (a lagging or changed query only makes the figures coarser)
        return None


async def _query_status(handle: WorkflowHandle[Any, Any], workflow_id: str,
                        run_status: WorkflowExecutionStatus | None) -> MigrationStatus:
    """What the migration reports: a completed one from its result (no worker needed), else the ``status``
    query; an ended one whose worker cannot answer shows its name only (its state comes from Temporal)."""
    if run_status == WorkflowExecutionStatus.COMPLETED:
        try:
            result = await handle.result(rpc_timeout=QUERY_TIMEOUT)
            return MigrationStatus.model_validate(result["status"])
        except Exception:  # noqa: BLE001 (a result of another shape: ask the workflow instead)
            pass
    try:
        status: MigrationStatus = await handle.query("status", result_type=MigrationStatus, rpc_timeout=QUERY_TIMEOUT)
        return status
    except RPCError:
        if run_status == _OPEN:
            raise
    return MigrationStatus(name=workflow_id.removeprefix("migration-"))


async def snapshot(client: Client, workflow_id: str) -> Snapshot:
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    ended = description.status != _OPEN
    status = await _query_status(handle, workflow_id, description.status)
    snap = Snapshot(status=status, run_status=description.status)
    if not ended:
        snap.activities = [await decode_pending(client.data_converter, pending)
                           for pending in description.raw_description.pending_activities]
        if status.stage and status.stage != "validate":
            child = f"{workflow_id}-{status.stage}"
            snap.activities += await _pending_activities(client, child)
            if status.stage == "weights":
                snap.finished_batches = await _finished_batches(client, child)
        show_retries(status, snap.activities)
    elif description.status != WorkflowExecutionStatus.COMPLETED:
        snap.failure, snap.failure_type = await _failure(handle)
    return snap


async def _failure(handle: WorkflowHandle[Any, Any]) -> tuple[str | None, str | None]:
    """The message and type of an ended migration's failure (no stack trace)."""
    try:
        await handle.result(rpc_timeout=QUERY_TIMEOUT)
    except WorkflowFailureError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError):
            return cause.message, cause.type
        return getattr(cause, "message", None) or str(cause), type(cause).__name__
    except Exception as error:  # noqa: BLE001 (terminated, timed out, unreachable: the state says enough)
        return str(error) or None, None
    return None, None


def header(snap: Snapshot) -> str:
    """The first line of every status: the workflow id and its state (scripts read it)."""
    stage = f" (stage {snap.status.stage})" if snap.status.stage and not snap.finished else ""
    return f"migration-{snap.status.name} {snap.state}{stage}"


def progress_line(snap: Snapshot) -> str:
    status = snap.status
    rate = snap.rate
    remaining = status.bytes_total - snap.bytes_done
    eta = remaining / rate if rate > 0 and not snap.finished else None
    return (f"{human_bytes(snap.bytes_done)} of {human_bytes(status.bytes_total)}  "
            f"{snap.files_done}/{status.files_total} files  {human_bytes(rate)}/s  ETA {human_duration(eta)}")


def render(snap: Snapshot) -> Group:
    status = snap.status
    state_style = ("bold green" if snap.state == "completed" else "bold yellow" if snap.healthy else "bold red")
    title = Text(header(snap), style="bold")
    title.stylize(state_style, len(f"migration-{status.name} "))
    stages = Table(box=None, show_header=False, padding=(0, 2))
    for stage in status.stages:
        if stage.state == StageState.retrying:
            line = Text(f"attempt {stage.attempt}: {stage.error}", style="yellow")
        else:
            line = Text(stage.error, style="red") if stage.error else Text(stage.detail or "")
        stages.add_row(stage.name, Text(stage.state.value, style=_STATE_STYLE.get(stage.state.value, "yellow")), line)
    parts: list[Any] = [title, stages]
    if status.bytes_total:
        parts.append(ProgressBar(total=status.bytes_total, completed=snap.bytes_done, width=60))
        parts.append(Text(progress_line(snap)))
    for activity in snap.activities:
        if activity.note:
            parts.append(Text(f"{activity.activity}: {activity.note}", style="dim"))
    if status.last_error and snap.state == MigrationState.waiting_for_operator.value:
        parts.append(Text(f"waiting for the operator: {status.last_error}\n"
                          f"fix the cause, then `flyaway retry {status.name}` (or `flyaway abort`)", style="red"))
    if snap.failure:
        parts.append(Text(f"{snap.state}: {snap.failure}", style="bold red"))
    return Group(*parts)


def one_line(snap: Snapshot) -> str:
    """The snapshot as one plain line, for output that is not a terminal (logs, pipes)."""
    parts = [header(snap)]
    stage = next((s for s in snap.status.stages if s.name == snap.status.stage), None)
    if stage is not None and stage.state == StageState.retrying:
        parts.append(f"{stage.name} retrying, attempt {stage.attempt}: {stage.error}")
    elif snap.status.bytes_total and snap.status.stage == "weights" and not (stage and stage.error):
        parts.append(progress_line(snap))
    elif stage is not None and (stage.error or stage.detail):
        parts.append(stage.error or stage.detail)
    parts += [f"{activity.activity}: {activity.note}" for activity in snap.activities if activity.note]
    if snap.failure:
        parts.append(snap.failure)
    return " | ".join(parts)


async def _next_snapshot(client: Client, workflow_id: str, last: Snapshot) -> Snapshot:
    """A new snapshot, or the last one when Temporal does not answer this time (it is asked again)."""
    try:
        return await snapshot(client, workflow_id)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise
        return last
    except (TimeoutError, WorkflowQueryFailedError):
        return last


async def watch(client: Client, workflow_id: str, console: Console, interval: float = 2.0) -> Snapshot:
    """Follow the migration until it ends; returns the last snapshot.

    On a terminal the status is redrawn in place every ``interval`` seconds; elsewhere one plain
    line is printed each time it changes.
    """
    from rich.live import Live

    snap = await snapshot(client, workflow_id)
    if not console.is_terminal:
        printed = ""
        while True:
            line = one_line(snap)
            if line != printed:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
                printed = line
            if snap.finished:
                return snap
            await asyncio.sleep(interval)
            snap = await _next_snapshot(client, workflow_id, snap)
    with Live(render(snap), console=console, refresh_per_second=4, transient=False) as live:
        while not snap.finished:
            await asyncio.sleep(interval)
            snap = await _next_snapshot(client, workflow_id, snap)
            live.update(render(snap))
    return snap
