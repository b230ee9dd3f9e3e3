"""A large file split among workers: each copy activity sends one piece (a run of its parts) into the
file's one multipart upload, and the piece that finds every piece recorded completes it.

The listing starts the upload and records it (``uploads/`` in the migration's state) before any piece
runs, so every piece finds the same upload. A piece reads and hashes only its own parts (sha256 and the
destination's part checksum, in the thread that read them), sends those that have not landed, and
records them with their sha256 under ``pieces/<file>/`` of the run. It then lists the pieces recorded:
whoever sees them all completes the upload. Two pieces finishing at once may both see them all (each
records before it looks, so at least one does); the second ``complete`` finds the object made from the
same parts and returns its version, as for a retried attempt. The second one reads the upload's checkpoint
after listing the parts that landed: if the first has begun to complete (and so may have taken the parts
away), it completes too rather than sending those parts again.

No worker reads the whole file: the manifest records each part's sha256 and, as the file's ``sha256``,
the sha256 of those digests (``sha256_of: parts``); the destination checks its own composite of the
parts (S3's multipart ETag, the local destination's crc32c) at ``complete``. A source that publishes a
checksum of the whole file needs every byte in order to check it, so its files are never split.

If the upload is gone (expired, aborted), the piece that notices starts a new one and records it; the
others move to it at their next part, and the completing piece sends again whatever parts the current
upload lacks. A source file that changes while its pieces are copied fails the copy for good: its other
pieces may have sent bytes of the old version.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import mmap

import structlog

from flyaway.activities.storage.base import STATE_DIR, SourceChanged, UploadGone
from flyaway.activities.storage.engine import MAX_FILE_ATTEMPTS, CopyEngine, begin_recorded_upload, first_error
from flyaway.errors import DataCorruption, decoding_state
from flyaway.models.copy import (
    CompletingUpload,
    ListingLine,
    ListingUnit,
    ManifestEntry,
    PartRecord,
    PieceRecord,
    SourceFile,
    UploadState,
)

log = structlog.get_logger(__name__)


def pieces_folder(shards_root: str, key: str) -> str:
    """Where the pieces of one split file record their parts, inside the run's state."""
    return f"{shards_root}pieces/{hashlib.sha256(key.encode()).hexdigest()[:40]}/"


def composite_sha256(part_sha256: list[str]) -> str:
    """A split file's ``sha256`` in the manifest: the sha256 of its parts' sha256 digests, in order."""
    return hashlib.sha256(b"".join(bytes.fromhex(digest) for digest in part_sha256)).hexdigest()


def _as_recorded(recorded: tuple[PartRecord, str] | None, landed: PartRecord | None) -> bool:
    """Whether a part a piece recorded is at the destination as recorded (the destination may not tell its checksum)."""
    if recorded is None or landed is None:
        return False
    part = recorded[0]
    return landed.size == part.size and landed.checksum in (part.checksum, part.receipt, "")


