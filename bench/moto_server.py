"""moto's S3 server for the benchmarks, serving a byte range without reading the whole object.

To answer ``GET`` with ``Range: bytes=A-B``, moto reads the entire object from its buffer and
slices it, so a 2 GiB object read in 16 MiB ranges costs 128 reads of 2 GiB: moto, not the
client, would set the pace of any tool that reads by ranges (flyaway does, to read parts in
parallel and resume them; S3 and Tigris serve a range at the cost of the range). ``HEAD`` with
``partNumber`` does the same to find one part's length and checksum (flyaway asks it once per
part of a multipart source, to check each part against the source's own checksum). This launcher
runs moto with those reads limited to the slice asked for; every other request, and every
response's headers, are moto's own.

    python bench/moto_server.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from moto import server
from moto.s3 import models, responses

SIMPLE_RANGE = re.compile(r"bytes=\d+-\d+")
_ranged_request = threading.local()


class ObjectRange:
    """A stored object as moto's range handler uses it: its length, and one slice read from its buffer."""

    def __init__(self, key: models.FakeKey) -> None:
        self._key = key

    def __len__(self) -> int:
        return int(self._key.contentsize)

    def __getitem__(self, part: slice) -> bytes:
        with self._key.lock:
            self._key._value_buffer.seek(part.start)
            return self._key._value_buffer.read(part.stop - part.start)


def reads_a_slice(request: Any, full_url: str) -> bool:
    """Whether moto answers ``request`` from one slice of the object: a simple range, or one part's headers."""
    if request.method == "GET":
        return bool(SIMPLE_RANGE.fullmatch(request.headers.get("range", "")))
    return request.method == "HEAD" and "partNumber" in parse_qs(urlsplit(full_url).query)


def serve_ranges_by_seeking() -> None:
    """Patch moto before its S3 routes are built (its server builds them on the first S3 request)."""
    whole_value = models.FakeKey.value

    def value(self: models.FakeKey) -> Any:
        if getattr(_ranged_request, "active", False):
            return ObjectRange(self)
        return whole_value.fget(self)

    models.FakeKey.value = property(value, whole_value.fset)
    key_response = responses.S3Response.key_response

    def ranged_key_response(self: responses.S3Response, request: Any, full_url: str, headers: Any) -> Any:
        _ranged_request.active = reads_a_slice(request, full_url)
        try:
            return key_response(self, request, full_url, headers)
        finally:
            _ranged_request.active = False

    responses.S3Response.key_response = ranged_key_response


if __name__ == "__main__":
    serve_ranges_by_seeking()
    server.main()
