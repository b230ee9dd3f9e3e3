"""The copy engine: one for every source and destination pair.

Files and parts move in parallel, but memory stays bounded: a part holds one of
``concurrency`` slots, and one reusable part buffer (``PartBuffers``), from the moment its
bytes are read until they are hashed and sent, so at most ``concurrency x part_size`` bytes
are in flight. Parts of a file take slots in order, and each part feeds the file's sha256 in
order, so the whole-file hash comes from the source bytes without a second read. A
destination that takes parts only in order (``sequential_parts``: a GCS resumable session)
still gets its parts read ahead, but each is sent only after the one before it landed.

Every byte read is checked against the checksum the source publishes for the file (an S3
ETag or ``x-amz-checksum-*``, a hub sha256 or git blob id), fed in order like the sha256,
before the file is put or its upload completed: bytes that do not match are read again, and
a file that keeps reading wrong ends as ``DataCorruption`` naming it, never visible at the
destination. A source that publishes no checksum is recorded as such in the manifest.

A large file's multipart upload is recorded at the destination (``uploads/`` in the
migration's state) as soon as it starts. Any later attempt, after a crash or an operator's
retry, finds it, asks the destination which parts landed, and sends only the parts that did
not, after checking that each landed part has the checksum of the source bytes it stands for
(or, where the destination cannot tell a landed part's checksum, that ``complete`` verifies
the whole object against the source bytes). The parts are recorded in the checkpoint before
``complete`` is sent, and the checkpoint is dropped only once the file is in the manifest: an
attempt killed between the two completes (or finds completed) that upload without sending a
byte. A small file landed by an attempt killed before recording it is found by its checksum
(``check_landed``) and not sent again.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import math
import mmap
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import structlog
from pydantic import Field

from flyaway.activities.storage.base import (
    STATE_DIR,
    Destination,
    DestinationLimits,
    DestObject,
    Source,
    SourceChanged,
    UploadGone,
)
from flyaway.activities.storage.checksums import SourceDigest, part_checksum
from flyaway.errors import DataCorruption, LimitExceeded, decoding_state
from flyaway.models.copy import (
    CompletingUpload,
    CopyCounters,
    CopySettings,
    ListingLine,
    ManifestEntry,
    PartRecord,
    SourceChecksum,
    SourceFile,
    UploadState,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

MiB = 1024 * 1024
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (glibc's malloc.h)
#: a file that keeps changing under us, or keeps arriving corrupted, is given up after this many tries
MAX_FILE_ATTEMPTS = 3
#: after a source file changed, give its writer this long before looking at it again
SETTLE_SECONDS = 1.0
#: threads start only as work needs them (slots bound that), so the pool's cap can allow any tuned concurrency
MAX_THREADS = 2 * 256 + 2


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error inside nested task-group failures, so its type is handled as is."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class SourceReadCorrupt(Exception):
    """The bytes read do not have the checksum the source publishes; the file is read again."""

    def __init__(self, mismatch: str, sha256: str, published: SourceChecksum | None) -> None:
        super().__init__(mismatch)
        self.sha256 = sha256
        self.published = published


def etag_convention(published: SourceChecksum | None) -> bool:
    """An MD5 of parts' MD5s: how S3 makes a multipart ETag, by convention, not by its specification."""
    return published is not None and published.algorithm == "md5" and published.part_size is not None


def upload_state_name(state_prefix: str, key: str) -> str:
    return f"{state_prefix}uploads/{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


def begin_recorded_upload(dest: Destination, state_prefix: str, file: SourceFile, part_size: int) -> UploadState:
    """Start a multipart upload and record it in one call, so a cancelled copy cannot leave an upload it has
    not recorded (abort finds it)."""
    upload_id = dest.begin_upload(file.key, file.size)
    state = UploadState(key=file.key, upload_id=upload_id, size=file.size, part_size=part_size,
                        source_version=file.version)
    dest.put_state(upload_state_name(state_prefix, file.key), state.model_dump_json().encode())
    return state


