"""fly.toml translation: real-world-shaped files give the expected target settings and say what does not
carry over; bad files are clear errors; the deploy stage lays them under the plan's own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flyaway.activities.deploy.fly_toml import apply_translation, parse_fly_toml, read_fly_toml, translate
from flyaway.errors import InvalidPlan, NotFound
from flyaway.models.deploy import CloudRunDeploy, ModalDeploy, RunpodDeploy
from flyaway.starter.cli import app

DATA = Path(__file__).parent / "data" / "fly_toml"
VLLM, SERVICES, OLLAMA, CPU_ONLY = (str(DATA / name) for name in
                                    ("vllm_http_service.toml", "services_ports.toml", "ollama_vm_table.toml",
                                     "cpu_only.toml"))
VLLM_CMD = ["--model", "/data/models/llama-3.1-8b", "--served-model-name", "llama", "--port", "8000",
            "--max-model-len", "8192"]
VLLM_ENV = {"HF_HOME": "/data/hf", "MODEL_ID": "meta-llama/Llama-3.1-8B-Instruct", "VLLM_PORT": "8000"}
SERVICES_ENV = {"PORT": "7860", "MODEL_DIR": "/weights/sdxl"}


def settings(path: str, platform: str) -> tuple[dict[str, Any], list[str]]:
    translation = translate(read_fly_toml(path), platform)  # type: ignore[arg-type]
    return translation.settings, translation.unsupported


def has(unsupported: list[str], *fragments: str) -> bool:
    return all(any(fragment in item for item in unsupported) for fragment in fragments)


@pytest.mark.parametrize(("path", "platform", "expected"), [
    (VLLM, "cloud_run", {
        "service": "llama-serve", "port": 8000, "env": VLLM_ENV, "cmd": VLLM_CMD, "health": {"path": "/health"},
        "gpu": "nvidia-l4", "cpu": "8", "memory": "32Gi", "min_instances": 0, "concurrency": 24,
        "weights_mount_path": "/data"}),
    (VLLM, "runpod", {
        "endpoint_name": "llama-serve", "port": 8000, "env": VLLM_ENV, "cmd": VLLM_CMD,
        "health": {"path": "/health"}, "gpu_pools": ["AMPERE_80"], "gpu_count": 1, "workers_min": 0,
        "requests_per_worker": 12}),
    (VLLM, "modal", {
        "app_name": "llama-serve", "port": 8000, "env": VLLM_ENV, "cmd": VLLM_CMD, "health": {"path": "/health"},
        "gpu": "A100-40GB", "cpu": 8.0, "memory": 32768, "min_containers": 0, "concurrency": 24,
        "weights_mount_path": "/data"}),
    (SERVICES, "cloud_run", {
        "service": "sdxl-api", "port": 7860, "env": SERVICES_ENV, "health": {"path": "/healthz"},
        "gpu": "nvidia-l4", "cpu": "8", "memory": "32Gi", "min_instances": 2, "concurrency": 4,
        "weights_mount_path": "/weights"}),
    (SERVICES, "runpod", {
        "endpoint_name": "sdxl-api", "port": 7860, "env": SERVICES_ENV, "health": {"path": "/healthz"},
        "gpu_pools": ["ADA_48_PRO"], "gpu_count": 2, "workers_min": 2, "requests_per_worker": 2}),
    (SERVICES, "modal", {
        "app_name": "sdxl-api", "port": 7860, "env": SERVICES_ENV, "health": {"path": "/healthz"},
        "gpu": "L40S:2", "cpu": 16.0, "memory": 65536, "min_containers": 2, "concurrency": 4,
        "weights_mount_path": "/weights"}),
    (OLLAMA, "modal", {
        "app_name": "ollama-a10", "port": 11434, "env": {"OLLAMA_HOST": "0.0.0.0:11434",
                                                        "OLLAMA_MODELS": "/root/.ollama/models"},
        "health": {"path": "/api/version"}, "gpu": "A10", "cpu": 8.0, "memory": 32768, "min_containers": 1,
        "weights_mount_path": "/root/.ollama"}),
    (CPU_ONLY, "cloud_run", {"service": "tiny-embedder", "port": 8080, "gpu": None, "cpu": "2", "memory": "8Gi",
                             "min_instances": 0}),
])
def test_fly_toml_gives_the_targets_settings(path: str, platform: str, expected: dict[str, Any]) -> None:
    assert settings(path, platform)[0] == expected


def test_settings_without_an_equivalent_are_listed_with_what_to_do() -> None:
    _, vllm = settings(VLLM, "cloud_run")
    assert has(vllm, "processes.metrics: only the process serving HTTP (app) moves",
               "vm.gpu_kind = 'a100-pcie-40gb' (40 GB): Cloud Run's nvidia-l4 has 24 GB",
               "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "build: the image is copied")
    assert not has(vllm, "http_service"), "translated settings are not reported"

    _, services = settings(SERVICES, "cloud_run")
    assert has(services, "services.tcp_checks", "auto_start_machines = false", "internal_port 5000, udp",
               "mounts (source 'cache' at /cache)", "deploy: release_command", "metrics",
               "vm.gpus = 2: Cloud Run attaches one GPU", "lowered to Cloud Run's largest instance",
               "auto_stop_machines off: Machines never stop")
    _, runpod = settings(SERVICES, "runpod")
    assert has(runpod, "concurrency.hard_limit = 4: RunPod has no per-worker request cap",
               "mounts.destination = '/weights': RunPod mounts the network volume at /runpod-volume",
               "vm cpus and memory: RunPod sizes CPU and memory with the GPU")
    _, modal = settings(OLLAMA, "modal")
    assert has(modal, "auto_stop_machines = suspend", "statics")
    _, modal_vllm = settings(VLLM, "modal")
    assert has(modal_vllm, "Modal runs cmd as the whole command, without the image's ENTRYPOINT")


def test_cpu_sizes_below_the_gpu_minimum_are_raised_for_cloud_run() -> None:
    service = parse_fly_toml('app = "x"\n[[vm]]\n  gpu_kind = "a10"\n  size = "performance-2x"\n')
    translation = translate(service, "cloud_run")
    assert (translation.settings["cpu"], translation.settings["memory"]) == ("4", "16Gi")
    assert has(translation.unsupported, "raised to Cloud Run's GPU minimum")


@pytest.mark.parametrize(("text", "message"), [
    ('app = "x"\n[http_service\ninternal_port = 8080\n', r"fly.toml does not parse: .*line 2"),
    ('[http_service]\ninternal_port = "8080"\n', r"http_service.internal_port should be a int, not '8080'"),
    ('[http_service]\nauto_stop_machines = "sometimes"\n', r"auto_stop_machines = 'sometimes' is not true"),
    ('[[vm]]\nmemory = "lots"\n', r"vm.memory = 'lots' is not a memory size"),
    ('[processes]\napp = "serve \'unclosed"\n', r"processes.app is not a command line"),
    ('env = "A=1"\n', r"\[env\] should be a dict"),
])
def test_a_bad_fly_toml_is_an_invalid_plan_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(InvalidPlan, match=message):
        parse_fly_toml(text)


def test_a_missing_fly_toml_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist on the worker"):
        read_fly_toml(str(tmp_path / "fly.toml"))


def test_the_plans_own_settings_win_and_env_is_merged() -> None:
    stage = RunpodDeploy.model_validate({"platform": "runpod", "endpoint_name": "mine", "fly_toml": VLLM,
                                         "workers_min": 1, "env": {"HF_HOME": "/runpod-volume/hf", "EXTRA": "1"}})
    merged = apply_translation(stage, stage.model_fields_set, translate(read_fly_toml(VLLM), "runpod"))
    assert isinstance(merged, RunpodDeploy)
    assert (merged.endpoint_name, merged.workers_min) == ("mine", 1)  # the plan's
    assert (merged.port, merged.gpu_pools, merged.requests_per_worker, merged.cmd) == (8000, ["AMPERE_80"], 12,
                                                                                        VLLM_CMD)  # the fly.toml's
    assert merged.env == {**VLLM_ENV, "HF_HOME": "/runpod-volume/hf", "EXTRA": "1"}
    assert merged.health.path == "/health" and merged.disk_gb == 50  # defaults stay where neither says


def test_fly_toml_settings_the_platform_refuses_are_an_invalid_plan(tmp_path: Path) -> None:
    fly_toml = tmp_path / "fly.toml"
    fly_toml.write_text('[[vm]]\n  size = "performance-1x"\n')
    stage = CloudRunDeploy.model_validate({"platform": "cloud_run", "project": "my-project", "region": "us-central1",
                                           "service": "llm", "fly_toml": str(fly_toml), "gpu": "nvidia-l4"})
    translation = translate(read_fly_toml(str(fly_toml)), "cloud_run")
    with pytest.raises(InvalidPlan, match=r"set the field in the plan to override the fly.toml"):
        # the plan asks for a GPU explicitly; the fly.toml's 1 CPU / 2 GB is below its minimum
        apply_translation(stage, stage.model_fields_set, translation)


def test_translate_command_prints_a_deploy_section_that_validates() -> None:
    result = CliRunner().invoke(app, ["translate", VLLM, "--to", "modal"])
    assert result.exit_code == 0, result.output
    section = yaml.safe_load(result.output)["deploy"]
    assert section["platform"] == "modal" and section["gpu"] == "A100-40GB"
    assert ModalDeploy.model_validate(section).min_containers == 0
    assert "# no equivalent on Modal:" in result.output and "#   - kill_signal" in result.output

    cloud_run = CliRunner().invoke(app, ["translate", VLLM, "--to", "cloud_run"])
    assert "# also give: project, region" in cloud_run.output
    section = yaml.safe_load(cloud_run.output)["deploy"]
    assert CloudRunDeploy.model_validate({**section, "project": "my-project", "region": "us-central1"}).gpu


def test_translate_command_refuses_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "fly.toml"
    broken.write_text("app = \n")
    result = CliRunner().invoke(app, ["translate", str(broken), "--to", "runpod"])
    assert result.exit_code == 2 and "does not parse" in result.output
    result = CliRunner().invoke(app, ["translate", VLLM, "--to", "kubernetes"])
    assert result.exit_code == 2 and "choose one of cloud_run, runpod, modal" in result.output


def test_translate_drops_fly_env_like_the_image_stage_and_lists_it(tmp_path: Path) -> None:
    fly_toml = tmp_path / "fly.toml"
    fly_toml.write_text('app = "llama"\n[env]\nMODEL_ID = "llama"\nFLY_PROCESS_GROUP = "app"\n'
                        'PRIMARY_REGION = "ord"\nFLY_APP_NAME = "llama"\n'
                        '[http_service]\ninternal_port = 8000\n')
    result = CliRunner().invoke(app, ["translate", str(fly_toml), "--to", "runpod"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["deploy"]["env"] == {"MODEL_ID": "llama"}
    assert ("#   - [env] FLY_PROCESS_GROUP, PRIMARY_REGION, FLY_APP_NAME: Fly-only variables, dropped as the "
            "image stage drops them; add any you still need to deploy.env") in result.output
