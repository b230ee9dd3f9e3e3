"""The weight copy's activities: check, list, copy a batch, verify, abort.

State lives at the destination in flyaway's state folder (``STATE_DIR``), which no source key
can reach (the listing refuses one that would), each migration in its own folder
``migrations/<copy workflow id>/``, so verify and abort touch only their own:

- ``runs/<listing>/listing.jsonl``: what this copy works through, one ``ListingLine`` a line.
- ``runs/<listing>/units.jsonl``: the listing cut into the work of one copy activity each
  (``ListingUnit``: a range of lines, or a piece of a large file), fixed-width, so the workflow
  holds a cursor (the next unit's number), not a list, and any worker finds a unit by its number.
- ``runs/<listing>/manifest/<offset>-<unit>-<attempt>-<seq>.jsonl``: entries of files that landed,
  flushed every few seconds, so a retried unit skips what an earlier attempt finished; ``offset``
  is the listing offset of the unit's first line.
- ``runs/<listing>/pieces/<file>/``: the parts each piece of a split file landed (see ``pieces``).
- ``uploads/<hash>.json``: multipart uploads in progress (see the engine).
- ``manifest.jsonl``: the migration's verified manifest, written last.

``claims/<copy workflow id>.json`` says which listing a migration is writing until it verifies
or is aborted: a migration whose listing shares a key with an older claim is refused before any
byte moves, naming the other.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import io
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pydantic import Field
from temporalio import activity

from flyaway.activities.storage import open_destination, open_source
from flyaway.activities.storage.base import STATE_DIR, Destination, Source, is_state_key
from flyaway.activities.storage.engine import CopyEngine, begin_recorded_upload, part_size_for, upload_state_name
from flyaway.activities.storage.names import KeysTheDestinationRefuses
from flyaway.activities.storage.pieces import PieceCopy, pieces_folder
from flyaway.activities.storage.progress import CopyReporter
from flyaway.activities.storage.stall import cut_when_stalled
from flyaway.errors import (
    DataCorruption,
    InvalidPlan,
    LimitExceeded,
    decoding_state,
)
from flyaway.models.base import Record, check_relative_key
from flyaway.models.copy import (
    UNIT_WIDTH,
    BatchRequest,
    CopyCounters,
    ListingLine,
    ListingResult,
    ListingUnit,
    ManifestEntry,
    SourceFile,
    UploadState,
    VerifyResult,
)
from flyaway.models.plan import WeightsStage

log = structlog.get_logger(__name__)

MANIFEST = "manifest.jsonl"
#: landed files are recorded at the destination at least this often
FLUSH_SECONDS = 5.0
FLUSH_ENTRIES = 500


class Claim(Record):
    """A migration writing the keys of one listing at a destination; read back from state, so its values are
    checked for shape (the workflow id becomes a folder name only through ``migration_folder``)."""

    workflow_id: str = Field(min_length=1, max_length=1000)
    listing_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$", description="the copy workflow's run id")
    claimed_at: float


def weights_workflow_id(migration_id: str) -> str:
    """The id a migration gives its weight copy (its child workflow for the ``weights`` stage)."""
    return f"{migration_id}-weights"


def migration_folder(workflow_id: str) -> str:
    """The state folder of one copy workflow: its id where that is a plain name, else a digest of it."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,150}", workflow_id):
        return workflow_id
    return hashlib.sha256(workflow_id.encode()).hexdigest()[:40]


