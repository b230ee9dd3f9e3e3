"""The fault suite: every migration here ends completed and verified, copying nothing twice beyond
the requests that failed or the parts in flight, and each test prints its figures (faults
injected, bytes re-sent, time to recover) and appends them to ``artifacts/faults.jsonl``.

- ``test_storage_faults``: 5xx, reset connections and stalls that hold the connection open, on 20%
  of object-data requests, in front of an S3 destination and then an S3 source: each copy ends
  within a bound relative to the same copy without faults.
- ``test_worker_kills``: the worker SIGKILLed at 5 random points of a weights + secrets migration.
- ``test_many_migrations``: 20 migrations at once on one worker.

Stopping and restarting the Temporal server mid-copy is
``tests/test_resume.py::test_a_restarted_temporal_server_does_not_lose_the_copy``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import defaultdict
from typing import Any

from tests.harness import REPO, S3FaultProxy

FIGURES = REPO / "artifacts" / "faults.jsonl"
MiB = 1024 * 1024
#: the fault suite's worker cuts a request after this many seconds without a byte (FLYAWAY_STALL_SECONDS)
STALL_SECONDS = 3


def report(test: str, **figures: Any) -> None:
    """Print the figures (shown with ``pytest -s``) and append them as one JSON line for the record."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"\n{test}: {line}")
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(line + "\n")


class RecordingProxy(S3FaultProxy):
    """Remembers when each request first failed and when it last got through, to time recovery
    and to count the parts that landed (each part's path is the same on every try)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.failed_at: dict[str, float] = {}
        self.landed_at: dict[str, float] = {}
        self.received_at = 0.0

    def draw_fault(self, command: str, path: str, size: int) -> str | None:
        self.received_at = time.monotonic()  # a whole request arrived
        fault = super().draw_fault(command, path, size)
        if fault is not None:
            self.failed_at.setdefault(f"{command} {path}", time.monotonic())
        return fault

    def hold(self, command: str, path: str, status: int) -> float:
        if status < 300:
            self.landed_at[f"{command} {path}"] = time.monotonic()
        return 0.0

    def recovery_seconds(self) -> list[float]:
        """For each request that failed, how long until a try of it got through."""
        return [self.landed_at[request] - failed for request, failed in self.failed_at.items()]

    def landed_parts(self) -> int:
        return sum(request.startswith("PUT ") and "partNumber=" in request for request in list(self.landed_at))


_ETAG = re.compile(r'(&quot;|")([0-9a-f]{32})(-[0-9]+)?(&quot;|")')


def _reversed_etags(text: str) -> str:
    return _ETAG.sub(lambda m: f"{m[1]}{m[2][::-1]}{m[3] or ''}{m[4]}", text)


class SseKmsProxy(RecordingProxy):
    """With ``kms`` set, moto answers as AWS does for a bucket with SSE-KMS default encryption, where moto 5.2
    does not: no ETag is the MD5 of the bytes (here its hex digits come reversed, and are turned back where the
    client names one: CompleteMultipartUpload, If-Match), and ListParts gives each part's additional checksum,
    the one the UploadPart that landed it carried (moto keeps none per part)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.kms = False
        #: whether ListParts gives each part's checksum (AWS does; some S3-compatible stores do not)
        self.list_part_checksums = True
        self._part_checksums: defaultdict[str, dict[str, tuple[str, str]]] = defaultdict(dict)

    def rewrite_request(self, command: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if not self.kms:
            return body
        for name in [name for name in headers if name.lower() in ("if-match", "if-none-match")]:
            headers[name] = _reversed_etags(headers[name])
        return _reversed_etags(body.decode()).encode() if command == "POST" and "uploadId=" in path else body

    def rewrite_response(self, command: str, path: str, request_headers: dict[str, str], status: int,
                         headers: dict[str, str], data: bytes) -> bytes:
        if not self.kms:
            return data
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        upload = query.get("uploadId", [""])[0]
        if command == "PUT" and upload and "partNumber" in query and status == 200:
            self._part_checksums[upload][query["partNumber"][0]] = next(
                (("Checksum" + name[len("x-amz-checksum-"):].upper(), value) for name, value in request_headers.items()
                 if name.lower().startswith("x-amz-checksum-")), ("", ""))
            headers.setdefault("x-amz-server-side-encryption", "aws:kms")
        for name in [name for name in headers if name.lower() == "etag"]:
            headers[name] = _reversed_etags(headers[name])
        if "xml" not in next((v for k, v in headers.items() if k.lower() == "content-type"), ""):
            return data  # object bytes
        text = _reversed_etags(data.decode())
        if command == "GET" and upload and self.list_part_checksums:  # ListParts
            text = re.sub(r"<PartNumber>([0-9]+)</PartNumber>", lambda m: m[0] + self._part_checksum_xml(upload, m[1]),
                          text)
        return text.encode()

    def _part_checksum_xml(self, upload: str, number: str) -> str:
        element, value = self._part_checksums[upload].get(number, ("", ""))
        return f"<{element}>{value}</{element}>" if element else ""
