"""The fault suite's figures (faults injected, bytes re-sent, time to recover), printed and kept."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.support.env import REPO

FIGURES = REPO / "artifacts" / "faults.jsonl"
#: the fault suite's worker cuts a request after this many seconds without a byte (FLYAWAY_STALL_SECONDS);
#: FLYAWAY_FAULTS_STALL_SECONDS=20 measures the worker's default cut instead
STALL_SECONDS = float(os.environ.get("FLYAWAY_FAULTS_STALL_SECONDS") or 3)


def report(test: str, **figures: Any) -> None:
    """Print the figures (shown with ``pytest -s``) and append them as one JSON line for the record."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"\n{test}: {line}")
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(line + "\n")
