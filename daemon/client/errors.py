"""What the client library raises (re-exported by :mod:`qjobd.client`)::

    ClientError
    ├── ApiError            the daemon answered with an error (status, code, message, details)
    ├── DaemonUnreachable   no daemon on the socket (missing, refused, reset, permission denied)
    │   └── DaemonTimeout   the daemon accepted the connection but did not answer in time
    ├── SocketConfigError   the config file that names the socket is missing or invalid
    ├── BatchFailed         wait(): the batch ended failed, canceled or timed_out
    └── BatchTimeout        wait(): the wait's timeout passed before the batch ended

``BatchFailed`` and ``BatchTimeout`` mirror ionq-core's ``JobFailedError`` and
``JobTimeoutError`` (``ionq_core.polling.wait_for_job``): the id, then what went wrong
(the jobs' errors; the timeout and the last state seen).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qjobd.errors import QjobdError

if TYPE_CHECKING:
    from qjobd.daemon.client.models import Batch

__all__ = [
    "START_HINT",
    "ApiError",
    "BatchFailed",
    "BatchTimeout",
    "ClientError",
    "DaemonTimeout",
    "DaemonUnreachable",
    "SocketConfigError",
    "format_error_details",
]

START_HINT = "is qjobd running? start it with `make run` or `systemctl start qjobd`"


class ClientError(QjobdError):
    """A client call failed: talking to qjobd, or a wait whose batch did not complete."""


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


class BatchFailed(ClientError):
    """``wait()``: the batch ended, but not ``completed`` (ionq-core's JobFailedError).

    Partial results of a failed batch can still be read with ``results()``.
    """

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch.id, batch.state)
        #: the batch as the daemon last showed it (its jobs, their errors)
        self.batch = batch
        self.batch_id = batch.id
        #: ``failed``, ``canceled`` or ``timed_out``
        self.state = batch.state
        #: the batch's own error (e.g. why it timed out), if it has one
        self.error = batch.error
        #: job id -> its error, for each job that has one
        self.errors: dict[str, str] = batch.errors

    def __str__(self) -> str:
        why = [self.error] if self.error else []
        why += [f"job {job_id}: {error}" for job_id, error in self.errors.items()]
        shown = "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        return f"batch {self.batch_id} ended {self.state}" + (f": {shown}" if shown else "")


class BatchTimeout(ClientError):
    """``wait()``: ``timeout`` seconds passed first (ionq-core's JobTimeoutError).

    The batch goes on in the daemon; wait again, or cancel it.
    """

    def __init__(self, batch: Batch, timeout: float) -> None:
        super().__init__(batch.id, timeout, batch.state)
        #: the batch as it was when the timeout passed
        self.batch = batch
        self.batch_id = batch.id
        self.timeout = timeout
        #: its state then (``queued``, ``running``...)
        self.last_state = batch.state

    def __str__(self) -> str:
        return (f"batch {self.batch_id} did not finish within {self.timeout:g} s "
                f"(last state: {self.last_state})")


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
