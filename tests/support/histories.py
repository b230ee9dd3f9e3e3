"""The recorded workflow histories the replay test replays (``tests/histories/``), and the codec key
that encrypted their payloads.

The key is for these files only: it is committed so that the replay test can decode what the
recorder encoded, and no worker outside the test suite may use it. Re-record with
``.venv/bin/python scripts/record_histories.py`` (docs/upgrades.md says when)."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from flyaway.codec import EncryptionCodec, data_converter, parse_key_ring
from tests.support.env import REPO

HISTORIES = REPO / "tests" / "histories"
#: test-only AES-256 key (``kid:base64key``) of the recorded histories; never a real worker's key
REPLAY_CODEC_KEYS = "replay-test-only:AfDjo6OEzsvQc+7m96OsPMSGAAQn9faucRAJDa4iEPU="


def replay_codec() -> EncryptionCodec:
    return EncryptionCodec(parse_key_ring(REPLAY_CODEC_KEYS))


def replay_converter() -> DataConverter:
    return data_converter(replay_codec())


def history_file(scenario: str, workflow_id: str, run_number: int) -> Path:
    return HISTORIES / scenario / f"{workflow_id}.run{run_number}.json"


def recorded_histories() -> list[tuple[Path, WorkflowHistory]]:
    """Every recorded history, by file, in a stable order."""
    return [(path, WorkflowHistory.from_json(path.name.split(".run")[0], path.read_text()))
            for path in sorted(HISTORIES.glob("*/*.json"))]
