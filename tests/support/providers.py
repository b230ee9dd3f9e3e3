"""Fakes for the providers that have no local server, shared by the tests that copy through them:
the Hugging Face hub (over HF_ENDPOINT) and the Modal SDK (through FLYAWAY_MODAL_VOLUME_FACTORY)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.activities.storage.base import STATE_DIR
from tests.fakes import modal_volume as fake_modal
from tests.fakes.hf_hub import TOKEN, FakeHub
from tests.support.env import TEST_AWS_ENV

REPO = "acme/llama"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def modal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modal")


def worker_env(hub: FakeHub, modal_dir: Path) -> dict[str, str]:
    return {**TEST_AWS_ENV, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN,
            "FLYAWAY_MODAL_VOLUME_FACTORY": fake_modal.FACTORY, fake_modal.ROOT_ENV: str(modal_dir),
            "MODAL_TOKEN_ID": fake_modal.TOKEN_ID, "MODAL_TOKEN_SECRET": fake_modal.TOKEN_SECRET}


def hf_location(repo_id: str = REPO, **fields: Any) -> dict[str, Any]:
    return {"kind": "hf", "repo_id": repo_id, **fields}


def modal_location(staging: Path, prefix: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "modal_volume", "volume": "weights", "create_if_missing": True, "prefix": prefix,
            "staging_dir": str(staging), **fields}


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and STATE_DIR not in p.relative_to(folder).parts}


