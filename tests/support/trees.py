"""Weights-shaped fixture sets: nested folders, unicode and spaces, an empty file, multi-part files."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1024 * 1024

FIXTURE_FILES: dict[str, int] = {
    "config.json": 611,
    "tokenizer.json": 48_213,
    "empty.txt": 0,
    "nested/deeper/shard-00001.bin": 12 * MiB + 17,
    "nested/deeper/shard-00002.bin": 2 * MiB,
    "naïve name with spaces/モデル.safetensors": 70_001,
}


def make_tree(root: Path, files: dict[str, int] = FIXTURE_FILES, seed: int = 0) -> dict[str, bytes]:
    """Write the files under ``root``; returns their contents by relative key."""
    contents = {}
    for key, size in files.items():
        data = (seed.to_bytes(4, "big") + os.urandom(size))[:size] if size else b""
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        contents[key] = data
    return contents
