"""The client's request/response layer, written once for the sync and the async client.

Nothing here does I/O. Each API call is a :class:`Request` (method, path, query, body,
headers, timeouts); :func:`decode` turns the daemon's answer into a dict or an
:class:`~qjobd.daemon.client.errors.ApiError`; :func:`translating` turns httpx transport
errors into the client's own. A call made of several requests with pauses between them
(``wait``: long-polls, reconnects after a daemon restart) is a *plan*: a generator that
yields the next :class:`Request` or :class:`Sleep` and is sent each answer (or thrown
each error); :mod:`qjobd.daemon.client.transport` runs plans with blocking or with
asyncio I/O.
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from qjobd.daemon.client.errors import (
    ApiError,
    BatchFailed,
    BatchTimeout,
    DaemonTimeout,
    DaemonUnreachable,
    SocketConfigError,
)
from qjobd.daemon.client.models import TERMINAL_STATES, Batch
from qjobd.daemon.config import ConfigError, default_socket_path, find_config_file, load_config

__all__ = [
    "MAX_LONG_POLL",
    "RECONNECT_FOR",
    "Plan",
    "Request",
    "Sleep",
    "batch_path",
    "decode",
    "decode_event_line",
    "resolve_socket_path",
    "translating",
    "wait_outcome",
    "wait_plan",
]

#: the longest one /wait request may ask for (the daemon answers 400 beyond it);
#: longer waits are made of several requests
MAX_LONG_POLL = 300.0
#: how long ``wait()`` keeps trying to reach a daemon that went away (a restart)
RECONNECT_FOR = 60.0
#: the first pause between reconnection attempts, doubled after each up to the second
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0
#: daemon answers that mean "not now" rather than "no": retried like a lost connection
TRANSIENT_STATUSES = frozenset({503})

# Extra read time granted on top of the server-side long-poll timeout, so that the
# server's "timeout passed" answer wins the race against our own read timeout.
_WAIT_GRACE = 10.0
# A long-poll answered this close to the wait's deadline ends the wait (the daemon's
# clock and the rounding of the timeout sent may make it answer a little early).
_DEADLINE_SLACK = 0.01

USER_AGENT = "qjobd-client"
BASE_URL = "http://qjobd"


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The socket to talk to: ``explicit``, else ``$QJOBD_SOCKET``, else the daemon's config.

    The config file is found as the daemon finds it (``$QJOBD_CONFIG``, else
    /etc/qjobd/qjobd.toml if present, else built-in defaults). A file that is named but
    missing or invalid raises SocketConfigError: falling back to the default socket could
    send a batch to a different daemon.
    """
    if explicit:
        return Path(explicit)
    if env := os.environ.get("QJOBD_SOCKET"):
        return Path(env)
    path = find_config_file(None)
    if path is None:
        return default_socket_path()
    try:
        return load_config(path).daemon.socket
    except ConfigError as exc:
        reason = str(exc)
        if reason.startswith(f"{path}: "):
            reason = reason[len(f"{path}: "):]
        variable = "QJOBD_CONFIG" if os.environ.get("QJOBD_CONFIG") else None
        raise SocketConfigError(path, variable, reason) from None


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request of the API; ``timeout`` None: the client's own."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    timeout: httpx.Timeout | None = None

    def send_kwargs(self, default_timeout: float) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` / ``.stream`` for it."""
        return {"params": self.params, "json": self.json, "headers": self.headers,
                "timeout": self.timeout if self.timeout is not None else default_timeout}


@dataclass(frozen=True, slots=True)
class Sleep:
    """A plan's pause between two requests."""

    seconds: float


#: a call of several requests: yields what to do next, is sent each answer (a dict)
Plan = Generator[Request | Sleep, Any, dict[str, Any]]


def batch_path(batch_id: str, action: str | None = None) -> str:
    path = f"/v1/batches/{quote(batch_id, safe='')}"
    return f"{path}/{action}" if action else path


def submit_request(circuits: Mapping[str, str], backend: str, *, shots: int | None = None,
                   name: str | None = None, tags: Mapping[str, str] | None = None,
                   timeout: float | None = None, options: Mapping[str, Any] | None = None,
                   idempotency_key: str | None = None,
                   metadata: Mapping[str, Any] | None = None) -> Request:
    body: dict[str, Any] = {"backend": backend, "circuits": dict(circuits)}
    optional = {"shots": shots, "name": name, "tags": dict(tags) if tags is not None else None,
                "timeout": timeout, "options": dict(options) if options is not None else None,
                "metadata": dict(metadata) if metadata is not None else None}
    body.update({k: v for k, v in optional.items() if v is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    return Request("POST", "/v1/batches", json=body, headers=headers)


def list_request(state: str | None = None, backend: str | None = None,
                 limit: int | None = None, cursor: str | None = None) -> Request:
    params = {"state": state, "backend": backend, "limit": limit, "cursor": cursor}
    return Request("GET", "/v1/batches",
                   params={k: v for k, v in params.items() if v is not None})


def get_request(batch_id: str) -> Request:
    return Request("GET", batch_path(batch_id))


def results_request(batch_id: str) -> Request:
    return Request("GET", batch_path(batch_id, "results"))


def cancel_request(batch_id: str) -> Request:
    return Request("POST", batch_path(batch_id, "cancel"))


def health_request() -> Request:
    return Request("GET", "/v1/health")


def wait_request(batch_id: str, seconds: float, base_timeout: float) -> Request:
    """One long-poll of at most ``seconds`` (<= MAX_LONG_POLL)."""
    read = httpx.Timeout(base_timeout, read=seconds + max(base_timeout, _WAIT_GRACE))
    return Request("GET", batch_path(batch_id, "wait"),
                   params={"timeout": f"{round(seconds, 3):g}"}, timeout=read)


def events_request(since: int | None, follow: bool, base_timeout: float) -> Request:
    params: dict[str, Any] = {"follow": "true" if follow else "false"}
    if since is not None:
        params["since"] = since
    # A followed stream is legitimately silent for hours: no read timeout.
    return Request("GET", "/v1/events", params=params,
                   timeout=httpx.Timeout(base_timeout, read=None if follow else base_timeout))


# -- answers -----------------------------------------------------------------------------


def decode(request: Request, response: httpx.Response) -> dict[str, Any]:
    """The JSON object the daemon answered, or the ApiError it means."""
    if response.is_error:
        raise api_error(response)
    try:
        answer = response.json()
    except ValueError:
        raise ApiError(response.status_code, "bad_response",
                       f"{request.method} {request.path}: the daemon's answer is not JSON"
                       ) from None
    if not isinstance(answer, dict):
        raise ApiError(response.status_code, "bad_response",
                       f"{request.method} {request.path}: expected a JSON object, "
                       f"got {answer!r:.80}")
    return answer


def decode_event_line(line: str) -> dict[str, Any] | None:
    """One line of the event stream; None for a blank (keep-alive) line."""
    return json.loads(line) if line.strip() else None


def api_error(response: httpx.Response) -> ApiError:
    """The ApiError of an error answer (read it first if it was streamed)."""
    status = response.status_code
    try:
        error = response.json()["error"]
        return ApiError(status, str(error.get("code") or f"http_{status}"),
                        str(error.get("message") or response.reason_phrase),
                        error.get("details"))
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not our error envelope (a proxy, an older daemon): keep what there is.
        text = response.text.strip()
        return ApiError(status, f"http_{status}", text[:500] or response.reason_phrase)


# -- transport errors --------------------------------------------------------------------


class translating:
    """``with translating(path):`` turns httpx transport errors into the client's own."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, httpx.TransportError):
            return
        path = self.socket_path
        if isinstance(exc, httpx.ConnectError):
            _close_leaked_sockets(exc)
            raise _unreachable(path, exc) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise DaemonTimeout(path, f"no answer in time ({type(exc).__name__})",
                                "the daemon may be overloaded or stuck; see its logs "
                                "(`journalctl -u qjobd`)") from exc
        raise DaemonUnreachable(path, f"connection failed: {exc or type(exc).__name__}",
                                "the daemon may have stopped mid-request; if this was a "
                                "submit, check `qjobctl list` or resubmit with the same "
                                "--idempotency-key") from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _unreachable(path: Path, exc: BaseException) -> DaemonUnreachable:
    os_error = _find_os_error(exc)
    code = os_error.errno if os_error is not None else None
    if code in (errno.ENOENT, errno.ENOTDIR):
        return DaemonUnreachable(path, "no such socket")
    if code in (errno.EACCES, errno.EPERM):
        return DaemonUnreachable(path, "permission denied",
                                 "ask an admin to add you to the socket's group "
                                 f"(`ls -l {path}`)")
    if code == errno.ECONNREFUSED:
        return DaemonUnreachable(path, "connection refused (stale socket?)")
    reason = os_error.strerror if os_error is not None and os_error.strerror else str(exc)
    return DaemonUnreachable(path, reason or "cannot connect")


def _close_leaked_sockets(exc: BaseException) -> None:
    # httpcore 1.0's sync connect_unix_socket does not close its socket when connect()
    # fails; it lives on in the traceback and warns (ResourceWarning) when collected,
    # which turns into an error under `filterwarnings = error`. Close it here.
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        tb = current.__traceback__
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, socket.socket) and value.family == socket.AF_UNIX:
                    value.close()
            tb = tb.tb_next
        current = current.__cause__ or current.__context__


def _find_os_error(exc: BaseException | None) -> OSError | None:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return None


# -- waiting -----------------------------------------------------------------------------


def transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed if sent again shortly (a restarting daemon)."""
    if isinstance(exc, DaemonUnreachable):
        return True
    return isinstance(exc, ApiError) and exc.status in TRANSIENT_STATUSES


def wait_plan(batch_id: str, timeout: float | None, *, base_timeout: float,
              reconnect_for: float, max_long_poll: float | None = None,
              to_deadline: bool = True, clock: Callable[[], float] = time.monotonic,
              jitter: Callable[[], float] = random.random) -> Plan:
    """Long-poll the batch until it is terminal or ``timeout`` seconds pass (None: no
    limit); returns the batch as last seen (a dict; terminal unless the time ran out).

    The wait is made of long-polls of at most ``max_long_poll`` seconds (the daemon caps
    one at MAX_LONG_POLL). A daemon that stops ends its long-polls early: with
    ``to_deadline`` the wait goes on until the clock says the time is up (pausing
    before it asks again, so a daemon that keeps answering early is not hammered);
    without, it ends with the long-poll that covers the deadline, whenever that returns
    (qjobctl's short rounds).

    A request that cannot reach the daemon (refused, reset, no socket, no answer in
    time: a restart) or that it answers 503 is sent again after a pause
    (RECONNECT_FIRST_DELAY, doubling up to RECONNECT_MAX_DELAY, jittered) for up to
    ``reconnect_for`` seconds from the first failure in a row; then, or once ``timeout``
    has passed without a word from the daemon, that error is raised (the batch's state
    is not known then). Any other error is raised at once.
    """
    cap = MAX_LONG_POLL if max_long_poll is None else max_long_poll
    deadline = None if timeout is None else clock() + max(0.0, timeout)
    outage_since: float | None = None
    delay = early_delay = RECONNECT_FIRST_DELAY
    while True:
        started = clock()
        left = None if deadline is None else max(0.0, deadline - started)
        chunk = cap if left is None else min(left, cap)
        try:
            batch = yield wait_request(batch_id, chunk, base_timeout)
        except (DaemonUnreachable, ApiError) as exc:
            if not transient(exc):
                raise
            now = clock()
            outage_since = now if outage_since is None else outage_since
            give_up = outage_since + max(0.0, reconnect_for)
            if deadline is not None:
                give_up = min(give_up, deadline)
            if now >= give_up:
                raise
            yield Sleep(min(delay * (0.5 + jitter() / 2), give_up - now))
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            continue
        outage_since, delay = None, RECONNECT_FIRST_DELAY
        if batch.get("state") in TERMINAL_STATES:
            return batch
        now = clock()
        if not to_deadline:
            if left is not None and chunk >= left:
                return batch
            continue
        if deadline is not None and now >= deadline - _DEADLINE_SLACK:
            return batch
        if now - started < chunk - _DEADLINE_SLACK:
            # answered early (a stopping daemon): pause before asking again
            pause = early_delay if deadline is None else min(early_delay, deadline - now)
            yield Sleep(pause)
            early_delay = min(early_delay * 2, RECONNECT_MAX_DELAY)
        else:
            early_delay = RECONNECT_FIRST_DELAY


def wait_outcome(answer: Mapping[str, Any], timeout: float | None, *,
                 raise_on_failure: bool = True) -> Batch:
    """What a typed ``wait()`` returns for the plan's last batch, or raises.

    BatchTimeout if it is not terminal; BatchFailed if it ended otherwise than
    ``completed`` (unless ``raise_on_failure`` is False: then it is returned).
    """
    batch = Batch.from_dict(answer)
    if not batch.terminal:
        raise BatchTimeout(batch, timeout if timeout is not None else 0.0)
    if raise_on_failure and not batch.completed:
        raise BatchFailed(batch)
    return batch
