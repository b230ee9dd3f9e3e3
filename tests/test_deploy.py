"""The deploy activity against fakes of the Cloud Run Admin API v2 and RunPod's REST API v2, driven by
the real clients (``google-cloud-run`` over REST, httpx), with the new service played by a local HTTP
server; the generated Modal app imported with the real ``modal`` package (no Modal server: nothing is
deployed to Modal here). Re-runs change nothing; bad input and refusals fail for good."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import pytest
import yaml
from pydantic import TypeAdapter
from temporalio.exceptions import ApplicationError

from flyaway.activities.deploy.activities import check_deploy, deploy_service
from flyaway.activities.deploy.modal import ModalDeployer, render_app
from flyaway.errors import InvalidPlan, MissingCredentials
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.deploy import DeployRequest, DeployResult, DeployStage, ModalDeploy, WeightsVolume
from flyaway.models.plan import parse_plan
from tests.fakes.cloud_run import FakeCloudRun
from tests.fakes.health import StartingService
from tests.fakes.runpod_serverless import FakeRunpodServerless

IMAGE = "europe-west4-docker.pkg.dev/my-project/llm/llama@sha256:" + "ab" * 32
FAST_HEALTH = {"interval": "0.05s", "deadline": "5s"}
GCP_SECRETS = {"HF_TOKEN": "projects/my-project/secrets/llm-HF_TOKEN/versions/3"}
FLY_TOML = Path(__file__).parent / "data" / "fly_toml" / "vllm_http_service.toml"


def deploy(stage: dict[str, Any], *, image: str = IMAGE, secrets: dict[str, str] | None = None,
           weights: WeightsVolume | None = None) -> DeployResult:
    parsed = TypeAdapter(DeployStage).validate_python({"mount_weights": False, **stage})
    request = DeployRequest(stage=parsed, explicit=sorted(parsed.model_fields_set), image=image,
                            secrets=secrets or {}, weights=weights)
    return asyncio.run(WorkerActivityEnvironment().run(deploy_service, request))


def failure(stage: dict[str, Any], **kwargs: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        deploy(stage, **kwargs)
    assert raised.value.non_retryable
    return raised.value


@pytest.fixture
def service() -> Iterator[StartingService]:
    with StartingService(ready_after=2) as server:
        yield server


@pytest.fixture
def cloud_run(service: StartingService) -> Iterator[FakeCloudRun]:
    with FakeCloudRun(service_uri=service.endpoint) as fake:
        yield fake


@pytest.fixture
def runpod(service: StartingService, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunpodServerless]:
    with FakeRunpodServerless(endpoint_base=service.endpoint) as fake:
        fake.volumes["vol4x9q2m"] = "EUR-IS-1"
        monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
        yield fake


def cloud_run_stage(fake: FakeCloudRun, **fields: Any) -> dict[str, Any]:
    return {"platform": "cloud_run", "project": "my-project", "region": "europe-west4", "service": "llama",
            "api_endpoint": fake.endpoint, "health": FAST_HEALTH, **fields}


def runpod_stage(fake: FakeRunpodServerless, **fields: Any) -> dict[str, Any]:
    return {"platform": "runpod", "endpoint_name": "llama", "api_url": fake.api_url, "health": FAST_HEALTH,
            **fields}


# -- Cloud Run -------------------------------------------------------------------------------------------

def test_cloud_run_creates_the_gpu_service_waits_for_health_then_leaves_it_unchanged(
        cloud_run: FakeCloudRun, service: StartingService) -> None:
    weights = WeightsVolume(kind="gcs", name="llm-weights", prefix="llama-3.1-8b")
    stage = cloud_run_stage(cloud_run, mount_weights=True, weights_path_env="MODEL_DIR", env={"LOG_LEVEL": "info"},
                            cmd=["--model", "/models/llama-3.1-8b"], min_instances=1, max_instances=3, concurrency=24)
    cloud_run.rollout_polls = 2
    result = deploy(stage, secrets=GCP_SECRETS, weights=weights)

    assert (result.outcome, result.endpoint_url) == ("created", service.endpoint)
    assert result.service == "projects/my-project/locations/europe-west4/services/llama"
    assert result.health_url == f"{service.endpoint}/health"
    assert [path for path, _ in service.requests] == ["/health"] * 3, "503, 503, then 200"
    spec = cloud_run.writes[0]
    template, container = spec["template"], spec["template"]["containers"][0]
    assert container["image"] == IMAGE and container["args"] == ["--model", "/models/llama-3.1-8b"]
    assert container["env"] == [{"name": "LOG_LEVEL", "value": "info"},
                                {"name": "MODEL_DIR", "value": "/models/llama-3.1-8b"},
                                {"name": "HF_TOKEN", "valueSource": {"secretKeyRef": {
                                    "secret": "projects/my-project/secrets/llm-HF_TOKEN", "version": "3"}}}]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert template["nodeSelector"] == {"accelerator": "nvidia-l4"} and template["gpuZonalRedundancyDisabled"]
    assert template["volumes"] == [{"name": "weights", "gcs": {"bucket": "llm-weights", "readOnly": True}}]
    assert container["volumeMounts"] == [{"name": "weights", "mountPath": "/models"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert template["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 3}
    assert template["maxInstanceRequestConcurrency"] == 24 and spec["invokerIamDisabled"]

    writes = len(cloud_run.writes)
    again = deploy(stage, secrets=GCP_SECRETS, weights=weights)
    assert again.outcome == "unchanged" and len(cloud_run.writes) == writes

    rotated = deploy(stage, secrets={"HF_TOKEN": GCP_SECRETS["HF_TOKEN"][:-1] + "4"}, weights=weights)
    assert rotated.outcome == "updated" and len(cloud_run.writes) == writes + 1
    assert cloud_run.writes[-1]["template"]["containers"][0]["env"][-1]["valueSource"]["secretKeyRef"]["version"] == "4"


def test_cloud_run_takes_the_fly_toml_under_the_plans_settings(cloud_run: FakeCloudRun) -> None:
    result = deploy(cloud_run_stage(cloud_run, fly_toml=str(FLY_TOML), min_instances=1))
    container = cloud_run.writes[0]["template"]["containers"][0]
    assert container["args"][:2] == ["--model", "/data/models/llama-3.1-8b"]
    assert {env["name"] for env in container["env"]} == {"HF_HOME", "MODEL_ID", "VLLM_PORT"}
    assert cloud_run.writes[0]["template"]["scaling"]["minInstanceCount"] == 1  # the plan's, not the fly.toml's 0
    assert cloud_run.writes[0]["template"]["maxInstanceRequestConcurrency"] == 24
    assert any("kill_signal" in item for item in result.unsupported)


def test_a_revision_failing_its_startup_probe_is_an_invalid_plan(cloud_run: FakeCloudRun) -> None:
    cloud_run.failing_revisions = True
    error = failure(cloud_run_stage(cloud_run))
    assert error.type == "InvalidPlan"
    assert "failed the configured startup probe checks" in error.message and "/health" in error.message


def test_cloud_run_refusals_and_bad_specs_fail_for_good(cloud_run: FakeCloudRun) -> None:
    cloud_run.denied.add("my-project")
    error = failure(cloud_run_stage(cloud_run))
    assert error.type == "AccessDenied" and "roles/run.admin" in error.message
    cloud_run.denied.clear()
    error = failure(cloud_run_stage(cloud_run), secrets={"HF_TOKEN": "hf_not_a_reference"})
    assert error.type == "InvalidPlan" and "is not a Secret Manager version" in error.message
    assert "hf_not_a_reference" in error.message  # a reference, not a value
    error = failure(cloud_run_stage(cloud_run, env={"HF_TOKEN": "x"}), secrets=GCP_SECRETS)
    assert error.type == "InvalidPlan" and "also come from the secrets stage" in error.message
    assert cloud_run.writes == []


def test_a_private_cloud_run_service_is_not_called(cloud_run: FakeCloudRun, service: StartingService) -> None:
    result = deploy(cloud_run_stage(cloud_run, public=False))
    assert result.health_url is None and service.requests == []
    assert not cloud_run.writes[0].get("invokerIamDisabled")


def test_a_service_that_never_gets_healthy_fails_at_the_deadline(cloud_run: FakeCloudRun,
                                                                 service: StartingService) -> None:
    service.ready_after = -1
    error = failure(cloud_run_stage(cloud_run, health={"interval": "0.1s", "deadline": "1s"}))
    assert error.type == "Unreachable"
    assert f"GET {service.endpoint}/health answering 200 did not happen within 0:00:01" in error.message
    assert "HTTP 503" in error.message and 5 <= len(service.requests) <= 15


# -- RunPod ----------------------------------------------------------------------------------------------

def test_runpod_creates_a_load_balancing_endpoint_then_patches_only_what_changed(
        runpod: FakeRunpodServerless, service: StartingService) -> None:
    weights = WeightsVolume(kind="runpod_volume", name="vol4x9q2m", prefix="llama", location="EUR-IS-1")
    secrets = {"HF_TOKEN": "{{ RUNPOD_SECRET_HF_TOKEN }}"}
    stage = runpod_stage(runpod, mount_weights=True, weights_path_env="MODEL_DIR", gpu_pools=["ADA_48_PRO"],
                         workers_min=1, workers_max=4, idle_timeout="10m", cmd=["--model", "/runpod-volume/llama"])
    result = deploy(stage, secrets=secrets, weights=weights)

    assert (result.outcome, result.endpoint_url, result.health_url) == ("created", service.endpoint,
                                                                        f"{service.endpoint}/health")
    (endpoint,) = runpod.endpoints.values()
    assert result.service == endpoint["id"]
    assert (endpoint["type"], endpoint["image"], endpoint["args"]) == ("LOAD_BALANCER", IMAGE,
                                                                       "--model /runpod-volume/llama")
    assert endpoint["env"] == {"MODEL_DIR": "/runpod-volume/llama", "PORT": "8000", "PORT_HEALTH": "8000",
                               "HEALTH_CHECK_PATH": "/health", "HF_TOKEN": "{{ RUNPOD_SECRET_HF_TOKEN }}"}
    assert endpoint["gpu"] == {"pools": ["ADA_48_PRO"], "count": 1}
    assert endpoint["workers"] == {"min": 1, "max": 4, "idleTimeout": 600}
    assert endpoint["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 4}
    assert (endpoint["networkVolumes"], endpoint["dataCenterIds"]) == (["vol4x9q2m"], ["EUR-IS-1"])
    assert service.requests[-1][1]["Authorization"] == f"Bearer {runpod.api_key}", "RunPod endpoints need the key"

    runpod.requests.clear()
    runpod.fail_next = 2  # two 503s are waited out
    assert deploy(stage, secrets=secrets, weights=weights).outcome == "unchanged"
    assert [method for method, _ in runpod.requests] == ["GET"] * 3

    runpod.requests.clear()
    more = deploy({**stage, "workers_max": 8}, secrets=secrets, weights=weights)
    assert more.outcome == "updated" and more.service == result.service
    assert runpod.requests[-1] == ("PATCH", f"/v2/serverless/{result.service}")
    assert endpoint["workers"]["max"] == 8 and len(runpod.endpoints) == 1


def test_runpod_refusals_fail_for_good(runpod: FakeRunpodServerless, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-wrong-key")
    error = failure(runpod_stage(runpod))
    assert error.type == "AccessDenied" and "check RUNPOD_API_KEY" in error.message
    assert "rp-wrong-key" not in error.message
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert failure(runpod_stage(runpod)).type == "MissingCredentials"
    monkeypatch.setenv("RUNPOD_API_KEY", runpod.api_key)
    error = failure(runpod_stage(runpod, mount_weights=True),
                    weights=WeightsVolume(kind="runpod_volume", name="vol-gone", location="US-KS-2"))
    assert error.type == "InvalidPlan" and "networkVolumes: vol-gone does not exist" in error.message
    assert runpod.endpoints == {}


def test_a_queue_endpoint_of_the_same_name_is_not_taken_over(runpod: FakeRunpodServerless) -> None:
    runpod.endpoints["q1"] = {"id": "q1", "name": "llama", "type": "QUEUE", "requestUrls": {}}
    error = failure(runpod_stage(runpod))
    assert error.type == "InvalidPlan" and "is a QUEUE endpoint" in error.message
    assert [m for m, _ in runpod.requests] == ["GET"]


# -- the check before anything runs -----------------------------------------------------------------------

def check(stage: dict[str, Any], **kwargs: Any) -> list[str]:
    parsed = TypeAdapter(DeployStage).validate_python({"mount_weights": False, **stage})
    request = DeployRequest(stage=parsed, explicit=sorted(parsed.model_fields_set), image=IMAGE, **kwargs)
    return asyncio.run(WorkerActivityEnvironment().run(check_deploy, request))


def test_the_check_finds_refusals_and_bad_fly_tomls_before_anything_runs(
        cloud_run: FakeCloudRun, runpod: FakeRunpodServerless, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    assert any("kill_signal" in item for item in check(cloud_run_stage(cloud_run, fly_toml=str(FLY_TOML))))
    cloud_run.denied.add("my-project")
    with pytest.raises(ApplicationError, match=r"roles/run.admin") as raised:
        check(cloud_run_stage(cloud_run))
    assert raised.value.type == "AccessDenied"
    broken = tmp_path / "fly.toml"
    broken.write_text("[http_service]\ninternal_port = 'eighty'\n")
    with pytest.raises(ApplicationError, match="internal_port should be a int"):
        check(runpod_stage(runpod, fly_toml=str(broken)))
    runpod.endpoints["q1"] = {"id": "q1", "name": "llama", "type": "QUEUE", "requestUrls": {}}
    with pytest.raises(ApplicationError, match="is a QUEUE endpoint"):
        check(runpod_stage(runpod))
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(ApplicationError, match="RUNPOD_API_KEY is not set"):
        check(runpod_stage(runpod))
    assert cloud_run.writes == [] and [m for m, _ in runpod.requests] == ["GET"]


# -- Modal (the generated module, imported with the real SDK; no Modal server, nothing deployed) --------------

class Declared:
    """What the generated module asks of ``modal``: the real functions run, their arguments are kept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        for owner, name in ((modal.App, "function"), (modal, "web_server"), (modal, "concurrent"),
                            (modal.Image, "from_registry"), (modal.Volume, "from_name"), (modal.Secret, "from_name")):
            self._spy(monkeypatch, owner, name)

    def _spy(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        real = getattr(owner, name)
        key = f"{getattr(owner, '__name__', 'modal')}.{name}"

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.setdefault(key, []).append((args, kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)

    def one(self, key: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        (call,) = self.calls[key]
        return call


def import_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"generated_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_modal_app_imports_and_declares_what_the_plan_asks(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stage = ModalDeploy.model_validate({
        "platform": "modal", "app_name": "llama-serve", "gpu": "A100-80GB:2", "cpu": 8, "memory": 65536,
        "min_containers": 1, "max_containers": 4, "scaledown_window": "10m", "concurrency": 24, "port": 8000,
        "cmd": ["vllm", "serve", "/models/llama", "--port", "8000"], "weights_path_env": "MODEL_DIR",
        "env": {"NOTE": "it's \"quoted\" {braces}"}, "registry_secret": "artifact-registry", "add_python": "3.11",
        "health": {"deadline": "20m"}})
    weights = WeightsVolume(kind="modal_volume", name="llm-weights", prefix="llama", location="prod")
    path = tmp_path / "app.py"
    path.write_text(render_app(stage, IMAGE, {"HF_TOKEN": "llm-secrets", "DB_URL": "llm-secrets"}, weights))
    declared = Declared(monkeypatch)
    module = import_module(path)

    assert isinstance(module.app, modal.App) and module.app.name == "llama-serve"
    args, kwargs = declared.one("Image.from_registry")
    assert args == (IMAGE,) and kwargs["add_python"] == "3.11"
    assert [call[0] for call in declared.calls["Secret.from_name"]] == [("artifact-registry",), ("llm-secrets",)]
    assert declared.one("Volume.from_name") == (("llm-weights",), {"environment_name": "prod"})
    _, function = declared.one("App.function")
    assert function["gpu"] == "A100-80GB:2" and (function["cpu"], function["memory"]) == (8.0, 65536)
    assert (function["min_containers"], function["max_containers"], function["scaledown_window"]) == (1, 4, 600)
    assert list(function["volumes"]) == ["/models"] and isinstance(function["volumes"]["/models"], modal.Volume)
    assert [secret.name for secret in function["secrets"]] == ["llm-secrets"]
    assert declared.one("modal.web_server") == ((), {"port": 8000, "startup_timeout": 1200})
    assert declared.one("modal.concurrent") == ((), {"max_inputs": 24})
    assert "'vllm', 'serve', '/models/llama'" in path.read_text()
    assert "'MODEL_DIR': '/models/llama'" in path.read_text() and "it\\'s" in path.read_text()


def test_a_modal_plan_without_a_command_or_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = ModalDeploy.model_validate({"platform": "modal", "app_name": "x", "cmd": ["serve"]})
    with pytest.raises(InvalidPlan, match="Modal runs neither the image's ENTRYPOINT nor its CMD"):
        render_app(stage.model_copy(update={"cmd": None}), IMAGE, {}, None)
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    with pytest.raises(MissingCredentials, match="MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"):
        ModalDeployer(stage, IMAGE, {}, None)


# -- the plan section ------------------------------------------------------------------------------------

LOCAL = {"kind": "local", "path": "/w"}
LOCAL_COPY = {"kind": "local", "path": "/copy"}


@pytest.mark.parametrize(("plan", "message"), [
    ({"deploy": {"platform": "runpod", "endpoint_name": "x"}},
     "deploy.image: give the image to run, or add an image stage"),
    ({"deploy": {"platform": "modal", "app_name": "x", "image": IMAGE}},
     "deploy.mount_weights: Modal mounts weights from a modal_volume destination, but weights.destination is local"),
    ({"deploy": {"platform": "runpod", "endpoint_name": "x", "image": IMAGE, "mount_weights": False},
      "secrets": {"source": {"kind": "env", "names": ["HF_TOKEN"]}, "destination": {"kind": "modal",
                                                                                     "secret_name": "s"}}},
     "RunPod reads secrets from runpod, but secrets.destination is modal"),
    ({"deploy": {"platform": "cloud_run", "project": "my-project", "region": "us-central1", "service": "x",
                 "image": IMAGE, "mount_weights": False, "cpu": "2"}},
     "a Cloud Run GPU needs cpu >= 4"),
    ({"deploy": {"platform": "runpod", "endpoint_name": "x", "image": IMAGE, "mount_weights": False,
                 "health": {"interval": "5m"}}},
     "give an interval from above 0s to 1m"),
    ({"deploy": {"platform": "fly", "image": IMAGE}}, "unknown kind 'fly'"),
])
def test_deploy_sections_that_cannot_work_are_refused_naming_the_field(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_plan({"name": "t", "weights": {"source": LOCAL, "destination": LOCAL_COPY}, **plan})


def test_weights_destinations_become_the_mounted_volume() -> None:
    plan = parse_plan({"name": "t", "weights": {"source": LOCAL, "destination": {
        "kind": "runpod_volume", "volume_id": "vol4x9q2m", "datacenter": "eur-is-1", "prefix": "llama"}},
        "image": {"fly_app": "gpu-app", "destination": "ghcr.io/team/llama"},
        "deploy": {"platform": "runpod", "endpoint_name": "llama"}})
    volume = WeightsVolume.of(plan.weights.destination)
    assert (volume.name, volume.location, volume.folder("/runpod-volume")) == ("vol4x9q2m", "EUR-IS-1",
                                                                              "/runpod-volume/llama")


def test_the_plan_docs_deploy_sections_parse() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "plan.md").read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)]
    sections = [block["deploy"] for block in blocks if isinstance(block, dict) and "deploy" in block]
    platforms = {TypeAdapter(DeployStage).validate_python(section).platform for section in sections}
    assert platforms == {"cloud_run", "runpod", "modal"}
