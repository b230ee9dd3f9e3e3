"""Each migration owns its state at a shared destination: two migrations into one folder both verify
every one of their files without touching the other's manifest, and one writing keys another is still
writing is refused before a byte moves, naming the other."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flyaway.models.status import MigrationState
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import manifest_key, weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess

MiB = 1024 * 1024


def folder_of(path: Path, names: list[str], size: int = MiB) -> dict[str, bytes]:
    path.mkdir(parents=True)
    contents = {name: os.urandom(size) for name in names}
    for name, data in contents.items():
        (path / name).write_bytes(data)
    return contents


def manifest_keys(out: Path, plan_name: str) -> list[str]:
    return sorted(json.loads(line)["key"] for line in (out / manifest_key(plan_name)).read_text().splitlines())


def test_two_migrations_into_one_folder_each_verify_their_own_and_one_on_the_same_keys_is_refused(
        temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    slow_files = folder_of(tmp_path / "slow", [f"slow-{i}.bin" for i in range(5)], size=3 * MiB)
    quick_files = folder_of(tmp_path / "quick", ["quick-0.bin", "quick-1.bin", "quick-2.bin"])
    folder_of(tmp_path / "clash", ["slow-3.bin", "other.bin"])
    destination = {"kind": "local", "path": str(out)}
    slow = weights_plan("state-slow", {"kind": "local", "path": str(tmp_path / "slow")}, destination,
                        batch_files=1, bandwidth_limit="512KiB", part_size="1MiB")  # about 30 s
    quick = weights_plan("state-quick", {"kind": "local", "path": str(tmp_path / "quick")}, destination)
    clash = weights_plan("state-clash", {"kind": "local", "path": str(tmp_path / "clash")}, destination)

    slow_id = run_async(start_migration(temporal_server, slow, worker.task_queue))
    eventually(lambda: (out / "slow-0.bin").exists(), 60, what="the slow migration's first file")
    quick_result = run_async(migration_result(temporal_server, run_async(
        start_migration(temporal_server, quick, worker.task_queue)), timeout=120))
    quick_manifest = (out / manifest_key("state-quick")).read_bytes()
    clash_id = run_async(start_migration(temporal_server, clash, worker.task_queue))
    refused = eventually(lambda: (s := run_async(migration_status(temporal_server, clash_id))).state
                         == MigrationState.waiting_for_operator and s, 60, what="the clashing migration refused")
    slow_result = run_async(migration_result(temporal_server, slow_id, timeout=120))

    assert quick_result.status.state == slow_result.status.state == MigrationState.completed
    assert refused.last_error is not None and "InvalidPlan" in refused.last_error
    assert "migration migration-state-slow-weights is writing the same keys ('slow-3.bin'" in refused.last_error
    assert not (out / "other.bin").exists()  # refused before any byte moved
    assert manifest_keys(out, "state-slow") == sorted(slow_files)
    assert manifest_keys(out, "state-quick") == sorted(quick_files)
    assert (out / manifest_key("state-quick")).read_bytes() == quick_manifest  # the slow one's verify left it be
    assert all((out / name).read_bytes() == data for name, data in {**slow_files, **quick_files}.items())
    for result in (quick_result, slow_result):
        detail = result.status.stage_status("weights").detail
        total = len(quick_files) if result is quick_result else len(slow_files)
        assert f"{total} of {total} verified, {total} without a source checksum" in detail