class CopyStateNames:
    """Names of one migration's state files at the destination."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.prefix = f"migrations/{migration_folder(workflow_id)}/"
        self.claim = f"claims/{migration_folder(workflow_id)}.json"
        self.manifest = f"{self.prefix}{MANIFEST}"

    def run(self, listing_id: str) -> str:
        return f"{self.prefix}runs/{listing_id}/"

    def listing(self, listing_id: str) -> str:
        return f"{self.run(listing_id)}listing.jsonl"

    def units(self, listing_id: str) -> str:
        return f"{self.run(listing_id)}units.jsonl"

    def shards(self, listing_id: str) -> str:
        return f"{self.run(listing_id)}manifest/"


def _workflow_id() -> str:
    """The id of the workflow that scheduled this activity (flyaway runs no standalone activities)."""
    workflow_id = activity.info().workflow_id
    if workflow_id is None:
        raise RuntimeError(f"{activity.info().activity_type} runs only inside a flyaway workflow")
    return workflow_id


def current_migration() -> CopyStateNames:
    """The state of the copy workflow this activity runs for."""
    return CopyStateNames(_workflow_id())


def is_selected(key: str, stage: WeightsStage) -> bool:
    if stage.include and not any(fnmatch.fnmatchcase(key, p) for p in stage.include):
        return False
    return not any(fnmatch.fnmatchcase(key, p) for p in stage.exclude)


def read_raw_entries(dest: Destination, names: list[str]) -> dict[str, bytes]:
    """Manifest lines by key from state files, later files winning, kept as JSON text: a parsed
    entry costs several times its text, and a listing of 100,000 files parses each one at most once."""
    entries: dict[str, bytes] = {}
    for name in names:
        with decoding_state(f"{dest.describe()} {STATE_DIR}/{name}"):
            for line in (dest.get_state(name) or b"").splitlines():
                if line.strip():
                    entries[json.loads(line)["key"]] = line
    return entries


def read_entries(dest: Destination, names: list[str]) -> dict[str, ManifestEntry]:
    """Manifest entries from state files, later files winning."""
    raw = read_raw_entries(dest, names)
    with decoding_state(f"{dest.describe()} {STATE_DIR}/ manifest"):
        return {key: ManifestEntry.model_validate_json(line) for key, line in raw.items()}


class DirectoryFanout:
    """Counts the entries (files and sub-folders) each folder gets, to refuse a listing over a per-folder limit.

    Memory grows with the number of folders, not files: a file is one new entry of its folder
    (keys are unique), only sub-folders need remembering.
    """

    def __init__(self, limit: int, where: str) -> None:
        self.limit = limit
        self.where = where
        self.entries: Counter[str] = Counter()
        self.folders: set[str] = set()

    def add(self, key: str) -> None:
        *folders, _ = key.split("/")
        self._count("/".join(folders))
        for depth in range(len(folders), 0, -1):
            folder = "/".join(folders[:depth])
            if folder in self.folders:
                return
            self.folders.add(folder)
            self._count("/".join(folders[:depth - 1]))

    def _count(self, folder: str) -> None:
        self.entries[folder] += 1
        if self.entries[folder] > self.limit:
            raise LimitExceeded(f"folder '{folder or '.'}' would hold over {self.limit:,} entries at "
                                f"{self.where}, the most one folder there can hold; split it or use include")


def previous_entries(dest: Destination, state: CopyStateNames) -> dict[str, bytes]:
    """What earlier runs copied (JSON lines by key): the verified manifests of every migration (read only; an
    entry whose object changed since is copied again), then this migration's own, then shards of its runs
    that did not finish."""
    manifests = [name for name in dest.list_state("migrations/")
                 if name.endswith(f"/{MANIFEST}") and name.count("/") == 2 and name != state.manifest]
    shards = [name for name in dest.list_state(f"{state.prefix}runs/") if "/manifest/" in name]
    return read_raw_entries(dest, [*manifests, state.manifest, *shards])


def _listed_keys(dest: Destination, name: str) -> Iterator[str]:
    for raw in (dest.get_state(name) or b"").splitlines():
        if raw.strip():
            yield json.loads(raw)["file"]["key"]


def _refuse_overlap(dest: Destination, state: CopyStateNames, claim: Claim, keys: set[str]) -> None:
    """Refuse this listing if an older claim of another migration holds one of its keys; a younger one
    refuses itself when it looks (both write their claim before looking, so one of them always sees the other)."""
    for name in dest.list_state("claims/"):
        if name == state.claim:
            continue
        try:
            other = Claim.model_validate_json(dest.get_state(name) or b"")
        except ValueError:
            continue  # not a claim flyaway wrote
        if (other.claimed_at, other.workflow_id) > (claim.claimed_at, claim.workflow_id):
            continue
        shared = next((key for key in _listed_keys(dest, CopyStateNames(other.workflow_id).listing(other.listing_id))
                       if key in keys), None)
        if shared is not None:
            dest.delete_state(state.claim)
            raise InvalidPlan(f"{dest.describe()}: migration {other.workflow_id} is writing the same keys "
                              f"('{shared}' and maybe more) and has not finished; wait for it, abort it, "
                              f"or copy to another prefix (if it no longer exists, delete {STATE_DIR}/{name})")


def _stage_label(stage: WeightsStage) -> str:
    return f"{stage.source.describe()} -> {stage.destination.describe()}"


@activity.defn(name="flyaway.weights.check")
async def check_weights(stage: WeightsStage) -> str:
    """Credentials, endpoints, buckets and permissions of both sides, before any byte moves."""

    def check() -> str:
        source = open_source(stage.source, stage.concurrency)
        dest = open_destination(stage.destination, stage.concurrency)
        source.check()
        dest.check()
        return _stage_label(stage)

    return await asyncio.to_thread(check)


class UnitCutter:
    """Cuts the listing, as it is written, into the units copy activities take.

    With a parallelism of 1 a unit is a batch as the plan sizes it (``batch_files``, ``batch_bytes``).
    Above, a unit holds at most ``piece_size`` bytes, and a file larger than that is split into pieces
    of whole parts (when the destination takes parts of one upload from several workers and the source
    publishes no whole-file checksum, see ``pieces``), so the copy spreads over the workers on the queue
    while history grows by a few events per unit."""

    def __init__(self, stage: WeightsStage, source: Source, dest: Destination) -> None:
        spread = stage.parallelism > 1
        self.stage, self.dest = stage, dest
        self.max_bytes = min(stage.batch_bytes, stage.piece_size) if spread else stage.batch_bytes
        self.split = spread and dest.limits.parts_from_any_worker and not source.publishes_checksums
        self.units: list[bytes] = []
        self.split_files: list[tuple[SourceFile, int]] = []
        self.start = self.position = self.files = self.size = 0

    def add(self, file: SourceFile, line_length: int) -> None:
        start, self.position = self.position, self.position + line_length
        if self.split and file.size > self.stage.piece_size:
            part_size = part_size_for(file.size, self.stage.part_size, self.dest.limits)
            parts = math.ceil(file.size / part_size)
            per_piece = max(1, self.stage.piece_size // part_size)
            pieces = math.ceil(parts / per_piece)
            if pieces > 1:
                self.close(start)
                for piece in range(pieces):
                    self._append(ListingUnit(start=start, end=self.position, first_part=piece * per_piece + 1,
                                             last_part=min(parts, (piece + 1) * per_piece), piece=piece, pieces=pieces))
                self.split_files.append((file, part_size))
                self.start = self.position
                return
        self.files += 1
        self.size += file.size
        if self.files >= self.stage.batch_files or self.size >= self.max_bytes:
            self.close(self.position)

    def close(self, end: int) -> None:
        if end > self.start:
            self._append(ListingUnit(start=self.start, end=end))
        self.start, self.files, self.size = end, 0, 0

    def _append(self, unit: ListingUnit) -> None:
        self.units.append(unit.model_dump_json().encode().ljust(UNIT_WIDTH - 1) + b"\n")


def _begin_split_uploads(dest: Destination, state: CopyStateNames, files: list[tuple[SourceFile, int]]) -> None:
    """Start (and record) the one upload each split file's pieces go into, keeping one a retried listing started."""
    for file, part_size in files:
        raw = dest.get_state(upload_state_name(state.prefix, file.key))
        if raw:
            with decoding_state(f"{dest.describe()} {STATE_DIR}/uploads"):
                earlier = UploadState.model_validate_json(raw)
            if (earlier.key, earlier.source_version, earlier.size, earlier.part_size) == (
                    file.key, file.version, file.size, part_size):
                continue
        begin_recorded_upload(dest, state.prefix, file, part_size)


