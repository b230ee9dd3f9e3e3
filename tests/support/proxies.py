"""Reverse proxies in front of moto (or the GCS emulator) that count, refuse, corrupt, delay or drop
requests, so fault tests run against the real server behind them."""

from __future__ import annotations

import http.client
import random
import re
import threading
import time
import urllib.parse
from collections import Counter, defaultdict

from flyaway.activities.storage.base import STATE_DIR
from flyaway.activities.storage.runpod import RUNPOD_MAX_BODY
from flyaway.starter.dev import wait_for_port
from tests.support.servers import HttpServer, QuietHandler


def _is_object_data(path: str) -> bool:
    """A request for an object's bytes: not a bucket, a listing or flyaway's own state."""
    key = urllib.parse.urlsplit(path).path.strip("/")
    return "/" in key and f"/{STATE_DIR}/" not in path


def _flip_middle_byte(data: bytes, mask: int) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ mask]) + data[middle + 1:]


class _ProxyHandler(QuietHandler):
    """Reads the whole request, asks the proxy what to do with it, then forwards, refuses or drops it."""

    owner: S3FaultProxy

    def _relay(self) -> None:
        proxy = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = proxy.on_request(self.command, self.path, self.rfile.read(length) if length else b"")
        if len(body) < length:  # the client died mid-body: forwarding it would leave the
            return  # upstream waiting for the rest (the GCS emulator serves one request at a time)
        fault = proxy.draw_fault(self.command, self.path, len(body))
        if fault == "reset" or (fault == "stall" and self.command == "PUT"):  # a stalled PUT gets no answer
            if fault == "stall":
                time.sleep(proxy.stall_seconds)
            self.close_connection = True
            return
        refusal = (503, "SlowDown") if fault == "slowdown" else proxy.refusal(self.command, self.path, len(body))
        if refusal is not None:
            self._refuse(*refusal)
        else:
            self._forward(body, stall=fault == "stall")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    def _refuse(self, status: int, code: str) -> None:
        payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>refused by the test proxy</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, body: bytes, stall: bool) -> None:
        """Send the request upstream and its answer back; a stalled GET gets half its body, then nothing."""
        proxy = self.owner
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=600)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        length = len(body)
        if len(body := proxy.rewrite_request(self.command, self.path, headers, body)) != length:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        answer = dict(response.getheaders())
        data = proxy.rewrite_response(self.command, self.path, headers, response.status, answer,
                                      proxy.maybe_flip(self.command, self.path, response.read()))
        time.sleep(proxy.hold(self.command, self.path, response.status))
        self.send_response(response.status)
        for key, value in answer.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # a HEAD answer has no body but tells the object's length (of a part, with partNumber)
        answered = (next((v for k, v in answer.items() if k.lower() == "content-length"), "0")
                    if self.command == "HEAD" else str(len(data)))
        self.send_header("Content-Length", answered)
        self.end_headers()
        upstream.close()
        if stall:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            time.sleep(proxy.stall_seconds)
            self.close_connection = True
        elif self.command != "HEAD":
            self.wfile.write(data)


