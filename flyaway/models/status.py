"""What a migration reports about itself: the ``status`` query and the final result."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.canary import CanaryResult, CanaryStatus
from flyaway.models.copy import CopySettings, CopyWeightsResult
from flyaway.models.deploy import DeployResult
from flyaway.models.image import ImageCopyResult
from flyaway.models.secrets import SecretsReport
from flyaway.models.teardown import TeardownReport


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
    error: str | None = Field(None, description="why the stage waits for the operator, or (shown by `flyaway "
                                                "status`) why its activity's last attempt failed while it retries; "
                                                "cleared when the stage succeeds")
    attempt: int = Field(0, description="the attempt under way of the activity being retried (shown by `flyaway "
                                        "status`, which reads it from the pending activity); 0 otherwise")


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
    parallelism: int = 1
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
    parallelism: int | None = Field(None, ge=1, le=64, description="copy activities in flight at once")


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


#: what one stage returns
StageResult = CopyWeightsResult | ImageCopyResult | SecretsReport | DeployResult | CanaryResult | TeardownReport


class StageResults(Record):
    """What the stages that completed returned (later stages read them: the deploy's endpoint, the gate)."""

    weights: CopyWeightsResult | None = None
    image: ImageCopyResult | None = None
    secrets: SecretsReport | None = None
    deploy: DeployResult | None = None
    canary: CanaryResult | None = None
    teardown: TeardownReport | None = None

    def completed(self) -> set[str]:
        """The stages that returned their result."""
        return {name for name, result in self if result is not None}

    def with_result(self, stage: str, result: StageResult) -> StageResults:
        return self.model_copy(update={stage: result})


class MigrationCarry(Record):
    """What ``MigrationWorkflow`` hands the run it continues as new: everything but the plan."""

    status: MigrationStatus
    results: StageResults
    settings: CopySettings
    paused: bool = False
