"""``flyaway status`` while a stage's activity is retried: ``retrying``, the last error (redacted) and the attempt.

End to end, the deploy stage against the RunPod fake, whose gateway loses the API's answer twice
(an HTML page where JSON belongs): a failure no request retry hides, so Temporal retries the
activity. The status (JSON, text and ``--watch``) says so while it happens and forgets it once the
stage succeeded. Without the dev server: a retried activity's failure is decoded and redacted.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import ActivityType
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.exceptions import ApplicationError
from typer.testing import CliRunner

from flyaway.codec import EncryptionCodec, data_converter
from flyaway.models.plan import STAGES
from flyaway.models.status import MigrationState, MigrationStatus, StageState, StageStatus
from flyaway.redaction import register_secret
from flyaway.starter.cli import app
from flyaway.starter.display import decode_pending, show_retries
from tests.fakes.health import StartingService
from tests.fakes.runpod_serverless import FakeRunpodServerless
from tests.support.migrations import eventually, migration_result, run_async, start_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess

IMAGE = "registry.example.com/llm/llama@sha256:" + "ab" * 32
GARBLED_ERROR = "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"
runner = CliRunner()


@pytest.fixture
def runpod() -> Iterator[FakeRunpodServerless]:
    with StartingService() as service:
        fake = FakeRunpodServerless(endpoint_base=service.endpoint)
        with fake:
            yield fake


def cli_status(server: TemporalDevServer, name: str) -> MigrationStatus:
    result = runner.invoke(app, ["status", name, "--json", "--address", server.address])
    assert result.exit_code == 0, result.output
    return MigrationStatus.model_validate_json(result.output)


def at_attempt(server: TemporalDevServer, name: str, stage: str, attempt: int) -> MigrationStatus | None:
    status = cli_status(server, name)
    return status if status.stage_status(stage).attempt == attempt else None


def test_a_retried_deploy_shows_retrying_with_the_error_and_attempt_until_it_succeeds(
        temporal_server: TemporalDevServer, runpod: FakeRunpodServerless, task_queue: str, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"model": "tiny"}')
    plan = weights_plan("deploy-retried", {"kind": "local", "path": str(tmp_path / "w")},
                        {"kind": "local", "path": str(tmp_path / "dst")})
    plan["deploy"] = {"platform": "runpod", "endpoint_name": "llama", "api_url": runpod.api_url, "image": IMAGE,
                      "mount_weights": False, "health": {"interval": "0.05s", "deadline": "5s"}}
    runpod.garbled = {1, 2}  # request 0 is the plan check's; the deploy's first two attempts fail at their first
    worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", {"RUNPOD_API_KEY": runpod.api_key})
    worker.start()
    try:
        workflow_id = run_async(start_migration(temporal_server, plan, task_queue))
        watch = subprocess.Popen([str(Path(sys.executable).parent / "flyaway"), "status", "deploy-retried",
                                  "--watch", "--address", temporal_server.address],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for attempt in (2, 3):  # the second attempt waits 5 s, the third 10 s (DEPLOY_RETRY)
            status = eventually(lambda: at_attempt(temporal_server, "deploy-retried", "deploy", attempt), 30,  # noqa: B023
                                interval=0.3, what=f"the deploy's attempt {attempt}")
            deploy = status.stage_status("deploy")
            assert (status.state, status.stage, deploy.state) == (MigrationState.running, "deploy",
                                                                  StageState.retrying)
            assert deploy.error == GARBLED_ERROR
            assert status.last_error == f"deploy: {GARBLED_ERROR} (attempt {attempt}, retrying)"
        text = runner.invoke(app, ["status", "deploy-retried", "--address", temporal_server.address])
        assert text.exit_code == 0, text.output
        assert "retrying" in text.output and f"attempt 3: {GARBLED_ERROR}" in " ".join(text.output.split())

        assert run_async(migration_result(temporal_server, workflow_id, timeout=60)).status.state == "completed"
        done = cli_status(temporal_server, "deploy-retried")
        deploy = done.stage_status("deploy")
        assert (deploy.state, deploy.error, deploy.attempt, done.last_error) == (StageState.completed, None, 0, None)
        watched, _ = watch.communicate(timeout=30)
    finally:
        worker.stop()
    lines = watched.splitlines()
    assert f"deploy retrying, attempt 2: {GARBLED_ERROR}" in watched, watched
    assert f"deploy retrying, attempt 3: {GARBLED_ERROR}" in watched, watched
    assert lines[-1].startswith("migration-deploy-retried completed"), watched
    assert len(runpod.endpoints) == 1, "the create whose answer was lost is found, not made twice"


#: the worker's and the CLI's converter, encrypting failures as a worker with codec keys does
CONVERTER = data_converter(EncryptionCodec({"k1": bytes(range(32))}))


def pending(attempt: int, error: BaseException | None) -> PendingActivityInfo:
    info = PendingActivityInfo(activity_type=ActivityType(name="flyaway.teardown.stop_machines"), attempt=attempt)
    if error is not None:
        failure = Failure()
        asyncio.run(CONVERTER.encode_failure(error, failure))
        assert failure.message == "Encoded failure"
        info.last_failure.CopyFrom(failure)
    return info


def test_a_retried_activity_s_failure_is_decoded_redacted_and_shown_on_the_stage_in_flight() -> None:
    secret = "fly-token-4f1c9a7e22"
    register_secret(secret)
    error = ApplicationError(f"Fly answered 502 to GET /apps with token {secret}", type="FlyUnavailable")
    retried = asyncio.run(decode_pending(CONVERTER, pending(4, error)))
    first = asyncio.run(decode_pending(CONVERTER, pending(1, None)))
    assert retried.last_failure == "FlyUnavailable: Fly answered 502 to GET /apps with token ***"
    assert first.last_failure is None

    status = MigrationStatus(name="m", state=MigrationState.running, stage="teardown",
                             stages=[StageStatus(name=name, state=StageState.running if name == "teardown" else
                                                 StageState.completed) for name in STAGES])
    show_retries(status, [first])
    assert status.stage_status("teardown").state == StageState.running and status.last_error is None
    show_retries(status, [first, retried])
    teardown = status.stage_status("teardown")
    assert (teardown.state, teardown.attempt, teardown.error) == (StageState.retrying, 4, retried.last_failure)
    assert status.last_error == f"teardown: {retried.last_failure} (attempt 4, retrying)"
    assert secret not in json.dumps(status.model_dump(mode="json"))


def test_a_migration_waiting_for_the_operator_keeps_its_own_error() -> None:
    status = MigrationStatus(name="m", state=MigrationState.waiting_for_operator, stage="deploy",
                             last_error="deploy: InvalidPlan: bad image",
                             stages=[StageStatus(name="deploy", state=StageState.waiting_for_operator,
                                                 error="InvalidPlan: bad image")])
    retried = asyncio.run(decode_pending(CONVERTER, pending(2, RuntimeError("late"))))
    show_retries(status, [retried])
    assert status.stage_status("deploy").state == StageState.waiting_for_operator
    assert status.last_error == "deploy: InvalidPlan: bad image"


def _raise_deep(depth: int) -> None:
    if depth:
        _raise_deep(depth - 1)
    raise RuntimeError("refused by the test proxy: " + "x" * 5000)


@pytest.mark.parametrize("codec", [False, True])
def test_a_long_failure_fits_where_temporal_keeps_a_retried_activity_s_last_failure(codec: bool) -> None:
    """Over 4 KiB, the server would keep "Failure exceeds size limit." instead (a botocore trace is about 5 KiB)."""
    converter = CONVERTER if codec else data_converter(None)
    failure = Failure()
    try:
        _raise_deep(80)
    except RuntimeError as error:
        asyncio.run(converter.encode_failure(error, failure))
    assert failure.ByteSize() < 4 * 1024
    decoded = asyncio.run(converter.decode_failure(failure))
    assert isinstance(decoded, ApplicationError) and decoded.type == "RuntimeError"
    assert decoded.message.startswith("refused by the test proxy: xxx")
    assert decoded.failure is not None and decoded.failure.stack_trace.rstrip().endswith(
        'raise RuntimeError("refused by the test proxy: " + "x" * 5000)')
