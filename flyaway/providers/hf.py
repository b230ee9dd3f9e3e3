"""The Hugging Face Hub through ``huggingface_hub``: one repository's commits, file listings and byte ranges,
which errors are transient, and what the hub's refusals mean.

The hub is found at ``HF_ENDPOINT`` (read when a client is made, so the worker's setting always
wins). Reads are HTTP ranges of a file's resolve URL at a commit, through the library's own HTTP
session and headers; redirects (LFS files live behind a CDN) are followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from flyaway.errors import AccessDenied, NotFound, SourceObjectMissing, Unreachable
from flyaway.models.locations import HfLocation
from flyaway.providers.http import CONNECT_TIMEOUT_SECONDS, call_with_retries, stall_seconds, transient_status

T = TypeVar("T")

_NETWORK_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


class ShortRead(Exception):
    """The hub answered a range with fewer or other bytes than asked for; worth another try."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, HfHubHTTPError):
        return transient_status(error.response.status_code)
    return isinstance(error, (*_NETWORK_ERRORS, ShortRead))


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    #: the git blob id; the hub's checksum of a file kept in git itself
    blob_id: str
    #: the sha256 the hub publishes for an LFS file
    lfs_sha256: str | None


def _hub_file(entry: RepoFile) -> HubFile:
    return HubFile(path=entry.path, size=entry.size, blob_id=entry.blob_id,
                   lfs_sha256=entry.lfs.sha256 if entry.lfs else None)


class HubRepo:
    """The repository ``location`` names, read with the token its ``token_env`` holds (anonymous without)."""

    def __init__(self, location: HfLocation) -> None:
        self.location = location
        self.token = os.environ.get(location.token_env) or None
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=self.token or False,
                         library_name="flyaway")
        self._headers = build_hf_headers(token=self.token or False, library_name="flyaway")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn what retrying cannot fix into a clear flyaway error about ``what``."""
        loc = self.location
        try:
            yield
        except RevisionNotFoundError:
            raise NotFound(f"{loc.describe()}: revision '{loc.revision}' does not exist at "
                           f"{self.api.endpoint}") from None
        except GatedRepoError:
            raise AccessDenied(f"{loc.describe()}: the repo is gated and the account of {loc.token_env} has not "
                               f"been granted access; accept its terms on the hub") from None
        except RepositoryNotFoundError:
            hint = (f"or the token in {loc.token_env} cannot see it" if self.token else
                    f"or it is private and {loc.token_env} is not set on the worker")
            raise NotFound(f"{loc.describe()}: repo {loc.repo_id} does not exist at {self.api.endpoint}, "
                           f"{hint}") from None
        except RemoteEntryNotFoundError:
            raise SourceObjectMissing(f"{what}: not found at the pinned commit") from None
        except HfHubHTTPError as error:
            if error.response.status_code in (401, 403):
                raise AccessDenied(f"{what}: access denied ({error.response.status_code}); check the token in "
                                   f"{loc.token_env}") from None
            raise

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One hub request, retried while the trouble is transient."""
        with self._errors(what):
            return call_with_retries(fn, is_transient)

    def commit(self) -> str:
        """The commit sha the plan's revision points at now."""
        loc = self.location
        info = self._call(loc.describe(), lambda: self.api.repo_info(
            loc.repo_id, revision=loc.revision, repo_type=loc.repo_type, timeout=stall_seconds()))
        if not info.sha:
            raise NotFound(f"{loc.describe()}: the hub did not resolve the revision to a commit")
        return info.sha

    def check(self) -> None:
        try:
            self.commit()
        except _NETWORK_ERRORS as error:
            raise Unreachable(f"the hub at {self.api.endpoint} does not answer ({type(error).__name__}); "
                              f"check HF_ENDPOINT") from None

    def files(self, commit: str) -> Iterator[HubFile]:
        """Every file of the repository at ``commit`` (the library follows the hub's pages and retries each)."""
        loc = self.location
        with self._errors(loc.describe()):
            for entry in self.api.list_repo_tree(loc.repo_id, recursive=True, revision=commit,
                                                 repo_type=loc.repo_type):
                if isinstance(entry, RepoFile):
                    yield _hub_file(entry)

    def file(self, path: str, commit: str) -> HubFile | None:
        loc = self.location
        found = self._call(f"{loc.describe()}/{path}", lambda: self.api.get_paths_info(
            loc.repo_id, [path], revision=commit, repo_type=loc.repo_type))
        files = [entry for entry in found if isinstance(entry, RepoFile)]
        return _hub_file(files[0]) if files else None

    def read(self, path: str, commit: str, offset: int, length: int, whole: bool) -> bytes:
        """``length`` bytes of ``path`` at ``commit`` from ``offset`` (``whole``: they are all of it, which a hub
        may answer with a plain 200)."""
        loc = self.location
        url = hf_hub_url(loc.repo_id, path, repo_type=loc.repo_type, revision=commit, endpoint=self.api.endpoint)
        headers = {**self._headers, "Range": f"bytes={offset}-{offset + length - 1}"}

        def get() -> bytes:
            timeout = httpx2.Timeout(stall_seconds(), connect=CONNECT_TIMEOUT_SECONDS)
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as response:
                hf_raise_for_status(response)
                if response.status_code != 206 and not (whole and response.status_code == 200):
                    raise ShortRead(f"{url}: answered {response.status_code} to a range request")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > length:
                        break
            if len(data) != length:
                raise ShortRead(f"{url}: {len(data)} bytes of the {length} asked for at offset {offset}")
            return bytes(data)

        return self._call(f"{loc.describe()}/{path}", get)
