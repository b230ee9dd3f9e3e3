"""Plan dicts as a user would write them (locations, a Route53 canary on moto), and where a migration leaves
its manifest."""

from __future__ import annotations

import uuid
from typing import Any

import boto3

from flyaway.activities.storage.activities import CopyStateNames, weights_workflow_id
from flyaway.activities.storage.base import STATE_DIR
from tests.fakes.endpoint import FakeEndpoint
from tests.support.env import TEST_AWS_ENV
from tests.support.servers import MotoServer


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


def route53_zone(moto: MotoServer) -> str:
    """A hosted zone on moto with the Fly record at weight 100 and the new one at 0."""
    route53 = boto3.client("route53", endpoint_url=moto.endpoint, region_name="us-east-1",
                           aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    zone_id = route53.create_hosted_zone(Name="example.com.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    records = [{"Action": "CREATE", "ResourceRecordSet": {
        "Name": "api.example.com.", "Type": "CNAME", "SetIdentifier": name, "Weight": weight, "TTL": 60,
        "ResourceRecords": [{"Value": target}]}}
        for name, weight, target in (("fly", 100, "app.fly.dev"), ("new", 0, "new.example.net"))]
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": records})
    return zone_id


def canary_section(moto: MotoServer, old: FakeEndpoint, new: FakeEndpoint,
                   steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A Route53 canary on moto with one-second analyses of 20 probe requests per side."""
    return {"router": {"kind": "route53", "hosted_zone_id": route53_zone(moto), "record_name": "api.example.com",
                       "fly_set_identifier": "fly", "new_set_identifier": "new", "endpoint_url": moto.endpoint},
            "old_endpoint": old.endpoint, "new_endpoint": new.endpoint, "steps": steps,
            "analysis": {"interval_seconds": 1, "requests_per_probe": 20, "concurrency": 10,
                         "probes": [{"path": "/v1/completions", "method": "POST", "timeout_seconds": 2,
                                     "body": {"model": "tiny", "prompt": "hi", "max_tokens": 1}}],
                         "thresholds": {"min_requests": 20, "min_success_rate": 99}}}