def part_size_for(size: int, plan_part_size: int, limits: DestinationLimits) -> int:
    """The plan's part size, grown in whole MiB so the file fits the destination's part count, cut down
    to the destination's largest part (in whole MiB), rounded up to the multiple the destination needs."""
    needed = math.ceil(math.ceil(size / limits.max_parts) / MiB) * MiB
    largest = limits.max_part_size // MiB * MiB
    if needed > largest:
        raise LimitExceeded(f"{size} bytes need parts of {needed} bytes, over the destination's "
                            f"{limits.max_part_size}-byte limit")
    part = min(max(plan_part_size, limits.min_part_size, needed), largest)
    return math.ceil(part / limits.part_multiple) * limits.part_multiple


class FileDigests:
    """The sha256 of a file's bytes and the check against the source's published checksum, fed in order."""

    def __init__(self, file: SourceFile, published: SourceChecksum | None) -> None:
        self.file = file
        self.published = published
        self.sha256 = hashlib.sha256()
        self.source = SourceDigest(published, file.size) if published else None
        self.label = published.label() if published else "none"

    def update(self, data: bytes | memoryview, algorithm: str, digest: str) -> None:
        """Feed the next bytes, whose ``algorithm`` digest the caller has (a part's, or a small file's, part
        checksum): the source check takes that where it can, rather than hashing the bytes again."""
        self.sha256.update(data)
        if self.source is not None and not self.source.take_digest(algorithm, digest, len(data)):
            self.source.update(data)

    def check(self) -> str:
        """The sha256 hex digest; raises ``SourceReadCorrupt`` if the bytes are not the source's."""
        mismatch = self.source.mismatch() if self.source is not None else None
        if mismatch:
            raise SourceReadCorrupt(mismatch, self.sha256.hexdigest(), self.published)
        return self.sha256.hexdigest()


def copy_reason(line: ListingLine, current: DestObject | None) -> str | None:
    """Why a file must be copied, or None when its destination copy matches the manifest."""
    previous, file = line.previous, line.file
    if previous is None:
        return "new"
    # a published hash (Hugging Face LFS) decides; otherwise the version (a new commit, ETag or mtime) does
    same = previous.sha256 == file.sha256 if file.sha256 else previous.source_version == file.version
    if previous.size != file.size or not same:
        return "changed at the source"
    if current is None:
        return "missing at the destination"
    if current.size != file.size or current.version != previous.dest_version:
        return "changed at the destination"
    return None


@functools.cache
def return_freed_buffers_to_the_os() -> None:
    """Make glibc serve part-sized buffers from mmap, so a freed part's memory leaves the process.

    By default glibc raises its mmap threshold after the first large free, and later part buffers
    come from per-thread arenas that keep their pages: RSS then grows far past
    ``concurrency x part_size``. Other C libraries are left as they are.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)
    libc.mallopt(M_ARENA_MAX, 4)


class TokenBucket:
    """A bandwidth limit shared by every stream of one engine; a rate of None means no limit."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._tokens = float(rate or 0)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: int) -> None:
        if not self.rate:
            return
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate) - amount
            self._stamp = now
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


#: a cap on the bytes per second this worker process sends, over every copy it runs (``flyaway worker
#: --bandwidth-limit``): an operator keeps the rest of the host's link for other work
WORKER_BANDWIDTH = TokenBucket(None)


class Slots:
    """A semaphore whose size an operator can change while tasks hold it and wait for it (``tune``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        while self.used >= self.size:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        for _ in range(max(0, self.size - self.used)):
            while self._waiters and self._waiters[0].done():
                self._waiters.popleft()
            if not self._waiters:
                return
            self._waiters.popleft().set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *_: object) -> None:
        self.release()


class PartBuffers:
    """The part buffers of one engine, reused from part to part: a source reads a part into one
    (``Source.read_into``), the part is hashed and sent from it, and no part costs a fresh allocation (whose
    pages the kernel would zero and fault in again: about 786k page faults per 3 GiB).

    Each is an anonymous mapping of at least the plan's part size, resident only where a part touched it, so
    buffers that held only small files stay small. A buffer is taken with a slot held, so there are at most
    ``concurrency`` of them; they are unmapped when the engine is dropped."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[mmap.mmap] = []

    def take(self, length: int) -> mmap.mmap:
        """A buffer of at least ``length`` bytes (a free one too small for it is dropped)."""
        while self._free:
            buffer = self._free.pop()
            if len(buffer) >= length:
                return buffer
        return mmap.mmap(-1, max(length, self.size, 1))

    def give(self, buffer: mmap.mmap, keep: int) -> None:
        """Return ``buffer``; at most ``keep`` (the current concurrency) are kept for later parts."""
        if len(self._free) < keep:
            self._free.append(buffer)


