"""No secret value anywhere: a whole migration with secrets runs through a real worker, then the
workflow histories (``temporal workflow show`` and the client API, every run and child), the
worker's log and the CLI's output are searched for every value in every encoding."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.codec import KEYS_ENV, EncryptionCodec, generate_key
from flyaway.models.status import MigrationState, StageState
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.support.env import FLYAWAY, REPO, TEST_AWS_ENV
from tests.support.leaks import (
    assert_no_value,
    decoded_base64_runs,
    executions,
    history_texts,
    secret_values,
    temporal_show,
)
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.servers import TemporalDevServer, WorkerProcess

PROJECT = "leak-test"


def flyaway_cli(server: TemporalDevServer, *args: str, exit_code: int = 0) -> str:
    result = subprocess.run([*FLYAWAY, *args, "--address", server.address, "--namespace", "default"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ))
    assert result.returncode == exit_code, result.stdout + result.stderr
    return result.stdout + result.stderr


def leak_plan(name: str, tmp_path: Path, gcp: FakeSecretManager, values: dict[str, str]) -> dict[str, Any]:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text('{"model": "tiny"}')
    (weights / "model.safetensors").write_bytes(os.urandom(8 * 1024 * 1024))
    dotenv = tmp_path / "app.env"
    dotenv.write_text("".join(f"{key}='{value}'\n" for key, value in values.items()))
    return {"name": name,
            "weights": {"source": {"kind": "local", "path": str(weights)},
                        "destination": {"kind": "local", "path": str(tmp_path / "landed")},
                        "heartbeat_timeout": "5s", "retry_max_interval": "2s",
                        "bandwidth_limit": "2MiB"},  # a few seconds: access is taken away meanwhile
            "secrets": {"source": {"kind": "dotenv", "path": str(dotenv)},
                        "destination": {"kind": "gcp_secret_manager", "project": PROJECT, "endpoint": gcp.endpoint,
                                        "prefix": "leak-"}}}


@pytest.fixture
def gcp() -> Iterator[FakeSecretManager]:
    with FakeSecretManager() as fake:
        yield fake


def start_worker(server: TemporalDevServer, task_queue: str, tmp_path: Path, codec_key: str | None) -> WorkerProcess:
    env = dict(TEST_AWS_ENV)
    if codec_key:
        env[KEYS_ENV] = codec_key
    worker = WorkerProcess(server, task_queue, tmp_path / "worker.log", env)
    worker.start()
    return worker


def test_no_secret_value_in_history_logs_or_cli_output_with_the_codec(
        temporal_server: TemporalDevServer, task_queue: str, gcp: FakeSecretManager, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    codec_key = generate_key("leak-test")
    monkeypatch.setenv(KEYS_ENV, codec_key)  # the test's client and CLI runs use the codec too
    values = secret_values()
    plan = leak_plan("leak-codec", tmp_path, gcp, values)
    worker = start_worker(temporal_server, task_queue, tmp_path, codec_key)
    try:
        workflow_id = run_async(start_migration(temporal_server, plan, task_queue))
        # validation passed and the weights are copying: access goes away, so the secrets stage fails and
        # waits for the operator, which puts a failure into the history
        eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).stage == "weights",
                   timeout=60, interval=0.05, what="the weights stage")
        gcp.denied.add(PROJECT)
        eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).state
                   == MigrationState.waiting_for_operator, timeout=60, what="the secrets stage to wait")
        waiting_output = flyaway_cli(temporal_server, "status", workflow_id, exit_code=1)  # waits for a person
        assert "AccessDenied" in waiting_output
        gcp.denied.clear()
        retry_output = flyaway_cli(temporal_server, "retry", workflow_id)
        result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
        cli_output = [waiting_output, retry_output, flyaway_cli(temporal_server, "status", workflow_id),
                      flyaway_cli(temporal_server, "status", workflow_id, "--json")]
    finally:
        worker.stop()

    assert result.status.state == MigrationState.completed
    assert result.status.stage_status("secrets").state == StageState.completed
    for name, value in values.items():
        assert gcp.value(PROJECT, f"leak-{name}") == value.encode()  # the values did move

    async def histories() -> tuple[list[tuple[str, str]], list[str]]:
        client = await temporal_server.client()
        runs = await executions(client, task_queue)
        return runs, await history_texts(client, EncryptionCodec.from_env(), runs)

    runs, texts = run_async(histories())
    assert {workflow_id, f"{workflow_id}-weights"} <= {run_id[0] for run_id in runs}
    assert any("LEAK_HF_TOKEN" in text for text in texts), "decoding found no payloads: the search is blind"
    for text in texts:
        assert_no_value(values, "the history (client API, decoded)", text)
    for workflow, run in runs:
        assert_no_value(values, f"`temporal workflow show` of {workflow}", temporal_show(temporal_server, workflow, run))
    assert "secrets synced" in worker.logs() and "2 created" in cli_output[2]  # the searched texts are the real ones
    assert_no_value(values, "the worker log", worker.logs())
    for output in cli_output:
        assert_no_value(values, "the CLI output", output)


def test_without_the_codec_names_are_readable_but_values_never_appear(
        temporal_server: TemporalDevServer, task_queue: str, gcp: FakeSecretManager, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    values = secret_values()
    plan = leak_plan("leak-plain", tmp_path, gcp, values)
    worker = start_worker(temporal_server, task_queue, tmp_path, None)
    try:
        async def go() -> Any:
            return await migration_result(temporal_server, await start_migration(temporal_server, plan, task_queue),
                                          timeout=120)

        result = run_async(go())
    finally:
        worker.stop()
    assert result.status.state == MigrationState.completed

    async def runs_of() -> list[tuple[str, str]]:
        return await executions(await temporal_server.client(), task_queue)

    runs = run_async(runs_of())
    shown = [temporal_show(temporal_server, workflow, run) for workflow, run in runs]
    readable = "\n".join(decoded_base64_runs(text) for text in shown)
    assert "LEAK_HF_TOKEN" in readable and "LEAK_DATABASE_URL" in readable  # payloads are plain JSON
    for text in shown:
        assert_no_value(values, "`temporal workflow show` without the codec", text)
    assert_no_value(values, "the worker log", worker.logs())
