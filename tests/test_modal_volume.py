"""The Modal Volume destination against the fake SDK, in process; and the fake against the real SDK's signatures."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import threading
from pathlib import Path
from typing import Any

import modal
import pytest
from modal.volume import _VolumeUploadContextManager2

from flyaway.activities.storage.activities import DirectoryFanout
from flyaway.activities.storage.base import STATE_DIR
from flyaway.activities.storage.engine import CopyEngine
from flyaway.activities.storage.local import LocalSource
from flyaway.activities.storage.modal_volume import ModalVolumeDestination
from flyaway.errors import AccessDenied, DataCorruption, LimitExceeded, MissingCredentials, NotFound
from flyaway.models.copy import ListingLine, ManifestEntry, SourceFile
from flyaway.models.locations import LocalLocation, ModalVolumeLocation
from flyaway.models.plan import parse_plan
from flyaway.providers.modal import open_modal_volume
from tests.fakes import modal_volume as fake
from tests.support.trees import make_tree

MiB = 1024 * 1024


@pytest.fixture
def modal_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(fake.ROOT_ENV, str(tmp_path / "modal"))
    monkeypatch.setenv("FLYAWAY_MODAL_VOLUME_FACTORY", fake.FACTORY)
    monkeypatch.setenv("MODAL_TOKEN_ID", fake.TOKEN_ID)
    monkeypatch.setenv("MODAL_TOKEN_SECRET", fake.TOKEN_SECRET)
    return tmp_path / "modal"


def destination(tmp_path: Path, **fields: Any) -> ModalVolumeDestination:
    location = {"kind": "modal_volume", "volume": "weights", "create_if_missing": True, "prefix": "m",
                "staging_dir": str(tmp_path / "staging"), **fields}
    return ModalVolumeDestination(ModalVolumeLocation.model_validate(location))


def copy(source_dir: Path, dest: ModalVolumeDestination, part_size: int = 4 * MiB) -> list[ManifestEntry]:
    source = LocalSource(LocalLocation(kind="local", path=str(source_dir)))
    entries: list[ManifestEntry] = []

    async def run() -> None:
        engine = CopyEngine(source, dest, part_size=part_size, concurrency=4)

        async def landed(entry: ManifestEntry) -> None:
            entries.append(entry)

        try:
            await engine.copy_all([ListingLine(file=file) for file in source.list()], landed)
        finally:
            engine.close()

    asyncio.run(run())
    return entries


@pytest.mark.parametrize("verify", ["full", "sample"])
def test_files_land_whole_staging_is_emptied_and_state_round_trips(
        tmp_path: Path, modal_dir: Path, verify: str) -> None:
    contents = make_tree(tmp_path / "src")
    dest = destination(tmp_path, verify=verify)
    dest.check()
    entries = copy(tmp_path / "src", dest)

    volume = fake.volume_dir(modal_dir, "weights") / "m"
    assert {key: (volume / key).read_bytes() for key in contents} == contents
    assert {e.key: e.sha256 for e in entries} == {k: hashlib.sha256(d).hexdigest() for k, d in contents.items()}
    assert {obj.key: obj.size for obj in dest.list()} == {k: len(d) for k, d in contents.items()}
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []
    data_uploads = [path for path, _ in fake.read_uploads(modal_dir, "weights") if f"/{STATE_DIR}/" not in path]
    assert sorted(data_uploads) == sorted(f"m/{key}" for key in contents)  # each file went up once

    dest.put_state("runs/x/listing.jsonl", b"0123456789")
    assert dest.get_state("runs/x/listing.jsonl", 3, 4) == b"3456"
    assert dest.get_state("runs/x/listing.jsonl", 20, 4) == b""
    assert dest.get_state("runs/nope") is None
    assert dest.list_state("runs/") == ["runs/x/listing.jsonl"]
    dest.delete_state("runs/x/listing.jsonl")
    assert dest.list_state("runs/") == []


def test_a_file_corrupted_on_the_volume_is_caught_by_reading_it_back_and_sent_again(
        tmp_path: Path, modal_dir: Path) -> None:
    contents = make_tree(tmp_path / "src", {"model.safetensors": 9 * MiB + 5, "config.json": 100})
    dest = destination(tmp_path)
    dest.volume.corrupt_next = 1
    copy(tmp_path / "src", dest)
    volume = fake.volume_dir(modal_dir, "weights") / "m"
    assert {key: (volume / key).read_bytes() for key in contents} == contents
    uploads = [path for path, _ in fake.read_uploads(modal_dir, "weights") if f"/{STATE_DIR}/" not in path]
    assert sorted(set(uploads)) == ["m/config.json", "m/model.safetensors"]
    assert len(uploads) == 3, uploads  # the corrupted one went up twice

    dest.volume.corrupt_next = 100
    with pytest.raises(DataCorruption, match=r"modal://weights/m/model\.safetensors: read back, its bytes hash to"):
        dest.put("model.safetensors", contents["model.safetensors"], "", hashlib.sha256(b"x").hexdigest())
    assert not (volume / "model.safetensors").exists()  # a file that failed its read-back is not left behind


def test_large_files_are_staged_one_at_a_time(tmp_path: Path, modal_dir: Path) -> None:
    dest = destination(tmp_path)
    first = dest.begin_upload("a.bin", 10)
    started = threading.Event()

    def second() -> None:
        dest.begin_upload("b.bin", 10)
        started.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert not started.wait(0.5), "a second file was staged while the first one was"
    dest.abort("a.bin", first)
    assert started.wait(5)
    thread.join()


def test_bad_input_is_refused_before_any_byte_moves(tmp_path: Path, modal_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFound, match="Modal volume 'absent' does not exist in environment 'default'; create it "
                                       "or set create_if_missing: true"):
        destination(tmp_path, volume="absent", create_if_missing=False).check()

    huge = SourceFile(key="huge.bin", size=2**40, version="1")
    with pytest.raises(LimitExceeded, match=r"huge.bin: 1099511627776 bytes is over modal://weights/m's "
                                            "1099511627775-byte object limit"):
        destination(tmp_path, staging_budget="2TiB").check_file(huge)
    with pytest.raises(LimitExceeded, match="over the staging budget of 1073741824 bytes"):
        destination(tmp_path, staging_budget="1GiB").check_file(SourceFile(key="b", size=2 * 2**30, version="1"))

    monkeypatch.setenv("MODAL_TOKEN_SECRET", "not-a-secret")
    with pytest.raises(AccessDenied, match="Modal refused the token in MODAL_TOKEN_ID/MODAL_TOKEN_SECRET"):
        destination(tmp_path).check()
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    with pytest.raises(MissingCredentials, match="environment variable MODAL_TOKEN_SECRET is not set on the worker"):
        destination(tmp_path)
    assert not (modal_dir / "main" / "absent").exists()
    assert fake.read_uploads(modal_dir, "weights") == []


def test_directory_fanout_counts_files_and_sub_folders() -> None:
    fanout = DirectoryFanout(3, "modal://v/")
    for key in ("a/1", "a/2", "b/x/1", "b/x/2", "b/y/1", "c"):
        fanout.add(key)
    assert fanout.entries == {"": 3, "a": 2, "b": 2, "b/x": 2, "b/y": 1}
    with pytest.raises(LimitExceeded, match=r"folder '.' would hold over 3 entries at modal://v/"):
        fanout.add("d/1")
    with pytest.raises(LimitExceeded, match="folder 'a' would hold over 3 entries"):
        for key in ("a/3", "a/sub/1"):
            fanout.add(key)


def _parameters(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", ["hydrate", "iterdir", "listdir", "read_file", "remove_file", "batch_upload"])
def test_the_fake_volume_has_the_sdk_signatures(name: str) -> None:
    assert _parameters(getattr(fake.FakeVolume, name)) == _parameters(getattr(modal.Volume, name))


def test_the_fake_batch_and_the_opener_match_the_sdk() -> None:
    assert _parameters(fake.FakeBatch.put_file) == _parameters(_VolumeUploadContextManager2.put_file)
    assert _parameters(fake.open_volume) == _parameters(open_modal_volume)
    inspect.signature(modal.Volume.from_name).bind("weights", environment_name=None, create_if_missing=False,
                                                   client=None)
    inspect.signature(modal.Client.from_credentials).bind(modal.Client, "ak-x", "as-y")



@pytest.mark.parametrize(("field", "value", "expected"), [
    ("volume", "my volume", "plan.weights.destination.volume: 'my volume' is not a Modal name"),
    ("staging_dir", "staging", "plan.weights.destination.staging_dir: 'staging' is relative"),
    ("staging_budget", "1KiB", "plan.weights.destination.staging_budget: 1024 bytes is too small"),
    ("verify", "none", "plan.weights.destination.verify: Input should be 'full' or 'sample'"),
    ("prefix", "/models", "plan.weights.destination.prefix: '/models' is absolute"),
])
def test_modal_plan_shape_errors_name_the_field(field: str, value: str, expected: str) -> None:
    destination = {"kind": "modal_volume", "volume": "weights", field: value}
    with pytest.raises(ValueError) as error:
        parse_plan({"name": "x", "weights": {"source": {"kind": "local", "path": "/srv/w"},
                                             "destination": destination}})
    assert str(error.value).startswith(expected)
