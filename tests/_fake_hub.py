"""A tiny stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for the tests that pull and push prompts
without the internet (``tests/test_hub.py``, ``tests/test_zoo_push.py``; the fixtures are in ``conftest.py``).

Downloads -- the two requests ``hf_hub_download`` makes, as the Hub answers them:

HEAD/GET ``/{repo_id}/resolve/{revision}/{filename}`` -> 200 with ``X-Repo-Commit`` (required, else
FileMetadataError), ``ETag`` (the cache's blob name; ``X-Linked-Etag`` would win if present), ``Content-Length``
(the expected size; ``X-Linked-Size`` would win) and, for GET, the bytes. No ``X-Xet-*`` headers, so it is a plain
HTTP download. Errors: 404 + ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` (mapped by
``hf_raise_for_status``), and 503 for repos marked down.

Uploads -- the requests ``HfApi.create_repo`` + ``HfApi.upload_folder`` make:

POST ``/api/repos/create`` -> ``{"url"}`` (an existing repo is fine: the client passes ``exist_ok``);
POST ``/api/validate-yaml`` (a README.md's front matter, checked before the upload) -> 200 when it is a YAML
mapping, else 400 with ``{"errors": [{"message"}]}``;
POST ``/api/models/{repo_id}/preupload/{revision}`` -> every file ``"uploadMode": "regular"``, so the files travel
base64-encoded inside the commit (the real Hub sends binary files to its Xet/LFS storage, which this stand-in does
not speak; what the commit then records is the same);
POST ``/api/models/{repo_id}/commit/{revision}`` (NDJSON: a header line, then one ``file`` line per file) ->
``{"commitUrl", "commitOid"}``; the repo then serves the new files at ``main`` and at that commit.
With ``tokens`` set, an upload without one of those tokens is answered 401 as the Hub answers a bad token; a repo in
``down`` answers 503.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FakeHub:
    ROUTE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
    API = re.compile(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$")

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.down: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # {"repo_id", "summary", "files": {name: bytes}, "oid", "token"}
        self.tokens: set[str] | None = None  # None: every upload is accepted
        self.url = ""
        self._server = None
        self._lock = threading.Lock()

    @staticmethod
    def _commit_id(files: dict[str, bytes], parent: str = "") -> str:
        return hashlib.sha1((parent + repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())))
                            .encode()).hexdigest()

    def add_folder(self, repo_id: str, folder) -> str:
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        commit = self._commit_id(files)
        self.repos[repo_id] = {"commit": commit, "files": files}
        return commit

    # -- downloads ------------------------------------------------------------------------------------------
    def answer(self, method: str, raw_path: str):
        self.requests.append((method, raw_path))
        m = self.ROUTE.match(urlsplit(raw_path).path)
        if not m:
            return 404, {}, b"not found"
        repo_id, revision, filename = unquote(m[1]), unquote(m[2]), unquote(m[3])
        if repo_id in self.down:
            return 503, {}, b"service unavailable"
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"no repo"
        if revision not in ("main", repo["commit"]):
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b"no revision"
        head = {"X-Repo-Commit": repo["commit"]}
        if filename not in repo["files"]:
            return 404, {**head, "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, b"no file"
        body = repo["files"][filename]
        return 200, {**head, "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                     "Content-Type": "application/octet-stream"}, body

    # -- uploads --------------------------------------------------------------------------------------------
    def answer_post(self, raw_path: str, headers, body: bytes):
        self.requests.append(("POST", raw_path))
        path = urlsplit(raw_path).path
        auth = headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if self.tokens is not None and token not in self.tokens:
            return _json(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization')}/{req['name']}"
            if repo_id in self.down:  # answered at once (the client retries a 503 on preupload for ~20 s)
                return _json(503, {"error": "service unavailable"})
            with self._lock:
                self.repos.setdefault(repo_id, {"commit": self._commit_id({}), "files": {}})
            return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            import yaml

            content = json.loads(body)["content"]
            try:
                ok = isinstance(yaml.safe_load(content.split("---\n")[1]), dict)
            except (IndexError, yaml.YAMLError):
                ok = False
            return _json(200, {"errors": [], "warnings": []}) if ok else _json(
                400, {"errors": [{"message": "README.md has no YAML front matter mapping"}]})
        m = self.API.match(path)
        if not m:
            return _json(404, {"error": "not found"})
        repo_id, kind = unquote(m[1]), m[2]
        if repo_id in self.down:
            return _json(503, {"error": "service unavailable"})
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found",
                         "Content-Type": "application/json"}, b'{"error": "Repository not found"}'
        if kind == "preupload":
            files = json.loads(body)["files"]
            return _json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        added = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        with self._lock:
            files = {**repo["files"], **added}
            oid = self._commit_id(files, parent=repo["commit"])
            repo.update(commit=oid, files=files)
            self.commits.append({"repo_id": repo_id, "summary": header["summary"], "files": added, "oid": oid,
                                 "token": token})
        return _json(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})

    # -- the server -----------------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, headers, body, with_body=True):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                self._send(*hub.answer(self.command, self.path), with_body=False)

            def do_GET(self):  # noqa: N802
                self._send(*hub.answer(self.command, self.path))

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(*hub.answer_post(self.path, self.headers, body))

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _json(status: int, doc: dict):
    return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()
