"""Data of the weight copy: listings, manifests, upload checkpoints, activity inputs and results."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from flyaway.models.base import Record
from flyaway.models.fly_agent import FlyAgent
from flyaway.models.plan import WeightsStage

#: what a value read back from flyaway's state may hold where it names an upload (never a path or a URL)
UPLOAD_ID_PATTERN = re.compile(r"[A-Za-z0-9._~+=/-]{1,1024}")
HEX_PATTERN = re.compile(r"[0-9a-f]{1,128}")


class SourceChecksum(Record):
    """A checksum the source publishes for a file, which the bytes read must have.

    With ``part_size`` it is a composite, as S3 gives a multipart object: the digest of the
    concatenated digests of every ``part_size`` bytes (the last part shorter), in ``algorithm``.
    ``git-sha1`` is git's blob id (sha1 of ``blob <size>\\0`` and the bytes), what the hub lists
    for files kept in git itself.
    """

    algorithm: Literal["md5", "sha1", "sha256", "crc32", "crc32c", "git-sha1"]
    value: str = Field(description="hex digest")
    part_size: int | None = Field(None, gt=0, description="bytes per source part when the value is a composite")

    def label(self) -> str:
        """How the manifest records it: ``md5:<hex>``, ``md5/8388608:<hex>`` for a composite."""
        layout = f"/{self.part_size}" if self.part_size else ""
        return f"{self.algorithm}{layout}:{self.value}"


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
    source_checksum: str = Field("none", description="the source's own checksum the bytes read were checked "
                                 "against (SourceChecksum.label), or 'none' where the source publishes none")
    sha256_of: Literal["file", "parts"] = Field(
        "file", description="what ``sha256`` covers: the file's bytes, or (a file split among workers) the "
        "concatenated sha256 digests of its parts, listed in ``part_sha256``; the destination checked its own "
        "composite of the parts (S3's multipart ETag, crc32c) when the upload completed")
    part_size: int | None = Field(None, gt=0, description="bytes per part (the last shorter) when sha256_of is parts")
    part_sha256: list[str] = Field(default_factory=list, description="hex sha256 of each part, in order, when "
                                   "sha256_of is parts")


class ListingLine(Record):
    """A line of the listing a copy works through: the file and its entry from an earlier run, if any."""

    file: SourceFile
    previous: ManifestEntry | None = None


class PartRecord(Record):
    """A part that landed at the destination."""

    number: int = Field(ge=1, le=2**31)
    size: int = Field(ge=0)
    checksum: str = Field(description="hex checksum of the part's bytes, in the destination's part algorithm")
    receipt: str = Field("", description="the destination's own name of the part where it is not the checksum "
                         "(an S3 ETag under SSE-KMS)", pattern=r"^[A-Za-z0-9._~+=/-]{0,256}$")

    @field_validator("checksum")
    @classmethod
    def _hex(cls, value: str) -> str:
        if value and not HEX_PATTERN.fullmatch(value):
            raise ValueError("a part checksum is hex")
        return value


class CompletingUpload(Record):
    """What completing an upload needs, recorded before ``complete`` is sent: a later attempt that finds
    the upload gone checks whether this made the object, instead of sending the file again."""

    parts: list[PartRecord]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_checksum: str


class UploadState(Record):
    """A multipart upload in progress, kept at the destination so any later attempt can resume it.

    It is read back from the destination, so every field is checked for its shape; the upload id is
    only ever handed to the destination's API (an adapter that makes a path of it checks it further)."""

    key: str
    upload_id: str = Field(pattern=rf"^{UPLOAD_ID_PATTERN.pattern}$")
    size: int = Field(ge=0)
    part_size: int = Field(gt=0)
    source_version: str
    completing: CompletingUpload | None = None


class CopySettings(Record):
    """Knobs an operator can change while a copy runs (the ``tune`` update)."""

    concurrency: int
    bandwidth_limit: int | None = Field(None, description="bytes per second for the whole copy")
    parallelism: int = Field(1, ge=1, description="copy activities in flight at once")

    def activity_bandwidth(self) -> int | None:
        """One activity's share of the copy's bandwidth limit: every activity in flight gets the same."""
        return max(1, self.bandwidth_limit // self.parallelism) if self.bandwidth_limit else None


class ListingUnit(Record):
    """The work of one copy activity: the listing's lines from ``start`` to ``end`` (byte offsets), or, for a
    file split among workers, parts ``first_part`` to ``last_part`` of the file on that one line.

    Units sit in the listing's unit index at ``UNIT_WIDTH`` bytes each, so an activity finds its own by its
    number: the workflow holds a cursor into them, never their contents."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    first_part: int = Field(0, ge=0, description="0 for whole files")
    last_part: int = Field(0, ge=0)
    piece: int = Field(0, ge=0, description="which piece of its file this is")
    pieces: int = Field(1, ge=1, description="how many pieces its file is split into (1: not split)")


#: bytes per unit in the unit index, a JSON line padded with spaces
UNIT_WIDTH = 128


class PieceRecord(Record):
    """The parts one piece of a split file landed, with their sha256, recorded for the piece that completes it."""

    upload_id: str = Field(pattern=rf"^{UPLOAD_ID_PATTERN.pattern}$")
    parts: list[PartRecord]
    sha256: list[str] = Field(description="hex sha256 of each part's bytes, in the order of parts")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        if not all(HEX_PATTERN.fullmatch(value) for value in values):
            raise ValueError("a part sha256 is hex")
        return values


class ListingResult(Record):
    listing_id: str
    files_total: int
    bytes_total: int
    files_unchanged_candidates: int = 0
    units_total: int = Field(0, description="entries of the listing's unit index: one copy activity each")


class BatchRequest(Record):
    stage: WeightsStage
    listing_id: str
    unit: int = Field(ge=0, description="the number of this activity's entry in the listing's unit index")
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


class CopyProgress(Record):
    """Heartbeat details of a copy activity: what it has done so far and what is in flight."""

    unit: int = 0
    files_done: int = 0
    bytes_done: int = 0
    bytes_uploaded: int = 0
    rate_bytes_per_second: float = 0.0
    uploads: dict[str, str] = Field(default_factory=dict, description="key -> upload id of files in flight")


class VerifyResult(Record):
    files_verified: int
    bytes_verified: int
    manifest_key: str
    manifest_sha256: str | None = Field(None, description="sha256 of the manifest file as written")
    files_without_source_checksum: int = Field(0, description="verified files whose source publishes no checksum: "
                                               "their bytes were checked in transit only")


class CopyWeightsInput(Record):
    """Input of ``CopyWeightsWorkflow``; also what it hands itself when it continues as new."""

    stage: WeightsStage
    settings: CopySettings
    listing: ListingResult | None = None
    next_unit: int = Field(0, description="the first unit of the listing's index not started yet")
    redo: list[int] = Field(default_factory=list, description="units a pause interrupted, to run again first")
    in_flight: list[int] = Field(default_factory=list, description="units started and not finished")
    counters: CopyCounters = Field(default_factory=CopyCounters)
    paused: bool = False
    agent: FlyAgent | None = Field(None, description="the volume agent reading a fly_volume source, once started")


class CopyWeightsResult(Record):
    files_total: int
    bytes_total: int
    counters: CopyCounters
    verify: VerifyResult