class PieceCopy:
    """One piece of one split file, sent by ``engine``."""

    def __init__(self, engine: CopyEngine, line: ListingLine, unit: ListingUnit, folder: str) -> None:
        self.engine = engine
        self.line = line
        self.file: SourceFile = line.file
        self.unit = unit
        self.folder = folder
        self.part_size = engine.effective_part_size(self.file.size)
        self.count = math.ceil(self.file.size / self.part_size)

    async def run(self) -> ManifestEntry | None:
        """Send this piece; the file's entry if this piece completed it (or is its first, and the file was
        copied before), else None."""
        engine, file = self.engine, self.file
        numbers = range(self.unit.first_part, self.unit.last_part + 1)
        if await engine._unchanged(self.line):  # completed by another piece, in this run or an earlier one
            size = sum(self._length(number) for number in numbers)
            engine.counters.bytes_skipped += size
            engine.counters.bytes_done += size
            if self.unit.piece > 0:
                return None
            engine.counters.files_skipped += 1  # the file counts once, and its first piece records it
            return self.line.previous
        try:
            state, sent = await self._send(list(numbers))
        except SourceChanged:
            raise DataCorruption(f"{engine.source.describe()}/{file.key} changed while workers were copying its "
                                 f"pieces; abort the migration and start it again once the file is stable") from None
        record = PieceRecord(upload_id=state.upload_id, parts=[part for part, _ in sent],
                             sha256=[digest for _, digest in sent])
        name = f"{self.folder}{self.unit.piece:06d}.json"
        await engine._run(engine.dest.put_state, name, record.model_dump_json().encode())
        recorded = await engine._run(engine.dest.list_state, self.folder)
        engine.counters.bytes_copied += sum(part.size for part, _ in sent)
        if len(recorded) < self.unit.pieces:
            return None
        return await self._complete(state, recorded)

    def _length(self, number: int) -> int:
        return min(self.part_size, self.file.size - (number - 1) * self.part_size)

    async def _send(self, numbers: list[int]) -> tuple[UploadState, list[tuple[PartRecord, str]]]:
        """Send parts ``numbers`` into the file's upload (moving to a new one if it is gone); their records."""
        engine = self.engine
        for attempt in range(1, MAX_FILE_ATTEMPTS + 1):
            state = await self._upload()
            try:
                landed = await engine._run(engine.dest.list_parts, self.file.key, state.upload_id)
                engine.counters.uploads[self.file.key] = state.upload_id
                try:
                    async with asyncio.TaskGroup() as group:
                        tasks = [group.create_task(self._part(state, landed, number)) for number in numbers]
                except BaseExceptionGroup as failures:
                    raise first_error(failures) from None
                return state, [task.result() for task in tasks]
            except UploadGone:
                log.warning("the split file's upload is gone; starting a new one", key=self.file.key, attempt=attempt)
                await self._replace(state)
        raise DataCorruption(f"{self.file.key}: its multipart upload kept disappearing ({MAX_FILE_ATTEMPTS} times)")

    async def _upload(self) -> UploadState:
        """The file's upload, as the listing (or a piece that replaced a lost one) recorded it."""
        state = await self.engine._load_upload(self.file.key)
        if state is not None and (state.source_version, state.size, state.part_size) == (
                self.file.version, self.file.size, self.part_size):
            return state
        return await self._replace(state)

    async def _replace(self, gone: UploadState | None) -> UploadState:
        """A new upload, unless another piece already replaced ``gone`` with one."""
        engine = self.engine
        current = await engine._load_upload(self.file.key)
        if current is not None and gone is not None and current.upload_id != gone.upload_id:
            return current
        return await engine._run(begin_recorded_upload, engine.dest, engine.state_prefix, self.file, self.part_size)

    async def _part(self, state: UploadState, landed: dict[int, PartRecord], number: int) -> tuple[PartRecord, str]:
        """Read, hash and (unless it landed with these bytes) send one part, holding one of the engine's slots."""
        engine = self.engine
        offset, length = (number - 1) * self.part_size, self._length(number)
        async with engine._slots:
            buffer = engine._buffers.take(length)
            data, checksum, sha256 = await engine._run(self._read, offset, buffer, length)
            done = landed.get(number)
            if done is not None and done.checksum in (checksum, "") and done.size == length:
                record = PartRecord(number=number, size=length, checksum=checksum, receipt=done.receipt)
                engine.counters.parts_reused += 1
                engine.counters.bytes_reused += length
            else:
                record = await engine._upload_part(self.file.key, state.upload_id, number, offset, data, checksum)
            # only now is no thread using the buffer (a cancelled part leaves it to the thread that has it)
            engine._buffers.give(buffer, engine.concurrency)
            engine.counters.bytes_done += length
        return record, sha256

    def _read(self, offset: int, buffer: mmap.mmap, length: int) -> tuple[bytes, str, str]:
        """A part read into ``buffer`` (``CopyEngine.read_part``), with its sha256 from the same thread."""
        data, checksum = self.engine.read_part(self.file, offset, buffer, length)
        return data, checksum, hashlib.sha256(data).hexdigest()

    async def _recorded_parts(self, state: UploadState, names: list[str]) -> dict[int, tuple[PartRecord, str]]:
        """The parts every piece recorded for the current upload, read back from state (so checked for shape)."""
        engine = self.engine
        parts: dict[int, tuple[PartRecord, str]] = {}
        for name in names:
            raw = await engine._run(engine.dest.get_state, name)
            with decoding_state(f"{engine.dest.describe()} {STATE_DIR}/{name}"):
                record = PieceRecord.model_validate_json(raw or b"")
            if record.upload_id == state.upload_id:
                parts.update({part.number: (part, digest) for part, digest in zip(record.parts, record.sha256, strict=True)})
        return parts

    async def _complete(self, state: UploadState, names: list[str]) -> ManifestEntry:
        """Complete the upload from every piece's parts, first sending any part the current upload lacks."""
        engine, file = self.engine, self.file
        parts = await self._recorded_parts(state, names)
        try:
            landed = await engine._run(engine.dest.list_parts, file.key, state.upload_id)
        except UploadGone:
            landed = {}
        # read after the parts: a piece completing at the same moment saved ``completing`` before its ``complete``
        # took any part away, so parts missing here while nothing is completing are really missing
        current = await engine._load_upload(file.key)
        completing = current is not None and current.upload_id == state.upload_id and current.completing is not None
        if completing and len(parts) == self.count:
            try:  # completed (or about to be) by another piece, or by one killed before it recorded the file
                return await self._finish(state, parts)
            except UploadGone:
                log.info("the split file's completed upload is gone and did not make the object", key=file.key)
        missing = [number for number in range(1, self.count + 1) if not _as_recorded(parts.get(number), landed.get(number))]
        if missing:
            log.warning("parts missing from the split file's upload; sending them", key=file.key, parts=missing)
            current, sent = await self._send(missing)
            if current.upload_id != state.upload_id:  # a new upload: the other pieces' parts are not in it
                parts = {}
                if len(missing) < self.count:
                    current, sent = await self._send(list(range(1, self.count + 1)))
            state = current
            parts.update({part.number: (part, digest) for part, digest in sent})
        return await self._finish(state, parts)

    async def _finish(self, state: UploadState, parts: dict[int, tuple[PartRecord, str]]) -> ManifestEntry:
        engine, file = self.engine, self.file
        ordered = [parts[number] for number in range(1, self.count + 1)]
        digests = [digest for _, digest in ordered]
        sha256 = composite_sha256(digests)
        state.completing = CompletingUpload(parts=[part for part, _ in ordered], sha256=sha256, source_checksum="none")
        await engine._save_upload(state)
        version = await engine._run(engine.dest.complete, file.key, state.upload_id, state.completing.parts, sha256)
        engine._recording.add(file.key)
        engine.counters.uploads.pop(file.key, None)
        engine.counters.files_copied += 1
        log.info("split file completed", key=file.key, parts=self.count, pieces=self.unit.pieces)
        entry = engine._entry(file, sha256, version, self.count, "none")
        return entry.model_copy(update={"sha256_of": "parts", "part_size": self.part_size, "part_sha256": digests})
