"""End to end through the dev server and a worker: every byte lands, the manifest is right,
a re-run copies nothing, a changed file is copied again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flyaway.activities.storage.base import STATE_DIR
from flyaway.models.status import MigrationState, StageState
from tests.support.migrations import run_migration
from tests.support.plans import manifest_key, s3_location, weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree


def read_manifest(s3: Any, bucket: str, prefix: str, plan_name: str) -> dict[str, dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{manifest_key(plan_name)}")["Body"].read()
    return {entry["key"]: entry for entry in map(json.loads, body.decode().splitlines())}


def test_local_to_s3_lands_every_byte_and_a_rerun_copies_nothing(
        temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "weights")
    plan = weights_plan("local-to-s3", {"kind": "local", "path": str(tmp_path / "weights")},
                        s3_location(moto_server.endpoint, bucket, "models/llama"), part_size="5MiB", concurrency=4)

    result = run_migration(temporal_server, plan, worker.task_queue)

    assert result.status.state == MigrationState.completed
    assert result.status.stage_status("weights").state == StageState.completed
    assert result.status.stage_status("teardown").state == StageState.skipped
    for key, data in contents.items():
        assert s3.get_object(Bucket=bucket, Key=f"models/llama/{key}")["Body"].read() == data, key
    manifest = read_manifest(s3, bucket, "models/llama", "local-to-s3")
    import hashlib
    assert {k: (e["size"], e["sha256"]) for k, e in manifest.items()} == {
        k: (len(d), hashlib.sha256(d).hexdigest()) for k, d in contents.items()}
    assert manifest["nested/deeper/shard-00001.bin"]["parts"] == 3
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert result.status.stage_status("weights").detail.startswith(f"{len(contents)} copied, 0 unchanged")

    again = run_migration(temporal_server, plan, worker.task_queue)
    assert again.status.stage_status("weights").detail.startswith(f"0 copied, {len(contents)} unchanged")

    (tmp_path / "weights" / "config.json").write_bytes(b'{"changed": true}')
    third = run_migration(temporal_server, plan, worker.task_queue)
    assert third.status.stage_status("weights").detail.startswith(f"1 copied, {len(contents) - 1} unchanged")
    assert s3.get_object(Bucket=bucket, Key="models/llama/config.json")["Body"].read() == b'{"changed": true}'


def test_s3_to_local_and_local_to_local(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                        moto_server: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "src", seed=7)
    for key, data in contents.items():
        s3.put_object(Bucket=bucket, Key=f"hub/{key}", Body=data)

    run_migration(temporal_server, weights_plan("s3-to-local", s3_location(moto_server.endpoint, bucket, "hub"),
                                                {"kind": "local", "path": str(tmp_path / "from-s3")},
                                                part_size="1MiB"), worker.task_queue)
    run_migration(temporal_server, weights_plan("local-to-local", {"kind": "local", "path": str(tmp_path / "src")},
                                                {"kind": "local", "path": str(tmp_path / "copy")},
                                                part_size="1MiB"), worker.task_queue)

    for folder, name in (("from-s3", "s3-to-local"), ("copy", "local-to-local")):
        found = {str(p.relative_to(tmp_path / folder)): p.read_bytes()
                 for p in (tmp_path / folder).rglob("*") if p.is_file() and STATE_DIR not in p.parts}
        assert found == contents, folder
        state = {str(p.relative_to(tmp_path / folder)) for p in (tmp_path / folder / STATE_DIR).rglob("*")
                 if p.is_file()}
        assert state == {manifest_key(name)}, f"{folder}: leftover state {state}"


def test_a_bucket_with_default_kms_encryption_copies_and_verifies_both_ways(
        temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    """Under SSE-KMS an ETag is not an MD5: S3 checks Content-MD5 on arrival instead, and the copy verifies."""
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
    contents = make_tree(tmp_path / "weights")
    to_s3 = weights_plan("kms-in", {"kind": "local", "path": str(tmp_path / "weights")},
                         s3_location(moto_server.endpoint, bucket, "kms"), part_size="5MiB")
    back = weights_plan("kms-out", s3_location(moto_server.endpoint, bucket, "kms"),
                        {"kind": "local", "path": str(tmp_path / "back")}, part_size="5MiB",
                        exclude=[f"{STATE_DIR}/*"])  # the first copy's state: refused unless excluded

    for plan in (to_s3, back):
        result = run_migration(temporal_server, plan, worker.task_queue)
        assert result.status.state == MigrationState.completed
        assert f"{len(contents)} of {len(contents)} verified" in result.status.stage_status("weights").detail
    assert s3.head_object(Bucket=bucket, Key="kms/config.json")["ServerSideEncryption"] == "aws:kms"
    assert {str(p.relative_to(tmp_path / "back")): p.read_bytes() for p in (tmp_path / "back").rglob("*")
            if p.is_file() and STATE_DIR not in p.parts} == contents
