"""Structured logging: one structlog pipeline for our lines and for every library's.

JSON lines when stderr is not a terminal (journald, files), a readable console format
when it is. Context bound with ``structlog.contextvars`` (job_id, batch_id, backend)
reaches every line, httpx's own included. Known secret values are masked on the way out.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_secrets: set[str] = set()
_SECRET_KEYS = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.I)
MASK = "***"


def add_secrets(values: Iterable[str]) -> None:
    """Register values that must never be printed (API keys)."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def redact(value: str) -> str:
    for secret in _secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    return value


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = redact(value)
        elif _secrets and not isinstance(value, int | float | bool):
            event[key] = redact(str(value))
    return event


def configure(level: str = "info", *, json_output: bool | None = None) -> None:
    if json_output is None:
        json_output = not sys.stderr.isatty()
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
        renderer = [_redact_processor, structlog.dev.ConsoleRenderer(colors=False)]
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
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement at DEBUG; httpcore every socket event
    for noisy in ("aiosqlite", "httpcore", "uvicorn.error", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
