"""A Hugging Face Hub-protocol server on loopback, for tests (stdlib only).

The unchanged ``huggingface_hub`` client talks to it through ``HF_ENDPOINT`` (with ``HF_HUB_DISABLE_XET=1``, so
large files take the legacy LFS route). State lives in memory (repos, commits, refs); file contents live in a
temporary, content-addressed blob store. Every commit is kept, so a pinned old revision keeps resolving.

Supported routes (``{t}``: ``models``/``datasets``/``spaces``; ``{p}``: URL prefix, empty for models, else
``datasets/`` or ``spaces/``; ``{repo}``: always ``namespace/name``; ``{rev}``: URL-quoted branch, tag, ``refs/pr/N``
or (abbreviated) commit sha):

- ``GET /api/whoami-v2``: the test user (401 without a valid token).
- ``GET /api/agent-harnesses``: an empty registry (``huggingface_hub`` fetches it for its user agent).
- ``POST /api/validate-yaml``: README metadata check (only that a ``---`` front matter block is closed).
- ``POST /api/repos/create``: ``{name, organization, type, visibility|private}``; 409 (with ``url``) if it exists.
- ``DELETE /api/repos/delete``: 404 ``RepoNotFound`` if missing.  ``PUT /api/{t}/{repo}/settings``: private, gated.
- ``GET /api/{t}/{repo}`` and ``GET /api/{t}/{repo}/revision/{rev}``: repo info with ``id``, ``sha``, ``siblings``
  (``?blobs=true`` adds size, blobId, lfs), ``private``, ``lastModified``, ``createdAt``, ``cardData`` (flat keys).
- ``GET /api/{t}/{repo}/tree/{rev}[/{path}]``: ``?recursive=&expand=`` (lastCommit), folders first, paginated with
  a ``Link`` header past ``page_size``; 404 ``EntryNotFound`` for a missing folder.
- ``POST /api/{t}/{repo}/paths-info/{rev}``: form or JSON ``paths`` (+ ``expand``); missing paths are skipped.
- ``GET /api/{t}/{repo}/refs`` (``?include_prs=1``), ``GET /api/{t}/{repo}/commits/{rev}`` (first-parent history,
  newest first), ``GET /api/{t}/{repo}/auth-check``.
- ``POST /api/{t}/{repo}/preupload/{rev}``: ``uploadMode`` is ``lfs`` when the path matches an LFS pattern of the
  repo's ``.gitattributes`` (new repos get the Hub's default one) or the size reaches ``lfs_threshold`` (10 MiB);
  ``oid`` of the file currently there (so unchanged files are skipped by the client).
- ``POST /api/{t}/{repo}/commit/{rev}``: NDJSON lines ``header`` (``summary``, ``description``, ``parentCommit``:
  412 when stale), ``file`` (base64), ``lfsFile`` (object must be uploaded; 422 otherwise), ``deletedFile`` /
  ``deletedFolder`` (404 ``EntryNotFound`` if absent), ``copyFile``; ``?create_pr=1`` commits to a new ``refs/pr/N``.
  Commits go to branches only.
- ``POST|DELETE /api/{t}/{repo}/branch/{name}`` (``startingPoint``; 409 if it exists), ``POST /api/{t}/{repo}/tag/{rev}``
  (``{tag}``; 409 if it exists), ``DELETE /api/{t}/{repo}/tag/{tag}``.
- ``POST /{p}{repo}.git/info/lfs/objects/batch``: LFS basic transfer, ``upload`` + ``verify`` actions (no actions
  when the object is already stored); ``POST /{p}{repo}.git/info/lfs/objects/verify``.
- ``PUT /lfs-upload/{sha256}?size=&sig=``: the signed upload target handed out by the batch API (no auth header, as
  with a pre-signed storage URL); sha256 and size are checked.
- ``HEAD|GET /{p}{repo}/resolve/{rev}/{path}``: 200 with ``X-Repo-Commit``, ``ETag`` (git blob id),
  ``X-Linked-Etag`` / ``X-Linked-Size`` (sha256 / size) for LFS files, ``Content-Length``; ``Range: bytes=`` gives 206
  (416 if unsatisfiable); 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``
  (the latter with ``X-Repo-Commit``).

Writes need ``Authorization: Bearer <token>`` (401 otherwise); reads of private repos too (404 otherwise). Anything
else answers 404 and is appended to ``HubServer.unhandled``; every request is appended to ``HubServer.requests``;
a crash of the server itself answers 501 (not retried by clients) and its traceback goes to ``HubServer.errors``.
Helpers for assertions: ``repo_files(repo_id, repo_type, revision)`` (path -> bytes), ``lfs_files(...)`` (paths
stored as LFS), ``lfs_uploads`` (sha256 of every LFS PUT); ``lfs_threshold`` and ``page_size`` can be monkeypatched.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

TEST_TOKEN = "hf_dexml_test_token"
TEST_USER = "dexml-tests"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The Hub's default .gitattributes for new repos (the LFS part), so the LFS decision follows the real rules.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl",
        "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz",
        "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = r"^/api/(?P<t>models|datasets|spaces)/" + _REPO
_GIT = r"^/(?:(?P<t>datasets|spaces)/)?" + _REPO + r"\.git/info/lfs/objects/"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class _Entry:
    """One file in a commit's tree; contents are in the blob store under ``sha256``."""

    size: int
    sha256: str
    git_oid: str  # git blob id: of the content, or of the LFS pointer file
    lfs: bool

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    def as_tree_item(self, path: str) -> dict:
        item = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return item


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, _Entry]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    gated: bool | str = False


