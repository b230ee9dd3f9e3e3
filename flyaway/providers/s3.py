"""AWS and S3-compatible stores (AWS, Tigris, RunPod volumes, moto, ...) through boto3: clients for S3 and
Route53, which errors are transient, and an error's code and status.

botocore's own retries are off: every request goes through tenacity, so transient errors are
retried the same way for every provider.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError as ClientError,  # what an answer other than success raises: adapters tell them apart by code
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    NoCredentialsError as NoCredentialsError,
)
from pydantic import HttpUrl

from flyaway.errors import MissingCredentials
from flyaway.models.locations import RunPodVolumeLocation, S3Location, TigrisLocation
from flyaway.providers.http import CONNECT_TIMEOUT_SECONDS, stall_seconds, transient_status
from flyaway.providers.runpod import runpod_s3_endpoint

#: plan locations served by the S3 API; :func:`s3_settings` gives their connection settings
S3Compatible = S3Location | TigrisLocation | RunPodVolumeLocation
#: no answer: the connection failed, was cut, or timed out
NETWORK_ERRORS = (BotoConnectionError, HTTPClientError)
#: codes worth another request whatever their status (Route53's PriorRequestNotComplete: a change to the zone
#: is still being applied)
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed", "IncompleteBody", "PriorRequestNotComplete"}


#: Tigris's S3 endpoint, where a plan names no other
TIGRIS_ENDPOINT = "https://t3.storage.dev"


def s3_settings(location: S3Compatible) -> S3Location:
    """The S3 connection settings of any S3-compatible location: its endpoint, region and addressing."""
    if isinstance(location, TigrisLocation):
        return S3Location(kind="s3", bucket=location.bucket, prefix=location.prefix,
                          endpoint_url=location.endpoint_url or HttpUrl(TIGRIS_ENDPOINT), region="auto",
                          addressing_style=location.addressing_style, credentials=location.credentials)
    if isinstance(location, RunPodVolumeLocation):
        return S3Location(kind="s3", bucket=location.volume_id, prefix=location.prefix,
                          endpoint_url=location.endpoint_url or HttpUrl(runpod_s3_endpoint(location.datacenter)),
                          region=location.datacenter, addressing_style="path", credentials=location.credentials)
    return location


class ShortRead(Exception):
    """A body ended before the bytes its answer promised: the connection was cut; worth another request."""


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(error: BaseException) -> bool:
    """Network trouble (timeouts included), throttling and 5xx but 501 (the shared rule), and the codes AWS uses
    for throttling whatever the status."""
    if isinstance(error, ClientError):
        status = http_status(error)
        return (status != 0 and transient_status(status)) or error_code(error) in _TRANSIENT_CODES
    return isinstance(error, (*NETWORK_ERRORS, ShortRead))


def s3_client(plan_location: S3Compatible, concurrency: int = 10, read_timeout: float | None = None) -> Any:
    """A boto3 S3 client for ``plan_location`` with credentials from the environment variables it names.

    Activities share one client per endpoint, credentials and pool size (boto3 clients are
    thread-safe), made on the process's one session (see :func:`_make_client`)."""
    location = s3_settings(plan_location)
    creds = location.credentials
    missing = [name for name in (creds.access_key_id_env, creds.secret_access_key_env) if not os.environ.get(name)]
    if missing:
        raise MissingCredentials(
            f"{plan_location.describe()}: environment variable {missing[0]} is not set on the worker; "
            f"export it, or name another variable in credentials")
    endpoint = str(location.endpoint_url).rstrip("/") if location.endpoint_url else None
    token = os.environ.get(creds.session_token_env) if creds.session_token_env else None
    return _shared_client(endpoint, location.region, location.addressing_style, max(10, concurrency * 2),
                          read_timeout or stall_seconds(), os.environ[creds.access_key_id_env],
                          os.environ[creds.secret_access_key_env], token)


@functools.lru_cache(maxsize=16)
def _shared_client(endpoint: str | None, region: str, addressing_style: Literal["auto", "path", "virtual"],
                   pool_size: int, read_timeout: float, access_key_id: str, secret_access_key: str,
                   session_token: str | None) -> Any:
    # on plain HTTP the body's sha256 is left out of the signature, as botocore leaves it out of an upload over
    # HTTPS: every body flyaway sends carries Content-MD5 (signed, and checked by the store), so a second pass
    # over each part with sha256 would only cost CPU (a tenth of a copy's, on the bench's plain-HTTP moto)
    plain_http = bool(endpoint and endpoint.startswith("http://"))
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": addressing_style, "payload_signing_enabled": False} if plain_http
        else {"addressing_style": addressing_style},
        max_pool_connections=pool_size,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    return _make_client("s3", region_name=region, endpoint_url=endpoint, config=config,
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                        aws_session_token=session_token)


_SESSION_LOCK = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


def _make_client(service: Literal["s3", "route53"], **options: Any) -> Any:
    """A client made on the process's one boto3 session, with the credentials in ``options``.

    Each session loads its own copy of the service models: a client on a session of its own cost
    about 15 MB that the process kept (the S3 clients of one Tigris -> RunPod copy took a worker
    past 300 MB), where a further client on the same session costs 0.3 MB. Sessions are not
    thread-safe, so clients are made one at a time; the clients themselves are."""
    with _SESSION_LOCK:
        return _session().client(service, **options)


def route53_client(access_key_id: str | None, secret_access_key: str | None, session_token: str | None,
                   endpoint_url: str | None) -> Any:
    """A Route53 client (its API lives in us-east-1), with the worker's default credentials where none is given."""
    return _make_client("route53", region_name="us-east-1", endpoint_url=endpoint_url,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                        aws_session_token=session_token)
