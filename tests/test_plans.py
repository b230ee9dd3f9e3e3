"""Bad plans: one clear line naming the field or resource, a non-zero exit, nothing written;
and the same plans started through Temporal directly (as the UI would) fail fast, for good."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from typer.testing import CliRunner

from flyaway.starter.cli import app
from flyaway.starter.dev import free_port
from tests.support.migrations import migration_result, run_async, start_migration
from tests.support.plans import s3_location
from tests.support.proxies import S3FaultProxy
from tests.support.servers import TemporalDevServer, WorkerProcess

runner = CliRunner()


def base_plan(tmp_path: Path, endpoint: str, bucket: str) -> dict[str, Any]:
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / "config.json").write_text("{}")
    return {"name": "bad", "weights": {"source": {"kind": "local", "path": str(tmp_path / "weights")},
                                       "destination": s3_location(endpoint, bucket, "models")}}


def changed(plan: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``plan`` with the dotted ``path`` set to ``value`` (deleted when value is ...)."""
    plan = copy.deepcopy(plan)
    *parents, last = path.split(".")
    node = plan
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return plan


#: (what is wrong, dotted path to change, new value, text the one error line must contain)
SHAPE_ERRORS = [
    ("unknown source kind", "weights.source", {"kind": "ftp", "path": "/x"},
     "plan.weights.source: unknown kind 'ftp'"),
    ("missing bucket", "weights.destination.bucket", ..., "plan.weights.destination.bucket: required field"),
    ("negative part size", "weights.part_size", -5 * 1024 * 1024, "plan.weights.part_size:"),
    ("tiny part size", "weights.part_size", "1KiB", "plan.weights.part_size: 1024 bytes is out of range"),
    ("prefix escaping with ..", "weights.destination.prefix", "models/../../etc",
     "plan.weights.destination.prefix: 'models/../../etc' escapes its prefix"),
    ("absolute prefix", "weights.destination.prefix", "/models", "plan.weights.destination.prefix: '/models' is absolute"),
    ("relative local path", "weights.source.path", "weights", "plan.weights.source.path: 'weights' is relative"),
    ("local path with ..", "weights.source.path", "/srv/../etc", "plan.weights.source.path: '/srv/../etc' contains '..'"),
    ("unknown stage field", "weights.chunk_size", "8MiB", "plan.weights.chunk_size: unknown field"),
    ("image without a source", "image", {"destination": "gcr.io/x/y"}, "plan.image: give source"),
    ("bad plan name", "name", "My Plan", "plan.name: 'My Plan' is not a valid name"),
    ("zero concurrency", "weights.concurrency", 0, "plan.weights.concurrency:"),
    ("include escaping", "weights.include", ["../secrets/*"], "plan.weights.include: pattern '../secrets/*' escapes"),
    ("credential value instead of a name", "weights.destination.credentials",
     {"access_key_id_env": "AKIA EXAMPLE"}, "plan.weights.destination.credentials.access_key_id_env:"),
    ("bad duration", "weights.heartbeat_timeout", "soon", "plan.weights.heartbeat_timeout: 'soon' is not a duration"),
    ("bad bucket name", "weights.destination.bucket", "Bad_Bucket!", "plan.weights.destination.bucket: 'Bad_Bucket!'"),
]


def write_plan(tmp_path: Path, plan: dict[str, Any], name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(plan))
    return path