class S3FaultProxy(HttpServer):
    """A reverse proxy in front of an S3 server that counts uploaded bytes and can deny access.

    ``mode`` is "pass" (forward everything) or "deny" (answer 403 AccessDenied to every
    request). ``uploaded`` counts request body bytes of PUTs of object data and parts.
    ``corrupt`` is how many object-data PUTs get one byte flipped on the way (-1: all of them).
    ``chaos(rate, seed)`` makes that share of object-data PUTs and GETs fail at random: a 503
    SlowDown, a reset (the socket closed without an answer) or a stall that holds the connection
    open for ``stall_seconds`` and then drops it (a PUT gets no answer; a GET gets its headers and
    half its body). ``faults`` counts them by kind; ``failed_bytes`` is the request bytes that failed.
    ``flip_every`` N flips one byte of every Nth object-data GET answer on its way back (``flipped``
    counts them); ``puts`` counts object-data PUTs by path (a part's path is the same on every try).
    """

    handler = _ProxyHandler
    quiet_errors = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.requests = self.uploaded = 0
        self.puts: Counter[str] = Counter()
        self.corrupt = self.corrupted = 0
        self.flip_every = self.flipped = self._gets = 0
        self.chaos(0.0, 0)
        self.stall_seconds = 60.0
        self.faults: Counter[str] = Counter()
        self.failed_bytes = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        super().start()
        wait_for_port(self.port, 5)

    def on_request(self, command: str, path: str, body: bytes) -> bytes:
        """Count the request and return its body as it goes on (one byte flipped while ``corrupt``)."""
        with self._lock:
            self.requests += 1
            if command != "PUT" or f"/{STATE_DIR}/" in path:
                return body
            self.uploaded += len(body)
            self.puts[path] += 1
            if body and self.corrupt != 0:
                body = _flip_middle_byte(body, 0xFF)
                self.corrupt -= self.corrupt > 0
                self.corrupted += 1
            return body

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        """(HTTP status, S3 error code) to answer instead of forwarding, or None to forward."""
        return (403, "AccessDenied") if self.mode == "deny" else None

    def chaos(self, rate: float, seed: int) -> None:
        self.fault_rate = rate
        self._random = random.Random(seed)

    def draw_fault(self, command: str, path: str, size: int) -> str | None:
        """The fault to inject into this request ("slowdown", "reset", "stall"), or None."""
        if command not in ("PUT", "GET") or not _is_object_data(path):
            return None
        with self._lock:
            if self._random.random() >= self.fault_rate:
                return None
            fault = self._random.choice(("slowdown", "reset", "stall"))
            self.faults[fault] += 1
            self.failed_bytes += size
        return fault

    def hold(self, command: str, path: str, status: int) -> float:
        """Seconds to sit on the upstream's answer (of HTTP ``status``) before passing it on."""
        return 0.0

    def rewrite_request(self, command: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        """The request body to forward; ``headers`` may be changed in place. As sent, by default."""
        return body

    def rewrite_response(self, command: str, path: str, request_headers: dict[str, str], status: int,
                         headers: dict[str, str], data: bytes) -> bytes:
        """The answer's body to pass on; ``headers`` may be changed in place. As the upstream gave it, by default."""
        return data

    def maybe_flip(self, command: str, path: str, data: bytes) -> bytes:
        """The answer's body, with one byte flipped if it is the ``flip_every``-th object-data GET."""
        if not self.flip_every or command != "GET" or not _is_object_data(path) or not data:
            return data
        with self._lock:
            self._gets += 1
            if self._gets % self.flip_every:
                return data
            self.flipped += 1
        return _flip_middle_byte(data, 0x01)


class RunPodLimitsProxy(S3FaultProxy):
    """moto behind the limits RunPod's S3 API publishes, so a request RunPod would refuse fails here too:
    a body over ``max_body`` bytes (a PutObject of ``max_body`` too) gets 400 EntityTooLarge,
    DeleteObjects and CreateBucket get 501. ``complete_delay`` holds the answer to a
    CompleteMultipartUpload that succeeded (moto has made the object) that many seconds, the first
    time, like a slow RunPod."""

    def __init__(self, upstream_port: int, max_body: int = RUNPOD_MAX_BODY) -> None:
        super().__init__(upstream_port)
        self.max_body = max_body
        self.complete_delay = 0.0
        self.completed: set[str] = set()
        self.refused: list[str] = []

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        answer: tuple[int, str] | None = None
        batch_delete = command == "POST" and "delete" in query
        create_bucket = command == "PUT" and "/" not in url.path.strip("/") and not query
        if batch_delete or create_bucket:
            answer = (501, "NotImplemented")
        elif command == "PUT" and (size > self.max_body or ("partNumber" not in query and size >= self.max_body)):
            answer = (400, "EntityTooLarge")
        if answer is not None:
            self.refused.append(f"{command} {url.path} {answer[1]}")
            return answer
        return super().refusal(command, path, size)

    def hold(self, command: str, path: str, status: int) -> float:
        """The first successful complete of an upload is slow; a retry after it finds the work done."""
        if command != "POST" or "uploadId=" not in path or status != 200 or path in self.completed:
            return 0.0
        self.completed.add(path)
        return self.complete_delay


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