class EngineCounters(CopyCounters):
    """The copy's counters, plus what only the heartbeat needs."""

    bytes_done: int = 0
    uploads: dict[str, str] = Field(default_factory=dict)


class CopyEngine:
    def __init__(self, source: Source, destination: Destination, *, part_size: int, concurrency: int,
                 bandwidth_limit: int | None = None, state_prefix: str = "", check_landed: bool = False) -> None:
        """``state_prefix``: where the migration's upload checkpoints live among the destination's state;
        ``check_landed``: look for small files an earlier, killed attempt landed without recording them."""
        return_freed_buffers_to_the_os()
        self.source = source
        self.dest = destination
        self.state_prefix = state_prefix
        self.check_landed = check_landed
        #: files whose upload checkpoint is dropped once their entry is recorded
        self._recording: set[str] = set()
        self.part_size = part_size
        self.concurrency = concurrency
        self.bandwidth = TokenBucket(bandwidth_limit)
        self.counters = EngineCounters()
        self._executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="flyaway-copy")
        self._slots = Slots(concurrency)
        self._files = Slots(concurrency)
        self._buffers = PartBuffers(part_size)

    def tune(self, settings: CopySettings) -> None:
        """Apply an operator's new settings from the next part on; parts in flight finish as they started."""
        if settings.concurrency != self.concurrency:
            self.concurrency = settings.concurrency
            self._slots.resize(settings.concurrency)
            self._files.resize(settings.concurrency)
        self.bandwidth.rate = settings.activity_bandwidth()

    async def _take_bandwidth(self, amount: int) -> None:
        """Wait for the copy's share of its bandwidth limit, then for the worker's."""
        await self.bandwidth.take(amount)
        await WORKER_BANDWIDTH.take(amount)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        """Wait for the requests in flight, so nothing writes once the copy has returned (or was cancelled)."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run_tracked(self, threads: set[Future[Any]], fn: Callable[..., T], *args: Any) -> T:
        """``_run``, the thread's work kept in ``threads`` until it ends, cancelled or not."""
        work = self._executor.submit(fn, *args)
        threads.add(work)
        work.add_done_callback(threads.discard)
        return await asyncio.wrap_future(work)

    def read_part(self, file: SourceFile, offset: int, buffer: mmap.mmap, length: int) -> tuple[bytes, str]:
        """Read ``length`` bytes of the file from ``offset`` into ``buffer``; the bytes as the destination takes
        them, and their checksum in its part algorithm. The bytes are a view of the buffer where the destination
        takes views (``Destination.takes_views``; typed as bytes, as the adapters' signatures say), else a copy."""
        view = memoryview(buffer)[:length]
        self.source.read_into(file, offset, view)
        checksum = part_checksum(self.dest.part_checksum, view)
        return cast(bytes, view) if self.dest.takes_views else bytes(view), checksum

    def effective_part_size(self, size: int, source_part: int | None = None) -> int:
        """``part_size_for`` the file; then, where the source's own parts (``source_part``) are no larger and the
        destination allows, cut to a whole number of them, so every read holds whole source parts, each checked
        on its own."""
        limits = self.dest.limits
        part = part_size_for(size, self.part_size, limits)
        needed = math.ceil(math.ceil(size / limits.max_parts) / MiB) * MiB
        whole = part // source_part * source_part if source_part else 0
        fits = (whole >= max(limits.min_part_size, needed) and whole % limits.part_multiple == 0)
        return whole if fits else part

    async def copy_all(self, lines: Iterable[ListingLine],
                       on_entry: Callable[[ManifestEntry], Awaitable[None]]) -> None:
        """Copy (or skip) every line, at most ``concurrency`` files at once; report each entry as it lands."""

        async def one(line: ListingLine) -> None:
            entry = await self.copy_file(line)
            await on_entry(entry)
            await self.recorded(entry)

        try:
            async with asyncio.TaskGroup() as group:
                for line in lines:
                    await self._files.acquire()
                    # released by a done callback: a task cancelled before it ran has no finally
                    group.create_task(one(line)).add_done_callback(lambda _: self._files.release())
        except BaseExceptionGroup as failures:
            raise first_error(failures) from None

    async def recorded(self, entry: ManifestEntry) -> None:
        """The file's entry is recorded: drop its upload checkpoint, if it had one."""
        if entry.key in self._recording:
            await self._run(self.dest.delete_state, upload_state_name(self.state_prefix, entry.key))
            self._recording.discard(entry.key)

    async def copy_file(self, line: ListingLine) -> ManifestEntry:
        file = line.file
        if file.size > self.dest.limits.max_object_size:
            raise LimitExceeded(f"{file.key}: {file.size} bytes is over the destination's "
                                f"{self.dest.limits.max_object_size}-byte object limit")
        if await self._unchanged(line):
            assert line.previous is not None
            self.counters.files_skipped += 1
            self.counters.bytes_skipped += file.size
            self.counters.bytes_done += file.size
            return line.previous
        last: Exception | None = None
        misread: set[str] = set()  # sha256 of reads that did not match the source's checksum
        etag_is_opaque = False
        for attempt in range(1, MAX_FILE_ATTEMPTS + 1):
            try:
                if file.size <= self._single_put_limit():
                    entry = await self._copy_small(file, etag_is_opaque)
                else:
                    entry = await self._copy_multipart(file, await self._run(self._published, file, etag_is_opaque))
                if attempt > 1 and (await self._run(self.source.restat, file)).version != file.version:
                    # it changed under an earlier attempt: what this one copied may be a passing state
                    raise SourceChanged(file.key)
                self.counters.files_copied += 1
                self.counters.bytes_copied += file.size
                return entry
            except SourceChanged:
                log.warning("source file changed while copying; starting it again", key=file.key, attempt=attempt)
                await self._forget_upload(file.key)
                await asyncio.sleep(SETTLE_SECONDS)
                file = await self._run(self.source.restat, file)
                last = SourceChanged(file.key)
            except SourceReadCorrupt as error:
                # the upload stays: landed parts whose checksum the next read confirms are kept
                log.warning("bytes read do not match the source's checksum; reading the file again",
                            key=file.key, attempt=attempt, reason=str(error))
                if error.sha256 in misread and etag_convention(error.published):
                    # the same bytes twice: this store's multipart ETag is not an MD5 of its parts' MD5s
                    log.warning("the multipart ETag is not an MD5 of the parts here; copying the file without "
                                "a source checksum", key=file.key)
                    etag_is_opaque = True
                misread.add(error.sha256)
                last = error
            except (DataCorruption, UploadGone) as error:
                # bytes that did not verify, or an upload the destination lost or no longer accepts
                log.warning("copying the file again", key=file.key, attempt=attempt,
                            reason=f"{type(error).__name__}: {error}")
                await self._forget_upload(file.key)
                last = error
        if isinstance(last, SourceChanged):
            raise DataCorruption(f"{file.key}: the source file kept changing during {MAX_FILE_ATTEMPTS} copies; "
                                 f"stop writing to it and retry")
        if isinstance(last, SourceReadCorrupt):
            raise DataCorruption(f"{file.key}: {last} (read {MAX_FILE_ATTEMPTS} times from {self.source.describe()}); "
                                 f"nothing of it was made visible at the destination")
        raise DataCorruption(f"{file.key}: {last} (after {MAX_FILE_ATTEMPTS} copies)")

    def _single_put_limit(self) -> int:
        return min(self.part_size, self.dest.limits.max_single_put)

    async def _unchanged(self, line: ListingLine) -> bool:
        if copy_reason(line, None) == "new":
            return False
        current = await self._run(self.dest.stat, line.file.key)
        return copy_reason(line, current) is None

    @staticmethod
    def _entry(file: SourceFile, sha256: str, dest_version: str, parts: int, source_checksum: str) -> ManifestEntry:
        return ManifestEntry(key=file.key, size=file.size, sha256=sha256, source_version=file.version,
                             dest_version=dest_version, parts=parts, copied_at=datetime.now(UTC),
                             source_checksum=source_checksum)

    def _published(self, file: SourceFile, etag_is_opaque: bool) -> SourceChecksum | None:
        """The checksum the source publishes for the file, unless it is a multipart ETag found not to be the
        MD5 of the parts' MD5s here."""
        published = self.source.published_checksum(file)
        return None if etag_is_opaque and etag_convention(published) else published

    async def _copy_small(self, file: SourceFile, etag_is_opaque: bool) -> ManifestEntry:
        """A file sent whole, in one call on one thread: per file, the event loop hands off work once."""
        async with self._slots:
            await self._take_bandwidth(file.size)
            buffer = self._buffers.take(file.size)
            sent: list[bool] = []
            try:
                version, sha256, label = await self._run(self._send_small, file, etag_is_opaque, buffer, sent)
            finally:  # sent, even when it arrived damaged
                self.counters.bytes_uploaded += file.size if sent else 0
            # only now is no thread using the buffer (a cancelled part leaves it to the thread that has it)
            self._buffers.give(buffer, self.concurrency)
            self.counters.bytes_done += file.size
        return self._entry(file, sha256, version, 1, label)

    def _send_small(self, file: SourceFile, etag_is_opaque: bool, buffer: mmap.mmap,
                    sent: list[bool]) -> tuple[str, str, str]:
        """Read, hash and check the file, and put it unless an earlier attempt landed it; its destination version,
        sha256 and source checksum label. ``sent`` gets an item once the bytes go out."""
        digests = FileDigests(file, self._published(file, etag_is_opaque))
        data, checksum = self.read_part(file, 0, buffer, file.size)
        digests.update(data, self.dest.part_checksum, checksum)
        sha256 = digests.check()
        version = self._landed_version(file, checksum)
        if version is None:
            sent.append(True)
            version = self.dest.put(file.key, data, checksum, sha256)
        return version, sha256, digests.label

    def _landed_version(self, file: SourceFile, checksum: str) -> str | None:
        """The version of the file at the destination if an earlier attempt landed exactly these bytes."""
        if not self.check_landed:
            return None
        landed = self.dest.landed(file.key)
        if landed is None or landed.size != file.size or landed.checksum != checksum:
            return None
        log.info("file landed in an earlier attempt; recorded without sending it again", key=file.key)
        return landed.version

    async def _forget_upload(self, key: str) -> None:
        state = await self._load_upload(key)
        if state is not None:
            await self._run(self.dest.abort, key, state.upload_id)
            await self._run(self.dest.delete_state, upload_state_name(self.state_prefix, key))
        self.counters.uploads.pop(key, None)

    async def _load_upload(self, key: str) -> UploadState | None:
        """The checkpoint of the file's upload, checked for its shape: it is read back from the destination."""
        name = upload_state_name(self.state_prefix, key)
        raw = await self._run(self.dest.get_state, name)
        if not raw:
            return None
        with decoding_state(f"{self.dest.describe()} {STATE_DIR}/{name}"):
            state = UploadState.model_validate_json(raw)
        if state.key != key:
            raise DataCorruption(f"upload checkpoint {STATE_DIR}/{name} at {self.dest.describe()} is for another "
                                 f"file than {key}; delete it to copy that file from the start")
        return state

    async def _completed_earlier(self, file: SourceFile, state: UploadState, count: int) -> ManifestEntry | None:
        """The entry of a file whose upload an earlier attempt completed (or was about to) before it was killed."""
        done = state.completing
        if done is None:
            return None
        try:
            version = await self._run(self.dest.complete, file.key, state.upload_id, done.parts, done.sha256)
        except UploadGone:
            log.info("upload from an earlier attempt is gone and did not make the object; starting over",
                     key=file.key)
            return None
        log.info("upload completed by an earlier attempt; recorded without sending it again", key=file.key)
        self._recording.add(file.key)
        self.counters.bytes_done += file.size
        return self._entry(file, done.sha256, version, count, done.source_checksum)

    async def _resume_or_begin(self, file: SourceFile, part_size: int,
                               state: UploadState | None) -> tuple[UploadState, dict[int, PartRecord]]:
        """The upload to continue (``state``, from the checkpoint), with the parts that already landed, or a new upload."""
        if state is not None:
            if (state.source_version, state.size, state.part_size) == (file.version, file.size, part_size):
                try:
                    landed = await self._run(self.dest.list_parts, file.key, state.upload_id)
                    log.info("resuming upload", key=file.key, parts_landed=len(landed))
                    return state, landed
                except UploadGone:
                    log.info("upload from an earlier attempt is gone; starting over", key=file.key)
            else:
                log.info("source or part size changed since the earlier upload; starting over", key=file.key)
                await self._run(self.dest.abort, file.key, state.upload_id)

        return await self._run(begin_recorded_upload, self.dest, self.state_prefix, file, part_size), {}

    async def _save_upload(self, state: UploadState) -> None:
        await self._run(self.dest.put_state, upload_state_name(self.state_prefix, state.key),
                        state.model_dump_json().encode())

    async def _upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                           checksum: str, threads: set[Future[Any]] | None = None) -> PartRecord:
        """Send one part (its thread kept in ``threads`` where given); a part that arrives corrupted is sent
        again before the file is given up."""
        tracked = set() if threads is None else threads
        for attempt in range(1, MAX_FILE_ATTEMPTS + 1):
            await self._take_bandwidth(len(data))
            try:
                record = await self._run_tracked(tracked, self.dest.upload_part, key, upload_id, number, offset, data,
                                                 checksum)
            except DataCorruption as error:
                if attempt == MAX_FILE_ATTEMPTS:
                    raise
                log.warning("part arrived corrupted; sending it again", key=key, part=number, error=str(error))
                self.counters.parts_resent += 1
                continue
            finally:
                self.counters.bytes_uploaded += len(data)
            return record
        raise AssertionError("unreachable")

    async def _copy_multipart(self, file: SourceFile, published: SourceChecksum | None) -> ManifestEntry:
        part_size = self.effective_part_size(file.size, published.part_size if published else None)
        count = math.ceil(file.size / part_size)
        earlier = await self._load_upload(file.key)
        if earlier is not None and (earlier.source_version, earlier.size, earlier.part_size) == (
                file.version, file.size, part_size):
            entry = await self._completed_earlier(file, earlier, count)
            if entry is not None:
                return entry
        state, landed = await self._resume_or_begin(file, part_size, earlier)
        self.counters.uploads[file.key] = state.upload_id
        digests = FileDigests(file, published)
        records: list[PartRecord | None] = [None] * count
        loop = asyncio.get_running_loop()
        #: reads and sends of this file in threads; a cancelled part's thread goes on until its request ends
        threads: set[Future[Any]] = set()

        async def part(number: int, hashed_before: asyncio.Future[None], hashed: asyncio.Future[None],
                       sent_before: asyncio.Future[None], sent: asyncio.Future[None]) -> None:
            offset = (number - 1) * part_size
            length = min(part_size, file.size - offset)
            buffer = self._buffers.take(length)
            data, checksum = await self._run_tracked(threads, self.read_part, file, offset, buffer, length)
            await hashed_before
            await self._run(digests.update, data, self.dest.part_checksum, checksum)
            hashed.set_result(None)
            done = landed.get(number)
            if done is not None and done.checksum in (checksum, "") and done.size == length:
                records[number - 1] = done.model_copy(update={"checksum": checksum})
                self.counters.parts_reused += 1
                self.counters.bytes_reused += length
            else:
                if self.dest.limits.sequential_parts:
                    await sent_before
                records[number - 1] = await self._upload_part(file.key, state.upload_id, number, offset, data,
                                                              checksum, threads)
            # only now is no thread using the buffer (a cancelled part leaves it to the thread that has it)
            self._buffers.give(buffer, self.concurrency)
            sent.set_result(None)
            self.counters.bytes_done += length

        previous: asyncio.Future[None] = loop.create_future()
        previous.set_result(None)
        previous_sent = previous
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(1, count + 1):
                    await self._slots.acquire()
                    hashed: asyncio.Future[None] = loop.create_future()
                    sent: asyncio.Future[None] = loop.create_future()
                    # the slot is released by a done callback: a task cancelled before it ran has no finally
                    group.create_task(part(number, previous, hashed, previous_sent, sent)).add_done_callback(
                        lambda _: self._slots.release())
                    previous, previous_sent = hashed, sent
        except BaseExceptionGroup as failures:
            # the parts still sending go on in their threads: let them end before the upload is aborted or
            # begun again, or they retry against an upload that is gone
            await asyncio.to_thread(wait, set(threads))
            raise first_error(failures) from None
        digest = await self._run(digests.check)
        parts = [record for record in records if record is not None]
        state.completing = CompletingUpload(parts=parts, sha256=digest, source_checksum=digests.label)
        await self._save_upload(state)
        version = await self._run(self.dest.complete, file.key, state.upload_id, parts, digest)
        self._recording.add(file.key)
        self.counters.uploads.pop(file.key, None)
        return self._entry(file, digest, version, count, digests.label)
