"""Structured logging: one structlog pipeline for our lines and for every library's.

JSON lines when stderr is not a terminal (journald, files), a readable console format
when it is. Context bound with ``structlog.contextvars`` (job_id, batch_id, backend)
reaches every line, httpx's own included. Known secret values are masked on the way out.

Under journald (stderr is the stream named by ``$JOURNAL_STREAM``) each line starts with
its syslog priority, ``<3>`` for an error, which journald strips and stores as the
entry's PRIORITY: ``journalctl -p err -u qjobd`` then shows only errors.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_secrets: set[str] = set()
_SECRET_KEYS = re.compile(
    r"(api[_-]?key|(^|_)token$|secret|password|authorization|credential)", re.I)
MASK = "***"


def add_secrets(values: Iterable[str]) -> None:
    """Register values that must never be printed (API keys)."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def redact(value: str) -> str:
    for secret in _secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    return value


def _scrub(value: Any) -> Any:
    """``value`` with secrets masked, keeping its JSON type."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) and v is not None
                else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, int | float | bool):
        return value
    return redact(str(value)) if _secrets else value


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = MASK
        else:
            event[key] = _scrub(value)
    return event


#: syslog priorities (sd-daemon(3)'s SD_ERR etc.) by logging level
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7  # debug


def is_journal_stream(stream: Any) -> bool:
    """Whether ``stream`` is connected to journald (systemd.exec(5), $JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _JournalFormatter(logging.Formatter):
    """Prefixes each record with ``<N>``, its syslog priority, for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        # journald reads a prefix per line: a multi-line record keeps its priority on each
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def set_level(level: str) -> None:
    """Change the level of the running pipeline (a SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())
    _per_request_lines(level)


def _per_request_lines(level: str) -> None:
    """httpx logs every request at INFO ("HTTP Request: GET ..."): with 100,000 jobs in
    flight that is 130 lines a second, 15 GB a day, and a tenth of the daemon's CPU.
    Shown at ``debug`` only; qjobd logs what happened to each job itself."""
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)


def configure(level: str = "info", *, json_output: bool | None = None,
              journal: bool | None = None) -> None:
    """Set up logging to stderr; ``journal`` (auto-detected) adds priority prefixes."""
    if json_output is None:
        json_output = not sys.stderr.isatty()
    if journal is None:
        journal = is_journal_stream(sys.stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json_output:
        # tracebacks as data, but never with frame locals: they can hold secrets
        renderer = [structlog.processors.ExceptionRenderer(
                        ExceptionDictTransformer(show_locals=False)),
                    _redact_processor, structlog.processors.JSONRenderer()]
    else:
        # plain tracebacks: rich's (the default) prints frame locals, which can hold secrets
        renderer = [_redact_processor, structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement at DEBUG; httpcore every socket event
    for noisy in ("aiosqlite", "httpcore", "uvicorn.error", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _per_request_lines(level)
