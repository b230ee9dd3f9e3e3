"""Plan values at the edges (huge and tiny durations, sizes, provider name rules, a destination in
its source): one line naming the field and exit 2 in the CLI, a non-retryable InvalidPlan in the
workflow, and never a traceback or a workflow task that fails forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from typer.testing import CliRunner

from flyaway.models.plan import parse_plan
from flyaway.starter.cli import app
from tests.support.migrations import migration_result, run_async, start_migration
from tests.support.servers import TemporalDevServer, WorkerProcess

runner = CliRunner()


def plan_with(tmp_path: Path, path: str, value: Any) -> dict[str, Any]:
    """A valid local -> S3 plan with the dotted ``path`` set to ``value``."""
    plan: dict[str, Any] = {"name": "edge", "weights": {
        "source": {"kind": "local", "path": str(tmp_path / "weights")},
        "destination": {"kind": "s3", "bucket": "weights", "endpoint_url": "http://127.0.0.1:9"}}}
    *parents, last = path.split(".")
    node = plan
    for part in parents:
        node = node[part]
    node[last] = value
    return plan


#: (what is wrong, dotted path, value, text the one error line must contain)
EDGE_VALUES = [
    ("retry interval of 1e308 seconds", "weights.retry_max_interval", 1e308,
     "plan.weights.retry_max_interval: '1e+308' is not a duration flyaway can wait; write it like 90s"),
    ("retry interval of 99999999999h", "weights.retry_max_interval", "99999999999h",
     "plan.weights.retry_max_interval: '99999999999h' is not a duration flyaway can wait"),
    ("retry interval over a year", "weights.retry_max_interval", "9000h",
     "plan.weights.retry_max_interval: 375 days, 0:00:00 is too long; write it like 90s, 5m or 1h30m, at most 365"),
    ("retry interval of 1 ms", "weights.retry_max_interval", "0.001s",
     "plan.weights.retry_max_interval: 0.001s is too short; give at least 1s"),
    ("heartbeat timeout of 0.0001s", "weights.heartbeat_timeout", "0.0001s",
     "plan.weights.heartbeat_timeout: 0.0001s is too short; give at least 5s"),
    ("teardown heartbeat of 0.0001s", "teardown", {"app": "old-app", "no_traffic_stage_ok": True,
                                                   "heartbeat_timeout": "0.0001s"},
     "plan.teardown.heartbeat_timeout: 0.0001s is too short; give at least 1s"),
    ("attempts over Temporal's int32", "weights.max_attempts", 10**12,
     "plan.weights.max_attempts: Input should be less than or equal to 10000"),
    ("negative part size", "weights.part_size", "-5MiB",
     "plan.weights.part_size: '-5MiB' is not a size; write a whole number of bytes (0 or more) or a size like"),
    ("negative bandwidth", "weights.bandwidth_limit", -1, "plan.weights.bandwidth_limit: '-1' is not a size"),
    ("canary pause of 1e308 seconds", "canary", {"new_endpoint": "https://new.example", "old_endpoint":
                                                 "https://old.example", "router": {"kind": "manual"},
                                                 "steps": [{"weight": 50, "pause_seconds": 1e308}]},
     "plan.canary.steps.0.pause_seconds: Input should be less than or equal to 31536000"),
    ("S3 bucket with two dots", "weights.destination.bucket", "a..b",
     "plan.weights.destination.bucket: 'a..b' is not a valid bucket name: dots must separate labels"),
    ("S3 bucket like an IP address", "weights.destination.bucket", "192.168.1.1",
     "plan.weights.destination.bucket: '192.168.1.1' is not a valid bucket name: it looks like an IP address"),
    ("S3 bucket with a reserved prefix", "weights.destination.bucket", "xn--abc",
     "plan.weights.destination.bucket: 'xn--abc' is not a valid bucket name: S3 reserves the prefixes xn--"),
    ("S3 bucket with an underscore", "weights.destination.bucket", "ab_cd",
     "plan.weights.destination.bucket: 'ab_cd' is not a valid bucket name (3-63 lowercase letters"),
    ("GCS bucket with two dots", "weights.destination", {"kind": "gcs", "bucket": "a..b"},
     "plan.weights.destination.bucket: 'a..b' is not a valid bucket name: dots must separate labels"),
    ("GCS bucket like an IP address", "weights.destination", {"kind": "gcs", "bucket": "192.168.1.1"},
     "plan.weights.destination.bucket: '192.168.1.1' is not a valid bucket name: it looks like an IP address"),
    ("GCS bucket named after google", "weights.destination", {"kind": "gcs", "bucket": "my-google-weights"},
     "plan.weights.destination.bucket: 'my-google-weights' is not a valid GCS bucket name: names may not start"),
    ("HF revision with ..", "weights.source", {"kind": "hf", "repo_id": "org/model", "revision": "main..dev"},
     "plan.weights.source.revision: 'main..dev' is not a git revision; give a branch, tag or commit sha"),
    ("HF revision with a space", "weights.source", {"kind": "hf", "repo_id": "org/model", "revision": "my branch"},
     "plan.weights.source.revision: 'my branch' is not a git revision"),
    ("image variable that is not a name", "image", {"destination": "ghcr.io/org/app", "set_env": {"BAD-NAME": "1"}},
     "plan.image.set_env: 'BAD-NAME' is not an environment variable name"),
    ("destination in the source folder", "weights.destination", {"kind": "local", "path": "/srv/weights/copy"},
     "plan.weights: destination local:/srv/weights/copy is inside its source local:/srv/weights; choose a "
     "destination outside the source"),
    ("destination is the source folder", "weights.destination", {"kind": "local", "path": "/srv/weights/"},
     "plan.weights: destination local:/srv/weights/ is the same place as its source local:/srv/weights"),
]


def edge_plan(tmp_path: Path, path: str, value: Any) -> dict[str, Any]:
    """``plan_with``, its source at /srv/weights when the destination is a folder."""
    plan = plan_with(tmp_path, path, value)
    if plan["weights"]["destination"]["kind"] == "local":
        plan["weights"]["source"]["path"] = "/srv/weights"
    return plan


@pytest.mark.parametrize(("what", "path", "value", "expected"), EDGE_VALUES, ids=[e[0] for e in EDGE_VALUES])
def test_an_edge_value_is_one_line_and_exit_2(tmp_path: Path, what: str, path: str, value: Any,
                                              expected: str) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(edge_plan(tmp_path, path, value)))
    result = runner.invoke(app, ["validate", "--offline", str(plan_file)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("bucket", ["ab_cd", "weights.v2", "a" * 63])
def test_gcs_takes_the_names_google_allows(tmp_path: Path, bucket: str) -> None:
    plan = plan_with(tmp_path, "weights.destination", {"kind": "gcs", "bucket": bucket})
    assert parse_plan(plan).weights.destination.bucket == bucket


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"])
def test_hf_revisions_git_allows_are_taken(tmp_path: Path, revision: str) -> None:
    plan = plan_with(tmp_path, "weights.source", {"kind": "hf", "repo_id": "org/model", "revision": revision})
    assert parse_plan(plan).weights.source.revision == revision


def test_a_sibling_or_a_bucket_prefix_beside_the_source_is_fine(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "weights.destination", {"kind": "local", "path": "/srv/weights-copy"})
    plan["weights"]["source"]["path"] = "/srv/weights"
    assert parse_plan(plan).weights.destination.path == "/srv/weights-copy"
    s3 = {"kind": "s3", "bucket": "weights", "endpoint_url": "http://127.0.0.1:9"}
    plan["weights"].update(source={**s3, "prefix": "models/a"}, destination={**s3, "prefix": "models/ab"})
    assert parse_plan(plan).weights.destination.prefix == "models/ab"
    plan["weights"]["destination"]["prefix"] = "models/a/copy"
    with pytest.raises(ValueError, match="is inside its source"):
        parse_plan(plan)


@pytest.mark.parametrize("endpoint", [None, "https://t3.storage.dev", "https://fly.storage.tigris.dev"])
def test_an_s3_destination_at_any_tigris_host_is_the_tigris_source_bucket(tmp_path: Path,
                                                                            endpoint: str | None) -> None:
    plan = plan_with(tmp_path, "weights.destination", {"kind": "s3", "bucket": "weights", "prefix": "llama/copy",
                                                       "endpoint_url": endpoint or "https://t3.storage.dev"})
    plan["weights"]["source"] = {"kind": "tigris", "bucket": "weights", "prefix": "llama",
                                 **({"endpoint_url": endpoint} if endpoint else {})}
    with pytest.raises(ValueError, match="is inside its source tigris://weights/llama"):
        parse_plan(plan)
    plan["weights"]["destination"]["endpoint_url"] = "https://s3.us-east-1.amazonaws.com"
    assert parse_plan(plan).weights.destination.prefix == "llama/copy"


def test_edge_values_through_temporal_end_the_workflow_as_invalid_plan(
        tmp_path: Path, temporal_server: TemporalDevServer, worker: WorkerProcess) -> None:
    cases = [case for case in EDGE_VALUES if "1e308" in case[0] or "99999999999h" in case[0] or "int32" in case[0]
             or "0.0001s" in case[0] or "two dots" in case[0] or "revision" in case[0] or "in the source" in case[0]]

    async def start_all() -> list[BaseException]:
        ids = []
        for number, (_, path, value, _) in enumerate(cases):
            plan = {**edge_plan(tmp_path, path, value), "name": f"edge-{number}"}
            ids.append(await start_migration(temporal_server, plan, worker.task_queue))
        causes = []
        for workflow_id in ids:
            with pytest.raises(WorkflowFailureError) as failure:
                await migration_result(temporal_server, workflow_id, timeout=30)
            causes.append(failure.value.cause)
        return causes

    for (what, _, _, expected), cause in zip(cases, run_async(start_all()), strict=True):
        assert isinstance(cause, ApplicationError), (what, cause)
        assert cause.type == "InvalidPlan" and cause.non_retryable, what
        assert expected in cause.message, (what, cause.message)