def _write_listing(stage: WeightsStage, listing_id: str, state: CopyStateNames,
                   heartbeat: Callable[[int], None]) -> ListingResult:
    source = open_source(stage.source, stage.concurrency)
    dest = open_destination(stage.destination, stage.concurrency)
    previous = previous_entries(dest, state)
    keys: set[str] = set()
    max_entries = dest.limits.max_entries_per_directory
    fanout = DirectoryFanout(max_entries, dest.describe()) if max_entries else None
    refused = KeysTheDestinationRefuses(dest.limits, dest.describe())
    lines: list[bytes] = []
    units = UnitCutter(stage, source, dest)
    files = size = candidates = 0
    for file in source.list():
        if not is_selected(file.key, stage):
            continue
        try:
            check_relative_key(file.key)
        except ValueError as error:
            raise InvalidPlan(f"source key {file.key!r} of {source.describe()}: {error}") from None
        if is_state_key(file.key):
            raise InvalidPlan(f"source key {file.key!r} of {source.describe()} would land in flyaway's state folder "
                              f"{STATE_DIR}/ at the destination; exclude it (weights.exclude: ['{STATE_DIR}/*'])")
        dest.check_file(file)
        if not refused.holds(file.key):
            continue
        keys.add(file.key)
        if fanout is not None:
            fanout.add(file.key)
        earlier = previous.get(file.key)
        candidates += earlier is not None
        # a ListingLine, written without parsing the earlier entry
        lines.append(b'{"file":' + file.model_dump_json(exclude_none=True).encode()
                     + (b',"previous":' + earlier if earlier else b"") + b"}\n")
        units.add(file, len(lines[-1]))
        files += 1
        size += file.size
        if files % 1000 == 0:
            heartbeat(files)
    refused.raise_if_any()
    units.close(units.position)
    dest.put_state(state.listing(listing_id), b"".join(lines))
    dest.put_state(state.units(listing_id), b"".join(units.units))
    claim = Claim(workflow_id=state.workflow_id, listing_id=listing_id, claimed_at=time.time())
    dest.put_state(state.claim, claim.model_dump_json().encode())
    _refuse_overlap(dest, state, claim, keys)
    _begin_split_uploads(dest, state, units.split_files)
    return ListingResult(listing_id=listing_id, files_total=files, bytes_total=size,
                         files_unchanged_candidates=candidates, units_total=len(units.units))


