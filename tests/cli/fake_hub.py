"""A local stand-in for the Hugging Face Hub: just what `huggingface_hub.snapshot_download`
(0.36) calls for a public model repository, served from directories on disk.

- GET  /api/models/{org}/{name}/revision/{rev}  -> model info JSON with `sha` and `siblings`
- HEAD /{org}/{name}/resolve/{rev}/{path}       -> ETag, X-Repo-Commit, Content-Length
- GET  /{org}/{name}/resolve/{rev}/{path}       -> the bytes (a `Range: bytes=N-` resumes)

Errors carry the `X-Error-Code` header huggingface_hub maps to its exceptions (RepoNotFound,
RevisionNotFound, EntryNotFound). `rev` is "main" or the repository's commit. Every request is
logged, and one the fake does not implement is answered 501 and kept in `unhandled`, so a test
notices when a huggingface_hub upgrade starts calling something new.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


class FakeRepo:
    """A directory served as a repository at one commit (derived from its file list).

    `error` = (status, X-Error-Code) answers every request for the repository with that error
    (e.g. (403, "GatedRepo"), (500, "")); `phantom_files` are listed but never served.
    """

    def __init__(self, root: Path, error: tuple[int, str] | None = None, phantom_files: tuple[str, ...] = ()) -> None:
        self.root = root
        self.error = error
        self.files = sorted(
            [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()] + list(phantom_files)
        )
        self.sha = hashlib.sha1("\n".join(self.files).encode()).hexdigest()

    def etag(self, name: str) -> str:
        return hashlib.sha256((self.root / name).read_bytes()).hexdigest()


class FakeHub:
    """`with FakeHub({"org/name": directory}) as hub:` serves on `hub.endpoint` (port 0)."""

    def __init__(self, repos: dict[str, Path | FakeRepo]) -> None:
        self.repos = {
            repo_id: root if isinstance(root, FakeRepo) else FakeRepo(Path(root)) for repo_id, root in repos.items()
        }
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
                pass  # the test reads hub.requests instead of stderr noise

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                hub._route(self, send_body=True)

            def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
                hub._route(self, send_body=False)

        return Handler

    # -- responses -------------------------------------------------------------------------

    def _route(self, request: BaseHTTPRequestHandler, send_body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        if request.command == "GET" and (match := _INFO.match(path)):
            self._model_info(request, match.group(1), match.group(2) or "main")
        elif match := _RESOLVE.match(path):
            self._resolve(request, match.group(1), match.group(2), match.group(3), send_body)
        else:
            self.unhandled.append((request.command, path))
            self._error(request, 501, "", "not implemented by the fake hub", send_body)

    def _lookup(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, send_body: bool) -> FakeRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", "Repository not found", send_body)
            return None
        if repo.error is not None:
            self._error(request, *repo.error, "the fake hub was told to fail", send_body)
            return None
        if revision not in ("main", repo.sha):
            self._error(request, 404, "RevisionNotFound", "Invalid rev id", send_body)
            return None
        return repo

    def _model_info(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str) -> None:
        repo = self._lookup(request, repo_id, revision, send_body=True)
        if repo is None:
            return
        info = {
            "_id": repo.sha[:24], "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2024-12-01T00:00:00.000Z", "createdAt": "2024-12-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in repo.files],
        }  # fmt: skip
        self._send(request, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, True)

    def _resolve(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, name: str, send_body: bool) -> None:
        repo = self._lookup(request, repo_id, revision, send_body)
        if repo is None:
            return
        if name not in repo.files or not (repo.root / name).is_file():
            self._error(request, 404, "EntryNotFound", "Entry not found", send_body, {"X-Repo-Commit": repo.sha})
            return
        data = (repo.root / name).read_bytes()
        headers = {"ETag": f'"{repo.etag(name)}"', "X-Repo-Commit": repo.sha,
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}  # fmt: skip
        status = 200
        if send_body and (match := _RANGE.match(request.headers.get("Range", ""))):
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
        if not send_body:  # a HEAD announces the size of the body a GET would send
            headers["Content-Length"] = str(len(data))
        self._send(request, status, data, headers, send_body)

    def _error(self, request: BaseHTTPRequestHandler, status: int, code: str, message: str, send_body: bool,
               extra: dict[str, str] | None = None) -> None:  # fmt: skip
        headers = {"Content-Type": "application/json", **({"X-Error-Code": code} if code else {}), **(extra or {})}
        if code:
            headers["X-Error-Message"] = message
        self._send(request, status, json.dumps({"error": message}).encode(), headers, send_body)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        if "Content-Length" not in headers:
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if send_body:
            request.wfile.write(body)


def linked_copy(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    """A directory of symlinks to `source`'s files (cheap: no 60 MB copies per test).

    To change a file in the copy, unlink it first and write a new one (`replace_file`);
    writing through the link would change the session's shared model.
    """
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and relative.as_posix() not in skip:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).symlink_to(path)
    return target


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)
