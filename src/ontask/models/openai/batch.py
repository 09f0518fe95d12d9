"""Provider batch APIs in OpenAI's format: the same requests at about half the price, answered
within hours, and resumable across processes and days.

The format (OpenAI's Batch API; vLLM's `run-batch` reads and writes the same files):
an input file of JSON lines `{"custom_id", "method": "POST", "url": endpoint, "body"}` is
uploaded (`POST /v1/files`, purpose `batch`), a batch is created on it (`POST
/v1/batches`), polled (`GET /v1/batches/{id}`) until it ends, and its output and error
files are downloaded and matched back to the requests by `custom_id`.

Why a log: a batch is paid for when it is created, so a run must never create the same
one twice. `BatchLog` (JSON lines in the run folder, each line flushed and fsynced) records
a batch the moment the provider returns its id, with the custom_ids it holds, and every
state it is seen in. A run started again reads the log, polls the batches it already has
(or downloads the answers of those that ended), and submits only the requests no batch
holds. Requests that failed inside a batch for a passing reason (the batch expired,
`server_error`, 5xx, 429) are sent again in a new batch, up to `max_attempts` batches per
request; the others, and those out of attempts, come back as failures with the
provider's reason.

Small enough to read in one go: `BatchClient` speaks HTTP, `run_batches` is the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from ...paths import user_cache_dir
from ..transport.endpoint import public_url
from ..transport.http import error_message
from ..transport.retry import Failure, RetryPolicy, retry_after_seconds, retrying

logger = logging.getLogger(__name__)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "lost"})  # lost: unknown to the provider
RETRYABLE_CODES = frozenset({"batch_expired", "server_error", "rate_limit_exceeded", "timeout"})


def batch_settings(value: "BatchSettings | Mapping[str, Any] | None") -> "BatchSettings":
    """Settings given as the model, a mapping of its fields, or nothing (the defaults)."""
    return value if isinstance(value, BatchSettings) else BatchSettings(**(value or {}))


def default_log(fingerprint: str) -> Path:
    """Where a backend's batch log lives when no run folder holds it: the user cache, per backend."""
    return user_cache_dir() / "batches" / f"{fingerprint}.jsonl"


