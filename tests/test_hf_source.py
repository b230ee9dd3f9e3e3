"""The Hugging Face source against the fake hub, in process: pinning, metadata, ranges, retries, errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from flyaway.activities.storage.checksums import SourceDigest
from flyaway.activities.storage.hf import HfSource
from flyaway.errors import AccessDenied, NotFound
from flyaway.models.copy import SourceChecksum
from flyaway.models.locations import HfLocation
from flyaway.models.plan import parse_plan
from tests.fakes.hf_hub import TOKEN, FakeHub, git_blob_id

FILES = {"config.json": b'{"hidden_size": 4096}', "README.md": b"# llama\n",
         "weights/model-00001.safetensors": os.urandom(300_000), "weights/model-00002.safetensors": os.urandom(5_000)}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def hf(repo_id: str = "acme/llama", **fields: str) -> HfSource:
    return HfSource(HfLocation(kind="hf", repo_id=repo_id, **fields))


def test_listing_pins_the_commit_and_reads_stay_on_it(hub: FakeHub) -> None:
    first = hub.add_repo("acme/llama", FILES)
    source = hf()
    listed = {file.key: file for file in source.list()}

    assert set(listed) == set(FILES)
    assert all(file.version.startswith(f"{first}:") for file in listed.values())
    lfs = listed["weights/model-00001.safetensors"]
    assert lfs.sha256 == hashlib.sha256(FILES[lfs.key]).hexdigest()
    assert listed["config.json"].sha256 is None  # a git file: only its blob id is published
    assert listed["config.json"].version == f"{first}:{git_blob_id(FILES['config.json'])}"

    second = hub.commit("acme/llama", {**FILES, "weights/model-00001.safetensors": b"x" * 300_000})
    assert source.read(lfs, 1000, 5000) == FILES[lfs.key][1000:6000]  # still the listed commit
    assert source.read(lfs, 0, lfs.size) == FILES[lfs.key]
    assert source.stat(lfs.key).version.startswith(f"{second}:")  # stat looks at the branch now
    assert source.restat(lfs) == lfs  # a retried attempt looks at the listed commit


def test_reads_survive_503s_and_dropped_connections(hub: FakeHub) -> None:
    hub.add_repo("acme/llama", FILES)
    source = hf()
    file = next(f for f in source.list() if f.key == "weights/model-00001.safetensors")
    hub.fail_next(2, "reset")
    hub.fail_next(2, "503")
    assert source.read(file, 7, 100_000) == FILES[file.key][7:100_007]


def test_published_checksums_are_the_lfs_sha256_and_the_git_blob_id(hub: FakeHub) -> None:
    hub.add_repo("acme/llama", FILES)
    source = hf()
    listed = {file.key: file for file in source.list()}
    config, lfs = listed["config.json"], listed["weights/model-00001.safetensors"]
    assert source.published_checksum(lfs) == SourceChecksum(algorithm="sha256", value=lfs.sha256)
    assert source.published_checksum(config) == SourceChecksum(algorithm="git-sha1",
                                                               value=git_blob_id(FILES["config.json"]))

    def mismatch(data: bytes) -> str | None:
        checksum = source.published_checksum(config)
        assert checksum is not None
        digest = SourceDigest(checksum, config.size)
        digest.update(data)
        return digest.mismatch()

    hub.corrupt(FILES["config.json"])
    assert "bytes read have git-sha1" in (mismatch(source.read(config, 0, config.size)) or "")
    assert mismatch(source.read(config, 0, config.size)) is None  # corrupted once only


def test_bad_repos_revisions_and_tokens_are_clear_errors(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("acme/llama", FILES)
    hub.add_repo("acme/private", FILES, private=True)
    hub.add_repo("acme/gated", FILES, gated=True)

    with pytest.raises(NotFound, match=r"repo acme/nope does not exist at http://127\.0\.0\.1:\d+, or it is "
                                       r"private and HF_TOKEN is not set on the worker"):
        hf("acme/nope").check()
    with pytest.raises(NotFound, match="or it is private and HF_TOKEN is not set"):
        hf("acme/private").check()
    with pytest.raises(NotFound, match=r"hf://acme/llama@v9: revision 'v9' does not exist"):
        hf(revision="v9").check()

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(AccessDenied, match="access denied \\(401\\); check the token in HF_TOKEN"):
        hf("acme/private").check()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert {f.key for f in hf("acme/private").list()} == set(FILES)
    with pytest.raises(NotFound, match="or the token in HF_TOKEN cannot see it"):
        hf("acme/nope").check()
    with pytest.raises(AccessDenied, match="gated"):
        hf("acme/gated").check()


def test_datasets_and_long_listings_page_through(hub: FakeHub) -> None:
    many = {f"shards/{i:05d}.txt": b"" for i in range(2_345)}
    hub.add_repo("acme/corpus", many, repo_type="dataset")
    listed = list(hf("acme/corpus", repo_type="dataset").list())
    assert sorted(f.key for f in listed) == sorted(many)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("repo_id", "not a repo", "plan.weights.source.repo_id: 'not a repo' is not a Hugging Face repo id"),
    ("repo_id", "a/../b", "plan.weights.source.repo_id: 'a/../b' is not a Hugging Face repo id"),
    ("token_env", "hf_abc def", "plan.weights.source.token_env: 'hf_abc def' is not an environment variable name"),
    ("repo_type", "kernel", "plan.weights.source.repo_type: Input should be 'model', 'dataset' or 'space'"),
])
def test_hf_plan_shape_errors_name_the_field(field: str, value: str, expected: str) -> None:
    source = {"kind": "hf", "repo_id": "acme/llama", field: value}
    with pytest.raises(ValueError) as error:
        parse_plan({"name": "x", "weights": {"source": source, "destination": {"kind": "local", "path": "/srv/w"}}})
    assert str(error.value).startswith(expected)