def assert_one_error_line(result: Any, expected: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(("what", "path", "value", "expected"), SHAPE_ERRORS, ids=[e[0] for e in SHAPE_ERRORS])
def test_plan_shape_errors_name_the_field(tmp_path: Path, what: str, path: str, value: Any, expected: str) -> None:
    plan = changed(base_plan(tmp_path, "http://127.0.0.1:9", "bucket"), path, value)
    assert_one_error_line(runner.invoke(app, ["validate", "--offline", str(write_plan(tmp_path, plan))]), expected)


def test_unparseable_yaml_is_one_line_with_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: x\nweights: {source: {kind: local path: /x}}\n")
    assert_one_error_line(runner.invoke(app, ["validate", str(path)]),
                          f"{path}:2:36: not valid YAML: expected ',' or '}}', but got ':' "
                          f"(while parsing a flow mapping at line 2, column 19)")
    path.write_text("name: x\nweights: [unclosed\n")
    assert_one_error_line(runner.invoke(app, ["validate", str(path)]), f"{path}:3:1: not valid YAML")
    json_path = tmp_path / "plan.json"
    json_path.write_text('{"name": "x",\n "weights": {"source": }}')
    assert_one_error_line(runner.invoke(app, ["validate", str(json_path)]),
                          f"{json_path}:2:24: not valid JSON: Expecting value")


def test_a_field_error_names_the_line_of_the_field(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: x\nweights:\n  source: {kind: local, path: /data}\n  destination:\n    kind: local\n"
                    "    path: /out\n  part_size: -5MiB\n")
    result = runner.invoke(app, ["validate", "--offline", str(path)])
    assert_one_error_line(result, f"{path}:7: plan.weights.part_size:")


def test_a_good_plan_validates_and_the_schema_is_published(tmp_path: Path, moto_server: Any, bucket: str) -> None:
    plan = base_plan(tmp_path, moto_server.endpoint, bucket)
    result = runner.invoke(app, ["validate", str(write_plan(tmp_path, plan))])
    assert result.exit_code == 0, result.stderr
    assert "plan bad is valid" in result.stdout
    schema = json.loads(runner.invoke(app, ["schema"]).stdout)
    assert set(schema["properties"]) >= {"name", "weights", "image", "secrets", "deploy", "canary", "teardown"}
    assert schema["required"] == ["name", "weights"]


def online_errors(tmp_path: Path, endpoint: str, bucket: str, denied_endpoint: str) -> list[tuple[str, dict, str]]:
    plan = base_plan(tmp_path, endpoint, bucket)
    return [
        ("unreachable endpoint", changed(plan, "weights.destination.endpoint_url", f"http://127.0.0.1:{free_port()}"),
         "does not answer"),
        ("missing credentials", changed(plan, "weights.destination.credentials",
                                        {"access_key_id_env": "UNSET_TEST_KEY"}),
         "environment variable UNSET_TEST_KEY is not set"),
        ("missing bucket", changed(plan, "weights.destination.bucket", "no-such-bucket-here"),
         "bucket s3://no-such-bucket-here does not exist"),
        ("denied bucket", changed(plan, "weights.destination.endpoint_url", denied_endpoint),
         f"bucket s3://{bucket}: access denied"),
        ("missing source folder", changed(plan, "weights.source.path", str(tmp_path / "nowhere")),
         f"source folder {tmp_path / 'nowhere'} does not exist"),
    ]


def test_online_errors_fail_validate_and_fail_fast_through_temporal(
        tmp_path: Path, temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any,
        bucket: str, s3_proxy: S3FaultProxy) -> None:
    s3_proxy.mode = "deny"
    cases = online_errors(tmp_path, moto_server.endpoint, bucket, s3_proxy.endpoint)
    for what, plan, expected in cases:
        result = runner.invoke(app, ["validate", str(write_plan(tmp_path, plan, f"{what}.json"))])
        assert result.exit_code == 2, what
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            line for line in result.stderr.splitlines() if expected in line], (what, result.stderr)

    async def start_all() -> list[BaseException | None]:
        ids = [await start_migration(temporal_server, changed(plan, "name", f"bad-{i}"), worker.task_queue)
               for i, (_, plan, _) in enumerate(cases)]
        outcomes: list[BaseException | None] = []
        for workflow_id in ids:
            try:
                await migration_result(temporal_server, workflow_id, timeout=90)
                outcomes.append(None)
            except WorkflowFailureError as error:
                outcomes.append(error.cause)
        return outcomes

    for (what, _, expected), cause in zip(cases, run_async(start_all()), strict=True):
        assert isinstance(cause, ApplicationError), what
        assert cause.non_retryable and cause.type == "InvalidPlan", what
        assert expected in cause.message, (what, cause.message)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_shape_error_through_temporal_fails_the_workflow_at_once(
        tmp_path: Path, temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any,
        bucket: str) -> None:
    plan = changed(base_plan(tmp_path, moto_server.endpoint, bucket), "weights.destination.prefix", "../escape")

    async def go() -> BaseException:
        workflow_id = await start_migration(temporal_server, plan, worker.task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await migration_result(temporal_server, workflow_id, timeout=30)
        return failure.value.cause

    cause = run_async(go())
    assert isinstance(cause, ApplicationError) and cause.non_retryable
    assert "plan.weights.destination.prefix: '../escape' escapes its prefix" in cause.message
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
