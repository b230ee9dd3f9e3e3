"""Any S3-compatible store (AWS, Tigris, RunPod volumes, moto, ...) as a source or a destination (clients
from :mod:`flyaway.providers.s3`).

Every request goes through tenacity, and errors that retrying cannot fix are mapped to flyaway's
non-retryable types with the bucket or key they concern.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar

import structlog

from flyaway.activities.storage.base import (
    DESTINATIONS,
    SOURCES,
    STATE_DIR,
    Destination,
    DestObject,
    LandedObject,
    Source,
    SourceChanged,
    UploadGone,
    is_state_key,
)
from flyaway.activities.storage.checksums import PartChecks
from flyaway.errors import (
    AccessDenied,
    DataCorruption,
    InvalidPlan,
    LimitExceeded,
    MissingCredentials,
    NotFound,
    SourceObjectMissing,
    Unreachable,
)
from flyaway.models.base import join_key
from flyaway.models.copy import PartRecord, SourceChecksum, SourceFile
from flyaway.providers.http import REQUEST_RETRY_SECONDS, call_with_retries
from flyaway.providers.s3 import (
    NETWORK_ERRORS,
    ClientError,
    NoCredentialsError,
    S3Compatible,
    ShortRead,
    error_code,
    http_status,
    is_transient,
    s3_client,
    s3_settings,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                 "InvalidToken", "AllAccessDisabled", "AccountProblem"}
#: CompleteMultipartUpload of a large file can take minutes on some providers (RunPod), so it alone
#: waits this long for its answer; every other request is cut after ``stall_seconds()`` without a byte
COMPLETE_READ_TIMEOUT_SECONDS = 600
#: a CompleteMultipartUpload that timed out is sent again for this many read timeouts: a second
#: try of one that landed meanwhile finds NoSuchUpload, and the object is checked instead
COMPLETE_RETRY_TIMEOUTS = 3
#: bytes of a GET's body read into the part buffer at a time
READ_CHUNK = 256 * 1024


#: additional checksums S3 may keep (ChecksumMode=ENABLED), strongest first; CRC64NVME needs awscrt, so it is not used
_ADDITIONAL_CHECKSUMS = (("ChecksumSHA256", "sha256"), ("ChecksumSHA1", "sha1"), ("ChecksumCRC32C", "crc32c"),
                         ("ChecksumCRC32", "crc32"))


_MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[1-9][0-9]{0,4})?")


def etag_is_md5(response: dict[str, Any]) -> bool:
    """Whether the ETag of an answer is the MD5 of the bytes (or, ``-N``, of the parts' MD5s): S3 says one that
    is not has other than 32 hex digits; SSE-KMS and SSE-C make ETags that are not, whatever they look like."""
    encryption = str(response.get("ServerSideEncryption") or "")
    return (bool(_MD5_ETAG.fullmatch(_strip_etag(str(response.get("ETag", "")))))
            and not encryption.startswith("aws:kms") and not response.get("SSECustomerAlgorithm"))


def multipart_etag(part_md5s: list[str]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, a dash, the part count."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


class _S3Side:
    def __init__(self, location: S3Compatible, concurrency: int = 10) -> None:
        self.plan_location = location
        self.location = s3_settings(location)
        self.bucket = self.location.bucket
        self.prefix = self.location.prefix
        self.client = s3_client(location, concurrency)

    @classmethod
    def open(cls, location: S3Compatible, concurrency: int) -> Self:
        return cls(location, concurrency)

    def describe(self) -> str:
        return self.plan_location.describe()

    def bucket_label(self) -> str:
        """How messages name the bucket."""
        return f"bucket {self.plan_location.kind}://{self.bucket}"

    def endpoint_hint(self) -> str:
        """What to check when the endpoint does not answer."""
        return "check endpoint_url"

    def key_of(self, key: str) -> str:
        return join_key(self.prefix, key)

    def call(self, what: str, fn: Callable[[], T], max_seconds: float = REQUEST_RETRY_SECONDS) -> T:
        """Run one request with retries; map what retrying cannot fix to a clear error about ``what``."""
        try:
            return call_with_retries(fn, is_transient, max_seconds)
        except ClientError as error:
            code, status = error_code(error), http_status(error)
            if code in _ACCESS_CODES or status == 403:
                raise AccessDenied(f"{what}: access denied ({code or status}); check the credentials "
                                   f"and the bucket policy for {self.bucket_label()}") from None
            if code in ("BadDigest", "InvalidDigest"):
                raise DataCorruption(f"{what}: the bytes that arrived do not have the MD5 of the source bytes") from None
            if code == "NoSuchBucket":
                raise NotFound(f"{self.bucket_label()} does not exist at "
                               f"{self.location.endpoint_url or 'AWS'}") from None
            if code == "EntityTooLarge":
                raise LimitExceeded(f"{what}: {self.describe()} refused the request body as too large") from None
            if status == 501:
                raise InvalidPlan(f"{what}: {self.describe()} does not implement this request "
                                  f"({code or 'NotImplemented'})") from None
            raise
        except NoCredentialsError:
            raise MissingCredentials(f"{what}: no credentials") from None

    def list_keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        while True:
            page = self.call(f"listing s3://{self.bucket}/{prefix}", lambda: next(pages, None))
            if page is None:
                return
            yield from page.get("Contents", [])

    def list_relative(self, skip_state: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """(relative key, listing entry) for objects below the prefix, skipping folder markers and, when
        asked, flyaway's state."""
        base = f"{self.prefix.rstrip('/')}/" if self.prefix else ""
        for item in self.list_keys(base):
            rel = item["Key"][len(base):]
            if not rel or rel.endswith("/") or (skip_state and is_state_key(rel)):
                continue
            yield rel, item

    def check_bucket(self) -> None:
        try:
            call_with_retries(lambda: self.client.head_bucket(Bucket=self.bucket), is_transient, max_seconds=20)
        except ClientError as error:
            status = http_status(error)
            if status == 404:
                raise NotFound(f"{self.bucket_label()} does not exist at "
                               f"{self.location.endpoint_url or 'AWS'}; create it or fix the name") from None
            if status == 403:
                raise AccessDenied(f"{self.bucket_label()}: access denied; check the credentials "
                                   f"and the bucket policy") from None
            raise
        except NETWORK_ERRORS as error:
            raise Unreachable(f"endpoint {self.location.endpoint_url or 'AWS S3'} of {self.bucket_label()} "
                              f"does not answer ({type(error).__name__}); {self.endpoint_hint()}") from None


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex(b64_digest: str) -> str:
    return base64.b64decode(b64_digest).hex()


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class _Body:
    """Bytes as a request body botocore takes (it refuses a memoryview, and copies ``bytes`` into a file object
    it then reads 16 KiB at a time): read as slices of the caller's buffer, never copied. Seekable, so the
    signer can hash it and rewind; one is made for every try of a request, each read from the start."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._position = 0

    def __len__(self) -> int:
        return self._view.nbytes

    def read(self, size: int | None = -1) -> memoryview:
        end = self._view.nbytes if size is None or size < 0 else min(self._position + size, self._view.nbytes)
        chunk = self._view[self._position:end]
        self._position = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = offset + (0, self._position, self._view.nbytes)[whence]
        return self._position

    def tell(self) -> int:
        return self._position


def composite_crc32(parts: Sequence[PartRecord]) -> str:
    """The CRC32 S3 gives an object made of ``parts`` (hex CRC32s): the CRC32 of their CRC32s, in part order."""
    joined = b"".join(bytes.fromhex(part.checksum) for part in sorted(parts, key=lambda part: part.number))
    return f"{zlib.crc32(joined):08x}"


@SOURCES.register("s3", "tigris")
class S3Source(_S3Side, Source):
    def __init__(self, location: S3Compatible, concurrency: int = 10) -> None:
        super().__init__(location, concurrency)
        #: (key, version) -> the part checks of a multipart object, found at its first read
        self._checks: dict[tuple[str, str], PartChecks | None] = {}
        #: (key, version, offset, length) of the ranges of large files read so far
        self._served: set[tuple[str, str, int, int]] = set()

    def check(self) -> None:
        self.check_bucket()
        self.call(f"listing s3://{self.bucket}/{self.prefix}",
                  lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1))

    def list(self) -> Iterator[SourceFile]:
        for rel, item in self.list_relative(skip_state=False):
            yield SourceFile(key=rel, size=item["Size"], version=_strip_etag(item["ETag"]))

    def _head(self, file: SourceFile, **extra: Any) -> dict[str, Any]:
        """HEAD of the object at the listed version (``SourceChanged`` otherwise), checksums included.

        A HEAD of one part (``PartNumber``) is not pinned: some stores answer it with the part's ETag. A
        layout read from a newer version fails the check of the bytes, which are read pinned."""
        pin = {} if "PartNumber" in extra else {"IfMatch": f'"{file.version}"'}
        return self._call_on_listed(file, lambda: self.client.head_object(
            Bucket=self.bucket, Key=self.key_of(file.key), ChecksumMode="ENABLED", **pin, **extra))

    def _call_on_listed(self, file: SourceFile, request: Callable[[], T]) -> T:
        """A request about the listed object: 412 (its ``If-Match`` failed) is ``SourceChanged``, 404 that it
        went away."""
        what = f"s3://{self.bucket}/{self.key_of(file.key)}"
        try:
            return self.call(what, request)
        except ClientError as error:
            if http_status(error) == 412:
                raise SourceChanged(file.key) from None
            if http_status(error) == 404:
                raise SourceObjectMissing(f"source object {what} disappeared before it was copied") from None
            raise

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        """An additional checksum (``x-amz-checksum-*``) if the object has one, else its ETag where that is
        an MD5. A composite of a multipart object needs its part size: part 1's, asked by ``PartNumber``,
        which fits when every part but the last has that size."""
        head = self._head(file)
        multipart = "-" in file.version
        for field, algorithm in _ADDITIONAL_CHECKSUMS:
            value = head.get(field)
            if value:
                digest, _, count = str(value).partition("-")
                if multipart and not count and head.get("ChecksumType") != "FULL_OBJECT":
                    continue  # neither a whole-object value nor a composite with its part count: nothing to check
                return self._published(file, algorithm, base64.b64decode(digest).hex(), count)
        if etag_is_md5(head):
            digest, _, count = file.version.partition("-")
            return self._published(file, "md5", digest, count)
        return None

    def _published(self, file: SourceFile, algorithm: str, digest: str, count: str) -> SourceChecksum | None:
        if not count:
            return SourceChecksum(algorithm=algorithm, value=digest)  # type: ignore[arg-type]
        parts = int(count)
        part_size = int(self._head(file, PartNumber=1)["ContentLength"])
        if part_size <= 0 or not (parts - 1) * part_size < file.size <= parts * part_size:
            return None  # parts of several sizes: the layout cannot be told from part 1
        return SourceChecksum(algorithm=algorithm, value=digest, part_size=part_size)  # type: ignore[arg-type]

    def stat(self, key: str) -> SourceFile:
        try:
            head = self.call(f"s3://{self.bucket}/{self.key_of(key)}",
                             lambda: self.client.head_object(Bucket=self.bucket, Key=self.key_of(key)))
        except ClientError as error:
            if http_status(error) == 404:
                raise SourceObjectMissing(f"source object s3://{self.bucket}/{self.key_of(key)} disappeared "
                                          f"before it was copied") from None
            raise
        return SourceFile(key=key, size=head["ContentLength"], version=_strip_etag(head["ETag"]))

    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        data = bytearray(length)
        self.read_into(file, offset, memoryview(data))
        return bytes(data)

    def read_into(self, file: SourceFile, offset: int, buffer: memoryview) -> None:
        """The bytes, streamed into ``buffer``, with each whole part of a multipart object among them checked
        against the part's own checksum where the store tells it, and read again on its own while it reads wrong.

        Where no part checksum tells, a range of a file read before (the file's own check failed, so the engine
        reads it all again) is read until two reads in a row agree: a flip on the way does not come twice the
        same, so the file's next check passes instead of meeting a new flip in some other range."""
        length = len(buffer)
        checks = self._part_checks(file) if "-" in file.version and length else None
        if checks is not None:
            self._get_into(file, offset, buffer)
            checks.repair(file.key, offset, buffer, lambda start, part: self._get_into(file, start, part))
            return
        served = (file.key, file.version, offset, length)
        if served in self._served:
            self._get_agreed(file, offset, buffer)
            return
        if length < file.size:  # a range of a large file; a small one is read again whole, cheaply
            self._served.add(served)
        self._get_into(file, offset, buffer)

    def _get_agreed(self, file: SourceFile, offset: int, buffer: memoryview, tries: int = 3) -> None:
        """The range once a second read gives the same bytes (compared as they stream, so only one copy is
        held), after at most ``tries`` pairs of reads; the last read if none agreed."""
        self._get_into(file, offset, buffer)
        for _ in range(tries):
            if self._reads_the_same(file, offset, buffer):
                return
            log.warning("a source range read differently twice; reading it again", key=file.key, offset=offset)
            self._get_into(file, offset, buffer)

    def _reads_the_same(self, file: SourceFile, offset: int, data: memoryview) -> bool:
        def compare() -> bool:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key_of(file.key), IfMatch=f'"{file.version}"',
                                          Range=f"bytes={offset}-{offset + len(data) - 1}")["Body"]
            position = 0
            for chunk in body.iter_chunks(READ_CHUNK):
                if data[position:position + len(chunk)] != chunk:
                    body.close()
                    return False
                position += len(chunk)
            return position == len(data)

        return self._call_on_listed(file, compare)

    def _part_checks(self, file: SourceFile) -> PartChecks | None:
        known = (file.key, file.version)
        if known not in self._checks:  # two threads may both look: the answer is the same
            self._checks[known] = self._find_part_checks(file)
        return self._checks[known]

    def _find_part_checks(self, file: SourceFile) -> PartChecks | None:
        """Each part's own checksum, by ``PartNumber``: its additional checksum (AWS and moto give one for an
        object with a COMPOSITE checksum) or, where a store answers with the part's own ETag, that MD5. AWS
        gives a part of an object with only an MD5 ETag no checksum of its own: None then."""
        first = self._head(file, PartNumber=1)
        parts, part_size = int(file.version.rpartition("-")[2]), int(first["ContentLength"])
        if part_size <= 0 or not (parts - 1) * part_size < file.size <= parts * part_size:
            return None  # parts of several sizes
        field, algorithm = next(((field, algorithm) for field, algorithm in _ADDITIONAL_CHECKSUMS if first.get(field)),
                                ("ETag", "md5"))
        etag = _strip_etag(str(first["ETag"]))
        if field == "ETag" and (etag == file.version or "-" in etag or not etag_is_md5(first)):
            return None

        def checksum_of(number: int) -> str | None:
            value = str((first if number == 1 else self._head(file, PartNumber=number)).get(field) or "")
            return _strip_etag(value) if field == "ETag" else (_hex(value) if value else None)

        return PartChecks(algorithm, part_size, file.size, checksum_of)

    def _get_into(self, file: SourceFile, offset: int, buffer: memoryview) -> None:
        """Stream the range into ``buffer`` a chunk at a time: reading the body whole would hold a second copy
        of every part in flight (the HTTP client joins what it read, and the engine copies it into its buffer)."""
        what = f"s3://{self.bucket}/{self.key_of(file.key)}"
        length = len(buffer)
        if length == 0:
            return

        def get() -> None:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key_of(file.key), IfMatch=f'"{file.version}"',
                                              Range=f"bytes={offset}-{offset + length - 1}")
            body, received = response["Body"], 0
            with body:
                while received < length and (count := body.readinto(buffer[received:received + READ_CHUNK])):
                    received += count
                longer = bool(body.read(1))  # a body longer than the range is as wrong as a short one
            if received != length or longer:
                raise ShortRead(f"read of {what}: {received}{' and more' if longer else ''} bytes for a range of "
                                f"{length}")

        self._call_on_listed(file, get)


