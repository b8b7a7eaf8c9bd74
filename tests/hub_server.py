"""A loopback stand-in for the part of the Hugging Face Hub API that `create_repo` + `upload_folder` use.

It lets the tests drive the real, unpatched `huggingface_hub` client end to end without touching the internet.
Every file is answered with `uploadMode: "regular"`, so contents arrive inline (base64) in the commit payload and
no LFS/Xet storage is needed. Failures can be injected to exercise error handling.

Endpoints (model repos only):
    POST /api/repos/create                          create a repo (409 if it exists)
    POST /api/validate-yaml                         README.md front-matter check (always valid)
    GET  /api/whoami-v2                             the fake user
    POST /api/models/{repo_id}/preupload/{rev}      upload mode + remote git oid per file
    POST /api/models/{repo_id}/commit/{rev}         NDJSON commit (header + file/deletedFile/deletedFolder lines)
    POST /api/models/{repo_id}/branch/{branch}      create a branch (409 if it exists)
    GET  /api/models/{repo_id}[/revision/{rev}]     repo info (sha, private, siblings)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

USER = "fake-user"
_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
    ("GET", re.compile(r"/api/whoami-v2"), "_whoami"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "_preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "_commit"),
    ("POST", re.compile(rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)"), "_create_branch"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "_repo_info"),
]


def git_blob_oid(data: bytes) -> str:
    """Git's sha1 of a blob: what the client compares to skip unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RecordedRequest:
    method: str
    path: str  # raw path including the query string
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Commit:
    oid: str
    branch: str
    summary: str
    description: str
    paths: list[str]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    commits: list[Commit] = field(default_factory=list)

    def files(self, branch: str = "main") -> dict[str, bytes]:
        return dict(self.branches[branch])


@dataclass
class _Fault:
    kind: str  # "status" or "drop"
    remaining: int
    status: int
    path_contains: str | None
    message: str = ""


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


class FakeHub:
    """In-memory Hub served on 127.0.0.1 from a background thread. Use as a context manager."""

    def __init__(self, token: str | None = None):
        self.token = token  # when set, write endpoints require `Authorization: Bearer <token>`
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeHub":
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later requests get "connection refused"."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    def fail_next(
        self, n: int, status: int = 500, *, path_contains: str | None = None, message: str | None = None
    ) -> None:
        """Answer the next `n` requests whose path contains `path_contains` with `status` and a JSON error."""
        with self._lock:
            self._faults.append(_Fault("status", n, status, path_contains, message or f"injected HTTP {status}"))

    def drop_next(self, n: int, *, path_contains: str | None = None) -> None:
        """Close the connection without answering the next `n` matching requests."""
        with self._lock:
            self._faults.append(_Fault("drop", n, 0, path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def paths(self, method: str | None = None) -> list[str]:
        """Request paths (without query), in order, optionally for one method."""
        return [urlsplit(r.path).path for r in self.requests if method in (None, r.method)]

    # ------------------------------------------------------------------ request handling

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                    fault.remaining -= 1
                    return fault
        return None

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        path = urlsplit(raw_path).path
        for route_method, pattern, handler_name in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with self._lock:
                    return 200, getattr(self, handler_name)(headers=headers, body=body, **params)
        raise HubError(404, f"fake hub: no route for {method} {path}")

    def _check_auth(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization")
        if auth is None:
            raise HubError(401, "Invalid username or password.")
        if self.token is not None and auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _get_repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", error_code="RepoNotFound")
        return self.repos[repo_id]

    def _get_branch(self, repo: Repo, rev: str) -> dict[str, bytes]:
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", error_code="RevisionNotFound")
        return repo.branches[rev]

    def _create_repo(self, headers: dict[str, str], body: bytes) -> dict:
        self._check_auth(headers)
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, "fake hub: only model repos are supported")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=url)  # the client reads "url"
        self.repos[repo_id] = Repo(repo_id, private=payload.get("visibility") == "private")
        return {"url": url, "name": repo_id, "id": repo_id}

    def _validate_yaml(self, headers: dict[str, str], body: bytes) -> dict:
        json.loads(body)["content"]  # the client sends the README text; everything is valid here
        return {"errors": [], "warnings": []}

    def _whoami(self, headers: dict[str, str], body: bytes) -> dict:
        self._check_auth(headers)
        return {"type": "user", "name": USER, "auth": {"type": "access_token", "accessToken": {"role": "write"}}}

    def _preupload(self, headers: dict[str, str], body: bytes, repo_id: str, rev: str) -> dict:
        self._check_auth(headers)
        files = self._get_branch(self._get_repo(repo_id), rev)
        answer = []
        for entry in json.loads(body)["files"]:
            remote = files.get(entry["path"])
            answer.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",  # never LFS/Xet: contents come inline in the commit
                    "shouldIgnore": False,
                    "oid": git_blob_oid(remote) if remote is not None else None,
                }
            )
        return {"files": answer, "commitOid": None}

    def _commit(self, headers: dict[str, str], body: bytes, repo_id: str, rev: str) -> dict:
        self._check_auth(headers)
        repo = self._get_repo(repo_id)
        files = dict(self._get_branch(repo, rev))
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo.heads[rev]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        paths = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # "lfsFile" cannot happen: preupload only answers "regular"
                raise HubError(400, f"fake hub: unsupported commit operation {key!r}")
            paths.append(value["path"])
        digest = hashlib.sha1(repo.heads[rev].encode() + header["summary"].encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_oid(files[path]).encode())
        oid = digest.hexdigest()
        repo.branches[rev], repo.heads[rev] = files, oid
        repo.commits.append(Commit(oid, rev, header["summary"], header.get("description", ""), paths))
        return {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _create_branch(self, headers: dict[str, str], body: bytes, repo_id: str, rev: str) -> dict:
        self._check_auth(headers)
        repo = self._get_repo(repo_id)
        if rev in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        start = (json.loads(body) if body else {}).get("startingPoint", "main")
        repo.branches[rev] = dict(self._get_branch(repo, start))
        repo.heads[rev] = repo.heads[start]
        return {}

    def _repo_info(self, headers: dict[str, str], body: bytes, repo_id: str, rev: str = "main") -> dict:
        repo = self._get_repo(repo_id)
        if repo.private:
            try:
                self._check_auth(headers)
            except HubError:
                raise HubError(404, "Repository not found", error_code="RepoNotFound") from None
        files = self._get_branch(repo, rev)
        return {
            "id": repo_id,
            "sha": repo.heads[rev],
            "private": repo.private,
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # bound per server in `FakeHub.start`

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self._read_body()
        self.hub.requests.append(RecordedRequest(self.command, self.path, headers, body))

        fault = self.hub._take_fault(self.path)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True  # no response at all: the client sees a disconnect
            return
        try:
            if fault is not None:
                raise HubError(fault.status, fault.message)
            status, payload = self.hub._dispatch(self.command, self.path, headers, body)
            extra_headers = {}
        except HubError as err:
            status, payload = err.status, {"error": err.message, **err.extra}
            extra_headers = {"X-Error-Code": err.error_code} if err.error_code else {}

        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
