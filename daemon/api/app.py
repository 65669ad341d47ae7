"""The HTTP/JSON API served on the Unix socket (SPEC: "HTTP API on the Unix socket").

Every error answer is ``{"error": {"code", "message", "details"}}`` with a fitting
status, and a rejected request stores nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import qjobd
from qjobd.backends.base import Backend
from qjobd.daemon.api import metrics, openapi, validation, views
from qjobd.daemon.api.parsing import ParsePool, ParsePoolClosed
from qjobd.daemon.api.peer import Peer
from qjobd.daemon.config import Config
from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.errors import QjobdError
from qjobd.store.errors import DiskFull, IdempotencyConflict, NotFound, StoreUnavailable
from qjobd.store.models import Batch
from qjobd.store.states import JobState
from qjobd.store.store import Store

log = structlog.get_logger("qjobd.api")

VERSION = qjobd.__version__
#: the longest a single /wait request holds the connection
MAX_WAIT = 300.0
#: the media type of GET /v1/events
NDJSON = "application/x-ndjson"
#: a body up to this size is scanned on the event loop: hostile or not, that takes at
#: most about 0.4 ms on a 2-CPU machine (bench: 0.11 ms for a Bell circuit), less than a
#: thread's round trip costs in CPU (about 0.4 ms); a larger one is scanned in a thread
INLINE_BODY_BYTES = 4096
#: what an integer or number query parameter may look like
_INTEGER = re.compile(r"-?[0-9]{1,20}", re.ASCII)
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?", re.ASCII)
#: a yes/no query parameter's spellings (any case)
_FLAGS = {"": False, "0": False, "1": True, "false": False, "true": True, "no": False,
          "yes": True}


@dataclass
class Context:
    """What the API needs from the running daemon."""

    config: Config
    store: Store
    backends: Mapping[str, Backend]
    scheduler: Scheduler
    changes: BatchChanges
    started_at: float = field(default_factory=time.monotonic)
    #: the parse workers (daemon/api/parsing.py); None checks circuits in a thread
    parser: ParsePool | None = None


class ErrorAnswer(QjobdError):
    """An error answer: the HTTP status, a code, a message and details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status)


def create_app(ctx: Context) -> Starlette:
    api = _Api(ctx)
    routes = [
        Route("/v1/batches", api.submit, methods=["POST"]),
        Route("/v1/batches", api.list, methods=["GET"]),
        Route("/v1/batches/{id}", api.show, methods=["GET"]),
        Route("/v1/batches/{id}/results", api.results, methods=["GET"]),
        Route("/v1/batches/{id}/cancel", api.cancel, methods=["POST"]),
        Route("/v1/batches/{id}/wait", api.wait, methods=["GET"]),
        Route("/v1/events", api.events, methods=["GET"]),
        Route("/v1/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/openapi.json", api.openapi, methods=["GET"]),
    ]
    # no handler for Exception: Starlette hands that one to ServerErrorMiddleware, which
    # answers and then re-raises to uvicorn, and uvicorn drops the connection; _LastResort
    # answers instead, inside it
    return Starlette(routes=routes, middleware=[Middleware(_LastResort)], exception_handlers={
        ErrorAnswer: _api_error, HTTPException: _http_error, StoreUnavailable: _store_error})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ErrorAnswer)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(exc.status_code, code, message)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable", path=request.url.path, error=str(exc))
    if isinstance(exc, DiskFull):
        return error_response(507, "disk_full", f"the store cannot take writes: {exc}. "
                              "Free space on its disk; qjobd recovers by itself.")
    return error_response(503, "store_unavailable", f"the store is unavailable: {exc}")


