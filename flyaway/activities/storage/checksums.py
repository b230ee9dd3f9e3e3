"""Checksums of source bytes that destinations check: a part's MD5 or crc32c, and the crc32c of a
whole object combined from its parts' without reading the bytes again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import google_crc32c

from flyaway.models.copy import PartRecord

_CRC32C_POLY = 0x82F63B78


def part_checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "md5":
        return hashlib.md5(data).hexdigest()
    if algorithm == "crc32c":
        return f"{google_crc32c.value(data):08x}"
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


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The crc32c of A+B from crc32c(A), crc32c(B) and len(B), in O(log len(B)) (zlib's crc32_combine)."""
    if length2 == 0:
        return crc1
    odd = [_CRC32C_POLY] + [1 << bit for bit in range(31)]  # the operator for one zero bit
    even = [_gf2_times(odd, row) for row in odd]  # two zero bits
    odd = [_gf2_times(even, row) for row in even]  # four zero bits
    while True:  # apply len(B) zero bytes to crc1, squaring the operator for each bit of the length
        even = [_gf2_times(odd, row) for row in odd]
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = [_gf2_times(even, row) for row in even]
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


def combined_crc32c(parts: list[PartRecord]) -> int:
    """The crc32c of a whole object from its parts' (hex) crc32c, in part order."""
    crc = 0
    for part in sorted(parts, key=lambda p: p.number):
        crc = crc32c_combine(crc, int(part.checksum, 16), part.size)
    return crc