@activity.defn(name="flyaway.weights.list")
async def list_source(stage: WeightsStage, listing_id: str) -> ListingResult:
    """List the source into the migration's ``runs/<listing_id>/listing.jsonl`` at the destination and claim its keys."""
    loop = asyncio.get_running_loop()

    def heartbeat(files: int) -> None:
        # an async activity heartbeats from its event loop; this runs in the listing's thread
        loop.call_soon_threadsafe(activity.heartbeat, files)

    result = await asyncio.to_thread(_write_listing, stage, listing_id, current_migration(), heartbeat)
    log.info("listed source", files=result.files_total, bytes=result.bytes_total, copy=_stage_label(stage))
    return result


def _read_unit(dest: Destination, request: BatchRequest, state: CopyStateNames) -> ListingUnit:
    name = state.units(request.listing_id)
    raw = dest.get_state(name, request.unit * UNIT_WIDTH, UNIT_WIDTH)
    with decoding_state(f"{dest.describe()} {STATE_DIR}/{name}"):
        return ListingUnit.model_validate_json((raw or b"").strip())


class _ManifestWriter:
    """Records landed files at the destination often enough that a crash loses few of them."""

    def __init__(self, dest: Destination, request: BatchRequest, unit: ListingUnit, attempt: int,
                 state: CopyStateNames) -> None:
        self.dest = dest
        self.prefix = f"{state.shards(request.listing_id)}{unit.start:016d}-{request.unit:08d}-{attempt:04d}-"
        self.pending: list[ManifestEntry] = []
        self.seq = 0
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def add(self, entry: ManifestEntry) -> None:
        self.pending.append(entry)
        if (len(self.pending) >= FLUSH_ENTRIES or entry.parts > 1
                or time.monotonic() - self.stamp >= FLUSH_SECONDS):
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            entries, self.pending = self.pending, []
            body = b"".join(e.model_dump_json().encode() + b"\n" for e in entries)
            await asyncio.to_thread(self.dest.put_state, f"{self.prefix}{self.seq:06d}.jsonl", body)
            self.seq += 1
            self.stamp = time.monotonic()


