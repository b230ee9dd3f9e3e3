"""`flyaway plan --dry-run`: what would be copied and skipped, and why, before anything moves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from flyaway.starter.cli import app
from tests.support.migrations import run_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree


def test_dry_run_explains_every_file_and_changes_nothing(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                         tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "src")
    plan = weights_plan("dry", {"kind": "local", "path": str(tmp_path / "src")},
                        {"kind": "local", "path": str(tmp_path / "dst")}, part_size="1MiB",
                        exclude=["empty.txt"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))

    first = CliRunner().invoke(app, ["plan", "--dry-run", "--all", str(plan_file)], terminal_width=200)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.count("copy (new)") == len(contents) - 1
    assert "excluded by include/exclude: 1" in first.stdout
    assert not (tmp_path / "dst" / "config.json").exists()

    run_migration(temporal_server, plan, worker.task_queue)
    (tmp_path / "src" / "config.json").write_text('{"changed": 1}')
    os.remove(tmp_path / "dst" / "tokenizer.json")
    second = CliRunner().invoke(app, ["plan", "--all", "--no-measure", str(plan_file)], terminal_width=200)
    assert second.exit_code == 0, second.stderr
    lines = {line.split("│")[1].strip(): line.split("│")[3].strip()
             for line in second.stdout.splitlines() if line.count("│") == 4}
    assert lines["config.json"] == "copy (changed at the source)"
    assert lines["tokenizer.json"] == "copy (missing at the destination)"
    assert lines["nested/deeper/shard-00002.bin"] == "skip (unchanged)"
    assert "to copy: 2 files" in second.stdout


def test_the_estimate_takes_the_bandwidth_limit_and_says_what_it_assumed(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(40 * 1024 * 1024))
    plan = weights_plan("limited", {"kind": "local", "path": str(folder)},
                        {"kind": "local", "path": str(tmp_path / "dst")}, bandwidth_limit="8MiB")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))

    sampled = CliRunner().invoke(app, ["plan", "--dry-run", str(plan_file)], terminal_width=200)
    assert sampled.exit_code == 0, sampled.stderr
    assert "estimated copy time 0m05s for 40.0 MiB at 8.0 MiB/s, set by bandwidth_limit 8.0 MiB/s" in sampled.stdout
    assert "measured here: read " in sampled.stdout
    assert "assumes the worker's network sustains what a short sample from this machine did" in sampled.stdout

    unsampled = CliRunner().invoke(app, ["plan", "--no-measure", str(plan_file)], terminal_width=200)
    assert "estimated copy time 0m05s for 40.0 MiB at 8.0 MiB/s" in unsampled.stdout
    assert "assumes the network sustains bandwidth_limit (nothing was sampled)" in unsampled.stdout
