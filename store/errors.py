"""Errors the store raises.

    StoreError
    ├── StoreUnavailable   the database cannot take writes now (read-only, locked, I/O)
    │   └── DiskFull       no space left for the write
    ├── CorruptDatabase    the file failed its integrity check: refuse to run
    ├── SchemaTooNew       the file was written by a newer qjobd
    ├── NotFound           no such batch
    ├── IdempotencyConflict  the key was used before with another request body
    └── LeaseLost          another node holds the job now (several daemons, one store)
"""

from __future__ import annotations

import sqlite3

from qjobd.errors import QjobdError


class StoreError(QjobdError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The database cannot take writes now."""


class DiskFull(StoreUnavailable):
    """The disk holding the database is full."""


class CorruptDatabase(StoreError):
    """The database file is corrupt."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of qjobd."""


class NotFound(StoreError):
    """No such record."""


class IdempotencyConflict(StoreError):
    """The idempotency key was already used with a different request."""

    def __init__(self, key: str, batch_id: str) -> None:
        self.key, self.batch_id = key, batch_id
        super().__init__(
            f"idempotency key {key!r} was already used for batch {batch_id} with another request"
        )


class LeaseLost(StoreError):
    """The job's lease passed to another node (or was claimed again): this node must not
    act on it any more. Raised by a fenced write, which then changed nothing."""


def translate(exc: sqlite3.Error) -> StoreError:
    """The StoreError for a sqlite3 error raised by a write."""
    code = getattr(exc, "sqlite_errorcode", None)
    full = code & 0xFF == sqlite3.SQLITE_FULL if code is not None else "full" in str(exc).lower()
    if full:
        return DiskFull(f"database write failed: {exc}")
    return StoreUnavailable(f"database write failed: {exc}")