class _LastResort:
    """Any exception no handler took: logged with its traceback and answered 500 in the
    API's error shape, the connection kept (an exception that reaches uvicorn makes it
    answer in plain text, or close the connection if the answer had begun).

    An answer already begun cannot change its status: a streamed NDJSON answer ends with
    an ``{"error": ...}`` line, any other simply ends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = streaming = False

        async def tracked(message: Message) -> None:
            nonlocal started, ended, streaming
            if message["type"] == "http.response.start":
                started = True
                streaming = any(k.lower() == b"content-type" and v.startswith(NDJSON.encode())
                                for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("internal error", path=scope.get("path"), method=scope.get("method"))
            if ended:
                return
            answer = {"error": {"code": "internal", "message": "internal error; see the "
                                "daemon's log", "details": None}}
            body = json.dumps(answer).encode()
            with contextlib.suppress(Exception):  # the client may be gone
                if not started:
                    await send({"type": "http.response.start", "status": 500, "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                else:
                    await send({"type": "http.response.body",
                                "body": body + b"\n" if streaming else b""})


class _Api:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- batches ---------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        peer = _peer(request)
        raw = await _read_body(request, self.ctx.config.daemon.max_request_bytes)
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 200:
            raise ErrorAnswer(400, "invalid_request", "Idempotency-Key must be 1 to 200 characters")
        try:
            limits = self.ctx.config.daemon
            if len(raw) <= INLINE_BODY_BYTES:
                body = validation.parse_body(raw, limits)
            else:  # a scan and a parse of up to max_request_bytes: off the event loop
                body = await anyio.to_thread.run_sync(validation.parse_body, raw, limits)
            fields = validation.check_submission(body, self.ctx.backends, limits)
            backend = self.ctx.backends[fields["backend"]]
            # in the parse workers: the event loop never parses
            checked = await validation.check_circuits(fields["circuits"], backend, limits,
                                                      self.ctx.parser, shots=fields["shots"],
                                                      options=fields["options"])
        except validation.InvalidRequest as exc:
            raise ErrorAnswer(400, exc.code, exc.message, exc.details) from None
        except validation.CircuitsTooLarge as exc:
            raise ErrorAnswer(413, exc.code, exc.message, exc.details) from None
        except validation.InvalidCircuits as exc:
            raise ErrorAnswer(422, exc.code, exc.message, exc.details) from None
        except ParsePoolClosed as exc:
            raise ErrorAnswer(503, "unavailable", f"the circuits cannot be checked now: {exc}; "
                              "nothing was stored") from None
        records = checked.records
        new = validation.build_batch(fields, records, backend, owner_uid=peer.uid,
                                     idempotency_key=key, raw_body=body,
                                     warnings=checked.warnings)
        try:
            batch, created = await self.ctx.store.create_batch(new)
        except IdempotencyConflict as exc:
            raise ErrorAnswer(409, "idempotency_conflict", str(exc),
                              {"batch_id": exc.batch_id}) from None
        if created:
            self.ctx.scheduler.accepted(batch, records)
            self.ctx.changes.notify(batch.id)
            log.info("batch accepted", batch_id=batch.id, backend=batch.backend,
                     circuits=len(records), jobs=len(batch.jobs), owner=peer.uid)
        return JSONResponse(self._view(batch), status_code=201 if created else 200)

    async def list(self, request: Request) -> Response:
        peer = _peer(request)
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in JobState.__members__.values():
            raise ErrorAnswer(400, "invalid_request", f"unknown state {state!r}; one of "
                              f"{', '.join(JobState)}", {"field": "state"})
        limit = _int_param(q.get("limit"), "limit", 100, 1, 1000)
        before = None
        if (cursor := q.get("cursor")) is not None:
            before = _int_param(cursor, "cursor", 0, 1, 2**63)
        batches, next_seq = await self.ctx.store.list_batches(
            owner_uid=None if peer.admin else peer.uid, state=state,
            backend=q.get("backend") or None, limit=limit, before_seq=before)
        return JSONResponse({"batches": [self._view(b) for b in batches],
                             "next_cursor": None if next_seq is None else str(next_seq)})

    async def show(self, request: Request) -> Response:
        batch = await self._batch(request)
        return JSONResponse(self._view(batch))

    async def results(self, request: Request) -> Response:
        batch = await self._batch(request, with_jobs=False)
        if not batch.state.terminal:
            raise ErrorAnswer(409, "not_finished", f"batch {batch.id} is {batch.state}; results "
                              "are served once it is terminal (GET .../wait)",
                              {"state": str(batch.state)})
        results = await self.ctx.store.results(batch.id)
        return JSONResponse(views.results_view(batch, results))

    async def cancel(self, request: Request) -> Response:
        batch = await self._batch(request)
        if batch.state.terminal:
            return JSONResponse(self._view(batch), status_code=200)
        await self.ctx.store.request_cancel(batch.id)
        self.ctx.scheduler.cancel(batch)
        self.ctx.changes.notify(batch.id)
        log.info("cancel requested", batch_id=batch.id, backend=batch.backend)
        batch = await self.ctx.store.get_batch(batch.id)
        return JSONResponse(self._view(batch), status_code=202)

    async def wait(self, request: Request) -> Response:
        seconds = _float_param(request.query_params.get("timeout"), "timeout", 30.0, 0, MAX_WAIT)
        changes = self.ctx.changes
        changed = changes.watch(request.path_params["id"])  # before the read: no gap
        try:
            # with its jobs: a batch already ended (the usual case) is answered by this read
            batch = await self._batch(request)
        except Exception:
            changes.unwatch(request.path_params["id"], changed)
            raise
        if batch.state.terminal:
            changes.unwatch(batch.id, changed)
            return JSONResponse(self._view(batch))
        deadline = time.monotonic() + seconds
        while not batch.state.terminal and not changes.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await changes.wait_on(changed, left)
            changes.unwatch(batch.id, changed)
            changed = changes.watch(batch.id)
            batch = await self.ctx.store.get_batch(batch.id, with_jobs=False)
        changes.unwatch(batch.id, changed)
        batch = await self.ctx.store.get_batch(batch.id)
        return JSONResponse(self._view(batch))

    async def events(self, request: Request) -> Response:
        """State changes as newline-delimited JSON, from ``since``; ``follow=1`` keeps streaming.

        Only the caller's own batches, unless the caller is root or the daemon's user.
        """
        peer = _peer(request)
        since = _int_param(request.query_params.get("since"), "since", 0, 0, 2**63)
        follow_text = request.query_params.get("follow", "")
        if follow_text.lower() not in _FLAGS:
            raise ErrorAnswer(400, "invalid_request", f"'follow' must be one of "
                              f"{', '.join(sorted(set(_FLAGS) - {''}))}, got {follow_text!r}",
                              {"field": "follow"})
        follow = _FLAGS[follow_text.lower()]
        store, changes = self.ctx.store, self.ctx.changes
        owners: dict[str, int] = {}

        async def visible(batch_id: str | None) -> bool:
            if peer.admin:
                return True
            if batch_id is None:
                return False
            if batch_id not in owners:
                owners[batch_id] = (await store.get_batch(batch_id, with_jobs=False)).owner_uid
            return owners[batch_id] == peer.uid

        async def stream() -> AsyncIterator[bytes]:
            cursor = since
            while True:
                batch = await store.events(cursor, limit=500)
                for event in batch:
                    cursor = event.seq
                    if await visible(event.batch_id):
                        yield json.dumps(views.event_view(event)).encode() + b"\n"
                if len(batch) == 500:
                    continue
                if not follow or changes.closed:
                    return
                await changes.wait_any(15.0)

        return StreamingResponse(stream(), media_type=NDJSON)

    # -- daemon ----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        counts = await self.ctx.store.counts_by_state()
        writer = self.ctx.store.writer
        return JSONResponse({
            "status": "ok",
            "version": VERSION,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.ctx.started_at, 3),
            "database": str(self.ctx.store.path),
            "batches": counts["batches"],
            "jobs": counts["jobs"],
            "in_flight": self.ctx.scheduler.in_flight(),
            "store": {"commits": writer.stats.commits, "writes": writer.stats.operations,
                      "backlog": writer.backlog, "last_error": writer.stats.last_error},
            "backends": {name: views.backend_view(stats, self.ctx.backends[name].health())
                         for name, stats in self.ctx.scheduler.stats().items()},
            **({"cluster": leases.view()} if (leases := self.ctx.scheduler.leases) else {}),
        })

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format (daemon/metrics.py)."""
        body = await metrics.exposition(self.ctx, version=VERSION)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        """This API described as OpenAPI 3.1 (docs/openapi.json: the built-in limits)."""
        return JSONResponse(openapi.document(self.ctx.config.daemon))

    def _view(self, batch: Batch) -> dict[str, Any]:
        # a job's next poll as the engine has it (the store's may be older: runner._later)
        return views.batch_view(batch, self.ctx.scheduler.next_poll_at)

    async def _batch(self, request: Request, *, with_jobs: bool = True) -> Batch:
        batch_id = request.path_params["id"]
        try:
            batch = await self.ctx.store.get_batch(batch_id, with_jobs=with_jobs)
        except NotFound:
            raise ErrorAnswer(404, "not_found", f"no batch {batch_id!r}") from None
        peer = _peer(request)
        if not peer.admin and batch.owner_uid != peer.uid:
            raise ErrorAnswer(403, "forbidden", f"batch {batch_id} belongs to "
                              f"{views.user_name(batch.owner_uid)}, not to you")
        return batch


