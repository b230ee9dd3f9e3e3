"""The engine's reusable part buffers: parts and small files are read into at most ``concurrency`` buffers,
checksummed in place and sent from them, and what lands is the source's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
from pathlib import Path

import google_crc32c

from flyaway.activities.storage.checksums import crc32c
from flyaway.activities.storage.engine import CopyEngine
from flyaway.activities.storage.local import LocalDestination, LocalSource
from flyaway.activities.storage.s3 import _Body
from flyaway.models.copy import ListingLine, ManifestEntry
from flyaway.models.locations import LocalLocation

MiB = 1024 * 1024


def test_crc32c_of_a_buffer_slice_is_that_of_its_bytes() -> None:
    data = os.urandom(3 * MiB + 17)
    buffer = mmap.mmap(-1, 4 * MiB)
    view = memoryview(buffer)
    view[:len(data)] = data
    assert crc32c(view[:len(data)]) == google_crc32c.value(data)
    assert crc32c(view[5:1000]) == google_crc32c.value(data[5:1000])
    assert crc32c(view[1000:len(data)], crc32c(view[:1000])) == google_crc32c.value(data)
    assert crc32c(view[:0]) == 0
    assert crc32c(data) == google_crc32c.value(data)  # bytes, and read-only views, go through the binding
    assert crc32c(memoryview(data)[7:70]) == google_crc32c.value(data[7:70])


def test_a_request_body_reads_the_buffer_in_slices_and_rewinds() -> None:
    data = os.urandom(100_000)
    body = _Body(memoryview(bytearray(data)))
    assert len(body) == len(data)
    chunks = []
    while chunk := body.read(16384):
        chunks.append(bytes(chunk))
    assert b"".join(chunks) == data and body.tell() == len(data)
    assert body.seek(0) == 0 and bytes(body.read()) == data
    assert body.seek(-10, 2) == len(data) - 10 and bytes(body.read(100)) == data[-10:]


def test_parts_and_small_files_reuse_at_most_concurrency_buffers(tmp_path: Path) -> None:
    source_dir = tmp_path / "src"
    (source_dir / "shards").mkdir(parents=True)
    contents = {"model.safetensors": os.urandom(9 * MiB + 123)}
    contents.update({f"shards/{n:02d}.bin": os.urandom(n * 40_000 + 1) for n in range(12)})
    contents["empty.txt"] = b""
    for key, data in contents.items():
        (source_dir / key).write_bytes(data)
    source = LocalSource(LocalLocation(kind="local", path=str(source_dir)))
    dest = LocalDestination(LocalLocation(kind="local", path=str(tmp_path / "dst")))
    entries: list[ManifestEntry] = []
    buffers: dict[int, mmap.mmap] = {}  # held, so that no id is reused by another buffer

    async def run() -> None:
        engine = CopyEngine(source, dest, part_size=1 * MiB, concurrency=3)
        take = engine._buffers.take

        def recorded(length: int) -> mmap.mmap:
            buffer = take(length)
            buffers[id(buffer)] = buffer
            return buffer

        engine._buffers.take = recorded  # type: ignore[method-assign]

        async def landed(entry: ManifestEntry) -> None:
            entries.append(entry)

        try:
            await engine.copy_all([ListingLine(file=file) for file in source.list()], landed)
        finally:
            await engine.stop()

    asyncio.run(run())
    assert 1 <= len(buffers) <= 3  # 10 parts and 13 small files, each read into one of the three buffers
    assert {entry.key: entry.sha256 for entry in entries} == {
        key: hashlib.sha256(data).hexdigest() for key, data in contents.items()}
    for key, data in contents.items():
        assert (tmp_path / "dst" / key).read_bytes() == data, key
