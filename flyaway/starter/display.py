"""Live progress of a migration in the terminal (rich): stages, files, bytes, rate, ETA.

The ``status`` query gives what the workflow knows (batches done); the heartbeat of the copy
activity in flight adds what it has moved since, so a single huge file still shows progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError

from flyaway.models.copy import CopyProgress
from flyaway.models.status import MigrationState, MigrationStatus, StageState

_STATE_STYLE = {
    StageState.completed: "green", StageState.running: "cyan", StageState.skipped: "dim",
    StageState.waiting_for_operator: "bold red", StageState.aborted: "red", StageState.pending: "white",
}
_OPEN = WorkflowExecutionStatus.RUNNING


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Snapshot:
    status: MigrationStatus
    run_status: WorkflowExecutionStatus | None
    in_flight_bytes: int = 0
    in_flight_rate: float = 0.0
    failure: str | None = None

    @property
    def bytes_done(self) -> int:
        return min(self.status.bytes_done + self.in_flight_bytes, self.status.bytes_total)

    @property
    def finished(self) -> bool:
        return self.run_status is not None and self.run_status != _OPEN


async def _in_flight(client: Client, workflow_id: str) -> tuple[int, float]:
    """Bytes and rate that the copy activity in flight reported in its last heartbeat."""
    try:
        description = await client.get_workflow_handle(f"{workflow_id}-weights").describe()
    except RPCError:
        return 0, 0.0
    done, rate = 0, 0.0
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            details = await client.data_converter.decode(pending.heartbeat_details.payloads, [CopyProgress])
            if details and isinstance(details[0], CopyProgress):
                done += details[0].bytes_done
                rate += details[0].rate_bytes_per_second
    return done, rate


async def snapshot(client: Client, workflow_id: str) -> Snapshot:
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    status = await handle.query("status", result_type=MigrationStatus)
    snap = Snapshot(status=status, run_status=description.status)
    if description.status == _OPEN and status.stage == "weights":
        snap.in_flight_bytes, snap.in_flight_rate = await _in_flight(client, workflow_id)
    if description.status not in (_OPEN, WorkflowExecutionStatus.COMPLETED):
        try:
            await handle.result()
        except WorkflowFailureError as error:
            snap.failure = str(error.cause.message if hasattr(error.cause, "message") else error.cause)
    return snap


def render(snap: Snapshot) -> Group:
    status = snap.status
    header = Text.assemble(("migration ", "bold"), (status.name, "bold cyan"), "  ",
                           (status.state.value, "bold green" if status.state == MigrationState.completed
                            else "bold red" if status.state in (MigrationState.waiting_for_operator,
                                                                MigrationState.aborted) else "bold yellow"))
    stages = Table(box=None, show_header=False, padding=(0, 2))
    for stage in status.stages:
        line = Text(stage.detail or "")
        if stage.error:
            line = Text(stage.error, style="red")
        stages.add_row(stage.name, Text(stage.state.value, style=_STATE_STYLE[stage.state]), line)
    parts: list = [header, stages]
    if status.bytes_total:
        rate = snap.in_flight_rate or status.rate_bytes_per_second
        remaining = status.bytes_total - snap.bytes_done
        eta = remaining / rate if rate > 0 and snap.run_status == _OPEN else None
        parts.append(ProgressBar(total=status.bytes_total, completed=snap.bytes_done, width=60))
        parts.append(Text(f"{human_bytes(snap.bytes_done)} of {human_bytes(status.bytes_total)}  "
                          f"{status.files_done}/{status.files_total} files  "
                          f"{human_bytes(rate)}/s  ETA {human_duration(eta)}"))
    if status.last_error and status.state == MigrationState.waiting_for_operator:
        parts.append(Text(f"waiting for the operator: {status.last_error}\n"
                          f"fix the cause, then `flyaway retry {status.name}` (or `flyaway abort`)", style="red"))
    if snap.failure:
        parts.append(Text(f"failed: {snap.failure}", style="bold red"))
    return Group(*parts)


async def watch(client: Client, workflow_id: str, console: Console, interval: float = 1.0) -> Snapshot:
    """Redraw the status until the migration closes; returns the last snapshot."""
    from rich.live import Live

    snap = await snapshot(client, workflow_id)
    with Live(render(snap), console=console, refresh_per_second=4, transient=False) as live:
        while not snap.finished:
            await asyncio.sleep(interval)
            snap = await snapshot(client, workflow_id)
            live.update(render(snap))
    return snap
