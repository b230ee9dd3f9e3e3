"""Plan dicts as a user would write them, and where a migration leaves its manifest."""

from __future__ import annotations

from typing import Any

from flyaway.activities.storage.activities import CopyStateNames, weights_workflow_id
from flyaway.activities.storage.base import STATE_DIR


def weights_plan(name: str, source: dict[str, Any], destination: dict[str, Any], **weights: Any) -> dict[str, Any]:
    """A plan dict with only the weights stage, with test-friendly timeouts."""
    stage = {"source": source, "destination": destination, "heartbeat_timeout": "5s",
             "retry_max_interval": "2s", **weights}
    return {"name": name, "weights": stage}


def s3_location(endpoint: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    return {"kind": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint, "addressing_style": "path"}


def tigris_location(endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    return {"kind": "tigris", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint,
            "addressing_style": "path"}


def runpod_location(endpoint: str, volume: str, prefix: str) -> dict[str, Any]:
    return {"kind": "runpod_volume", "volume_id": volume, "datacenter": "EUR-IS-1", "prefix": prefix,
            "endpoint_url": endpoint}


def gcs_location(bucket: str, prefix: str) -> dict[str, Any]:
    return {"kind": "gcs", "bucket": bucket, "prefix": prefix}


def manifest_key(plan_name: str) -> str:
    """Where a migration's verified manifest lives, relative to its destination prefix."""
    return f"{STATE_DIR}/{CopyStateNames(weights_workflow_id(f'migration-{plan_name}')).manifest}"
