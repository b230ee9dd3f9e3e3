"""Checksums of source bytes: a part's MD5, CRC32 or CRC32C that destinations check, the crc32c of a
whole object combined from its parts' without reading the bytes again, the streaming check
of the bytes read against the checksum the source publishes, and the check of each part of a
multipart source object against its own checksum."""

from __future__ import annotations

import ctypes
import functools
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
#: files are read back in chunks of this size into one buffer per call (below glibc's mmap threshold, which
#: ``return_freed_buffers_to_the_os`` sets to 1 MiB, so the buffer comes from the heap without fresh pages)
FILE_CHUNK = 512 * 1024
log = structlog.get_logger(__name__)


@functools.cache
def _crc32c_extend_of_buffers() -> Callable[[int, Any, int], int] | None:
    """``crc32c_extend`` of the C library google_crc32c is built on, called through ctypes (which lets go of
    the GIL): google_crc32c's own binding takes only ``bytes``, and a part buffer would be copied to pass it.
    None where google_crc32c runs its pure-Python fallback."""
    if google_crc32c.implementation != "c":
        return None
    from google_crc32c import _crc32c

    try:  # the extension's symbol table reaches the library it links
        extend = ctypes.CDLL(_crc32c.__file__).crc32c_extend
    except (OSError, AttributeError):
        return None
    extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    extend.restype = ctypes.c_uint32
    return extend


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """The crc32c of ``data`` (continuing ``crc``), read in place from a writable buffer such as a part buffer."""
    extend = _crc32c_extend_of_buffers()
    if isinstance(data, memoryview) and not data.readonly and extend is not None:
        return extend(crc, ctypes.addressof(ctypes.c_char.from_buffer(data)) if data.nbytes else None, data.nbytes)
    return int(google_crc32c.extend(crc, bytes(data)))


def part_checksum(algorithm: str, data: bytes | memoryview) -> str:
    if algorithm == "md5":
        return hashlib.md5(data).hexdigest()
    if algorithm == "crc32c":
        return f"{crc32c(data):08x}"
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    raise ValueError(f"unknown part checksum {algorithm}")


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def crc32c_of_file(path: Path) -> int:
    """The crc32c of a file's bytes, read into one reused buffer."""
    buffer = bytearray(FILE_CHUNK)
    view = memoryview(buffer)
    crc = 0
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            crc = crc32c(view[:count], crc)
    return crc


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
    """What hashlib's hashes, ``_Crc`` and google_crc32c's ``Checksum`` have in common."""

    def update(self, data: bytes | memoryview, /) -> Any: ...

    def digest(self) -> bytes: ...


class _Crc:
    """zlib's crc32, or crc32c, with hashlib's shape."""

    def __init__(self, extend: Callable[[bytes | memoryview, int], int]) -> None:
        self.extend = extend
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = self.extend(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32c":
        return _Crc(crc32c)
    if algorithm == "crc32":
        return _Crc(zlib.crc32)
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
        self._taken: str | None = None

    def take_digest(self, algorithm: str, digest: str, length: int) -> bool:
        """Take ``digest``, the hex ``algorithm`` digest of the next ``length`` bytes computed by the caller, in
        place of the bytes; False, with nothing taken, unless those bytes are the whole file (a plain checksum)
        or exactly the next part of a composite, and the source's algorithm is ``algorithm``. A file or part read
        in one piece has its destination part checksum: where that is the source's own kind, one pass over the
        bytes serves both."""
        if algorithm != self.published.algorithm:
            return False
        if self._part is None:
            if self.fed or length != self.size:
                return False
            self._taken = digest
        else:
            part_size = self.published.part_size or 0
            if self._part_fed or length > part_size or (length < part_size and self.fed + length != self.size):
                return False
            self._whole.update(bytes.fromhex(digest))
        self.fed += length
        return True

    def update(self, data: bytes | memoryview) -> None:
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
        actual = self._taken or self._whole.digest().hex()
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

    def bad_parts(self, offset: int, data: bytes | memoryview) -> list[tuple[int, int, int]]:
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

    def repair(self, key: str, offset: int, data: memoryview, read_into: Callable[[int, memoryview], None],
               tries: int = 2) -> None:
        """Read again, by ``read_into(offset, buffer)``, each whole part of ``data`` that reads wrong, in place,
        up to ``tries`` times; a part still wrong then is ``DataCorruption``: its own checksum leaves no doubt."""
        for _ in range(tries):
            bad = self.bad_parts(offset, data)
            if not bad:
                return
            log.warning("a source part read wrong; reading that part again", key=key,
                        parts=[number for number, _, _ in bad])
            for _, start, end in bad:
                read_into(start, data[start - offset:end - offset])
        if bad := self.bad_parts(offset, data):
            number = bad[0][0]
            raise DataCorruption(f"{key}: part {number} read wrong {tries + 1} times; its bytes do not have the "
                                 f"{self.algorithm} {self.checksum(number)} the source publishes for it")