class HubError(Exception):
    """An HTTP error answer: status, Hub error code (``X-Error-Code``) and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more fields for the JSON body


class HubServer:
    """The loopback Hub: state, blob store, HTTP server thread, and logs of what clients asked for."""

    def __init__(self, token: str = TEST_TOKEN, user: str = TEST_USER, lfs_threshold: int = 10 * 1024 * 1024):
        self.token, self.user, self.lfs_threshold = token, user, lfs_threshold
        self.page_size = 1000
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.unhandled: list[tuple[str, str]] = []  # (method, path) of requests no route matched
        self.lfs_uploads: list[str] = []  # sha256 of every object received through the LFS PUT
        self.errors: list[str] = []  # tracebacks of requests the server itself failed on (answered 501)
        self.lock = threading.RLock()
        self._blobdir = tempfile.TemporaryDirectory(prefix="hub-blobs-")
        self._counter = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._blobdir.cleanup()

    # ----------------------------------------------------------------- helpers for tests
    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Contents of every file at ``revision``, read directly from the server's state."""
        with self.lock:
            _, commit = self._resolve(self._repo(repo_type, repo_id, authorized=True), revision)
        return {path: self._read_blob(entry.sha256) for path, entry in commit.files.items()}

    def lfs_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> set[str]:
        """Paths stored as LFS objects at ``revision``."""
        with self.lock:
            _, commit = self._resolve(self._repo(repo_type, repo_id, authorized=True), revision)
        return {path for path, entry in commit.files.items() if entry.lfs}

    # ----------------------------------------------------------------- blob store
    def _blob_path(self, sha256: str) -> str:
        return os.path.join(self._blobdir.name, sha256)

    def _has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self._blob_path(sha256)
        return os.path.isfile(path) and (size is None or os.path.getsize(path) == size)

    def _read_blob(self, sha256: str) -> bytes:
        with open(self._blob_path(sha256), "rb") as f:
            return f.read()

    def _store_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self._has_blob(sha256):
            self._write_blob_atomically(sha256, data)
        return sha256

    def _write_blob_atomically(self, sha256: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._blobdir.name, prefix=".incoming-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self._blob_path(sha256))

    def _upload_signature(self, sha256: str) -> str:
        return hmac.new(self.token.encode(), sha256.encode(), hashlib.sha256).hexdigest()[:32]

    # ----------------------------------------------------------------- repos and revisions
    def _repo(self, repo_type: str, repo_id: str, authorized: bool) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository Not Found for {repo_type} {repo_id}.", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> tuple[str, _Commit]:
        """Branch, tag, ``refs/...`` or (possibly abbreviated) commit sha -> ``(name, commit)``."""
        revision = revision or "main"
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and revision.startswith("refs/heads/"):
            oid = repo.branches.get(revision[len("refs/heads/") :])
        if oid is None and revision.startswith("refs/tags/"):
            oid = repo.tags.get(revision[len("refs/tags/") :])
        if oid is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for c in repo.commits if c.startswith(revision)]
            oid = matches[0] if len(matches) == 1 else None
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return revision, repo.commits[oid]

    def _new_commit(self, repo: _Repo, parent: _Commit | None, files: dict[str, _Entry], title: str, message: str):
        self._counter += 1
        date = _now()
        seed = json.dumps([parent.oid if parent else None, title, date, self._counter, sorted(files)])
        commit = _Commit(
            hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, title, message, date, files
        )
        repo.commits[commit.oid] = commit
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        data = DEFAULT_GITATTRIBUTES.encode()
        files = {".gitattributes": _Entry(len(data), self._store_blob(data), _git_oid(data), lfs=False)}
        repo.branches["main"] = self._new_commit(repo, None, files, "initial commit", "").oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _lfs_patterns(self, commit: _Commit) -> list[str]:
        entry = commit.files.get(".gitattributes")
        if entry is None:
            return []
        lines = self._read_blob(entry.sha256).decode("utf-8", "replace").splitlines()
        return [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]

    def _is_lfs_path(self, commit: _Commit, path: str) -> bool:
        for pattern in self._lfs_patterns(commit):
            target = path if "/" in pattern.strip("/") else path.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
                return True
        return False

    # ----------------------------------------------------------------- trees
    @staticmethod
    def _folders(files: dict[str, _Entry]) -> set[str]:
        return {path.rsplit("/", i)[0] for path in files for i in range(1, path.count("/") + 1)}

    @staticmethod
    def _tree_oid(files: dict[str, _Entry], folder: str) -> str:
        prefix = folder + "/"
        listing = sorted((p, e.git_oid) for p, e in files.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps([folder, listing]).encode()).hexdigest()

    def _last_commit(self, repo: _Repo, head: _Commit, path: str, is_folder: bool) -> dict:
        """The newest first-parent commit that changed ``path`` (a file, or anything under a folder)."""

        def state(commit: _Commit):
            if not is_folder:
                entry = commit.files.get(path)
                return entry.git_oid if entry else None
            return self._tree_oid(commit.files, path)

        commit = head
        while commit.parent is not None and state(repo.commits[commit.parent]) == state(commit):
            commit = repo.commits[commit.parent]
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    def _item(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
        if path in commit.files:
            item = commit.files[path].as_tree_item(path)
        else:
            item = {"type": "directory", "oid": self._tree_oid(commit.files, path), "size": 0, "path": path}
        if expand:
            item["lastCommit"] = self._last_commit(repo, commit, path, is_folder=item["type"] == "directory")
            if item["type"] == "file":
                item["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False},
                    "pickleImportScan": None,
                }
        return item

    def _tree(self, repo: _Repo, commit: _Commit, folder: str, recursive: bool, expand: bool) -> list[dict]:
        folder = folder.strip("/")
        folders = self._folders(commit.files)
        if folder and folder not in folders:
            raise HubError(404, f"{folder} does not exist on {commit.oid}", "EntryNotFound")
        prefix = folder + "/" if folder else ""
        paths = [p for p in sorted(set(commit.files) | folders) if p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix) :]]
        # Same order as the Hub: folders first, then files, each alphabetical.
        paths.sort(key=lambda p: (p in commit.files, p))
        return [self._item(repo, commit, p, expand) for p in paths]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002
        pass

    # ----------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self, body: bytes) -> dict:
        try:
            return json.loads(body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return hmac.compare_digest(auth, f"Bearer {self.hub.token}")

    def _require_write(self) -> None:
        if not self.headers.get("Authorization"):
            raise HubError(401, "You must be authenticated to access this resource.")
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None):
        self.send_response(status)
        headers = dict(headers or {})
        if content_type:
            headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers, "application/json; charset=utf-8")

    def _send_error(self, err: HubError):
        headers = dict(err.headers)
        headers["X-Error-Message"] = err.message.splitlines()[0]
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message, **err.extra}, err.status, headers)

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self.hub.lock:
            self.hub.requests.append((self.command, url.path))
        body = b""
        try:
            if self.command in ("POST", "PUT", "DELETE", "PATCH"):
                body = self._read_body()
            for method, pattern, handler in _ROUTES:
                match = re.match(pattern, url.path)
                if match and self.command in method.split("|"):
                    handler(self, body=body, **match.groupdict())
                    return
            with self.hub.lock:
                self.hub.unhandled.append((self.command, url.path))
            raise HubError(404, f"No route for {self.command} {url.path} on the loopback Hub.")
        except HubError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-answer
        except Exception as err:
            # A bug in the test server: record it and answer 501, which clients do not retry (500 is retried for ~25 s).
            with self.hub.lock:
                self.hub.errors.append(f"{self.command} {url.path}\n{traceback.format_exc()}")
            self.close_connection = True
            self._send_error(HubError(501, f"Loopback Hub crashed: {type(err).__name__}: {err}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815

    def _flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")

    def _repo_for(self, t: str | None, repo: str) -> _Repo:
        return self.hub._repo(REPO_TYPES.get(t or "models", "model"), unquote(repo), self._authorized())

    # ----------------------------------------------------------------- routes: account and repos
    def whoami(self, body):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        user = self.hub.user
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": f"{user}@localhost",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            }
        )

    def agent_harnesses(self, body):
        self._send_json({"standardEnvVars": [], "harnesses": {}})  # an empty registry: no agent detection

    def validate_yaml(self, body):
        """README metadata check; without a YAML parser (stdlib only) it only checks the front matter is closed."""
        content = str(self._json_body(body).get("content", ""))
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            message = "README.md metadata block opened with '---' is never closed"
            raise HubError(400, message, extra={"errors": [{"message": message}], "warnings": []})
        self._send_json({"errors": [], "warnings": []})

    def create_repo(self, body):
        self._require_write()
        payload = self._json_body(body)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES or not payload.get("name"):
            raise HubError(400, f"Invalid repo type or name: {payload}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                url = self.hub._repo_url(self.hub.repos[(repo_type, repo_id)])
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = self.hub._create_repo(repo_type, repo_id, private)
            self._send_json({"url": self.hub._repo_url(repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, body):
        self._require_write()
        payload = self._json_body(body)
        key = (payload.get("type") or "model", f"{payload.get('organization') or self.hub.user}/{payload.get('name')}")
        with self.hub.lock:
            self.hub._repo(*key, authorized=True)
            del self.hub.repos[key]
        self._send_json({})

    def settings(self, body, t, repo):
        self._require_write()
        payload = self._json_body(body)
        with self.hub.lock:
            r = self._repo_for(t, repo)
            if "private" in payload:
                r.private = bool(payload["private"])
            if "visibility" in payload:
                r.private = payload["visibility"] != "public"
            if "gated" in payload:
                r.gated = payload["gated"]
        self._send_json({})

    def repo_info(self, body, t, repo, rev=None):
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, commit = self.hub._resolve(r, unquote(rev) if rev else "main")
            siblings = []
            for path in sorted(commit.files):
                sibling = {"rfilename": path}
                if self._flag("blobs"):
                    entry = commit.files[path]
                    sibling.update(size=entry.size, blobId=entry.git_oid)
                    if entry.lfs:
                        sibling["lfs"] = {
                            "sha256": entry.sha256,
                            "size": entry.size,
                            "pointerSize": entry.pointer_size,
                        }
                siblings.append(sibling)
            info = {
                "_id": hashlib.sha1(r.repo_id.encode()).hexdigest()[:24],
                "id": r.repo_id,
                "author": r.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": r.created_at,
                "private": r.private,
                "gated": r.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
            card = self._card_data(commit)
        if card is not None:
            info["cardData"] = card
        if r.repo_type == "model":
            info["modelId"] = r.repo_id
        self._send_json(info)

    def _card_data(self, commit: _Commit) -> dict | None:
        """The README's YAML front matter, as the Hub returns it; only the simple ``key: value`` lines are parsed."""
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        text = self.hub._read_blob(entry.sha256).decode("utf-8", "replace")
        match = re.match(r"---\n(.*?)\n---", text, re.S)
        if not match:
            return None
        card = {}
        for line in match.group(1).splitlines():
            m = re.match(r"([A-Za-z_][\w-]*):\s*(\S.*)?$", line)
            if m and m.group(2):
                card[m.group(1)] = m.group(2).strip().strip("'\"")
        return card

    def auth_check(self, body, t, repo):
        with self.hub.lock:
            self._repo_for(t, repo)
        self._send_json({})

    # ----------------------------------------------------------------- routes: listing
    def tree(self, body, t, repo, rev, path=None):
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, commit = self.hub._resolve(r, unquote(rev))
            items = self.hub._tree(r, commit, unquote(path or ""), self._flag("recursive"), self._flag("expand"))
        page_size = self.hub.page_size if not self._flag("expand") else max(1, self.hub.page_size // 20)
        start = int(self.query.get("cursor") or 0)
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            query = dict(self.query, cursor=str(start + page_size))
            next_url = f"{self.hub.endpoint}{urlsplit(self.path).path}?" + "&".join(
                f"{quote(k)}={quote(v)}" for k, v in query.items()
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send_json(page, headers=headers)

    def paths_info(self, body, t, repo, rev):
        if "json" in self.headers.get("Content-Type", ""):
            payload = self._json_body(body)
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, commit = self.hub._resolve(r, unquote(rev))
            folders = self.hub._folders(commit.files)
            out = [
                self.hub._item(r, commit, p.strip("/"), expand)
                for p in dict.fromkeys(paths)
                if p.strip("/") in commit.files or p.strip("/") in folders
            ]
        self._send_json(out)

    def refs(self, body, t, repo):
        def ref(name, full, oid):
            return {"name": name, "ref": full, "targetCommit": oid}

        with self.hub.lock:
            r = self._repo_for(t, repo)
            branches = [ref(n, f"refs/heads/{n}", o) for n, o in r.branches.items() if not n.startswith("refs/")]
            prs = [ref(n, n, o) for n, o in r.branches.items() if n.startswith("refs/pr/")]
            converts = [ref(n.split("/")[-1], n, o) for n, o in r.branches.items() if n.startswith("refs/convert/")]
            tags = [ref(n, f"refs/tags/{n}", o) for n, o in r.tags.items()]
        payload = {"branches": branches, "converts": converts, "tags": tags}
        if self._flag("include_prs"):
            payload["pullRequests"] = prs
        self._send_json(payload)

    def commits(self, body, t, repo, rev):
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, commit = self.hub._resolve(r, unquote(rev))
            history = []
            while commit is not None:
                history.append(
                    {
                        "id": commit.oid,
                        "authors": [{"user": self.hub.user}],
                        "date": commit.date,
                        "title": commit.title,
                        "message": commit.message,
                    }
                )
                commit = r.commits.get(commit.parent) if commit.parent else None
        self._send_json(history)

    # ----------------------------------------------------------------- routes: writing
    def _branch_head(self, r: _Repo, rev: str) -> tuple[str, _Commit]:
        """Commits go to branches only (as on the Hub); a commit sha or tag is rejected."""
        rev = unquote(rev)
        if rev not in r.branches:
            raise HubError(404, f"Invalid rev id: {rev} (commits must target a branch)", "RevisionNotFound")
        return rev, r.commits[r.branches[rev]]

    def preupload(self, body, t, repo, rev):
        self._require_write()
        payload = self._json_body(body)
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, head = self._branch_head(r, rev)
            files = []
            for f in payload.get("files", []):
                path, size = f["path"], int(f.get("size", 0))
                lfs = self.hub._is_lfs_path(head, path) or size >= self.hub.lfs_threshold
                entry = head.files.get(path)
                oid = (entry.sha256 if entry.lfs else entry.git_oid) if entry else None
                files.append(
                    {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
                )
        self._send_json({"files": files, "commitOid": head.oid})

    def commit(self, body, t, repo, rev):
        self._require_write()
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        with self.hub.lock:
            r = self._repo_for(t, repo)
            branch, head = self._branch_head(r, rev)
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise HubError(412, f"A commit has happened since. Parent commit {parent} is not the head {head.oid}")
            if self._flag("create_pr"):
                number = 1 + sum(1 for name in r.branches if name.startswith("refs/pr/"))
                branch = f"refs/pr/{number}"
            files = dict(head.files)
            for line in lines:
                self._apply(r, head, files, line.get("key"), line.get("value") or {})
            commit = self.hub._new_commit(
                r, head, files, header.get("summary") or "Upload", header.get("description") or ""
            )
            r.branches[branch] = commit.oid
            url = self.hub._repo_url(r)
            pr_url = f"{url}/discussions/{branch.split('/')[-1]}" if branch.startswith("refs/pr/") else None
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{url}/commit/{commit.oid}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            }
        )

    def _apply(self, r: _Repo, head: _Commit, files: dict[str, _Entry], key: str | None, value: dict) -> None:
        hub = self.hub
        if key == "header":
            return
        path = str(value.get("path", "")).strip("/")
        if key != "header" and not path:
            raise HubError(400, f"Missing path in commit operation {key}: {value}")
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding", "base64") == "base64" else content.encode()
            files[path] = _Entry(len(data), hub._store_blob(data), _git_oid(data), lfs=False)
        elif key == "lfsFile":
            oid = value.get("oid", "")
            if not hub._has_blob(oid):
                raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
            size = os.path.getsize(hub._blob_path(oid))
            if value.get("size") is not None and int(value["size"]) != size:
                raise HubError(422, f"LFS object {oid} has size {size}, commit says {value['size']}")
            files[path] = _Entry(size, oid, _git_oid(_lfs_pointer(oid, size)), lfs=True)
        elif key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        elif key == "copyFile":
            src_rev = value.get("srcRevision")
            src = hub._resolve(r, src_rev)[1].files if src_rev else head.files
            src_path = str(value.get("srcPath", "")).strip("/")
            if src_path not in src:
                raise HubError(404, f"Cannot copy {src_path}: file is missing on repo", "EntryNotFound")
            files[path] = src[src_path]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def branch(self, body, t, repo, name):
        self._require_write()
        name = unquote(name)
        with self.hub.lock:
            r = self._repo_for(t, repo)
            if self.command == "DELETE":
                if name not in r.branches or name == "main":
                    raise HubError(404 if name != "main" else 403, f"Cannot delete branch {name}", "RevisionNotFound")
                del r.branches[name]
            else:
                if name in r.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{name}")
                start = self._json_body(body).get("startingPoint") or "main"
                r.branches[name] = self.hub._resolve(r, start)[1].oid
        self._send_json({})

    def tag(self, body, t, repo, name):
        self._require_write()
        name = unquote(name)
        with self.hub.lock:
            r = self._repo_for(t, repo)
            if self.command == "DELETE":
                if name not in r.tags:
                    raise HubError(404, f"Tag {name} not found", "RevisionNotFound")
                del r.tags[name]
            else:
                tag = self._json_body(body).get("tag")
                if not tag:
                    raise HubError(400, "Missing tag name")
                if tag in r.tags:
                    raise HubError(409, f"Tag {tag} already exists")
                r.tags[tag] = self.hub._resolve(r, name)[1].oid
        self._send_json({})

    # ----------------------------------------------------------------- routes: LFS
    def lfs_batch(self, body, t, repo):
        self._require_write()
        payload = self._json_body(body)
        with self.hub.lock:
            r = self._repo_for(t, repo)
        if payload.get("operation", "upload") != "upload":
            raise HubError(400, "Only the upload operation is supported by the loopback Hub")
        objects = []
        verify_href = f"{self.hub.endpoint}/{URL_PREFIXES[r.repo_type]}{r.repo_id}.git/info/lfs/objects/verify"
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": f"Invalid oid {oid}"}
            elif not self.hub._has_blob(oid, size):
                href = f"{self.hub.endpoint}/lfs-upload/{oid}?size={size}&sig={self.hub._upload_signature(oid)}"
                item["actions"] = {
                    "upload": {"href": href, "expires_in": 3600},
                    "verify": {"href": verify_href, "expires_in": 3600},
                }
            objects.append(item)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_verify(self, body, t, repo):
        self._require_write()
        payload = self._json_body(body)
        with self.hub.lock:
            self._repo_for(t, repo)
        if not self.hub._has_blob(payload.get("oid", ""), int(payload.get("size", -1))):
            raise HubError(404, f"LFS object {payload.get('oid')} not found or has the wrong size")
        self._send_json({"success": True})

    def lfs_upload(self, body, oid):
        # Like a pre-signed storage URL: no Authorization header, the signature in the query authorises it.
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub._upload_signature(oid)):
            raise HubError(403, "Invalid upload signature")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        if "size" in self.query and int(self.query["size"]) != len(body):
            raise HubError(400, f"Uploaded {len(body)} bytes, expected {self.query['size']}")
        with self.hub.lock:
            self.hub._write_blob_atomically(oid, body)
            self.hub.lfs_uploads.append(oid)
        self._send(200, headers={"ETag": f'"{oid}"'})

    # ----------------------------------------------------------------- routes: file download
    def resolve(self, body, t, repo, rest):
        parts = rest.split("/")
        n = 3 if parts[0] == "refs" and len(parts) > 3 else 1  # an unquoted "refs/pr/1" or "refs/convert/parquet"
        rev, path = unquote("/".join(parts[:n])), unquote("/".join(parts[n:]))
        with self.hub.lock:
            r = self._repo_for(t, repo)
            _, commit = self.hub._resolve(r, rev)
            entry = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {commit.oid}", "EntryNotFound", headers=headers)
        headers["ETag"] = f'"{entry.git_oid}"'
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": entry.size})
        headers["Content-Disposition"] = f'inline; filename="{path.rsplit("/", 1)[-1]}"'
        start, end, status = 0, entry.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header and entry.size:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match or match.groups() == ("", ""):
                raise HubError(416, f"Unsupported Range {range_header}", headers={"Content-Range": f"*/{entry.size}"})
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), entry.size - 1) if last else entry.size - 1
            else:
                start = max(0, entry.size - int(last))
            if start >= entry.size or start > end:
                raise HubError(
                    416, f"Range {range_header} not satisfiable", headers={"Content-Range": f"bytes */{entry.size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        headers["Content-Length"] = str(end - start + 1) if entry.size else "0"
        self._send(status, headers=headers, content_type="application/octet-stream")
        if self.command == "GET" and entry.size:
            with open(self.hub._blob_path(entry.sha256), "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


_ROUTES = [
    ("GET", r"^/api/whoami-v2$", _Handler.whoami),
    ("GET", r"^/api/agent-harnesses$", _Handler.agent_harnesses),
    ("POST", r"^/api/validate-yaml$", _Handler.validate_yaml),
    ("POST", r"^/api/repos/create$", _Handler.create_repo),
    ("DELETE", r"^/api/repos/delete$", _Handler.delete_repo),
    ("PUT", _API + r"/settings$", _Handler.settings),
    ("GET", _API + r"$", _Handler.repo_info),
    ("GET", _API + r"/revision/(?P<rev>.+)$", _Handler.repo_info),
    ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", _Handler.tree),
    ("POST", _API + r"/paths-info/(?P<rev>[^/]+)$", _Handler.paths_info),
    ("GET", _API + r"/refs$", _Handler.refs),
    ("GET", _API + r"/commits/(?P<rev>[^/]+)$", _Handler.commits),
    ("GET", _API + r"/auth-check$", _Handler.auth_check),
    ("POST", _API + r"/preupload/(?P<rev>[^/]+)$", _Handler.preupload),
    ("POST", _API + r"/commit/(?P<rev>[^/]+)$", _Handler.commit),
    ("POST|DELETE", _API + r"/branch/(?P<name>.+)$", _Handler.branch),
    ("POST|DELETE", _API + r"/tag/(?P<name>.+)$", _Handler.tag),
    ("POST", _GIT + r"batch$", _Handler.lfs_batch),
    ("POST", _GIT + r"verify$", _Handler.lfs_verify),
    ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", _Handler.lfs_upload),
    ("GET|HEAD", r"^/(?:(?P<t>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rest>.+)$", _Handler.resolve),
]


def start_hub_server(token: str = TEST_TOKEN, user: str = TEST_USER) -> HubServer:
    """Start the loopback Hub on a free port in a daemon thread; it lives until the process exits."""
    return HubServer(token=token, user=user)
