"""A fake Hugging Face Hub on loopback, serving the endpoints ``huggingface_hub`` calls for flyaway.

Shapes follow what ``huggingface_hub`` 2.x sends and parses (``hf_api.py``,
``utils/_pagination.py``, ``utils/_http.py``, ``file_download.py``):

- ``GET /api/{models|datasets|spaces}/{repo}/revision/{rev}``: repo info with the commit ``sha``;
- ``GET /api/.../{repo}/tree/{rev}[/{path}]?recursive=&expand=``: entries ``{type, oid, size, path,
  lfs: {oid, size, pointerSize}}``, 1000 a page (50 with expand), the next page in a ``Link`` header;
- ``POST /api/.../{repo}/paths-info/{rev}`` (form ``paths``, ``expand``);
- ``GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}``: git files answered directly (``ETag`` the
  git blob id); LFS files answered with a 302 to a CDN path (``X-Linked-Etag`` the sha256,
  ``X-Linked-Size``), which serves HTTP ranges. Every answer carries ``X-Repo-Commit``.

Errors carry ``X-Error-Code`` / ``X-Error-Message`` as the hub's do, which the library turns
into its typed errors: an unknown repo is 404 ``RepoNotFound`` (401 when the caller sent no
token, as for a private repo), an unknown revision 404 ``RevisionNotFound``, a bad token 401
"Invalid credentials in Authorization header", a gated repo 403 ``GatedRepo``.

Tests script faults: :meth:`FakeHub.corrupt` flips one byte of the next responses serving a
file (or all of them), :meth:`FakeHub.fail_next` answers 503 or drops the connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.servers import HttpServer, JsonHandler

TOKEN = "hf_fake_reader"
PAGE_SIZE = 1000
EXPAND_PAGE_SIZE = 50
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(revision|tree|paths-info)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/_cdn/([0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    size: int
    sha256: str
    lfs: bool
    data: bytes | None = None  # None: listed, never served (a stand-in for a file too big to make)

    @property
    def oid(self) -> str:
        """The git blob id the hub lists: of the content, or of the LFS pointer file."""
        if not self.lfs:
            assert self.data is not None
            return git_blob_id(self.data)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        return git_blob_id(pointer.encode())

    def entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass
class HubRepo:
    repo_type: str
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        return self.refs.get(revision) or (revision if revision in self.commits else None)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class FakeHub(HttpServer):
    """Repos in memory; ``lfs_above`` bytes or more make a file an LFS file."""

    def __init__(self, lfs_above: int = 1024) -> None:
        self.lfs_above = lfs_above
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.blobs: dict[str, HubFile] = {}
        self.served: Counter[str] = Counter()  # bytes of file content served, by the content's sha256
        self._corrupt: dict[str, int | None] = {}  # sha256 -> responses left to corrupt (None: all)
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self.handler = _Handler

    # ---- scripting -----------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model", private: bool = False,
                 gated: bool = False, listed_only: dict[str, int] | None = None) -> str:
        """A repo with one commit on ``main``; ``listed_only`` adds LFS files of these sizes without content."""
        self.repos[(repo_type, repo_id)] = HubRepo(repo_type, private=private, gated=gated)
        return self.commit(repo_id, files, repo_type=repo_type, listed_only=listed_only)

    def commit(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model", branch: str = "main",
               listed_only: dict[str, int] | None = None) -> str:
        """A new commit holding exactly ``files``, which ``branch`` then points at; returns its sha."""
        repo = self.repos[(repo_type, repo_id)]
        tree = {path: self._file(data) for path, data in files.items()}
        for path, size in (listed_only or {}).items():
            tree[path] = HubFile(size=size, sha256=hashlib.sha256(path.encode()).hexdigest(), lfs=True)
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def _file(self, data: bytes) -> HubFile:
        file = HubFile(size=len(data), sha256=hashlib.sha256(data).hexdigest(), lfs=len(data) >= self.lfs_above,
                       data=data)
        self.blobs[file.sha256] = file
        return file

    def corrupt(self, data: bytes, times: int | None = 1) -> None:
        """Flip a byte in the next ``times`` responses carrying bytes of this content (every one when None)."""
        self._corrupt[hashlib.sha256(data).hexdigest()] = times

    def fail_next(self, count: int, how: str = "503") -> None:
        """The next ``count`` requests for file bytes answer 503 (``how="503"``) or lose the connection ("reset")."""
        self._faults.extend([how] * count)

    # ---- serving -------------------------------------------------------------------------------

    def repo(self, repo_type: str, repo_id: str, authorization: str | None) -> HubRepo:
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        if token is not None and token != TOKEN:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token is None):
            # the hub does not tell a private repo from a missing one to a caller without a token
            raise HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
        if repo.gated:
            raise HubError(403, f"Access to model {repo_id} is restricted.", "GatedRepo")
        return repo

    def tree(self, repo: HubRepo, revision: str) -> tuple[str, dict[str, HubFile]]:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo.commits[sha]

    def take_fault(self) -> str | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def maybe_corrupt(self, file: HubFile, body: bytes) -> bytes:
        with self._lock:
            if file.sha256 not in self._corrupt or not body:
                return body
            left = self._corrupt[file.sha256]
            if left is not None:
                if left <= 0:
                    return body
                self._corrupt[file.sha256] = left - 1
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1:]


def _folders(paths: list[str]) -> set[str]:
    return {"/".join(path.split("/")[:depth]) for path in paths for depth in range(1, path.count("/") + 1)}


class _Handler(JsonHandler):
    @property
    def hub(self) -> FakeHub:
        return self.owner

    def send_error_json(self, error: HubError) -> None:
        body = json.dumps({"error": str(error)}).encode()
        self.send_response(error.status)
        if error.code:
            self.send_header("X-Error-Code", error.code)
        self.send_header("X-Error-Message", str(error))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        try:
            if match := _API.match(url.path):
                self._api(match, query)
            elif match := _RESOLVE.match(url.path):
                self._resolve(match)
            elif match := _CDN.match(path):
                self._cdn(match.group(1))
            else:
                raise HubError(404, f"no route for {path}")
        except HubError as error:
            self.send_error_json(error)

    # ---- /api -------------------------------------------------------------------------------

    def _api(self, match: re.Match[str], query: dict[str, list[str]]) -> None:
        kind, repo_id, action, revision, subpath = match.groups()
        repo = self.hub.repo(_TYPES[kind], unquote(repo_id), self.headers.get("Authorization"))
        sha, files = self.hub.tree(repo, unquote(revision))
        if action == "revision":
            self.send_json(200, {"_id": sha[:24], "id": unquote(repo_id), "sha": sha, "private": repo.private,
                                 "gated": repo.gated, "siblings": [{"rfilename": p} for p in sorted(files)]})
        elif action == "tree":
            self._tree(files, unquote(subpath or ""), query)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            wanted = parse_qs(self.rfile.read(length).decode()).get("paths", [])
            folders = _folders(list(files))
            self.send_json(200, [files[p].entry(p) if p in files else {"type": "directory", "oid": "0" * 40,
                                                                          "size": 0, "path": p}
                                 for p in wanted if p in files or p in folders])

    def _tree(self, files: dict[str, HubFile], subpath: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        expand = query.get("expand", ["false"])[0].lower() in ("true", "1")
        base = f"{subpath.rstrip('/')}/" if subpath else ""
        below = [p for p in files if p.startswith(base)]
        if subpath and not below:
            raise HubError(404, f"{subpath} does not exist", "EntryNotFound")
        entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": folder}
                   for folder in sorted(_folders(below)) if folder.startswith(base)]
        entries += [files[p].entry(p) for p in sorted(below)]
        if not recursive:
            entries = [e for e in entries if "/" not in e["path"][len(base):]]
        size = EXPAND_PAGE_SIZE if expand else PAGE_SIZE
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + size]
        self.send_response(200)
        if cursor + size < len(entries):
            url = urlsplit(self.path)
            link = (f"http://{self.headers['Host']}{url.path}?recursive={str(recursive).lower()}"
                    f"&expand={str(expand).lower()}&cursor={cursor + size}")
            self.send_header("Link", f'<{link}>; rel="next"')
        body = json.dumps(page).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # ---- file bytes ----------------------------------------------------------------------------

    def _resolve(self, match: re.Match[str]) -> None:
        prefix, repo_id, revision, filename = match.groups()
        repo = self.hub.repo(_TYPES.get(prefix or "models", "model"), unquote(repo_id),
                             self.headers.get("Authorization"))
        sha, files = self.hub.tree(repo, unquote(revision))
        path = unquote(filename)
        file = files.get(path)
        if file is None:
            raise HubError(404, f"{path} does not exist at {sha}", "EntryNotFound")
        if file.lfs:
            self.send_response(302)
            self.send_header("Location", f"/_cdn/{file.sha256}")
            self.send_header("X-Repo-Commit", sha)
            self.send_header("X-Linked-Etag", f'"{file.sha256}"')
            self.send_header("X-Linked-Size", str(file.size))
            self.send_header("ETag", f'"{file.oid}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._bytes(file, {"X-Repo-Commit": sha, "ETag": f'"{file.oid}"'})

    def _cdn(self, sha256: str) -> None:
        file = self.hub.blobs.get(sha256)
        if file is None:
            raise HubError(404, "no such object")
        self._bytes(file, {"ETag": f'"{sha256}"'})

    def _bytes(self, file: HubFile, headers: dict[str, str]) -> None:
        fault = self.hub.take_fault()
        if fault == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if fault == "503":
            raise HubError(503, "Service Unavailable")
        assert file.data is not None, "a listed-only file was read"
        start, end, status = 0, file.size - 1, 200
        if match := _RANGE.match(self.headers.get("Range", "")):
            start, end, status = int(match.group(1)), int(match.group(2) or file.size - 1), 206
            if start >= file.size:
                raise HubError(416, "Requested Range Not Satisfiable")
            end = min(end, file.size - 1)
        body = self.hub.maybe_corrupt(file, file.data[start:end + 1])
        with self.hub._lock:
            self.hub.served[file.sha256] += len(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
