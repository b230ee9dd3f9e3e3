"""What a migration reports about itself: the ``status`` query and the final result."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.canary import CanaryStatus


class StageState(str, Enum):
    pending = "pending"
    running = "running"
    retrying = "retrying"
    completed = "completed"
    skipped = "skipped"
    waiting_for_operator = "waiting_for_operator"
    aborted = "aborted"


class MigrationState(str, Enum):
    validating = "validating"
    running = "running"
    paused = "paused"
    waiting_for_operator = "waiting_for_operator"
    completed = "completed"
    aborted = "aborted"


class StageStatus(Record):
    name: str
    state: StageState = StageState.pending
    detail: str = ""
    error: str | None = Field(None, description="the last error; kept while the stage retries, cleared when it succeeds")
    attempt: int = Field(0, description="attempt of the activity that failed last, while the stage retries")


class MigrationStatus(Record):
    """The answer of the ``status`` query."""

    name: str
    state: MigrationState = MigrationState.validating
    stage: str | None = None
    stages: list[StageStatus] = Field(default_factory=list)
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    rate_bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    last_error: str | None = None
    concurrency: int = 0
    bandwidth_limit: int | None = None
    approvals: list[str] = Field(default_factory=list)
    canary: CanaryStatus | None = Field(None, description="weight, step, last analysis and step history")

    def stage_status(self, name: str) -> StageStatus:
        return next(stage for stage in self.stages if stage.name == name)


class MigrationResult(Record):
    """What a completed migration returns."""

    name: str
    status: MigrationStatus
    manifest_key: str | None = None


class TuneRequest(Record):
    concurrency: int | None = Field(None, ge=1, le=256)
    bandwidth_limit: int | None = Field(None, ge=0, description="bytes per second; 0 removes the limit")


class ControlAction(str, Enum):
    pause = "pause"
    resume = "resume"
    tune = "tune"
    retry = "retry"
    abort = "abort"
    approve = "approve"
    promote = "promote"


class ControlResult(Record):
    """What an operator's control answers: the migration's state and settings AFTER it took effect."""

    action: ControlAction
    name: str
    state: MigrationState
    stage: str | None = None
    message: str = Field(description="one line saying what happened, for people")
    concurrency: int = 0
    bandwidth_limit: int | None = Field(None, description="bytes per second; None when unlimited")
    approvals: list[str] = Field(default_factory=list)


class StageFailure(Record):
    """A retryable failure of a stage's activity, reported by the worker while Temporal retries it."""

    stage: str
    attempt: int
    error: str