@activity.defn(name="flyaway.weights.copy_batch")
async def copy_batch(request: BatchRequest) -> CopyCounters:
    """Copy one unit of the listing; a retried attempt skips files and parts that already landed."""
    stage = request.stage
    source = await asyncio.to_thread(open_source, stage.source, request.settings.concurrency)
    dest = await asyncio.to_thread(open_destination, stage.destination, request.settings.concurrency)
    state = current_migration()
    unit = await asyncio.to_thread(_read_unit, dest, request, state)
    lines = [line for _, line in await asyncio.to_thread(
        lambda: list(_listing_range(dest, state.listing(request.listing_id), unit.start, unit.end)))]
    info = activity.info()
    log.info("copying unit", unit=request.unit, files=len(lines), piece=unit.piece, pieces=unit.pieces,
             attempt=info.attempt)
    if info.attempt > 1 or unit.pieces > 1:  # the pieces of a file see the entry of whichever completed it
        earlier = await asyncio.to_thread(_earlier_attempts, dest, request, unit, state)
        lines = [ListingLine(file=line.file, previous=earlier.get(line.file.key, line.previous)) for line in lines]
        if info.attempt > 1:
            log.info("resuming unit", unit=request.unit, files_recorded=len(earlier), attempt=info.attempt)
    engine = CopyEngine(source, dest, part_size=stage.part_size, concurrency=request.settings.concurrency,
                        bandwidth_limit=request.settings.activity_bandwidth(), state_prefix=state.prefix,
                        check_landed=info.attempt > 1)
    writer = _ManifestWriter(dest, request, unit, info.attempt, state)
    reporter = CopyReporter(engine, request)
    heartbeat = asyncio.create_task(reporter.run())
    try:
        await cut_when_stalled(engine, _copy_unit(engine, unit, lines, writer, state.run(request.listing_id)))
    finally:
        try:
            await engine.stop()  # requests still in flight may take a while: heartbeat until they end
        finally:
            heartbeat.cancel()
        await writer.flush()
    c = engine.counters
    log.info("unit copied", unit=request.unit, files=len(lines), pieces=unit.pieces, copied=c.files_copied,
             skipped=c.files_skipped, bytes_uploaded=c.bytes_uploaded, parts_reused=c.parts_reused)
    return CopyCounters(**c.counts())


async def _copy_unit(engine: CopyEngine, unit: ListingUnit, lines: list[ListingLine], writer: _ManifestWriter,
                     run: str) -> None:
    if unit.pieces == 1:
        await engine.copy_all(lines, writer.add)
        return
    entry = await PieceCopy(engine, lines[0], unit, pieces_folder(run, lines[0].file.key)).run()
    if entry is not None:
        await writer.add(entry)
        await writer.flush()
        await engine.recorded(entry)


def _earlier_attempts(dest: Destination, request: BatchRequest, unit: ListingUnit,
                      state: CopyStateNames) -> dict[str, ManifestEntry]:
    prefix = f"{state.shards(request.listing_id)}{unit.start:016d}-"
    return read_entries(dest, dest.list_state(prefix))


def _listing_range(dest: Destination, name: str, start: int, end: int | None) -> Iterator[tuple[int, ListingLine]]:
    """(offset, line) of the listing's lines from ``start`` to ``end``."""
    raw = dest.get_state(name, start, None if end is None else end - start) or b""
    offset = start
    for line in raw.splitlines(keepends=True):
        if line.strip():
            with decoding_state(f"{dest.describe()} {STATE_DIR}/{name}"):
                parsed = ListingLine.model_validate_json(line)
            yield offset, parsed
        offset += len(line)


def _first_unlisted(stage: WeightsStage, listed: set[str]) -> str | None:
    """The first selected source file the listing does not hold (a listing cut short), if the source still has one."""
    source = open_source(stage.source, stage.concurrency)
    return next((file.key for file in source.list() if is_selected(file.key, stage) and file.key not in listed), None)


def _check_entry(dest: Destination, line: ListingLine, entry: ManifestEntry | None,
                 present: dict[str, tuple[int, str]]) -> None:
    """The listed file was recorded as copied and is still at the destination as it was written: its version
    is the one the destination gave when the bytes were checked against the source's. (The recorded copy
    may be of a newer version than listed: a file that changed during the copy is copied as it is now.)"""
    file = line.file
    if entry is None:
        raise DataCorruption(f"{file.key} was listed but never recorded as copied; retry the migration")
    found = present.get(entry.key)
    if found != (entry.size, entry.dest_version):
        what = "missing" if found is None else f"{found[0]} bytes, version {found[1]}"
        raise DataCorruption(f"{dest.describe()}/{entry.key}: expected {entry.size} bytes, version "
                             f"{entry.dest_version}; found {what}")