class BatchSettings(BaseModel):
    """How requests go through a provider's batch API (limits are OpenAI's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    completion_window: str = Field("24h", description="the provider's window for a batch to finish")
    max_requests: int = Field(50_000, ge=1, description="requests per batch (split above)")
    max_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="bytes of input file per batch (split above)")
    poll_initial: float = Field(5.0, gt=0, description="seconds before the first poll")
    poll_max: float = Field(300.0, gt=0, description="the longest wait between polls")
    poll_factor: float = Field(1.5, ge=1.0, description="each wait is the last times this, up to poll_max")
    max_attempts: int = Field(3, ge=1, description="batches one request may be sent in (resubmissions + 1)")


@dataclass
class BatchOutcome:
    """Answers by custom_id (the response body, as the online endpoint returns it) and the
    requests that failed for good, with the provider's reason."""

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class BatchLog:
    """Append-only JSON lines: `{"event": "created", ...}` then `{"event": "state", ...}` per batch."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**event, "at": time.time()}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a batch id that is not on disk is a batch paid for twice

    def batches(self) -> dict[str, dict[str, Any]]:
        """batch_id -> its record (custom_ids, input file, attempt) with its last known state, in creation order."""
        out: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line cut by a kill: the events before it stand
                continue
            if event.get("event") == "created":
                out[event["batch_id"]] = {**event, "status": event.get("status", "validating")}
            elif event.get("event") == "state" and event.get("batch_id") in out:
                out[event["batch_id"]].update({k: v for k, v in event.items() if k not in ("event", "at")})
        return out


class BatchClient:
    """The Files and Batches endpoints of one OpenAI-compatible base URL."""

    def __init__(self, base_url: str, api_key: str = "EMPTY", *, timeout: float = 120.0,
                 retry: RetryPolicy | None = None) -> None:
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout
        self.retry = retry or RetryPolicy()

    def session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key and self.api_key != "EMPTY" else {}
        return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def upload(self, http: aiohttp.ClientSession, data: bytes, filename: str) -> str:
        def form() -> aiohttp.FormData:  # a FormData is consumed by a send: one per attempt
            f = aiohttp.FormData()
            f.add_field("purpose", "batch")
            f.add_field("file", data, filename=filename, content_type="application/jsonl")
            return f

        return (await self._call(http, "POST", "/files", form=form))["id"]

    async def create(self, http: aiohttp.ClientSession, file_id: str, endpoint: str, window: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window, "metadata": metadata}
        return await self._call(http, "POST", "/batches", json_body=body)

    async def retrieve(self, http: aiohttp.ClientSession, batch_id: str) -> dict[str, Any]:
        return await self._call(http, "GET", f"/batches/{batch_id}")

    async def cancel(self, http: aiohttp.ClientSession, batch_id: str) -> dict[str, Any]:
        return await self._call(http, "POST", f"/batches/{batch_id}/cancel")

    async def content(self, http: aiohttp.ClientSession, file_id: str) -> bytes:
        return await self._call(http, "GET", f"/files/{file_id}/content", raw=True)

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str, *, json_body: Any = None,
                    form: Callable[[], aiohttp.FormData] | None = None, raw: bool = False) -> Any:
        """One control call, retried on 429/5xx/network errors by the project's retry policy."""
        async for attempt in retrying(self.retry):
            with attempt:
                try:
                    async with http.request(method, self.base_url + path, json=json_body,
                                            data=form() if form else None) as response:
                        content = await response.read()
                        if response.status >= 400:
                            raise Failure(f"{method} {path}: {response.status}: {error_message(content)}",
                                          response.status, retryable=response.status in (408, 429) or response.status >= 500,
                                          retry_after=retry_after_seconds(response.headers))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise Failure(f"{method} {path}: {type(exc).__name__}: {exc}", retryable=True) from None
        return content if raw else json.loads(content)


class FolderBatches:
    """A folder as the provider, for vLLM's offline runner on a GPU machine with no server.

    `base_url: file:///path/to/folder` with `batch: true`. Creating a batch writes
    `<id>.input.jsonl` there (and logs the command to run); the batch has ended when
    `<id>.output.jsonl` holds a line for every request (vLLM writes one output file, answers
    and errors together, in input order):

        python -m vllm.entrypoints.openai.run_batch -i <id>.input.jsonl -o <id>.output.jsonl --model MODEL

    A run waiting for it can be stopped and started again: the batch log brings it back to
    the same files."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        yield None

    async def upload(self, http: Any, data: bytes, filename: str) -> str:
        file_id = f"file-{hashlib.sha256(data).hexdigest()[:16]}"
        (self.folder / f"{file_id}.input.jsonl").write_bytes(data)
        return file_id

    async def create(self, http: Any, file_id: str, endpoint: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        batch_id = f"batch-{file_id.removeprefix('file-')}"
        src = self.folder / f"{file_id}.input.jsonl"
        src.replace(self.folder / f"{batch_id}.input.jsonl")
        logger.warning("batch written: run  python -m vllm.entrypoints.openai.run_batch -i %s -o %s --model MODEL",
                       self.folder / f"{batch_id}.input.jsonl", self.folder / f"{batch_id}.output.jsonl")
        return {"id": batch_id, "status": "in_progress"}

    async def retrieve(self, http: Any, batch_id: str) -> dict[str, Any]:
        src, out = self.folder / f"{batch_id}.input.jsonl", self.folder / f"{batch_id}.output.jsonl"
        if not src.exists():
            raise Failure(f"no input file {src}", 404)
        wanted = sum(1 for line in src.read_bytes().splitlines() if line.strip())
        done = sum(1 for line in out.read_bytes().splitlines() if line.strip()) if out.exists() else 0
        ended = done >= wanted  # vLLM streams lines as they finish: a partial file is still running
        return {"id": batch_id, "status": "completed" if ended else "in_progress",
                "output_file_id": out.name if ended else None, "error_file_id": None,
                "request_counts": {"total": wanted, "completed": done, "failed": 0}}

    async def cancel(self, http: Any, batch_id: str) -> dict[str, Any]:
        raise Failure("a folder batch cannot be cancelled by ontask: stop the vLLM runner", 400)

    async def content(self, http: Any, file_id: str) -> bytes:
        path = self.folder / file_id
        if not path.exists():
            raise Failure(f"no file {path}", 404)
        return path.read_bytes()


def batch_client(base_url: str, api_key: str = "EMPTY", **kw: Any) -> "BatchClient | FolderBatches":
    """The provider behind `base_url`: a folder (`file://`) for vLLM's offline runner, else HTTP."""
    if base_url.startswith("file://"):
        return FolderBatches(base_url.removeprefix("file://"))
    return BatchClient(base_url, api_key, **kw)


