"""`flyaway plan --dry-run`: what would be copied and skipped, and why, before anything moves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from flyaway.starter.cli import app
from tests.fixtures import make_tree
from tests.harness import TemporalDevServer, WorkerProcess, run_migration, weights_plan


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