def _verify(stage: WeightsStage, listing: ListingResult, state: CopyStateNames) -> VerifyResult:
    """Batch by batch (shards are named by the listing offset of their batch), so memory follows the
    batch size; only the destination's keys and versions are held for the whole listing. The files and
    bytes counted must be the listing's totals, as the workflow got them when the listing was written."""
    dest = open_destination(stage.destination, stage.concurrency)
    present = {obj.key: (obj.size, obj.version) for obj in dest.list()}
    shards: dict[int, list[str]] = {}
    prefix = state.shards(listing.listing_id)
    for name in dest.list_state(prefix):
        shards.setdefault(int(name[len(prefix):].split("-", 1)[0]), []).append(name)
    manifest = io.BytesIO()
    files = size = listed_bytes = unchecked = 0
    listed: set[str] = set()
    entries: dict[str, ManifestEntry] = {}
    for offset, line in _listing_range(dest, state.listing(listing.listing_id), 0, None):
        if offset in shards:  # the first line of a batch: its entries
            entries = read_entries(dest, shards[offset])
        entry = entries.get(line.file.key)
        _check_entry(dest, line, entry, present)
        assert entry is not None
        manifest.write(entry.model_dump_json().encode() + b"\n")
        listed.add(line.file.key)
        files += 1
        size += entry.size
        listed_bytes += line.file.size
        unchecked += entry.source_checksum == "none"
    if (files, listed_bytes) != (listing.files_total, listing.bytes_total):
        missing = _first_unlisted(stage, listed)
        first = f"; the first file missing from it: {missing}" if missing else ""
        raise DataCorruption(f"the listing at {dest.describe()} holds {files} files ({listed_bytes} bytes), it was written "
                             f"with {listing.files_total} ({listing.bytes_total} bytes){first}; retry the migration")
    dest.put_state(state.manifest, manifest.getvalue())
    for name in dest.list_state(f"{state.prefix}runs/"):
        dest.delete_state(name)
    dest.delete_state(state.claim)
    return VerifyResult(files_verified=files, bytes_verified=size, files_without_source_checksum=unchecked,
                        manifest_key=f"{dest.describe()}/{STATE_DIR}/{state.manifest}",
                        manifest_sha256=hashlib.sha256(manifest.getvalue()).hexdigest())


@activity.defn(name="flyaway.weights.verify")
async def verify_copy(stage: WeightsStage, listing: ListingResult) -> VerifyResult:
    """Check every listed file against the destination and write the migration's verified manifest."""
    result = await asyncio.to_thread(_verify, stage, listing, current_migration())
    log.info("copy verified", files=result.files_verified, bytes=result.bytes_verified,
             files_without_source_checksum=result.files_without_source_checksum)
    return result


def _abort_uploads(stage: WeightsStage, state: CopyStateNames) -> int:
    """Abort every upload the migration recorded, listing again until none is left, then drop its claim."""
    dest = open_destination(stage.destination, stage.concurrency)
    aborted = 0
    while names := dest.list_state(f"{state.prefix}uploads/"):
        for name in names:
            raw = dest.get_state(name)
            if raw:
                with decoding_state(f"{dest.describe()} {STATE_DIR}/{name}"):
                    upload = UploadState.model_validate_json(raw)
                try:
                    dest.abort(upload.key, upload.upload_id)
                    aborted += 1
                except DataCorruption as error:  # an upload id of a shape this destination never makes
                    log.warning("dropping an upload checkpoint flyaway did not write", checkpoint=name,
                                error=str(error))
            dest.delete_state(name)
    dest.delete_state(state.claim)
    return aborted


@activity.defn(name="flyaway.weights.abort_uploads")
async def abort_uploads(stage: WeightsStage) -> int:
    """Drop the migration's unfinished multipart uploads and its claim (an operator aborted it); returns how
    many. It runs in the migration's workflow, whose weight copy keeps its state under its own id."""
    state = CopyStateNames(weights_workflow_id(_workflow_id()))
    return await asyncio.to_thread(_abort_uploads, stage, state)


COPY_ACTIVITIES: list[Callable[..., Any]] = [check_weights, list_source, copy_batch, verify_copy, abort_uploads]
