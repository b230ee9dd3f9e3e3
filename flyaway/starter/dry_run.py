"""``flyaway plan --dry-run``: what a migration would copy and skip, and how long it may take.

It reads the source listing and the destination's manifest exactly as the copy does, and
times a short sample of reads and writes (a few parts, in parallel) to estimate the duration.
The estimate takes the slowest of the sampled reads, the sampled writes and the plan's
``bandwidth_limit``, and says which it took: the sample runs here, not on the worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flyaway.activities.storage import open_destination, open_source
from flyaway.activities.storage.activities import (
    CopyStateNames,
    is_selected,
    previous_entries,
    weights_workflow_id,
)
from flyaway.activities.storage.base import Destination, Source
from flyaway.activities.storage.engine import copy_reason
from flyaway.models.copy import ListingLine, ManifestEntry, SourceFile
from flyaway.models.plan import MigrationPlan
from flyaway.starter.display import human_bytes, human_duration

SAMPLE_PART = 8 * 1024 * 1024
SAMPLE_PARTS = 4


@dataclass
class Decision:
    file: SourceFile
    reason: str | None  # None: unchanged, skipped


@dataclass
class DryRun:
    decisions: list[Decision] = field(default_factory=list)
    excluded: int = 0
    read_rate: float | None = None
    write_rate: float | None = None
    bandwidth_limit: int | None = None

    @property
    def to_copy(self) -> list[Decision]:
        return [d for d in self.decisions if d.reason is not None]

    @property
    def bytes_to_copy(self) -> int:
        return sum(d.file.size for d in self.to_copy)

    @property
    def bytes_unchanged(self) -> int:
        return sum(d.file.size for d in self.decisions if d.reason is None)

    @property
    def rate(self) -> float | None:
        """Bytes per second the copy may sustain: the slowest of the samples and the limit."""
        rates = [r for r in (self.read_rate, self.write_rate, self.bandwidth_limit) if r]
        return min(rates) if rates else None

    @property
    def estimate_seconds(self) -> float | None:
        return self.bytes_to_copy / self.rate if self.rate else None

    def estimate_lines(self) -> list[str]:
        """The estimate, and what it assumed about the network."""
        if not self.to_copy:
            return ["nothing to copy"]
        if not self.rate:
            return ["no estimate: nothing was sampled (--no-measure) and the plan sets no bandwidth_limit"]
        sampled = [f"{what} {human_bytes(rate)}/s" for what, rate in (("read", self.read_rate),
                                                                       ("write", self.write_rate)) if rate]
        limited = self.bandwidth_limit is not None and self.rate == self.bandwidth_limit
        basis = (f"bandwidth_limit {human_bytes(self.bandwidth_limit or 0)}/s" if limited
                 else "the slower of the sampled read and write")
        assumption = ("assumes the worker's network sustains what a short sample from this machine did"
                      if sampled else "assumes the network sustains bandwidth_limit (nothing was sampled)")
        return [f"estimated copy time {human_duration(self.estimate_seconds)} for {human_bytes(self.bytes_to_copy)} "
                f"at {human_bytes(self.rate)}/s, set by {basis}",
                f"measured here: {', '.join(sampled) if sampled else 'nothing'}; the estimate {assumption}, "
                f"and leaves out listing, verification and retries"]


def _timed_parallel(job: Callable[[int], int], arguments: Iterable[int], workers: int) -> float:
    """Bytes per second of running ``job`` (returning a byte count) on each argument in parallel."""
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        moved = sum(pool.map(job, arguments))
    return moved / max(time.monotonic() - started, 1e-6)


def sample_read_rate(source: Source, files: list[SourceFile], concurrency: int) -> float | None:
    biggest = max(files, key=lambda f: f.size, default=None)
    if biggest is None or biggest.size == 0:
        return None
    length = min(SAMPLE_PART, biggest.size)
    offsets = range(0, min(biggest.size - length, (SAMPLE_PARTS - 1) * length) + 1, length)
    return _timed_parallel(lambda offset: len(source.read(biggest, offset, length)), offsets, concurrency)


def sample_write_rate(dest: Destination, concurrency: int) -> float:
    data = os.urandom(SAMPLE_PART)

    def write(index: int) -> int:
        dest.put_state(f"probe/throughput-{index}", data)
        return len(data)

    try:
        return _timed_parallel(write, range(SAMPLE_PARTS), concurrency)
    finally:
        for index in range(SAMPLE_PARTS):
            dest.delete_state(f"probe/throughput-{index}")


def dry_run(plan: MigrationPlan, measure: bool = True) -> DryRun:
    stage = plan.weights
    source = open_source(stage.source, stage.concurrency)
    dest = open_destination(stage.destination, stage.concurrency)
    previous = previous_entries(dest, CopyStateNames(weights_workflow_id(plan.workflow_id)))
    report = DryRun(bandwidth_limit=stage.bandwidth_limit)
    for file in source.list():
        if not is_selected(file.key, stage):
            report.excluded += 1
            continue
        earlier = previous.get(file.key)
        line = ListingLine(file=file, previous=ManifestEntry.model_validate_json(earlier) if earlier else None)
        reason = copy_reason(line, None)
        if reason == "missing at the destination":
            reason = copy_reason(line, dest.stat(file.key))
        report.decisions.append(Decision(file=file, reason=reason))
    if measure and report.to_copy:
        report.read_rate = sample_read_rate(source, [d.file for d in report.to_copy], stage.concurrency)
        report.write_rate = sample_write_rate(dest, stage.concurrency)
    return report