@DESTINATIONS.register("s3")
class S3Destination(_S3Side, Destination):
    """Every PUT carries ``Content-MD5`` and, where the store takes additional checksums, ``x-amz-checksum-crc32``
    as well: S3 checks both on arrival, and a bucket with Object Lock refuses a PUT that has neither.

    The part checksum the engine compares is then the CRC32, because S3 keeps it whatever the encryption: per
    part (ListParts), per object and as the composite of a multipart object (HEAD with ``ChecksumMode``). An
    ETag is the MD5 of the bytes only without SSE-KMS or SSE-C, so it is compared only where it is one. A
    store without additional checksums (RunPod) compares MD5s and ETags, as S3 did before them.

    CRC32 rather than CRC32C: it is what the AWS SDKs send by default, so the S3-compatible stores that take any
    additional checksum take it, and moto computes it without an optional package."""

    #: whether the store takes additional checksums (RunPod's S3 API is not known to)
    additional_checksums = True
    #: a part buffer goes out as the request body as it is (``_Body``), never copied
    takes_views = True

    def __init__(self, location: S3Compatible, concurrency: int = 10) -> None:
        super().__init__(location, concurrency)
        self.part_checksum = "crc32" if self.additional_checksums else "md5"
        #: parts of an upload that an earlier attempt landed and ListParts gave no checksum for: taken on their
        #: size, so ``complete`` must see the object's checksum
        self._unconfirmed: dict[str, set[int]] = {}

    def check(self) -> None:
        self.check_bucket()
        probe = join_key(self.prefix, f"{STATE_DIR}/probe")
        self.call(f"writing s3://{self.bucket}/{probe}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=probe, Body=b"flyaway", ContentMD5=_content_md5(b"flyaway")))
        self.call(f"deleting s3://{self.bucket}/{probe}",
                  lambda: self.client.delete_object(Bucket=self.bucket, Key=probe))

    def stat(self, key: str) -> DestObject | None:
        head = self._head(key)
        return None if head is None else DestObject(key=key, size=head["ContentLength"],
                                                     version=_strip_etag(head["ETag"]))

    def _head(self, key: str) -> dict[str, Any] | None:
        """HEAD of the object, with its additional checksum where the store keeps them; None if absent."""
        mode = {"ChecksumMode": "ENABLED"} if self.additional_checksums else {}
        try:
            head: dict[str, Any] = self.call(f"s3://{self.bucket}/{self.key_of(key)}", lambda: self.client.head_object(
                Bucket=self.bucket, Key=self.key_of(key), **mode))
            return head
        except ClientError as error:
            if http_status(error) == 404:
                return None
            raise

    def list(self) -> Iterator[DestObject]:
        for rel, item in self.list_relative(skip_state=True):
            yield DestObject(key=rel, size=item["Size"], version=_strip_etag(item["ETag"]))

    def landed(self, key: str) -> LandedObject | None:
        head = self._head(key)
        if head is None:
            return None
        etag = _strip_etag(head["ETag"])
        if self.additional_checksums:
            stored = str(head.get("ChecksumCRC32") or "")
            checksum = _hex(stored) if stored and "-" not in stored else ""
        else:
            checksum = etag if "-" not in etag and etag_is_md5(head) else ""
        return LandedObject(size=head["ContentLength"], checksum=checksum, version=etag) if checksum else None

    def _integrity(self, data: bytes | memoryview, checksum: str) -> tuple[str, dict[str, str]]:
        """The MD5 of ``data`` (hex) and the request fields that let S3 check the bytes on arrival."""
        if not self.additional_checksums:
            return checksum, {"ContentMD5": _b64(checksum)}
        md5 = hashlib.md5(data).hexdigest()
        return md5, {"ContentMD5": _b64(md5), "ChecksumAlgorithm": "CRC32", "ChecksumCRC32": _b64(checksum)}

    def _check_arrival(self, what: str, response: dict[str, Any], md5: str, checksum: str) -> str:
        """The ETag of an answer to a PUT; ``DataCorruption`` if it, or the checksum S3 computed, tells other bytes."""
        etag = _strip_etag(response["ETag"])
        if etag != md5 and etag_is_md5(response):
            raise DataCorruption(f"{what}: stored ETag {etag} is not the MD5 {md5} of the source bytes")
        stored = response.get("ChecksumCRC32")
        if self.additional_checksums and stored and _hex(str(stored)) != checksum:
            raise DataCorruption(f"{what}: stored CRC32 {_hex(str(stored))} is not {checksum}, of the source bytes")
        return etag

    def put(self, key: str, data: bytes | memoryview, checksum: str, sha256: str) -> str:
        what = f"s3://{self.bucket}/{self.key_of(key)}"
        md5, fields = self._integrity(data, checksum)
        response = self.call(what, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self.key_of(key), Body=_Body(data), **fields))
        return self._check_arrival(what, response, md5, checksum)

    def begin_upload(self, key: str, size: int) -> str:
        algorithm = {"ChecksumAlgorithm": "CRC32"} if self.additional_checksums else {}
        response = self.call(f"s3://{self.bucket}/{self.key_of(key)}", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key_of(key), **algorithm))
        return str(response["UploadId"])

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        parts: dict[int, PartRecord] = {}
        marker = 0

        def page(after: int) -> dict[str, Any]:
            listed: dict[str, Any] = self.client.list_parts(Bucket=self.bucket, Key=self.key_of(key),
                                                            UploadId=upload_id, PartNumberMarker=after)
            return listed

        while True:
            try:
                response = self.call(f"s3://{self.bucket}/{self.key_of(key)}", functools.partial(page, marker))
            except ClientError as error:
                if error_code(error) == "NoSuchUpload" or http_status(error) == 404:
                    raise UploadGone(upload_id) from None
                raise
            for part in response.get("Parts", []):
                parts[part["PartNumber"]] = self._landed_part(part)
            if not response.get("IsTruncated"):
                self._unconfirmed[upload_id] = {number for number, part in parts.items() if not part.checksum}
                return parts
            marker = response["NextPartNumberMarker"]

    def _landed_part(self, part: dict[str, Any]) -> PartRecord:
        etag = _strip_etag(part["ETag"])
        if not self.additional_checksums:
            return PartRecord(number=part["PartNumber"], size=part["Size"], checksum=etag)
        stored = part.get("ChecksumCRC32")  # a store that keeps no part checksums: "" (taken on its size)
        return PartRecord(number=part["PartNumber"], size=part["Size"], checksum=_hex(str(stored)) if stored else "",
                          receipt=etag)

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes | memoryview,
                    checksum: str) -> PartRecord:
        what = f"s3://{self.bucket}/{self.key_of(key)} part {number}"
        md5, fields = self._integrity(data, checksum)
        try:
            response = self.call(what, lambda: self.client.upload_part(
                Bucket=self.bucket, Key=self.key_of(key), UploadId=upload_id, PartNumber=number, Body=_Body(data),
                **fields))
        except ClientError as error:
            # InvalidRequest: a part with a checksum for an upload begun without one (by an older flyaway) is
            # refused; that upload cannot be finished, so the file starts over
            if error_code(error) == "NoSuchUpload" or (self.additional_checksums and error_code(error) == "InvalidRequest"):
                raise UploadGone(upload_id) from None
            raise
        etag = self._check_arrival(what, response, md5, checksum)
        # under SSE-KMS/SSE-C the part's ETag is not its MD5, and CompleteMultipartUpload names parts by ETag
        return PartRecord(number=number, size=len(data), checksum=checksum, receipt="" if etag == checksum else etag)

    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        what = f"s3://{self.bucket}/{self.key_of(key)}"
        body = {"Parts": [{"PartNumber": p.number, "ETag": f'"{p.receipt or p.checksum}"',
                           **({"ChecksumCRC32": _b64(p.checksum)} if self.additional_checksums else {})}
                          for p in parts]}
        patient = s3_client(self.plan_location, read_timeout=COMPLETE_READ_TIMEOUT_SECONDS)
        try:
            response = self.call(what, lambda: patient.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key_of(key), UploadId=upload_id, MultipartUpload=body),
                max_seconds=COMPLETE_RETRY_TIMEOUTS * COMPLETE_READ_TIMEOUT_SECONDS)
        except ClientError as error:
            if error_code(error) != "NoSuchUpload":
                raise
            # completed by an earlier try (its answer timed out) or attempt (killed before recording it): the
            # object is there, made of exactly these parts
            head = self._head(key)
            if head is None or head["ContentLength"] != sum(p.size for p in parts) or not self._made_of(head, parts):
                raise UploadGone(upload_id) from None
            return _strip_etag(head["ETag"])
        unconfirmed = self._unconfirmed.pop(upload_id, set())
        if self.additional_checksums and not response.get("ChecksumCRC32"):
            response = {**response, **(self._head(key) or {})}  # stores that leave it out of this answer (moto)
        made_of = self._made_of(response, parts)
        if made_of is False:
            raise DataCorruption(f"{what}: the object's {'CRC32' if self.additional_checksums else 'ETag'} is "
                                 f"not the one its parts, as read from the source, make")
        if made_of is None and unconfirmed:
            raise DataCorruption(f"{what}: parts {sorted(unconfirmed)} landed by an earlier attempt cannot be "
                                 f"checked at this store")
        return _strip_etag(response["ETag"])

    def _made_of(self, response: dict[str, Any], parts: Sequence[PartRecord]) -> bool | None:
        """Whether the object an answer describes is made of ``parts``, by its composite CRC32 or its multipart
        ETag; None when it tells neither (no additional checksum, an ETag that is not an MD5)."""
        if self.additional_checksums:
            stored = str(response.get("ChecksumCRC32") or "")
            # the composite's part count ("-N") is left out by some stores (moto)
            return _hex(stored.partition("-")[0]) == composite_crc32(parts) if stored else None
        if not etag_is_md5(response):
            return None
        return _strip_etag(str(response["ETag"])) == multipart_etag([part.checksum for part in parts])

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.call(f"s3://{self.bucket}/{self.key_of(key)}", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key_of(key), UploadId=upload_id))
        except ClientError as error:
            if error_code(error) != "NoSuchUpload" and http_status(error) != 404:
                raise

    def _state_key(self, name: str) -> str:
        return join_key(self.prefix, f"{STATE_DIR}/{name}")

    def put_state(self, name: str, data: bytes) -> None:
        self.call(f"s3://{self.bucket}/{self._state_key(name)}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._state_key(name), Body=data, ContentMD5=_content_md5(data)))

    def get_state(self, name: str, offset: int = 0, length: int | None = None) -> bytes | None:
        key = self._state_key(name)
        end = "" if length is None else str(offset + length - 1)

        def get() -> bytes:
            extra = {"Range": f"bytes={offset}-{end}"} if offset or length is not None else {}
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()
            return body

        try:
            return self.call(f"s3://{self.bucket}/{key}", get)
        except ClientError as error:
            if error_code(error) == "NoSuchKey" or http_status(error) == 404:
                return None
            if error_code(error) == "InvalidRange" or http_status(error) == 416:
                return b""  # the offset is at or past the end
            raise

    def list_state(self, prefix: str) -> builtins.list[str]:
        base = self._state_key("")
        base = base if base.endswith("/") else base + "/"
        return sorted(item["Key"][len(base):] for item in self.list_keys(base + prefix))

    def delete_state(self, name: str) -> None:
        self.call(f"s3://{self.bucket}/{self._state_key(name)}", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=self._state_key(name)))

