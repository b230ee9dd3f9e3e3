"""docker-compose.yml: Debian's docker-compose (v1) validates it, and the worker and codec-server
services start as the containers would (their command and environment from the resolved file,
service addresses swapped for loopback ones) and serve a migration on the dev server."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from flyaway.codec import ENCODING, KEYS_ENV, generate_key
from flyaway.models.status import MigrationState
from flyaway.starter.dev import free_port, stop_process, venv_binary, wait_for_port
from tests.support.env import REPO
from tests.support.migrations import run_async, run_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer
from tests.support.trees import make_tree

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_TEMPORAL_ADDRESS = "temporal:7233"
#: variables whose example value must stay empty: secrets and keys
SECRET_NAME = re.compile(r"(KEYS?|KEY_ID|TOKEN|TOKEN_ID|SECRET|PASSWORD|CREDENTIALS)$")

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="Debian's docker-compose is missing (scripts/setup.sh test installs it)")


def env_example() -> dict[str, str]:
    entries = (line.partition("=") for line in ENV_EXAMPLE.read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    return {name: value for name, _, value in entries}


def compose(env: dict[str, str], *args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` with exactly ``env`` (and an explicit env file, so a developer's .env plays no part)."""
    return subprocess.run(["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def test_env_example_names_every_variable_of_the_compose_file_and_holds_no_secret() -> None:
    text = COMPOSE_FILE.read_text()
    substituted = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    passed_through = {name for service in yaml.safe_load(text)["services"].values()
                      for name, value in (service.get("environment") or {}).items() if value is None}
    example = env_example()

    assert substituted | passed_through <= set(example), sorted((substituted | passed_through) - set(example))
    assert {name: value for name, value in example.items() if SECRET_NAME.search(name) and value} == {}


def test_compose_config_passes_with_the_variables_and_names_a_missing_one(empty_env_file: Path) -> None:
    filled = {"POSTGRES_PASSWORD": "example", KEYS_ENV: generate_key()}

    valid = compose(filled, "config", "-q", env_file=empty_env_file)
    missing = compose({KEYS_ENV: filled[KEYS_ENV]}, "config", "-q", env_file=empty_env_file)

    assert valid.returncode == 0, valid.stderr
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


def resolved_services(env: dict[str, str], env_file: Path) -> dict[str, Any]:
    """The services as docker-compose resolves them, pass-through variables filled from ``env``."""
    done = compose(env, "config", env_file=env_file)
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    for service in services.values():
        service["environment"] = {name: env[name] if value is None else value
                                  for name, value in service.get("environment", {}).items()
                                  if value is not None or name in env}
    return services


class ComposeService:
    """One service's container entry point (``flyaway <command>``) as a local process."""

    def __init__(self, name: str, service: dict[str, Any], temporal_address: str, log_path: Path) -> None:
        self.name = name
        self.environment = {name: value.replace(COMPOSE_TEMPORAL_ADDRESS, temporal_address)
                            for name, value in service["environment"].items()}
        self.command = list(service["command"])
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def set_option(self, option: str, value: str) -> None:
        """Replace an option's value in the command (a container's address becomes a loopback one)."""
        self.command[self.command.index(option) + 1] = value

    def start(self) -> None:
        flyaway = venv_binary("flyaway")
        assert flyaway, "the flyaway console script is missing from the venv"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([flyaway, *self.command], env={"PATH": "/usr/bin:/bin",
                                            **self.environment}, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.log_path.parent, start_new_session=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def compose_env(task_queue: str) -> dict[str, str]:
    return {"POSTGRES_PASSWORD": "example", KEYS_ENV: generate_key(), "FLYAWAY_TASK_QUEUE": task_queue,
            "FLYAWAY_MAX_ACTIVITIES": "4"}


@pytest.fixture
def compose_stack(compose_env: dict[str, str], temporal_server: TemporalDevServer, empty_env_file: Path,
                  tmp_path: Path) -> Iterator[dict[str, ComposeService]]:
    services = resolved_services(compose_env, empty_env_file)
    worker = ComposeService("worker", services["worker"], temporal_server.address, tmp_path / "worker.log")
    codec = ComposeService("codec-server", services["codec-server"], temporal_server.address,
                           tmp_path / "codec-server.log")
    codec.set_option("--host", "127.0.0.1")
    codec.set_option("--port", str(free_port()))
    stack = {"worker": worker, "codec-server": codec}
    for service in stack.values():
        service.start()
    yield stack
    for service in stack.values():
        service.stop()


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response), dict(response.headers)


def test_worker_and_codec_server_with_the_compose_environment_serve_a_migration(
        compose_stack: dict[str, ComposeService], compose_env: dict[str, str], temporal_server: TemporalDevServer,
        task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker, codec = compose_stack["worker"], compose_stack["codec-server"]
    assert worker.environment["TEMPORAL_ADDRESS"] == temporal_server.address
    assert "--address" not in worker.command, "the worker must reach Temporal through its environment"
    codec_port = int(codec.command[codec.command.index("--port") + 1])
    wait_for_port(codec_port, 30, codec.process)
    monkeypatch.setenv(KEYS_ENV, compose_env[KEYS_ENV])
    contents = make_tree(tmp_path / "weights", {"model.safetensors": 3 << 20, "config.json": 200})
    plan = weights_plan("compose-stack", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "copy")}, part_size="1MiB")

    result = run_migration(temporal_server, plan, task_queue, timeout=60)

    assert result.status.state == MigrationState.completed, worker.logs()
    assert {key: (tmp_path / "copy" / key).read_bytes() for key in contents} == contents
    stored = json.loads(json_format.MessageToJson(run_async(temporal_server.stored_input("migration-compose-stack"))))
    assert base64.b64decode(stored["payloads"][0]["metadata"]["encoding"]) == ENCODING, "input stored in clear"
    ui_origin = codec.command[codec.command.index("--ui-origin") + 1]
    decoded, headers = post_json(f"http://127.0.0.1:{codec_port}/decode", stored,
                                 {"Origin": ui_origin, "X-Namespace": "default"})
    assert headers["Access-Control-Allow-Origin"] == ui_origin
    assert json.loads(base64.b64decode(decoded["payloads"][0]["data"]))["name"] == "compose-stack", codec.logs()
