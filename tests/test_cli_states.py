"""Every CLI command's exit code and first line, for each state a migration can be in, against the dev server.

Scripts read these: ``status`` exits 0 only while a migration runs or once it completed; a control
prints the NEW state (``pause: migration-x is now paused``) and a refused one says why, exit 2.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from flyaway.models.status import MigrationState
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from tests.support.migrations import eventually, migration_status, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.servers import TemporalDevServer, WorkerProcess

MiB = 1024 * 1024
runner = CliRunner()

#: (arguments after the command's name, exit code, start of the first line of its output)
Case = tuple[tuple[str, ...], int, str]


def first_line(result: Any) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return lines[0] if lines else ""


def run_cases(server: TemporalDevServer, state: str, cases: list[Case]) -> None:
    for args, code, first in cases:
        result = runner.invoke(app, [*args, "--address", server.address], terminal_width=200)
        assert "Traceback" not in result.stdout + result.stderr, (state, args, result.stdout + result.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), (state, args, result.exception)
        assert (result.exit_code, first_line(result)[:len(first)]) == (code, first), (state, args, result.output)


def wait_for_state(server: TemporalDevServer, workflow_id: str, state: MigrationState, timeout: float = 60) -> None:
    eventually(lambda: run_async(migration_status(server, workflow_id)).state == state, timeout, what=state.value)


def slow_local_plan(name: str, tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "weights"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 160 * MiB)
    return weights_plan(name, {"kind": "local", "path": str(folder)}, {"kind": "local", "path": str(tmp_path / "out")},
                        part_size="8MiB", concurrency=2, bandwidth_limit="4MiB")


def test_running_then_aborted(temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    plan = slow_local_plan("states", tmp_path)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    wait_for_state(temporal_server, workflow_id, MigrationState.running)
    ended = "has ended (aborted); there is nothing to"
    run_cases(temporal_server, "running", [
        (("status", "states"), 0, "migration-states running (stage weights)"),
        (("resume", "states"), 2, "error: resume refused: the migration is not paused"),
        (("retry", "states"), 2, "error: retry refused: nothing to retry: the migration is running"),
        (("approve", "states", "teardown"), 2, "error: approve refused: stage 'teardown' is not in this"),
        (("promote", "states"), 2, "error: promote refused:"),
    ])
    run_cases(temporal_server, "tuned and paused before the abort", [
        (("tune", "states", "--concurrency", "3", "--bandwidth", "8MiB"), 0,
         "tune: migration-states is now running; concurrency 3, bandwidth 8.0 MiB/s"),
        (("pause", "states"), 0, "pause: migration-states is now paused"),
        (("tune", "states", "--bandwidth", "2MiB"), 0,
         "tune: migration-states is now paused; concurrency 3, bandwidth 2.0 MiB/s"),
        (("resume", "states"), 0, "resume: migration-states is now running"),
    ])
    run_cases(temporal_server, "aborted", [
        (("abort", "states", "--reason", "test"), 0, "abort: migration-states is now aborted"),
        (("status", "states"), 1, "migration-states aborted"),
        (("abort", "states"), 2, f"error: abort refused: migration-states {ended} abort"),
        (("pause", "states"), 2, f"error: pause refused: migration-states {ended} pause"),
        (("tune", "states", "--concurrency", "1"), 2, f"error: tune refused: migration-states {ended} tune"),
        (("retry", "states"), 2, f"error: retry refused: migration-states {ended} retry"),
        (("status", "nothing-here"), 2, "error: no migration migration-nothing-here"),
    ])


def test_tuned_paused_waiting_for_the_operator_then_completed(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                 s3_proxy: S3FaultProxy, bucket: str, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 48 * MiB)
    plan = weights_plan("stuck", {"kind": "local", "path": str(folder)}, s3_location(s3_proxy.endpoint, bucket, "m"),
                        part_size="8MiB", concurrency=1, bandwidth_limit="8MiB")
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    wait_for_state(temporal_server, workflow_id, MigrationState.running)
    run_cases(temporal_server, "running", [
        (("tune", "stuck", "--concurrency", "3"), 0,
         "tune: migration-stuck is now running; concurrency 3, bandwidth 8.0 MiB/s"),
        (("pause", "stuck"), 0, "pause: migration-stuck is now paused"),
        (("status", "stuck"), 1, "migration-stuck paused (stage weights)"),
        (("pause", "stuck"), 2, "error: pause refused: the migration is already paused"),
        (("tune", "stuck", "--bandwidth", "0"), 0, "tune: migration-stuck is now paused; concurrency 3, bandwidth "
                                                   "unlimited"),
        (("tune", "stuck", "--bandwidth", "4MiB"), 0, "tune: migration-stuck is now paused; concurrency 3, bandwidth "
                                                      "4.0 MiB/s"),
    ])
    run_cases(temporal_server, "resumed", [(("resume", "stuck"), 0, "resume: migration-stuck is now running")])
    s3_proxy.mode = "deny"  # AccessDenied is for the operator to fix: the stage waits for them
    wait_for_state(temporal_server, workflow_id, MigrationState.waiting_for_operator, timeout=90)
    run_cases(temporal_server, "waiting_for_operator", [
        (("status", "stuck"), 1, "migration-stuck waiting_for_operator (stage weights)"),
    ])
    s3_proxy.mode = "pass"
    run_cases(temporal_server, "retried", [(("retry", "stuck"), 0, "retry: migration-stuck is now running")])
    wait_for_state(temporal_server, workflow_id, MigrationState.completed, timeout=120)
    ended = "has ended (completed); there is nothing to"
    run_cases(temporal_server, "completed", [
        (("status", "stuck"), 0, "migration-stuck completed"),
        (("abort", "stuck"), 2, f"error: abort refused: migration-stuck {ended} abort"),
        (("pause", "stuck"), 2, f"error: pause refused: migration-stuck {ended} pause"),
        (("approve", "stuck", "teardown"), 2, f"error: approve refused: migration-stuck {ended} approve"),
    ])
    worker.stop()  # an ended migration's status needs no worker: it comes from its result
    run_cases(temporal_server, "completed, no worker", [(("status", "stuck"), 0, "migration-stuck completed")])


class HoldingProxy(S3FaultProxy):
    """Sits on every answer while ``holding`` is set (at most ``limit`` seconds), so a plan check lasts."""

    def __init__(self, upstream_port: int, limit: float = 30) -> None:
        super().__init__(upstream_port)
        self.holding = threading.Event()
        self.limit = limit

    def hold(self, command: str, path: str, status: int) -> float:
        deadline = time.monotonic() + self.limit
        while self.holding.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        return 0.0


def test_validating_and_failed(temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any,
                               bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    proxy = HoldingProxy(moto_server.port)
    proxy.start()
    try:
        proxy.holding.set()
        plan = weights_plan("checking", s3_location(proxy.endpoint, bucket, "m"),
                            {"kind": "local", "path": str(tmp_path / "out")})
        workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
        wait_for_state(temporal_server, workflow_id, MigrationState.validating)
        run_cases(temporal_server, "validating", [
            (("status", "checking"), 0, "migration-checking validating (stage validate)"),
            (("retry", "checking"), 2, "error: retry refused: nothing to retry: the migration is validating"),
        ])
        threading.Timer(2, proxy.holding.clear).start()  # the abort takes effect once the check is done
        run_cases(temporal_server, "aborted while validating", [
            (("abort", "checking"), 0, "abort: migration-checking is now aborted")])
    finally:
        proxy.holding.clear()
        proxy.stop()

    plan_file = tmp_path / "missing.yaml"
    plan_file.write_text(f"name: missing\nweights:\n  source: {{kind: local, path: {tmp_path / 'nowhere'}}}\n"
                         f"  destination: {{kind: local, path: {tmp_path / 'out'}}}\n")
    missing = f"source folder {tmp_path / 'nowhere'} does not exist"
    validated = runner.invoke(app, ["validate", str(plan_file)])
    assert (validated.exit_code, first_line(validated)) == (
        2, f"error: weights: {missing} on this machine (checked in this shell, not on the worker)")
    run_cases(temporal_server, "refused by the check in this shell", [
        (("start", str(plan_file), "--task-queue", worker.task_queue), 2,
         f"error: weights: {missing} on this machine (checked in this shell, not on the worker); if the worker "
         f"has what this shell lacks, --no-check leaves the check to it"),
        (("start", str(plan_file), "--no-check", "--task-queue", worker.task_queue), 0, "started migration-missing"),
    ])
    eventually(lambda: runner.invoke(app, ["status", "missing", "--address", temporal_server.address]).exit_code == 1,
               60, what="the invalid plan to fail")
    run_cases(temporal_server, "failed", [
        (("status", "missing"), 1, "migration-missing failed"),
        (("abort", "missing"), 2, "error: abort refused: migration-missing has ended (failed)"),
        (("start", str(plan_file), "--no-check", "--task-queue", worker.task_queue), 0, "started migration-missing"),
    ])


def test_start_attaches_to_the_same_plan_and_refuses_an_edited_one(temporal_server: TemporalDevServer,
                                                                   worker: WorkerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 64 * MiB)
    plan_file = tmp_path / "plan.yaml"
    text = (f"name: edited\nweights:\n  source: {{kind: local, path: {folder}}}\n"
            f"  destination: {{kind: local, path: {tmp_path / 'out'}}}\n  concurrency: 2\n  bandwidth_limit: 4MiB\n")
    plan_file.write_text(text)
    start = ("start", str(plan_file), "--task-queue", worker.task_queue)
    run_cases(temporal_server, "not started", [(start, 0, "started migration-edited")])
    run_cases(temporal_server, "running, same plan", [(start, 0, "already running with this plan, attached to "
                                                                 "migration-edited")])
    plan_file.write_text(text.replace("concurrency: 2", "concurrency: 4").replace("4MiB", "8MiB"))
    result = runner.invoke(app, [*start, "--address", temporal_server.address])
    assert result.exit_code == 2
    assert first_line(result) == ("error: migration-edited is already running with a different plan; abort it "
                                  "(`flyaway abort edited`) or give the edited plan another name. What differs "
                                  f"(running -> {plan_file}):")
    assert [line.strip() for line in result.stderr.splitlines()[1:]] == [
        "weights.concurrency: 2 -> 4", "weights.bandwidth_limit: 4194304 -> 8388608"]
    run_cases(temporal_server, "edited plan refused", [(("abort", "edited"), 0, "abort: migration-edited is now "
                                                                                "aborted")])
