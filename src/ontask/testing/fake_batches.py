"""OpenAI's Files and Batches APIs for the fake server: the same answers, hours made seconds.

What a provider's batch API does, as its documentation describes it, shrunk for tests:
- `POST /v1/files` (multipart: `purpose=batch`, `file`): stores a JSONL input file, one
  request per line: `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`;
- `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window`, `metadata`):
  validates the file and creates a batch, `validating`, then `in_progress`;
- `GET /v1/batches/{id}`: the batch; `batch_delay` seconds after creation it is done:
  `completed` with an output file (one line per answered request:
  `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`)
  and an error file (requests the model refused, `response.status_code` >= 400, and
  requests that failed inside the batch, `"response": null, "error": {"code", "message"}`);
- `POST /v1/batches/{id}/cancel`: `cancelled`, unanswered requests in the error file
  with code `batch_cancelled`; `GET /v1/batches`: the list, newest first;
- `GET /v1/files/{id}/content`: a file's bytes.

Faults, settable per server: `batch_fail_rate` (a request fails inside the batch with
`server_error`, drawn from its custom_id, so the same request fails the same way in every
batch it is sent in unless `batch_fail_once`), and `batch_expire` (the first N batches
created expire: the first half of their requests answered, the rest `batch_expired`).
Each request line is answered by the server's own chat/completions handlers, so a batch
answers exactly what the online endpoint would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    lines: list[dict[str, Any]]
    created_at: float
    expire: bool
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    ended_at: float | None = None

    def view(self) -> dict[str, Any]:
        ended = {f"{self.status}_at": int(self.ended_at)} if self.ended_at and self.status in TERMINAL else {}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": None,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": int(self.created_at), "request_counts": dict(self.counts),
                "metadata": self.metadata, **ended}


class BatchAPI:
    """Files and batches, in memory. `answer(path, body) -> (status, payload)` answers one line."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], tuple[int, Any]], *, delay: float = 0.0,
                 fail_rate: float = 0.0, fail_once: bool = False, expire: int = 0) -> None:
        self.answer, self.delay, self.fail_rate, self.fail_once = answer, delay, fail_rate, fail_once
        self.expire_left = expire
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._failed_once: set[str] = set()

    def routes(self, app: web.Application, serve: Callable[..., Any]) -> None:
        """Mount the endpoints; `serve(path_kind, handler)` wraps each one in the server's request log."""
        app.router.add_post("/v1/files", serve(self.upload))
        app.router.add_get("/v1/files/{id}/content", serve(self.content))
        app.router.add_post("/v1/batches", serve(self.create))
        app.router.add_get("/v1/batches", serve(self.list))
        app.router.add_get("/v1/batches/{id}", serve(self.retrieve))
        app.router.add_post("/v1/batches/{id}/cancel", serve(self.cancel))

    # -- handlers: (request) -> (status, payload, log) ------------------------------------
    async def upload(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        form = await request.post()
        purpose, upload = form.get("purpose"), form.get("file")
        if upload is None or not hasattr(upload, "file"):
            return 400, _err("a multipart field 'file' is required"), {}
        data = upload.file.read()
        meta = {"id": f"file-{next(self._ids)}", "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": upload.filename, "purpose": purpose}
        self.files[meta["id"]] = (meta, data)
        custom_ids = [json.loads(line).get("custom_id") for line in data.splitlines() if line.strip()] \
            if purpose == "batch" else []
        return 200, meta, {"file_id": meta["id"], "purpose": purpose, "custom_ids": custom_ids}

    async def content(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return 404, _err(f"No such File object: {request.match_info['id']}"), {}
        return 200, found[1], {"file_id": request.match_info["id"]}

    async def create(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        body = await request.json()
        found = self.files.get(body.get("input_file_id", ""))
        if found is None:
            return 400, _err(f"input_file_id {body.get('input_file_id')!r} is not an uploaded file"), {}
        try:
            lines = [json.loads(line) for line in found[1].splitlines() if line.strip()]
        except ValueError:
            return 400, _err("the input file is not JSON lines"), {}
        endpoint = body.get("endpoint")
        if any(line.get("url") != endpoint for line in lines):
            return 400, _err(f"every request's url must be the batch's endpoint {endpoint}"), {}
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids):
            return 400, _err("custom_id values must be unique within a batch"), {}
        batch = _Batch(f"batch_{next(self._ids)}", found[0]["id"], endpoint, body.get("completion_window", "24h"),
                       body.get("metadata"), lines, time.time(), expire=self.expire_left > 0)
        self.expire_left -= batch.expire
        batch.counts["total"] = len(lines)
        self.batches[batch.id] = batch
        return 200, batch.view(), {"batch_id": batch.id, "custom_ids": ids}

    async def retrieve(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return 404, _err(f"No such Batch object: {request.match_info['id']}"), {}
        self._progress(batch)
        return 200, batch.view(), {"batch_id": batch.id, "status": batch.status}

    async def list(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        for batch in self.batches.values():
            self._progress(batch)
        data = [b.view() for b in sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)]
        return 200, {"object": "list", "data": data, "has_more": False}, {}

    async def cancel(self, request: web.Request) -> tuple[int, Any, dict[str, Any]]:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return 404, _err(f"No such Batch object: {request.match_info['id']}"), {}
        self._progress(batch)
        if batch.status not in TERMINAL:
            self._finish(batch, "cancelled", answered=0)
        return 200, batch.view(), {"batch_id": batch.id, "status": batch.status}

    # -- the batch's life -----------------------------------------------------------------
    def _progress(self, batch: _Batch) -> None:
        if batch.status in TERMINAL:
            return
        if time.time() - batch.created_at < self.delay:
            batch.status = "in_progress"
            return
        if batch.expire:
            self._finish(batch, "expired", answered=len(batch.lines) // 2)
        else:
            self._finish(batch, "completed", answered=len(batch.lines))

    def _finish(self, batch: _Batch, status: str, answered: int) -> None:
        """Answer the first `answered` lines; the rest end with the status's error code."""
        out, errors = [], []
        for n, line in enumerate(batch.lines):
            rid = f"batch_req_{batch.id}_{n}"
            if n >= answered:
                code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}[status]
                errors.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                               "error": {"code": code, "message": f"the batch was {status} before this request ran"}})
            elif self._fails(line["custom_id"]):
                errors.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "server_error", "message": "injected failure inside the batch"}})
            else:
                code, payload = self.answer(batch.endpoint, line.get("body") or {})
                row = {"id": rid, "custom_id": line["custom_id"],
                       "response": {"status_code": code, "request_id": f"req_{rid}", "body": payload}, "error": None}
                (out if code < 400 else errors).append(row)
        batch.counts["completed"], batch.counts["failed"] = len(out), len(errors)
        batch.output_file_id = self._store(out, f"{batch.id}_output.jsonl") if out else None
        batch.error_file_id = self._store(errors, f"{batch.id}_errors.jsonl") if errors else None
        batch.status, batch.ended_at = status, time.time()

    def _fails(self, custom_id: str) -> bool:
        if not self.fail_rate:
            return False
        draw = int.from_bytes(hashlib.sha256(custom_id.encode()).digest()[:4], "big") / 2**32
        if draw >= self.fail_rate or (self.fail_once and custom_id in self._failed_once):
            return False
        self._failed_once.add(custom_id)
        return True

    def _store(self, rows: list[dict[str, Any]], name: str) -> str:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        meta = {"id": f"file-{next(self._ids)}", "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": "batch_output"}
        self.files[meta["id"]] = (meta, data)
        return meta["id"]


def _err(message: str) -> dict[str, Any]:
    return {"error": {"object": "error", "message": message, "type": "invalid_request_error"}}