def input_file(requests: Mapping[str, Any], endpoint: str) -> list[tuple[str, bytes]]:
    """(custom_id, its JSON line) per request, in the order given."""
    return [(cid, (json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body},
                              ensure_ascii=False) + "\n").encode()) for cid, body in requests.items()]


def split(lines: list[tuple[str, bytes]], max_requests: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """Consecutive chunks under both limits (a single line over `max_bytes` goes alone)."""
    chunks: list[list[tuple[str, bytes]]] = []
    size = 0
    for cid, line in lines:
        if not chunks or len(chunks[-1]) >= max_requests or size + len(line) > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append((cid, line))
        size += len(line)
    return chunks


def read_answers(data: bytes) -> dict[str, tuple[Any | None, str | None, bool]]:
    """custom_id -> (response body or None, failure reason or None, whether the failure may pass)
    from a provider's output or error file, or the one output file of vLLM's `run-batch`.

    The shapes read: OpenAI's output lines (`response.status_code` < 400 with a `body`),
    its error lines (`"response": null, "error": {"code", "message"}`, or a response with a
    status >= 400), and vLLM's error lines (`response.status_code` 400 with no body and
    `error` a string, or an ErrorResponse `{"error": {"message", "code"}}`)."""
    out: dict[str, tuple[Any | None, str | None, bool]] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        cid, response, error = row.get("custom_id"), row.get("response") or {}, row.get("error")
        status = int(response.get("status_code", 200 if response.get("body") is not None else 500))
        if not error and status < 400 and response.get("body") is not None:
            out[cid] = (response["body"], None, False)
            continue
        code, message = _error_words(error, response.get("body"))
        if isinstance(code, str) and not code.isdigit():  # a batch-level code (batch_expired, server_error)
            out[cid] = (None, f"{code}: {message}".rstrip(": "), code in RETRYABLE_CODES)
        else:
            status = int(code) if code is not None else status
            out[cid] = (None, f"{status}: {message}", status in (408, 429) or status >= 500)
    return out


def _error_words(error: Any, body: Any) -> tuple[Any, str]:
    """(code, message) of an error line, whichever shape the writer used."""
    if isinstance(error, str):
        return None, error
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        return inner.get("code"), str(inner.get("message") or "")
    if body is not None:
        return None, error_message(json.dumps(body).encode())
    return None, "no body"


async def run_batches(client: "BatchClient | FolderBatches", endpoint: str, requests: Mapping[str, Any], log: BatchLog,
                      settings: BatchSettings | None = None, *,
                      record: Mapping[str, Any] | None = None) -> BatchOutcome:
    """Every request answered or failed, through batches recorded in `log` (see the module doc).

    `requests`: custom_id -> request body. `record`: more fields for the log's "created" lines (e.g. the provider's address,
    the role), for `ontask batches` to show."""
    settings = settings or BatchSettings()
    outcome = BatchOutcome()
    wanted = dict(requests)
    attempts: dict[str, int] = {}
    latest: dict[str, str] = {}  # custom_id -> the last batch that holds it
    records = log.batches()
    for batch_id, rec in records.items():
        for cid in rec["custom_ids"]:
            if cid in wanted:
                attempts[cid] = attempts.get(cid, 0) + 1
                latest[cid] = batch_id
    active = {b: records[b] for b in dict.fromkeys(latest.values())}
    async with client.session() as http:
        while True:
            todo = {cid: body for cid, body in wanted.items()
                    if cid not in latest and cid not in outcome.results and cid not in outcome.failures}
            for chunk in split(input_file(todo, endpoint), settings.max_requests, settings.max_bytes):
                rec = await _submit(client, http, chunk, endpoint, settings, log, attempts, record or {})
                active[rec["batch_id"]] = rec
                for cid, _ in chunk:
                    latest[cid] = rec["batch_id"]
            if not active:
                return outcome
            batch_id, rec = await _next_ended(client, http, active, log, settings)
            del active[batch_id]
            answers = None if rec["status"] == "lost" else await _answers(client, http, rec, log)
            if answers is None:  # lost: its requests never ran for us, so they go again, uncounted
                for cid in rec["custom_ids"]:
                    if latest.get(cid) == batch_id:
                        del latest[cid]
                        attempts[cid] -= 1
                continue
            for cid in rec["custom_ids"]:
                if cid not in wanted or latest.get(cid) != batch_id:
                    continue
                body, reason, passing = answers.get(cid, (None, f"missing from batch {batch_id}'s output", True))
                if reason is None:
                    outcome.results[cid] = body
                elif passing and attempts.get(cid, 0) < settings.max_attempts and rec["status"] != "cancelled":
                    del latest[cid]  # sent again in the next batch
                else:
                    tries = attempts.get(cid, 0)
                    outcome.failures[cid] = f"{reason} (batch {batch_id}, {tries} batch{'es' if tries > 1 else ''})"


async def _submit(client: BatchClient, http: aiohttp.ClientSession, chunk: list[tuple[str, bytes]], endpoint: str,
                  settings: BatchSettings, log: BatchLog, attempts: dict[str, int],
                  record: Mapping[str, Any]) -> dict[str, Any]:
    data = b"".join(line for _, line in chunk)
    file_id = await client.upload(http, data, "ontask-batch.jsonl")
    created = await client.create(http, file_id, endpoint, settings.completion_window,
                                  {"ontask": "1", "requests": str(len(chunk))})
    ids = [cid for cid, _ in chunk]
    for cid in ids:
        attempts[cid] = attempts.get(cid, 0) + 1
    rec = {"event": "created", "batch_id": created["id"], "input_file_id": file_id, "endpoint": endpoint, **record,
           "custom_ids": ids, "status": created.get("status", "validating")}
    log.append(rec)
    return rec


async def _next_ended(client: BatchClient, http: aiohttp.ClientSession, active: dict[str, dict[str, Any]],
                      log: BatchLog, settings: BatchSettings) -> tuple[str, dict[str, Any]]:
    """Poll the active batches, waiting longer each round, until one has ended; its record."""
    wait = settings.poll_initial
    while True:
        for batch_id, rec in active.items():
            if rec["status"] in TERMINAL:  # ended before a restart: its files are still there
                return batch_id, rec
            try:
                batch = await client.retrieve(http, batch_id)
            except Failure as exc:
                if exc.status != 404:
                    raise
                # the provider does not know it (another server, or deleted): it never ran for us
                log.append({"event": "state", "batch_id": batch_id, "status": "lost"})
                rec["status"] = "lost"
                return batch_id, rec
            state = batch_state(batch)
            if state["status"] != rec["status"] or batch["status"] in TERMINAL:
                log.append({"event": "state", "batch_id": batch_id, **state})
            rec.update(state)
            if batch["status"] in TERMINAL:
                return batch_id, rec
        await asyncio.sleep(wait)
        wait = min(settings.poll_max, wait * settings.poll_factor)


def batch_state(batch: Mapping[str, Any]) -> dict[str, Any]:
    """What the log keeps of a provider's batch object: its status, files and counts."""
    return {"status": batch["status"], "output_file_id": batch.get("output_file_id"),
            "error_file_id": batch.get("error_file_id"), "request_counts": batch.get("request_counts")}


async def _answers(client: BatchClient, http: aiohttp.ClientSession, rec: dict[str, Any],
                   log: BatchLog) -> dict[str, tuple[Any | None, str | None, bool]] | None:
    """The batch's answers by custom_id; None when its files are gone (the batch is lost)."""
    answers: dict[str, tuple[Any | None, str | None, bool]] = {}
    for key in ("output_file_id", "error_file_id"):
        if rec.get(key):
            try:
                data = await client.content(http, rec[key])
            except Failure as exc:
                if exc.status != 404:
                    raise
                log.append({"event": "state", "batch_id": rec["batch_id"], "status": "lost"})
                return None
            answers.update(read_answers(data))
    if rec["status"] == "failed" and not answers:  # the whole batch was refused (e.g. validation)
        answers = {cid: (None, "the provider failed the batch", False) for cid in rec["custom_ids"]}
    return answers


class BatchFailure(Exception):
    """A request that failed inside its batch for good: the provider's reason (and HTTP status)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


class Batcher:
    """Collects the request bodies sent in one moment (every request of a call at its start,
    every re-ask once a batch has returned) and sends them as one provider batch through
    `run_batches`. Equal bodies go once. `send` returns the answer's body as bytes, as an
    online request would, or raises `BatchFailure` with the provider's reason.

    Chat roles and the server scorer use it in batch mode, so re-asks, repairs and parsing
    are the online code's, applied to answers that come back from a batch."""

    GATHER_S = 0.05  # the requests of one moment arrive within a few turns of the loop

    def __init__(self, client: "BatchClient | FolderBatches", endpoint: str, log: BatchLog,
                 settings: BatchSettings, record: Mapping[str, Any] | None = None) -> None:
        self.client, self.endpoint, self.log, self.settings, self.record = client, endpoint, log, settings, record
        self.pending: dict[str, tuple[Any, list[asyncio.Future]]] = {}
        self.flushing: asyncio.Task | None = None

    @classmethod
    def for_server(cls, base_url: str, api_key: str, endpoint: str, model: str, log: str | os.PathLike,
                   settings: BatchSettings, *, timeout: float, retry: RetryPolicy) -> "Batcher":
        """The batcher of one served model (chat or scoring): its provider (HTTP or a folder),
        its log, and the provider's address and model recorded with each batch."""
        return cls(batch_client(base_url, api_key, timeout=timeout, retry=retry), endpoint, BatchLog(log), settings,
                   record={"provider": public_url(base_url), "model": model})

    async def send(self, body: Any) -> bytes:
        cid = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:40]
        future = asyncio.get_running_loop().create_future()
        self.pending.setdefault(cid, (body, []))[1].append(future)
        if self.flushing is None:
            self.flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(self.GATHER_S)
        batch, self.pending, self.flushing = self.pending, {}, None
        try:
            out = await run_batches(self.client, self.endpoint, {cid: body for cid, (body, _) in batch.items()},
                                    self.log, self.settings, record=self.record)
        except Exception as exc:  # the batch API itself failed: every request of the moment says why
            for _, futures in batch.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(BatchFailure(f"batch API: {exc}"))
            return
        for cid, (_, futures) in batch.items():
            for f in futures:
                if f.done():  # its caller went away (a stop): nothing to hand over
                    continue
                if cid in out.results:
                    f.set_result(json.dumps(out.results[cid]).encode())
                else:
                    reason = out.failures.get(cid, "no answer in the batch's output")
                    head = reason.split(":", 1)[0]
                    f.set_exception(BatchFailure(reason, int(head) if head.isdigit() else None))