def _peer(request: Request) -> Peer:
    peer = request.scope.get("state", {}).get("peer")
    # no peer credentials (in-process use): the daemon's own user
    return peer if isinstance(peer, Peer) else Peer.me()


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ErrorAnswer(413, "too_large",
                          f"the body is {int(length)} bytes; the limit is {limit}",
                          {"limit": limit})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ErrorAnswer(413, "too_large", f"the body is over the limit of {limit} bytes",
                              {"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    # an empty value is an error, not the default: a script that pastes an empty
    # next_cursor must not start again from the first page
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):  # int() would also take " 7", "1_0", Arabic digits
        raise ErrorAnswer(400, "invalid_request", f"{name!r} must be an integer, got "
                          f"{value[:40]!r}", {"field": name})
    number = int(value)
    if not low <= number <= high:
        raise ErrorAnswer(400, "invalid_request", f"{name!r} must be between {low} and {high}",
                          {"field": name})
    return number


def _float_param(value: str | None, name: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if not _NUMBER.fullmatch(value):  # float() would also take "nan", "1_0" and " 7"
        raise ErrorAnswer(400, "invalid_request", f"{name!r} must be a number, got "
                          f"{value[:40]!r}", {"field": name})
    number = float(value)
    if not low <= number <= high:
        raise ErrorAnswer(400, "invalid_request", f"{name!r} must be between {low:g} and {high:g}",
                          {"field": name})
    return number

