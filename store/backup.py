"""A consistent copy of a live database (SQLite's online backup), safe while qjobd runs.

WAL lets this read a snapshot beside the daemon's writer; the copy is written to a
temporary file in the destination's directory, checked, fsynced and renamed into place,
so a crash mid-backup never leaves a half-written file under the destination's name.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from qjobd.store.errors import StoreError


def backup(source: Path, destination: Path, *, pages_per_step: int = 1024) -> int:
    """Copy ``source`` to ``destination``; return the copy's size in bytes."""
    if not source.is_file():
        raise StoreError(f"{source}: no such database")
    destination = destination.resolve()
    if destination == source.resolve():
        raise StoreError("the backup must not overwrite the live database")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(partial)
            try:
                # small steps: the daemon's writer is never held off for long
                src.backup(dst, pages=pages_per_step)
                problems = [r[0] for r in dst.execute("PRAGMA integrity_check")
                            if r[0] != "ok"]
                if problems:
                    raise StoreError(f"the copy failed its integrity check: {problems[:3]}")
                dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
            finally:
                dst.close()
        finally:
            src.close()
        with partial.open("rb") as f:
            os.fsync(f.fileno())
        partial.replace(destination)
        dir_fd = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination.stat().st_size
