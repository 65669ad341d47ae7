"""A small synchronous client for qjobd's HTTP/JSON API on its Unix socket.

    with Client() as qjobd:
        batch = qjobd.submit({"bell": source}, backend="local", shots=1000)
        batch = qjobd.wait(batch["id"], timeout=60)
        counts = qjobd.results(batch["id"])["results"]["bell"]["counts"]

Exceptions::

    ClientError
    ├── ApiError            the daemon answered with an error (status, code, message, details)
    ├── DaemonUnreachable   no daemon on the socket (missing, refused, permission denied)
    │   └── DaemonTimeout   the daemon accepted the connection but did not answer in time
    └── SocketConfigError   the config file that names the socket is missing or invalid
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from qjobd.daemon.config import (
    ConfigError,
    default_socket_path,
    find_config_file,
    load_config,
)
from qjobd.errors import QjobdError
from qjobd.store.states import TERMINAL

__all__ = [
    "TERMINAL_STATES",
    "ApiError",
    "Client",
    "ClientError",
    "DaemonTimeout",
    "DaemonUnreachable",
    "SocketConfigError",
    "format_error_details",
    "resolve_socket_path",
]

#: batch and job states after which nothing changes any more (as the API spells them)
TERMINAL_STATES = frozenset(str(state) for state in TERMINAL)

START_HINT = "is qjobd running? start it with `make run` or `systemctl start qjobd`"

#: the longest one /wait request may ask for (the daemon answers 400 beyond it);
#: longer waits are made of several requests
MAX_LONG_POLL = 300.0

# Extra read time granted on top of the server-side long-poll timeout, so that the
# server's "timeout passed" answer wins the race against our own read timeout.
_WAIT_GRACE = 10.0


class ClientError(QjobdError):
    """Talking to qjobd failed."""


class ApiError(ClientError):
    """The daemon answered with an error status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(status, code, message, details)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.describe()

    def describe(self, origins: Mapping[str, str] | None = None) -> str:
        """The message, then one indented line per detail (see format_error_details)."""
        lines = format_error_details(self.details, origins)
        message = self.message
        plain = format_error_details(self.details) if origins else lines
        if plain and message.startswith(plain[0]):
            # The daemon's message repeats the first detail; don't print it twice.
            message = "invalid OpenQASM" if self.status == 422 else "request rejected"
        head = f"{message} ({self.code}, HTTP {self.status})"
        return "\n".join([head, *(f"  {line}" for line in lines)])


class DaemonUnreachable(ClientError):
    """No qjobd answers on the socket."""

    def __init__(self, socket_path: Path, reason: str, hint: str = START_HINT) -> None:
        super().__init__(socket_path, reason, hint)
        self.socket_path = socket_path
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"cannot reach qjobd at {self.socket_path}: {self.reason}; {self.hint}"


class DaemonTimeout(DaemonUnreachable):
    """The daemon accepted the connection but did not answer in time."""


class SocketConfigError(ClientError):
    """The config file that names the daemon's socket is missing or invalid.

    Guessing the default socket instead could hand a batch to another daemon.
    """

    def __init__(self, path: Path, variable: str | None, reason: str) -> None:
        super().__init__(path, variable, reason)
        self.path = path
        #: the environment variable that named the file, if one did
        self.variable = variable
        self.reason = reason

    def __str__(self) -> str:
        named = f"${self.variable} names {self.path}" if self.variable else str(self.path)
        return (f"{named}: {self.reason}; the client reads this file to find qjobd's "
                f"socket. Fix it{' or unset ' + self.variable if self.variable else ''}, "
                "or give the socket with --socket or $QJOBD_SOCKET")


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


