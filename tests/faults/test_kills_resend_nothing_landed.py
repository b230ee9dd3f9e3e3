"""The worker SIGKILLed 5 times during a copy of one large file and 50 small ones to S3, the last kill
between CompleteMultipartUpload and the copy recording the file: what landed is never sent again. Bytes
re-sent stay within the parts in flight at each kill, and no small file lands twice. Once to a plain bucket,
once to one with SSE-KMS default encryption, answered as AWS answers there (no ETag is an MD5): landed parts,
small files and the completed object are then told by their CRC32."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.figures import report
from tests.support.migrations import eventually, migration_result, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import SseKmsProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess
from tests.support.trees import MiB

pytestmark = pytest.mark.slow
SEED = 14
KILLS = 5
SIZE = 144 * MiB
PART = 8 * MiB
CONCURRENCY = 4
SMALL_FILES = 50
#: how long the proxy sits on the answer to the first CompleteMultipartUpload: the worker is killed meanwhile
COMPLETE_HOLD_SECONDS = 20.0


class CompleteHoldingProxy(SseKmsProxy):
    """Counts object PUTs that landed, by path, and holds the first CompleteMultipartUpload's answer after
    the upstream made the object, so a kill falls between the object existing and the copy knowing it."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.landed_puts: Counter[str] = Counter()
        self.complete_held_at = 0.0

    def hold(self, command: str, path: str, status: int) -> float:
        super().hold(command, path, status)
        if command == "PUT" and status < 300 and "uploadId=" not in path and "/.flyaway-state/" not in path:
            self.landed_puts[path.split("?", 1)[0]] += 1
        if command == "POST" and "uploadId=" in path and status < 300 and not self.complete_held_at:
            self.complete_held_at = time.monotonic()
            return COMPLETE_HOLD_SECONDS
        return 0.0


@pytest.fixture
def holding_proxy(moto_server: MotoServer) -> Any:
    proxy = CompleteHoldingProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()


def source_folder(folder: Path) -> tuple[str, int]:
    """One large file and 50 small ones; the large file's sha256 and the bytes of all of them."""
    folder.mkdir()
    sha = write_random_file(folder / "model.safetensors", SIZE)
    sizes = random.Random(SEED).choices(range(16 * 1024, 256 * 1024), k=SMALL_FILES)
    (folder / "small").mkdir()
    for index, size in enumerate(sizes):
        write_random_file(folder / "small" / f"{index:02d}.json", size)
    return sha, SIZE + sum(sizes)


@pytest.mark.parametrize("encryption", ["none", "sse-kms"])
def test_five_sigkills_resend_only_the_parts_in_flight_and_no_small_file(
        encryption: str, temporal_server: TemporalDevServer, worker: WorkerProcess,
        holding_proxy: CompleteHoldingProxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    if encryption == "sse-kms":
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
        holding_proxy.kms = True
    sha, total = source_folder(tmp_path / "w")
    plan = weights_plan(f"kills-landed-{encryption}", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(holding_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=CONCURRENCY,
                        bandwidth_limit="32MiB")
    parts = SIZE // PART
    kill_points = sorted(random.Random(SEED).sample(range(1, parts - 2), KILLS - 1))  # large-file parts landed
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    killed_at: list[str] = []

    def kill_and_restart() -> None:
        worker.kill()
        worker.start()
        restarted = time.monotonic()
        eventually(lambda: holding_proxy.received_at > restarted, 90, interval=0.05,
                   what="the new worker to take up the copy")

    for point in kill_points:
        eventually(lambda: holding_proxy.landed_parts() >= point, 120, interval=0.02,  # noqa: B023 (polled now)
                   what=f"{point} parts to land")
        assert not holding_proxy.complete_held_at, "the upload completed before this kill; it proves nothing"
        killed_at.append(f"{holding_proxy.landed_parts()} parts landed")
        kill_and_restart()
    eventually(lambda: holding_proxy.complete_held_at, 120, interval=0.05, what="CompleteMultipartUpload")
    killed_at.append("after CompleteMultipartUpload, before the record")
    kill_and_restart()
    result = run_async(migration_result(temporal_server, workflow_id, timeout=180))

    assert result.status.state == MigrationState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    small = {path: count for path, count in holding_proxy.landed_puts.items() if "/small/" in path}
    resent = holding_proxy.uploaded - total
    bound = KILLS * CONCURRENCY * PART
    if encryption == "sse-kms":
        assert s3.head_object(Bucket=bucket, Key="m/model.safetensors")["ServerSideEncryption"] == "aws:kms"
    report(f"kills_resend_nothing_landed_{encryption}", kills=KILLS, killed_at=killed_at, resent_bytes=resent,
           resent_bound_bytes=bound, small_files=len(small), small_files_landed_twice=sum(c > 1 for c in small.values()))
    assert len(small) == SMALL_FILES and set(small.values()) == {1}
    assert 0 <= resent <= bound
    logs = worker.logs()
    assert "upload completed by an earlier attempt; recorded without sending it again" in logs
