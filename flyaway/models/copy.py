"""Data of the weight copy: listings, manifests, upload checkpoints, activity inputs and results."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.fly_agent import FlyAgent
from flyaway.models.plan import WeightsStage


class SourceFile(Record):
    """One file at the source, as listed."""

    key: str = Field(description="path relative to the source prefix, '/' separated")
    size: int
    version: str = Field(description="what changes when the content changes: ETag, mtime, revision")
    sha256: str | None = Field(None, description="hex sha256 when the source publishes it (Hugging Face LFS)")


class ManifestEntry(Record):
    """A file that landed at the destination and was verified there."""

    key: str
    size: int
    sha256: str
    source_version: str
    dest_version: str = Field(description="the destination's own identity of the object: ETag, or size:mtime")
    parts: int = 1
    copied_at: datetime | None = None


class ListingLine(Record):
    """A line of the listing a copy works through: the file and its entry from an earlier run, if any."""

    file: SourceFile
    previous: ManifestEntry | None = None


class UploadState(Record):
    """A multipart upload in progress, kept at the destination so any later attempt can resume it."""

    key: str
    upload_id: str
    size: int
    part_size: int
    source_version: str


class PartRecord(Record):
    """A part that landed at the destination."""

    number: int
    size: int
    checksum: str = Field(description="hex checksum of the part's bytes, in the destination's part algorithm")


class CopySettings(Record):
    """Knobs an operator can change while a copy runs (the ``tune`` update)."""

    concurrency: int
    bandwidth_limit: int | None = None


class ListingResult(Record):
    listing_id: str
    files_total: int
    bytes_total: int
    files_unchanged_candidates: int = 0


class BatchRequest(Record):
    stage: WeightsStage
    listing_id: str
    offset: int = Field(description="byte offset of the first line of this batch in the listing")
    settings: CopySettings
    report_to: str | None = Field(None, description="the migration workflow the activity reports its progress to")
    report_step: int = Field(0, ge=0, description="bytes landed between two progress reports, at the least")


class CopyCounters(Record):
    """What a copy did; carried across batches and continue-as-new."""

    files_copied: int = 0
    files_skipped: int = 0
    bytes_copied: int = 0
    bytes_skipped: int = 0
    bytes_uploaded: int = Field(0, description="bytes sent, parts reused from a checkpoint excluded")
    parts_reused: int = 0
    bytes_reused: int = Field(0, description="bytes of the parts reused from a checkpoint")
    parts_resent: int = Field(0, description="parts sent again after they arrived corrupted")

    def add(self, other: CopyCounters) -> None:
        for name in CopyCounters.model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CopyCounters.model_fields}


class BatchResult(CopyCounters):
    next_offset: int
    done: bool


class CopyProgress(Record):
    """Heartbeat details of a copy activity: what it has done so far and what is in flight."""

    offset: int = 0
    files_done: int = 0
    bytes_done: int = 0
    bytes_uploaded: int = 0
    rate_bytes_per_second: float = 0.0
    uploads: dict[str, str] = Field(default_factory=dict, description="key -> upload id of files in flight")
    attempt: int = 1
    error: str | None = Field(None, description="why this attempt failed (it is retried)")


class VerifyResult(Record):
    files_verified: int
    bytes_verified: int
    manifest_key: str
    manifest_sha256: str | None = Field(None, description="sha256 of the manifest file as written")


class CopyWeightsInput(Record):
    """Input of ``CopyWeightsWorkflow``; also what it hands itself when it continues as new."""

    stage: WeightsStage
    settings: CopySettings
    listing: ListingResult | None = None
    offset: int = 0
    counters: CopyCounters = Field(default_factory=CopyCounters)
    paused: bool = False
    agent: FlyAgent | None = Field(None, description="the volume agent reading a fly_volume source, once started")


class CopyWeightsResult(Record):
    files_total: int
    bytes_total: int
    counters: CopyCounters
    verify: VerifyResult