def format_error_details(details: Any, origins: Mapping[str, str] | None = None) -> list[str]:
    """Human lines for an error's ``details``; QASM errors read like compiler messages.

    ``origins`` maps a circuit label to where it came from (a file name), if known.
    """
    if details is None or details == {} or details == []:
        return []
    if isinstance(details, list):
        return [line for item in details for line in format_error_details(item, origins)]
    if isinstance(details, Mapping) and ("line" in details or "reason" in details):
        label = details.get("label")
        where = []
        if label is not None:
            where.append(f"circuit {label!r}")
            if origins and label in origins and origins[label] != label:
                where[-1] += f" ({origins[label]})"
        if details.get("line") is not None:
            where.append(f"line {details['line']}")
        if details.get("column") is not None:
            where.append(f"column {details['column']}")
        reason = details.get("reason") or details.get("message") or ""
        return [", ".join(where) + (f": {reason}" if reason else "")]
    if isinstance(details, Mapping):
        return [f"{k}: {_compact(v)}" for k, v in details.items()]
    return [_compact(details)]


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class Client:
    """Synchronous qjobd client; one connection pool, close it (or use ``with``)."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 timeout: float = 30.0) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://qjobd",
            timeout=timeout,
            headers={"User-Agent": "qjobd-client", "Accept": "application/json"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- API calls ---------------------------------------------------------------------

    def submit(self, circuits: Mapping[str, str], backend: str, shots: int | None = None,
               name: str | None = None, tags: Mapping[str, str] | None = None,
               timeout: float | None = None, options: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a batch (``POST /v1/batches``); returns the stored batch.

        With ``idempotency_key``, resubmitting the same body returns the existing batch;
        another body under the same key raises ApiError 409.
        """
        body: dict[str, Any] = {"backend": backend, "circuits": dict(circuits)}
        optional = {"shots": shots, "name": name, "tags": tags, "timeout": timeout,
                    "options": options}
        body.update({k: v for k, v in optional.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/v1/batches", json=body, headers=headers)

    def list(self, state: str | None = None, backend: str | None = None,
             limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first: ``{"batches": [...], "next_cursor": ...}``."""
        params = {"state": state, "backend": backend, "limit": limit, "cursor": cursor}
        return self._call("GET", "/v1/batches",
                          params={k: v for k, v in params.items() if v is not None})

    def get(self, batch_id: str) -> dict[str, Any]:
        """The batch with its jobs."""
        return self._call("GET", _batch_path(batch_id))

    def results(self, batch_id: str) -> dict[str, Any]:
        """``{"id", "state", "results": {label: {"counts", "shots", "job_id"}}}``.

        Raises ApiError 409 while the batch is not terminal.
        """
        return self._call("GET", _batch_path(batch_id, "results"))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the daemon to cancel the batch; idempotent. Returns the batch."""
        return self._call("POST", _batch_path(batch_id, "cancel"))

    def wait(self, batch_id: str, timeout: float) -> dict[str, Any]:
        """Long-poll: the batch once it is terminal, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = max(0.0, deadline - time.monotonic())
            chunk = min(left, MAX_LONG_POLL)
            read = httpx.Timeout(self.timeout, read=chunk + max(self.timeout, _WAIT_GRACE))
            batch = self._call("GET", _batch_path(batch_id, "wait"),
                               params={"timeout": f"{round(chunk, 3):g}"}, timeout=read)
            if batch.get("state") in TERMINAL_STATES or chunk >= left:
                return batch

    def health(self) -> dict[str, Any]:
        """Version, uptime, counts by state, per-backend health."""
        return self._call("GET", "/v1/health")

    def events(self, since: int | None = None, follow: bool = False) -> Iterator[dict[str, Any]]:
        """State changes after sequence number ``since``, oldest first.

        Without ``follow`` the daemon ends the stream after the backlog; with it the
        stream stays open and this iterator blocks for new events.
        """
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if since is not None:
            params["since"] = since
        # A followed stream is legitimately silent for hours: no read timeout.
        timeout = httpx.Timeout(self.timeout, read=None if follow else self.timeout)
        with self._translate_errors():
            with self._http.stream("GET", "/v1/events", params=params,
                                   timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json: Any = None, headers: Mapping[str, str] | None = None,
              timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        with self._translate_errors():
            response = self._http.request(
                method, path, params=params, json=json, headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
            )
        if response.is_error:
            raise _api_error(response)
        try:
            answer = response.json()
        except ValueError:
            raise ApiError(response.status_code, "bad_response",
                           f"{method} {path}: the daemon's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ApiError(response.status_code, "bad_response",
                           f"{method} {path}: expected a JSON object, got {answer!r:.80}")
        return answer

    def _translate_errors(self) -> _ErrorTranslator:
        return _ErrorTranslator(self.socket_path)


class _ErrorTranslator:
    """Turns httpx transport errors into the client's own exceptions."""

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


def _api_error(response: httpx.Response) -> ApiError:
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


def _batch_path(batch_id: str, action: str | None = None) -> str:
    path = f"/v1/batches/{quote(batch_id, safe='')}"
    return f"{path}/{action}" if action else path
