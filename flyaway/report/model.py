"""The migration report as data: what ``flyaway report`` writes as JSON and renders as the page."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.canary import SideStats, StepRecord


class OperatorWait(Record):
    """A time the stage stood in ``waiting_for_operator``; ``ended_at`` None while it still waits."""

    started_at: datetime
    ended_at: datetime | None = None
    reason: str | None = None


class OperatorAction(Record):
    """An update an operator sent (approve, retry, pause, abort, ...), with the client identity that sent it."""

    at: datetime
    action: str
    argument: str | None = None
    identity: str


class StageReport(Record):
    name: str
    state: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    runs: int = Field(0, description="times the stage ran: 1 plus the operator's retries")
    activity_attempts: int = Field(0, description="attempts of the stage's activities, child workflows' included")
    waits: list[OperatorWait] = Field(default_factory=list)
    approvals: list[OperatorAction] = Field(default_factory=list)
    detail: str = ""
    error: str | None = None


class ThroughputPoint(Record):
    """One batch of the copy: when it ran and the bytes it moved."""

    started_seconds: float = Field(description="seconds since the copy's listing was done")
    ended_seconds: float
    bytes_copied: int
    bytes_done: int = Field(description="bytes copied or skipped as unchanged, all batches so far")

    @property
    def rate_bytes_per_second(self) -> float:
        span = self.ended_seconds - self.started_seconds
        return self.bytes_copied / span if span > 0 else 0.0


class Verification(Record):
    files_verified: int
    bytes_verified: int
    files_without_source_checksum: int = Field(0, description="verified files whose source publishes no checksum")
    manifest_location: str
    manifest_sha256: str | None = Field(None, description="sha256 of the manifest file as written")


class WeightsReport(Record):
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = Field(0, description="copied or skipped; while copying, the copy in flight's heartbeat included")
    files_copied: int = 0
    files_skipped: int = Field(0, description="unchanged since an earlier copy: not sent again")
    bytes_copied: int = 0
    bytes_skipped: int = 0
    bytes_uploaded: int = Field(0, description="bytes sent to the destination")
    bytes_resent: int = Field(0, description="bytes sent more than once (parts that arrived corrupted, files "
                                             "started again)")
    parts_reused: int = Field(0, description="parts an earlier attempt landed, not sent again")
    parts_resent: int = Field(0, description="parts sent again because they arrived corrupted")
    batches: int = 0
    batch_attempts_retried: int = Field(0, description="batch activity attempts after the first (outages, crashes)")
    throughput: list[ThroughputPoint] = Field(default_factory=list)
    average_bytes_per_second: float | None = None
    verification: Verification | None = None


class CanaryInterval(Record):
    """One analysis: old (Fly) and new side numbers of one interval, and its verdict."""

    canary_run: int = Field(description="1 for the first canary, 2 after a retry, ...")
    number: int = Field(description="1-based, across every canary run")
    at: datetime
    weight: int | None = Field(None, description="percent of traffic on the new side during the interval")
    verdict: str
    old: SideStats | None = None
    new: SideStats | None = None
    reasons: list[str] = Field(default_factory=list)


class CanaryRun(Record):
    number: int
    state: str
    rollback_reason: str | None = None


class CanaryReport(Record):
    state: str | None = None
    runs: list[CanaryRun] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list, description="the latest canary's steps")
    intervals: list[CanaryInterval] = Field(default_factory=list)
    rolled_back: bool = False
    rollback_reason: str | None = None


class ReferenceFigure(Record):
    """A published cold start of the platform, dated, with what it measures."""

    platform: str
    seconds: float
    what: str
    as_of: str
    source: str


class NewSideReport(Record):
    platform: str | None = None
    service: str | None = None
    endpoint_url: str | None = None
    cold_start_seconds: float | None = Field(None, description="from the deploy call to the first passed health "
                                                               "check")
    from_zero_seconds: float | None = Field(None, description="from a request to a service scaled to zero to "
                                                              "its first passed health check")
    from_zero_note: str | None = None
    reference: ReferenceFigure | None = None


class CostEstimate(Record):
    """Cost of one side at the plan's scaling; every money figure is None when no price is known."""

    side: str = Field(description="'target' or 'fly'")
    platform: str
    gpu: str | None
    gpus_per_instance: int = 1
    min_instances: int
    max_instances: int | None
    idle_timeout_seconds: float | None = None
    usd_per_gpu_hour: float | None = None
    approximate: bool = False
    price_as_of: str | None = None
    price_source: str | None = None
    per_hour_min: float | None = None
    per_hour_max: float | None = None
    per_month_min: float | None = None
    per_month_max: float | None = None
    per_wake_from_zero: float | None = Field(None, description="the idle timeout billed after each burst when the "
                                                               "service scales to zero")
    note: str | None = Field(None, description="'no price known ...' and why, when there is no price")


class FlyReport(Record):
    """What still points at Fly: DNS answers that may still be cached, and what the teardown left."""

    app: str | None = None
    dns_name: str | None = None
    dns_ttl_seconds: int | None = None
    dns_cached_until: datetime | None = None
    teardown_state: str = "not in the plan"
    machines_found: int | None = None
    machines_destroyed: int = 0
    machines_left: int | None = Field(None, description="None while the teardown has not read the app")
    volumes_kept: list[str] = Field(default_factory=list)
    snapshots: dict[str, str] = Field(default_factory=dict, description="volume id -> snapshot id")
    ips_released: int = 0
    app_deleted: bool = False


class MigrationReport(Record):
    name: str
    workflow_id: str
    run_status: str = Field(description="Temporal's: running, completed, failed, terminated, ...")
    state: str = Field(description="flyaway's: validating, running, waiting_for_operator, completed, aborted, ...")
    generated_at: datetime
    started_at: datetime | None = None
    closed_at: datetime | None = None
    failure: str | None = None
    last_error: str | None = None
    stages: list[StageReport] = Field(default_factory=list)
    operator_actions: list[OperatorAction] = Field(default_factory=list)
    weights: WeightsReport = Field(default_factory=WeightsReport)
    canary: CanaryReport | None = None
    new_side: NewSideReport | None = None
    cost: list[CostEstimate] = Field(default_factory=list)
    fly: FlyReport = Field(default_factory=FlyReport)
