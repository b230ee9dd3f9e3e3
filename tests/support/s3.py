"""boto3 clients of the test S3 server (moto) and a few object helpers."""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
from botocore.config import Config

from tests.support.env import TEST_AWS_ENV


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"])


def plain_client(endpoint: str) -> Any:
    """A client that adds no checksum of its own, so an object's only checksum is its ETag."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                        config=Config(request_checksum_calculation="when_required"))


def put_multipart(client: Any, bucket: str, key: str, parts: list[bytes], checksum: str | None = None) -> None:
    """A multipart object; with ``checksum`` (e.g. "CRC32", what the AWS SDKs send by default) a COMPOSITE
    additional checksum, each part keeping its own."""
    algorithm = {"ChecksumAlgorithm": checksum} if checksum else {}
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **algorithm)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body, **algorithm)
        done.append({"PartNumber": number, "ETag": answer["ETag"],
                     **{name: value for name, value in answer.items() if name.startswith("Checksum")}})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})


def s3_sha256(s3: Any, bucket: str, key: str) -> str:
    """The sha256 of an object as it is stored, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(8 * 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()
