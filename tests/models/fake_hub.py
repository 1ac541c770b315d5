"""A stand-in for the Hugging Face Hub on 127.0.0.1, speaking the few endpoints huggingface_hub uses here.

Read from huggingface_hub's own client code (file_download.py, hf_api.py, _commit_api.py):
  * HEAD/GET ``/{repo}/resolve/{revision}/{path}``: the file, with ``X-Repo-Commit`` (the commit the revision
    points to), ``ETag`` (the file's sha256, as the hub gives for LFS files), ``Content-Length``; GET honours
    ``Range`` (resumed downloads). Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound),
    which the client turns into its typed exceptions.
  * POST ``/api/repos/create``; POST ``/api/validate-yaml`` (a README.md's metadata); POST
    ``/api/models/{repo}/preupload/{revision}`` (every file "regular", so no LFS or
    Xet transfer is needed); POST ``/api/models/{repo}/commit/{revision}`` (NDJSON: a header line, then files with
    base64 content) -- what ``upload_folder`` does.
Everything is kept in memory; each commit gets a new 40-hex id.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class FakeHub:
    """``with FakeHub() as hub: hub.add_file("org/repo", "model.pt", data)``; ``hub.url`` is the HF_ENDPOINT."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.ranges: list[str] = []  # Range headers of GET requests (resumed downloads)
        self.cut_next_download_at: int | None = None  # drop the connection after this many bytes, once
        self.gated: set[str] = set()  # repositories that refuse downloads as a gated one does without access
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Add ``files`` to the repository (created if new) as one commit on branch ``revision``; its id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.refs.get(revision)
            tree = dict(repo.commits[parent]) if parent else {}
            tree.update(files)
            sha = hashlib.sha1(f"{repo_id}{len(repo.commits)}{sorted(tree)}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.refs[revision] = sha
            return sha

    def add_file(self, repo_id: str, path: str, data: bytes) -> str:
        return self.commit(repo_id, {path: data})

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)][path]


_RESOLVE = re.compile(r"^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/]+)$")


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: pytest shows failures, not access logs
            pass

        def _record(self):
            hub.requests.append((self.command, urlparse(self.path).path))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head=False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, head=False, commit: str | None = None):
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

        def _json(self, obj, status: int = 200):
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        # -- downloads -------------------------------------------------------------------------------------
        def _resolve(self, head: bool):
            self._record()
            m = _RESOLVE.match(urlparse(self.path).path)
            if not m:
                return self._error(404, "RepoNotFound", "not a resolve URL", head)
            repo_id, rev, path = m["repo"], unquote(m["rev"]), unquote(m["path"])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"repository {repo_id} not found", head)
            if repo_id in hub.gated:
                return self._error(403, "GatedRepo", f"access to {repo_id} is restricted", head)
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"revision {rev} not found", head)
            data = repo.commits[commit].get(path)
            if data is None:
                return self._error(404, "EntryNotFound", f"{path} not found", head, commit=commit)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            start = 0
            rng = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if self.headers.get("Range") and not head:
                hub.ranges.append(self.headers["Range"])
            if rng and not head:
                start = int(rng[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            cut = None if head else hub.cut_next_download_at
            if cut is not None:  # a connection lost mid-file: the full length announced, part of it sent
                hub.cut_next_download_at = None
                self._send(200, data[:cut], headers)
                self.close_connection = True
                return
            self._send(206 if start else 200, data[start:], headers, head=head)

        def do_HEAD(self):
            self._resolve(head=True)

        def do_GET(self):
            self._resolve(head=False)

        # -- uploads ---------------------------------------------------------------------------------------
        def do_POST(self):
            self._record()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlparse(self.path).path
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else f"user/{req['name']}"
                with hub._lock:
                    hub.repos.setdefault(repo_id, Repo())
                return self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":  # the model card's metadata block: parse it as the hub would
                try:
                    yaml.safe_load(json.loads(body)["content"].split("---")[1])
                except (yaml.YAMLError, IndexError) as exc:
                    return self._json({"error": f"invalid model card metadata: {exc}"}, status=400)
                return self._json({"errors": [], "warnings": []})
            m = _API.match(path)
            if not m or m["repo"] not in hub.repos:
                return self._error(404, "RepoNotFound", f"no endpoint or repository for {path}")
            if m["op"] == "preupload":
                files = json.loads(body)["files"]
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in files]})
            files = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return self._error(400, "BadRequest", f"fake hub does not support {item['key']} operations")
            sha = hub.commit(m["repo"], files, unquote(m["rev"]))
            return self._json({"commitUrl": f"{hub.url}/{m['repo']}/commit/{sha}", "commitOid": sha,
                               "pullRequestUrl": None})

    return Handler
