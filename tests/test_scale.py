"""100,000 files: the copy completes, continues as new, and its history stays small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flyaway.models.status import MigrationState
from tests.support.migrations import run_async, run_migration
from tests.support.plans import manifest_key, weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess

FILES = 100_000
pytestmark = pytest.mark.slow


def make_many_files(root: Path, count: int) -> None:
    """count tiny files, 1,000 per folder; each holds its own name so a mix-up shows."""
    for index in range(count):
        folder = root / f"shard-{index // 1000:03d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{index:06d}.json").write_bytes(f'{{"file": {index}}}'.encode())


async def history_events(server: TemporalDevServer, workflow_id: str) -> tuple[int, int]:
    """(runs, events) over every run of a workflow id, continue-as-new chain included."""
    client = await server.client()
    runs = events = 0
    async for execution in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        runs += 1
        history = await client.get_workflow_handle(workflow_id, run_id=execution.run_id).fetch_history()
        events += len(history.events)
    return runs, events


def test_a_hundred_thousand_files(temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    make_many_files(tmp_path / "src", FILES)
    plan = weights_plan("many-files", {"kind": "local", "path": str(tmp_path / "src")},
                        {"kind": "local", "path": str(tmp_path / "dst")}, concurrency=16)

    result = run_migration(temporal_server, plan, worker.task_queue, timeout=1800)

    assert result.status.state == MigrationState.completed
    assert result.status.files_done == FILES
    copied = sum(len(files) for _, _, files in os.walk(tmp_path / "dst" / "shard-000"))
    assert copied == 1000
    assert (tmp_path / "dst" / "shard-099" / "f099999.json").read_bytes() == b'{"file": 99999}'
    manifest = (tmp_path / "dst" / manifest_key(plan["name"])).read_bytes()
    assert manifest.count(b"\n") == FILES
    runs, events = run_async(history_events(temporal_server, "migration-many-files-weights"))
    print(f"\n{FILES} files: {runs} runs of CopyWeightsWorkflow, {events} history events "
          f"({events * 1000 / FILES:.1f} per 1,000 files); worker peak RSS {worker.peak_rss / 2**20:.0f} MiB")
    assert runs >= 2, "the copy should have continued as new"
    assert events * 1000 / FILES < 50
