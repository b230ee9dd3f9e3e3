"""The OCI registry client against real registries: Debian's docker-registry on loopback, one
with htpasswd basic auth, one with token auth served by tests/fakes/registry_token_auth.py.

The tests build their own multi-layer, multi-platform images with plain httpx, copy them with
flyaway, and read the result back with plain httpx, checking every digest.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError

from flyaway.activities.image.activities import check_image_stage, copy_image_stage, fly_image
from flyaway.activities.image.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    canonical_json,
    copy_image,
    manifest_kind,
    parse_challenge,
    resolve_login,
    rewrite_config,
)
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.image import (
    MIGRATED_FROM_LABEL,
    SOURCE_URL_LABEL,
    ImageReference,
    ImageStage,
    RegistryCredentials,
    default_credentials,
)
from flyaway.models.status import MigrationState, StageState
from tests.fakes.fly_machines import FakeFlyMachinesAPI
from tests.fakes.health import StartingService
from tests.fakes.registry_token_auth import TokenAuthServer, User
from tests.fakes.runpod_serverless import FakeRunpodServerless
from tests.support.migrations import run_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
pytestmark = pytest.mark.skipif(not REGISTRY_BINARY.exists(), reason="needs Debian's docker-registry package")

SOURCE_PASSWORD = "alice-source-password-1"
PUSHER_PASSWORD = "pusher-destination-password-2"
READER_PASSWORD = "reader-destination-password-3"
CHUNK = 128 * 1024
_ACCESS_LOG = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')

# ---------------------------------------------------------------------------------------------
# registries


@dataclass
class Registry:
    """A docker-registry process on a loopback port; its access log counts what clients did."""

    host: str
    log_path: Path
    process: subprocess.Popen

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def writes(self, since: int = 0) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request since ``since`` that could change the registry."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return [(m["method"], m["path"], int(m["status"])) for m in _ACCESS_LOG.finditer(text)
                if m["method"] in ("POST", "PUT", "PATCH", "DELETE")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_registry(directory: Path, auth: dict[str, Any]) -> Registry:
    port = _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(directory / "data")}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": auth,
    }
    config_path = directory / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = directory / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return Registry(host=f"127.0.0.1:{port}", log_path=log_path, process=process)
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"docker-registry did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.05)


def stop_registry(registry: Registry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    directory = tmp_path_factory.mktemp("basic-registry")
    hashed = bcrypt.hashpw(SOURCE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (directory / "htpasswd").write_text(f"alice:{hashed}\n")
    registry = start_registry(directory, {"htpasswd": {"realm": "test", "path": str(directory / "htpasswd")}})
    yield registry
    stop_registry(registry)


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenAuthServer]:
    service = TokenAuthServer(cert_path=tmp_path_factory.mktemp("token-service") / "cert.pem",
                              users={"pusher": User(PUSHER_PASSWORD, frozenset({"pull", "push"})),
                                     "reader": User(READER_PASSWORD, frozenset({"pull"}))})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_service: TokenAuthServer) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("token-registry"), token_service.registry_auth_config())
    yield registry
    stop_registry(registry)


@pytest.fixture(autouse=True)
def _passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SOURCE_PASSWORD", SOURCE_PASSWORD)
    monkeypatch.setenv("TEST_PUSHER_PASSWORD", PUSHER_PASSWORD)
    monkeypatch.setenv("TEST_READER_PASSWORD", READER_PASSWORD)


ALICE = RegistryCredentials(username="alice", password_env="TEST_SOURCE_PASSWORD")
PUSHER = RegistryCredentials(username="pusher", password_env="TEST_PUSHER_PASSWORD")
READER = RegistryCredentials(username="reader", password_env="TEST_READER_PASSWORD")

# ---------------------------------------------------------------------------------------------
# a plain client to build images and read them back, independent of flyaway's


class RawRepository:
    def __init__(self, registry: Registry, repository: str, auth: httpx.Auth) -> None:
        self.reference = f"{registry.host}/{repository}"
        self.http = httpx.Client(base_url=f"http://{registry.host}/v2/{repository}", auth=auth, timeout=30)

    def push_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        started = self.http.post("/blobs/uploads/")
        started.raise_for_status()
        self.http.put(f"{started.headers['Location']}&digest={digest}", content=data,
                      headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def push_manifest(self, media_type: str, body: dict[str, Any], tag: str | None = None) -> dict[str, Any]:
        """Push by tag, or by digest when no tag is given."""
        content = json.dumps(body, indent=3).encode()  # not flyaway's canonical form, on purpose
        digest = sha256(content)
        self.http.put(f"/manifests/{tag or digest}", content=content,
                      headers={"Content-Type": media_type}).raise_for_status()
        return {"mediaType": media_type, "digest": digest, "size": len(content)}

    def manifest(self, version: str) -> tuple[str, bytes]:
        response = self.http.get(f"/manifests/{version}",
                                 headers={"Accept": ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
                                                               OCI_MANIFEST, OCI_INDEX])})
        response.raise_for_status()
        return response.headers["Content-Type"], response.content

    def tag_exists(self, tag: str) -> bool:
        return self.http.head(f"/manifests/{tag}").status_code == 200

    def verified_blob(self, digest: str) -> bytes:
        response = self.http.get(f"/blobs/{digest}")
        response.raise_for_status()
        assert sha256(response.content) == digest
        return response.content


class BearerToken(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def basic_repository(registry: Registry, repository: str) -> RawRepository:
    return RawRepository(registry, repository, httpx.BasicAuth("alice", SOURCE_PASSWORD))


def token_repository(registry: Registry, service: TokenAuthServer, repository: str) -> RawRepository:
    return RawRepository(registry, repository,
                         BearerToken(service.token("pusher", [f"repository:{repository}:pull,push"])))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(size: int) -> tuple[bytes, str]:
    """A gzipped tarball with one random file: (blob, diff_id)."""
    payload = os.urandom(size)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo(f"opt/app/{sha256(payload)[7:19]}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(tar_bytes.getvalue(), compresslevel=1, mtime=0), sha256(tar_bytes.getvalue())


SOURCE_ENV = ["PATH=/usr/local/bin:/usr/bin", "FLY_APP_NAME=gpu-app", "FLY_REGION=ord", "PRIMARY_REGION=ord",
              "MODEL_DIR=/data/models", "LOG_LEVEL=info"]
PLATFORMS = {"linux/amd64": {"os": "linux", "architecture": "amd64"},
             "linux/arm64/v8": {"os": "linux", "architecture": "arm64", "variant": "v8"}}


@dataclass
class BuiltImage:
    reference: str
    digest: str
    #: per platform name: the layer descriptors and the config's diff_ids
    layers: dict[str, list[dict[str, Any]]]
    diff_ids: dict[str, list[str]]


def build_image(repository: RawRepository, tag: str, *, oci: bool = False,
                config_media_type: str | None = None) -> BuiltImage:
    """Two platforms sharing a base layer, each with a multi-chunk and a small layer of its own."""
    manifest_type, index_type = (OCI_MANIFEST, OCI_INDEX) if oci else (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
    layer_type = ("application/vnd.oci.image.layer.v1.tar+gzip" if oci
                  else "application/vnd.docker.image.rootfs.diff.tar.gzip")
    config_type = config_media_type or ("application/vnd.oci.image.config.v1+json" if oci
                                        else "application/vnd.docker.container.image.v1+json")
    base = layer(20_000)
    entries, layers, diff_ids = [], {}, {}
    for name, platform in PLATFORMS.items():
        blobs = [base, layer(3 * CHUNK + 1000), layer(1000)]
        layers[name] = [repository.push_blob(blob, layer_type) for blob, _ in blobs]
        diff_ids[name] = [diff_id for _, diff_id in blobs]
        config = {**platform, "created": "2026-01-01T00:00:00Z",
                  "config": {"Env": SOURCE_ENV, "Entrypoint": ["/app/fly-start"], "Cmd": ["serve"],
                             "ExposedPorts": {"8080/tcp": {}}, "Labels": {"maintainer": "ml-team"}},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids[name]}}
        config_descriptor = repository.push_blob(json.dumps(config).encode(), config_type)
        manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": config_descriptor,
                    "layers": layers[name]}
        descriptor = repository.push_manifest(manifest_type, manifest)
        entries.append({**descriptor, "platform": platform})
    attestation = {"mediaType": manifest_type, "digest": entries[0]["digest"], "size": entries[0]["size"],
                   "platform": {"os": "unknown", "architecture": "unknown"}}  # as buildx adds
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": [*entries, attestation]}
    top = repository.push_manifest(index_type, index, tag)
    return BuiltImage(reference=f"{repository.reference}:{tag}", digest=top["digest"], layers=layers,
                      diff_ids=diff_ids)


def config_env(config: dict[str, Any]) -> dict[str, str]:
    return dict(entry.partition("=")[::2] for entry in config["config"]["Env"])


def copy(stage: ImageStage, **kwargs: Any):
    return asyncio.run(copy_image(stage, chunk_size=CHUNK, **kwargs))


# ---------------------------------------------------------------------------------------------
# copies


def test_copy_rewrites_every_platform_and_a_rerun_pushes_nothing(basic_registry: Registry, token_registry: Registry,
                                                                  token_service: TokenAuthServer) -> None:
    source = build_image(basic_repository(basic_registry, "fly/gpu-app"), "deployment-01")
    stage = ImageStage(source=source.reference, destination=f"{token_registry.host}/team/gpu-app:v1",
                       set_env={"LOG_LEVEL": "debug", "HF_HOME": "/data/hf"},
                       entrypoint=["/usr/bin/python", "-m", "server"], cmd=["--port", "8000"], exposed_port=8000,
                       labels={"team": "ml"}, source_url="https://github.com/example/gpu-app",
                       source_credentials=ALICE, destination_credentials=PUSHER)
    progress: list[int] = []
    with capture_logs() as logs:
        result = copy(stage, on_progress=progress.append)

    all_layers = {d["digest"]: d for layers in source.layers.values() for d in layers}
    assert len(all_layers) == 5  # the base layer is shared
    assert result.source_digest == source.digest
    assert result.platforms == ["linux/amd64", "linux/arm64/v8"]  # the attestation entry is left out
    assert (result.blobs_copied, result.blobs_skipped, result.blobs_mounted) == (5 + 2, 0, 0)
    assert result.manifests_pushed == 3 and result.tag_updated
    assert sum(progress) == result.bytes_copied > sum(d["size"] for d in all_layers.values())

    destination = token_repository(token_registry, token_service, "team/gpu-app")
    media_type, index_bytes = destination.manifest("v1")
    assert media_type == DOCKER_MANIFEST_LIST and sha256(index_bytes) == result.destination_digest
    assert result.destination_image == f"{token_registry.host}/team/gpu-app@{result.destination_digest}"
    index = json.loads(index_bytes)
    assert [entry["platform"] for entry in index["manifests"]] == list(PLATFORMS.values())
    for entry, (platform, source_layers) in zip(index["manifests"], source.layers.items(), strict=True):
        manifest_type, manifest_bytes = destination.manifest(entry["digest"])
        assert sha256(manifest_bytes) == entry["digest"] and manifest_type == entry["mediaType"] == DOCKER_MANIFEST
        manifest = json.loads(manifest_bytes)
        assert manifest["layers"] == source_layers
        for descriptor in manifest["layers"]:
            assert len(destination.verified_blob(descriptor["digest"])) == descriptor["size"]
        config = json.loads(destination.verified_blob(manifest["config"]["digest"]))
        assert config["architecture"] == PLATFORMS[platform]["architecture"]
        assert config["rootfs"]["diff_ids"] == source.diff_ids[platform]
        assert config["config"]["Env"] == ["PATH=/usr/local/bin:/usr/bin", "MODEL_DIR=/data/models",
                                           "LOG_LEVEL=debug", "HF_HOME=/data/hf"]
        assert config["config"]["Entrypoint"] == ["/usr/bin/python", "-m", "server"]
        assert config["config"]["Cmd"] == ["--port", "8000"]
        assert config["config"]["ExposedPorts"] == {"8000/tcp": {}}
        assert config["config"]["Labels"] == {"maintainer": "ml-team", "team": "ml",
                                              SOURCE_URL_LABEL: "https://github.com/example/gpu-app",
                                              MIGRATED_FROM_LABEL: f"{basic_registry.host}/fly/gpu-app@{source.digest}"}

    writes = token_registry.writes()
    assert any(method == "PATCH" for method, _, _ in writes), "layers over one chunk go in PATCHes"
    manifest_puts = [path for method, path, _ in writes if method == "PUT" and "/manifests/" in path]
    assert manifest_puts[-1].endswith("/manifests/v1"), "the tag moves last"
    for secret in (SOURCE_PASSWORD, PUSHER_PASSWORD):
        assert secret not in repr(logs) and secret not in result.model_dump_json()

    offset = token_registry.log_offset()
    again = copy(stage)
    assert again.destination_digest == result.destination_digest
    assert (again.blobs_copied, again.blobs_skipped, again.manifests_pushed, again.tag_updated) == (0, 7, 0, False)
    assert token_registry.writes(offset) == []


def test_one_platform_of_an_oci_index_on_the_same_registry_is_mounted(basic_registry: Registry) -> None:
    source = build_image(basic_repository(basic_registry, "fly/oci-app"), "latest", oci=True)
    stage = ImageStage(source=source.reference, destination=f"{basic_registry.host}/team/arm-app",
                       platform="linux/arm64", source_credentials=ALICE, destination_credentials=ALICE)
    offset = basic_registry.log_offset()
    result = copy(stage)

    assert result.platforms == ["linux/arm64/v8"] and result.media_type == OCI_MANIFEST
    assert (result.blobs_mounted, result.blobs_copied) == (3, 1)  # layers mounted, the new config uploaded
    assert result.destination_tag == f"{basic_registry.host}/team/arm-app:latest"
    writes = basic_registry.writes(offset)
    assert not [w for w in writes if w[0] == "PATCH"], "a mounted blob is not uploaded"
    assert sum(1 for method, path, status in writes if method == "POST" and "mount=" in path and status == 201) == 3
    destination = basic_repository(basic_registry, "team/arm-app")
    media_type, manifest_bytes = destination.manifest("latest")
    manifest = json.loads(manifest_bytes)
    assert media_type == OCI_MANIFEST and sha256(manifest_bytes) == result.destination_digest
    assert manifest["layers"] == source.layers["linux/arm64/v8"]
    config = json.loads(destination.verified_blob(manifest["config"]["digest"]))
    assert config["architecture"] == "arm64"
    assert "FLY_APP_NAME" not in config_env(config) and config["config"]["Entrypoint"] == ["/app/fly-start"]
    for descriptor in manifest["layers"]:
        destination.verified_blob(descriptor["digest"])


def test_mount_under_token_auth_asks_for_pull_on_the_source_repository(token_registry: Registry,
                                                                       token_service: TokenAuthServer) -> None:
    source = build_image(token_repository(token_registry, token_service, "fly/shared"), "v3")
    stage = ImageStage(source=source.reference, destination=f"{token_registry.host}/team/shared:v3",
                       source_credentials=PUSHER, destination_credentials=PUSHER)
    asked, offset = len(token_service.requests), token_registry.log_offset()
    token_service.fail_next = 1  # one 503 from the token service is waited out
    result = copy(stage)

    assert (result.blobs_mounted, result.blobs_copied) == (5, 2) and token_service.fail_next == 0
    assert not [w for w in token_registry.writes(offset) if w[2] == 401], "the first token already allowed the mounts"
    wanted = {"repository:team/shared:pull,push", "repository:fly/shared:pull"}
    assert any(wanted <= set(request.scopes) for request in token_service.requests[asked:])


# ---------------------------------------------------------------------------------------------
# bad input and failures


def test_missing_image_is_not_found_naming_it(basic_registry: Registry) -> None:
    stage = ImageStage(source=f"{basic_registry.host}/fly/no-such-app:deployment-9",
                       destination=f"{basic_registry.host}/team/x:v1", source_credentials=ALICE,
                       destination_credentials=ALICE)
    with pytest.raises(NotFound, match="fly/no-such-app:deployment-9"):
        copy(stage)


def test_no_push_rights_is_access_denied_and_leaves_no_tag(basic_registry: Registry, token_registry: Registry,
                                                          token_service: TokenAuthServer) -> None:
    source = build_image(basic_repository(basic_registry, "fly/denied-app"), "v1")
    stage = ImageStage(source=source.reference, destination=f"{token_registry.host}/team/denied-app:v1",
                       source_credentials=ALICE, destination_credentials=READER)
    with pytest.raises(AccessDenied, match=r"refused to push .*team/denied-app.*TEST_READER_PASSWORD") as raised:
        copy(stage)
    assert READER_PASSWORD not in str(raised.value)
    assert not token_repository(token_registry, token_service, "team/denied-app").tag_exists("v1")


def test_wrong_password_is_access_denied(basic_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SOURCE_PASSWORD", "not-the-password")
    stage = ImageStage(source=f"{basic_registry.host}/fly/gpu-app:deployment-01",
                       destination=f"{basic_registry.host}/team/x:v1", source_credentials=ALICE,
                       destination_credentials=ALICE)
    with pytest.raises(AccessDenied, match="refused to pull"):
        copy(stage)


def test_unset_password_variable_is_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLY_API_TOKEN", raising=False)
    stage = ImageStage(source="registry.fly.io/gpu-app:deployment-01", destination="127.0.0.1:9/team/x:v1")
    with pytest.raises(MissingCredentials, match=r"\$FLY_API_TOKEN"):
        copy(stage)


def test_an_artifact_config_is_invalid_plan_naming_its_media_type(basic_registry: Registry) -> None:
    weird = "application/vnd.example.model.config.v1+json"
    build_image(basic_repository(basic_registry, "fly/artifact"), "v1", oci=True, config_media_type=weird)
    stage = ImageStage(source=f"{basic_registry.host}/fly/artifact:v1", destination=f"{basic_registry.host}/t/a:v1",
                       source_credentials=ALICE, destination_credentials=ALICE)
    with pytest.raises(InvalidPlan, match=re.escape(weird)):
        copy(stage)


def test_unknown_manifest_media_type_is_invalid_plan_naming_it() -> None:
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    with pytest.raises(InvalidPlan, match=re.escape(schema1)):
        manifest_kind(schema1, "example.com/app:v1")
    assert manifest_kind(OCI_INDEX, "x") == "index" and manifest_kind(DOCKER_MANIFEST, "x") == "manifest"


def test_a_push_failing_midway_leaves_no_tag(basic_registry: Registry, token_registry: Registry,
                                             token_service: TokenAuthServer) -> None:
    repository = basic_repository(basic_registry, "fly/broken-app")
    source = build_image(repository, "v1")
    lost = source.layers["linux/arm64/v8"][-1]["digest"]  # the last layer copied, one at a time
    repository.http.delete(f"/blobs/{lost}").raise_for_status()
    stage = ImageStage(source=source.reference, destination=f"{token_registry.host}/team/broken-app:v1",
                       source_credentials=ALICE, destination_credentials=PUSHER)
    offset = token_registry.log_offset()
    with pytest.raises(NotFound, match=lost):
        copy(stage, concurrency=1)

    writes = token_registry.writes(offset)
    assert any(method == "PUT" and "/blobs/uploads/" in path for method, path, _ in writes), "some blobs landed"
    assert not any("/manifests/" in path for _, path, _ in writes)
    assert not token_repository(token_registry, token_service, "team/broken-app").tag_exists("v1")


# ---------------------------------------------------------------------------------------------
# pure functions


@pytest.mark.parametrize(("text", "expected"), [
    ("ubuntu", ("docker.io", "library/ubuntu", "latest", None)),
    ("docker.io/team/app:v1", ("docker.io", "team/app", "v1", None)),
    ("registry.fly.io/gpu-app:deployment-01HX", ("registry.fly.io", "gpu-app", "deployment-01HX", None)),
    ("localhost:5000/a/b", ("localhost:5000", "a/b", "latest", None)),
    ("us-central1-docker.pkg.dev/proj/repo/app@sha256:" + "a" * 64,
     ("us-central1-docker.pkg.dev", "proj/repo/app", None, "sha256:" + "a" * 64)),
    ("ghcr.io/org/app:1.0@sha256:" + "b" * 64, ("ghcr.io", "org/app", "1.0", "sha256:" + "b" * 64)),
])
def test_references_parse_like_docker(text: str, expected: tuple) -> None:
    reference = ImageReference.parse(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == expected
    assert ImageReference.parse(str(reference)) == reference


@pytest.mark.parametrize("text", ["Team/App", "ghcr.io/org/app:bad tag", "app@sha256:short", "ghcr.io/"])
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ImageReference.parse(text)


def test_docker_hub_talks_to_its_api_host() -> None:
    assert ImageReference.parse("python:3.11").api_host == "registry-1.docker.io"


def test_default_credentials_per_registry() -> None:
    fly = default_credentials("registry.fly.io")
    assert (fly.username, fly.password_env) == ("x", "FLY_API_TOKEN")
    for host in ("europe-west4-docker.pkg.dev", "gcr.io", "eu.gcr.io"):
        google = default_credentials(host)
        assert google.username == "oauth2accesstoken" and google.google_access_token
    assert default_credentials("docker.io").anonymous_if_unset
    assert default_credentials("ghcr.io").password_env == "GITHUB_TOKEN"
    assert default_credentials("127.0.0.1:5000") is None


def test_logins_come_from_the_named_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKERHUB_USERNAME", raising=False)
    monkeypatch.delenv("DOCKERHUB_TOKEN", raising=False)
    assert resolve_login(default_credentials("docker.io"), "docker.io") is None  # anonymous pulls
    monkeypatch.setenv("DOCKERHUB_USERNAME", "someone")
    monkeypatch.setenv("DOCKERHUB_TOKEN", "dckr_pat_example")
    assert resolve_login(default_credentials("docker.io"), "docker.io") == ("someone", "dckr_pat_example")
    assert resolve_login(None, "127.0.0.1:5000") is None


def test_stage_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="a destination is a tag"):
        ImageStage(destination="ghcr.io/org/app@sha256:" + "c" * 64)
    with pytest.raises(ValueError, match="linux/amd64"):
        ImageStage(destination="ghcr.io/org/app", platform="amd64")
    with pytest.raises(ValueError, match="not an environment variable name"):
        ImageStage(destination="ghcr.io/org/app", set_env={"BAD-NAME": "1"})
    with pytest.raises(ValueError, match="exactly one of password_env"):
        RegistryCredentials(username="x")
    with pytest.raises(ValueError, match=r"give source .* or fly_app"):
        ImageStage(destination="ghcr.io/org/app")
    assert ImageStage(destination="ghcr.io/org/app", fly_app="gpu-app").drop_env == ["FLY_*", "PRIMARY_REGION"]


def test_config_rewrite_is_deterministic_and_keeps_what_the_plan_does_not_touch() -> None:
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": SOURCE_ENV, "Cmd": ["serve"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]}}
    stage = ImageStage(fly_app="gpu-app", destination="ghcr.io/org/app",
                       drop_env=["FLY_*", "PRIMARY_REGION", "LOG_*"], set_env={"FLY_KEEP": "set-wins"})
    rewritten = rewrite_config(config, stage, "registry.fly.io/app@sha256:" + "e" * 64)
    assert canonical_json(rewritten) == canonical_json(rewrite_config(json.loads(json.dumps(config)), stage,
                                                                      "registry.fly.io/app@sha256:" + "e" * 64))
    assert rewritten["config"]["Env"] == ["PATH=/usr/local/bin:/usr/bin", "MODEL_DIR=/data/models",
                                          "FLY_KEEP=set-wins"]
    assert rewritten["config"]["Cmd"] == ["serve"] and "Entrypoint" not in rewritten["config"]
    assert rewritten["rootfs"] == config["rootfs"] and config["config"]["Env"] == SOURCE_ENV  # input untouched


def test_challenges_parse_with_quoted_commas() -> None:
    scheme, params = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                     'scope="repository:a/b:pull,push",error="insufficient_scope"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg",
                      "scope": "repository:a/b:pull,push", "error": "insufficient_scope"}


# ---------------------------------------------------------------------------------------------
# the image stage: which image, the activity, and a migration through a worker


def deployed_machine(fly: FakeFlyMachinesAPI, image: str, release: str, group: str = "app") -> None:
    fly.add_machine("gpu-app", f"m-{release}-{group}", config={
        "image": image, "metadata": {"fly_process_group": group, "fly_release_version": release}})


@pytest.fixture
def fly(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFlyMachinesAPI]:
    with FakeFlyMachinesAPI("fly-test-token") as fake:
        fake.add_app("gpu-app")
        monkeypatch.setenv("FLY_API_TOKEN", "fly-test-token")
        monkeypatch.setenv("FLY_API_BASE_URL", fake.base_url)
        yield fake


def test_the_fly_apps_image_is_its_newest_release_in_the_process_group(fly: FakeFlyMachinesAPI) -> None:
    deployed_machine(fly, "registry.fly.io/gpu-app:deployment-9", "9")
    deployed_machine(fly, "registry.fly.io/gpu-app:deployment-10", "10")
    deployed_machine(fly, "registry.fly.io/gpu-app:deployment-11", "11", group="worker")
    fly.add_machine("gpu-app", "flyaway-agent", config={"image": "ghcr.io/flyaway/agent:1"})  # no process group
    assert fly_image("gpu-app", "app") == "registry.fly.io/gpu-app:deployment-10"
    assert fly_image("gpu-app", "worker") == "registry.fly.io/gpu-app:deployment-11"
    with pytest.raises(NotFound, match=r"no Machine in process group 'web'.*image.source"):
        fly_image("gpu-app", "web")


def test_the_activity_fails_for_good_on_a_missing_image_and_copies_the_fly_apps_image(
        basic_registry: Registry, fly: FakeFlyMachinesAPI) -> None:
    source = build_image(basic_repository(basic_registry, "fly/activity-app"), "deployment-3")
    deployed_machine(fly, source.reference, "3")
    stage = ImageStage(fly_app="gpu-app", destination=f"{basic_registry.host}/team/activity-app:v1",
                       platform="linux/amd64", source_credentials=ALICE, destination_credentials=ALICE)
    environment = WorkerActivityEnvironment()
    heartbeats: list[Any] = []
    environment.on_heartbeat = lambda *details: heartbeats.append(details[0])
    result = asyncio.run(environment.run(copy_image_stage, stage))
    assert result.source_image == f"{basic_registry.host}/fly/activity-app@{source.digest}"
    assert result.platforms == ["linux/amd64"] and result.tag_updated
    assert heartbeats and heartbeats[-1] == result.bytes_copied

    missing = stage.model_copy(update={"source": f"{basic_registry.host}/fly/activity-app:deployment-404"})
    with pytest.raises(ApplicationError) as raised:
        asyncio.run(WorkerActivityEnvironment().run(copy_image_stage, missing))
    assert raised.value.type == "NotFound" and raised.value.non_retryable
    assert "activity-app:deployment-404" in raised.value.message


def test_the_check_resolves_the_fly_image_and_both_logins(fly: FakeFlyMachinesAPI,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    deployed_machine(fly, "registry.fly.io/gpu-app:deployment-5", "5")
    stage = ImageStage(fly_app="gpu-app", destination="127.0.0.1:9/team/gpu-app:v1")
    assert asyncio.run(WorkerActivityEnvironment().run(check_image_stage, stage)) == "registry.fly.io/gpu-app:deployment-5"
    with pytest.raises(ApplicationError, match=r"\$TEST_PUSHER_PASSWORD") as raised:
        monkeypatch.delenv("TEST_PUSHER_PASSWORD")
        asyncio.run(WorkerActivityEnvironment().run(check_image_stage,
                                              stage.model_copy(update={"destination_credentials": PUSHER})))
    assert raised.value.type == "MissingCredentials"


def test_a_migration_copies_the_fly_apps_image_and_deploys_the_copy(
        basic_registry: Registry, token_registry: Registry, token_service: TokenAuthServer,
        temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path) -> None:
    source = build_image(basic_repository(basic_registry, "fly/e2e-app"), "deployment-7")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    with FakeFlyMachinesAPI("fly-e2e-token") as fly, StartingService(ready_after=1) as service, \
            FakeRunpodServerless(endpoint_base=service.endpoint) as runpod:
        fly.add_app("gpu-app")
        deployed_machine(fly, source.reference, "7")
        env = {"FLY_API_TOKEN": "fly-e2e-token", "FLY_API_BASE_URL": fly.base_url, "RUNPOD_API_KEY": runpod.api_key,
               "TEST_SOURCE_PASSWORD": SOURCE_PASSWORD, "TEST_PUSHER_PASSWORD": PUSHER_PASSWORD}
        plan = weights_plan(f"image-deploy-{uuid.uuid4().hex[:8]}", {"kind": "local", "path": str(tmp_path / "weights")},
                            {"kind": "local", "path": str(tmp_path / "copy")})
        plan["image"] = {"fly_app": "gpu-app", "destination": f"{token_registry.host}/team/e2e-app:migrated",
                         "set_env": {"HF_HOME": "/runpod-volume/hf"},
                         "source_credentials": ALICE.model_dump(exclude_none=True),
                         "destination_credentials": PUSHER.model_dump(exclude_none=True)}
        plan["deploy"] = {"platform": "runpod", "endpoint_name": "e2e-app", "api_url": runpod.api_url,
                          "mount_weights": False, "cmd": ["--model", "/runpod-volume/llama"],
                          "health": {"interval": "0.2s", "deadline": "60s"}}
        worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", env)
        worker.start()
        try:
            result = run_migration(temporal_server, plan, task_queue, timeout=120)
        finally:
            worker.stop()

        assert result.status.state == MigrationState.completed, worker.logs()[-3000:]
        (endpoint,) = runpod.endpoints.values()
        _, index = token_repository(token_registry, token_service, "team/e2e-app").manifest("migrated")
        assert endpoint["image"] == f"{token_registry.host}/team/e2e-app@{sha256(index)}", "the copy, by digest"
        assert endpoint["args"] == "--model /runpod-volume/llama"
        stages = {stage.name: stage for stage in result.status.stages}
        assert stages["image"].state == StageState.completed and "2 platform(s)" in stages["image"].detail
        assert stages["deploy"].detail == f"RunPod {endpoint['id']} created at {service.endpoint}"
        assert service.requests, "the deploy waited for the health check"
