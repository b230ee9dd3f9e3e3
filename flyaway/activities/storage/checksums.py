"""Checksums of source bytes: a part's MD5, CRC32 or CRC32C that destinations check, the crc32c of a
whole object combined from its parts' without reading the bytes again, the streaming check
of the bytes read against the checksum the source publishes, and the check of each part of a
multipart source object against its own checksum."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import google_crc32c
import structlog

from flyaway.errors import DataCorruption
from flyaway.models.copy import PartRecord, SourceChecksum

_CRC32C_POLY = 0x82F63B78
log = structlog.get_logger(__name__)


def part_checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "md5":
        return hashlib.md5(data).hexdigest()
    if algorithm == "crc32c":
        return f"{google_crc32c.value(data):08x}"
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    raise ValueError(f"unknown part checksum {algorithm}")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def crc32c_of_file(path: Path, chunk: int = 8 * 1024 * 1024) -> int:
    checksum = google_crc32c.Checksum()
    with path.open("rb") as handle:
        while data := handle.read(chunk):
            checksum.update(data)
    return int.from_bytes(checksum.digest(), "big")


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The crc32c of A+B from crc32c(A), crc32c(B) and len(B), in O(log len(B)) (zlib's crc32_combine)."""
    operator = [_CRC32C_POLY] + [1 << bit for bit in range(31)]  # appends one zero bit
    operator = _gf2_square(_gf2_square(operator))  # four zero bits
    while length2:  # append len(B) zero bytes to A's crc: square the operator for each bit of the length
        operator = _gf2_square(operator)
        if length2 & 1:
            crc1 = _gf2_times(operator, crc1)
        length2 >>= 1
    return crc1 ^ crc2


def combined_crc32c(parts: list[PartRecord]) -> int:
    """The crc32c of a whole object from its parts' (hex) crc32c, in part order."""
    crc = 0
    for part in sorted(parts, key=lambda p: p.number):
        crc = crc32c_combine(crc, int(part.checksum, 16), part.size)
    return crc


class Hasher(Protocol):
    """What hashlib's hashes, zlib's crc32 (``_Crc32``) and google_crc32c's ``Checksum`` have in common."""

    def update(self, data: bytes | memoryview, /) -> Any: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """zlib's crc32 with hashlib's shape."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32c":
        return google_crc32c.Checksum()
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new({"git-sha1": "sha1"}.get(algorithm, algorithm))


class SourceDigest:
    """Fed a file's bytes in order, tells whether they have the checksum the source publishes.

    A composite (``part_size`` set) is the digest of the parts' digests, so the bytes need not
    arrive cut at the source's part boundaries."""

    def __init__(self, published: SourceChecksum, size: int) -> None:
        self.published = published
        self.size = size
        self.fed = 0
        self._whole = _hasher(published.algorithm)
        if published.algorithm == "git-sha1":
            self._whole.update(b"blob %d\0" % size)
        self._part: Hasher | None = _hasher(published.algorithm) if published.part_size else None
        self._part_fed = 0

    def update(self, data: bytes) -> None:
        self.fed += len(data)
        if self._part is None:
            self._whole.update(data)
            return
        part_size = self.published.part_size or 0
        view = memoryview(data)
        while view:
            take = min(len(view), part_size - self._part_fed)
            self._part.update(view[:take])
            self._part_fed += take
            view = view[take:]
            if self._part_fed == part_size:
                self._end_part()

    def _end_part(self) -> None:
        assert self._part is not None
        self._whole.update(self._part.digest())
        self._part, self._part_fed = _hasher(self.published.algorithm), 0

    def mismatch(self) -> str | None:
        """Why the bytes fed are not the published ones, or None when they are."""
        if self.fed != self.size:
            return f"{self.fed} bytes read of {self.size}"
        if self._part is not None and self._part_fed:
            self._end_part()
        actual = self._whole.digest().hex()
        if actual != self.published.value:
            return f"bytes read have {self.published.algorithm} {actual}, the source publishes {self.published.label()}"
        return None


class PartChecks:
    """The checksum of each part of a multipart source object (every part ``part_size`` bytes but the last),
    fetched as it is first needed by ``checksum_of(part number)`` (None where the source has none for it).

    Every whole part a read holds is checked on its own, and a part that reads wrong is read again on its
    own: a byte flipped on the way costs that part, not the file."""

    def __init__(self, algorithm: str, part_size: int, size: int, checksum_of: Callable[[int], str | None]) -> None:
        self.algorithm = algorithm
        self.part_size = part_size
        self.size = size
        self._checksum_of = checksum_of
        self._known: dict[int, str | None] = {}

    def checksum(self, number: int) -> str | None:
        if number not in self._known:  # two threads may both ask: the answer is the same
            self._known[number] = self._checksum_of(number)
        return self._known[number]

    def bad_parts(self, offset: int, data: bytes) -> list[tuple[int, int, int]]:
        """(part number, start, end) of the whole parts in ``data``, read from ``offset``, that do not have their
        checksum."""
        bad = []
        number = -(-offset // self.part_size) + 1  # the first part that starts inside the read
        while (start := (number - 1) * self.part_size) < min(self.size, offset + len(data)):
            end = min(start + self.part_size, self.size)
            if end > offset + len(data):
                break
            hasher = _hasher(self.algorithm)
            hasher.update(data[start - offset:end - offset])
            expected = self.checksum(number)
            if expected is not None and hasher.digest().hex() != expected:
                bad.append((number, start, end))
            number += 1
        return bad

    def repaired(self, key: str, offset: int, data: bytes, read: Callable[[int, int], bytes], tries: int = 2) -> bytes:
        """``data`` with each whole part that reads wrong read again by ``read(offset, length)``, up to ``tries``
        times; a part still wrong then is ``DataCorruption``: its own checksum leaves no doubt."""
        for _ in range(tries):
            bad = self.bad_parts(offset, data)
            if not bad:
                return data
            log.warning("a source part read wrong; reading that part again", key=key,
                        parts=[number for number, _, _ in bad])
            patched = bytearray(data)
            for _, start, end in bad:
                patched[start - offset:end - offset] = read(start, end - start)
            data = bytes(patched)
        if bad := self.bad_parts(offset, data):
            number = bad[0][0]
            raise DataCorruption(f"{key}: part {number} read wrong {tries + 1} times; its bytes do not have the "
                                 f"{self.algorithm} {self.checksum(number)} the source publishes for it")
        return data
