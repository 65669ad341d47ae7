"""``qjobd migrate-store``: an SQLite store copied into PostgreSQL, then checked row by row.

The daemon must be stopped: the copy holds the SQLite store's lock (the file beside it
that ``qjobd serve`` locks) and the PostgreSQL database's daemon lock for as long as it
runs, and refuses to start while either is held.

The target is a database with no qjobd data in it, or one that holds an unfinished run of
this same migration. A run records where its rows come from in the target (table
``qjobd_migration``: the source's path and a digest of its schema version, row counts and
highest keys), and how far each table got (``qjobd_migration_progress``). Each chunk of
rows is written with COPY in a transaction that also moves its table's progress, so an
interruption at any point (kill -9, power, a lost connection) leaves whole chunks and a
record of them, and a rerun continues after the last one. A rerun on a source that changed
meanwhile (the daemon ran on it again) starts the copy over; a target holding anything
else is refused, saying what it holds.

Rows are read in primary-key order from one SQLite read transaction (a snapshot), never a
whole table at once; the check reads both sides again in that order (PostgreSQL sorting
text keys bytewise, ``COLLATE "C"``, as SQLite does) and compares each row's values. The
event log keeps its sequence numbers, and both identity sequences (``batches.seq``,
``events.seq``) continue past the copied maxima (past SQLite's AUTOINCREMENT high-water
mark, which retention may have left above the last row), so cursors stay valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import zip_longest
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
import structlog

from qjobd.store.errors import SchemaTooNew, StoreError
from qjobd.store.factory import mask_url, url_password
from qjobd.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS

__all__ = ["Differs", "MigrationRefused", "Report", "TableReport", "migrate"]

log = structlog.get_logger("qjobd.store.migrate")

#: every table of the SQLite store, parents before the tables that refer to them
TABLES = ("batches", "jobs", "circuits", "results", "batch_job_counts", "events")
#: the identity columns whose sequences must continue past the copied rows
SEQUENCES = (("batches", "seq"), ("events", "seq"))
#: what a qjobd database (or a migration into one) may hold, besides TABLES
OWN_TABLES = ("nodes", "qjobd_schema", "qjobd_migration", "qjobd_migration_progress")
#: the test hook: pause inside chunk N's transaction, after its rows, before its commit,
#: until SIGUSR1 (or the end: kill -9)
PAUSE_ENV = "QJOBD_TEST_MIGRATE_PAUSE_CHUNK"
#: a node whose heartbeat is younger than this is taken to be serving
LIVE_NODE_SECONDS = 60.0
DEFAULT_CHUNK_ROWS = 5000

_MARKER_DDL = b"""
CREATE TABLE IF NOT EXISTS qjobd_migration (
    source      TEXT NOT NULL,             -- the SQLite file's absolute path
    digest      TEXT NOT NULL,             -- of its schema version, row counts, top keys
    identity    TEXT NOT NULL,             -- what the digest is of (JSON)
    started_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION           -- set once every row is copied and checked
);
CREATE TABLE IF NOT EXISTS qjobd_migration_progress (
    table_name TEXT PRIMARY KEY,
    last_key   TEXT,                       -- JSON list: the last copied row's key
    rows       BIGINT NOT NULL DEFAULT 0,
    done       BOOLEAN NOT NULL DEFAULT false
);
"""


class MigrationRefused(StoreError):
    """The source or the target is not in a state the migration may touch."""


class Differs(StoreError):
    """The copy is not equal to the source."""

    def __init__(self, table: str, key: Sequence[Any], why: str) -> None:
        self.table, self.key = table, tuple(key)
        super().__init__(f"table {table}: the row with key {_show_key(key)} {why}")


@dataclass
class TableReport:
    name: str
    rows: int = 0        # in the source
    copied: int = 0      # by this run (the rest by an earlier, interrupted one)
    verified: int = 0
    digest: str = ""     # sha256 of the rows' canonical forms, in key order


@dataclass
class Report:
    source: Path
    target: str          # the URL, its password masked
    outcome: str         # "copied", "resumed", "restarted", "verified", "in use since"
    tables: list[TableReport] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)
    #: the schema versions: the SQLite store's (user_version), the database's (qjobd_schema)
    schema: tuple[int, int] = (0, 0)
    copy_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables)

    def lines(self) -> list[str]:
        out = [f"{'table':<18}{'rows':>12}{'copied now':>12}{'verified':>12}  sha256"]
        out += [f"{t.name:<18}{t.rows:>12,}{t.copied:>12,}{t.verified:>12,}  {t.digest[:16]}"
                for t in self.tables]
        if self.schema != (0, 0):
            out.append(f"schema: the store's version {self.schema[0]}, the database's "
                       f"{self.schema[1]} (this qjobd's)")
        if self.sequences:
            out.append("sequences continue after: " + ", ".join(
                f"{name} {value:,}" for name, value in self.sequences.items()))
        rate = self.copied / self.copy_seconds if self.copy_seconds > 0 else 0.0
        out.append(f"{self.outcome}: {sum(t.rows for t in self.tables):,} rows in "
                   f"{len(self.tables)} tables, equal on both sides (copied {self.copied:,} "
                   f"in {self.copy_seconds:.1f} s, {rate:,.0f} rows/s; checked in "
                   f"{self.verify_seconds:.1f} s)")
        return out


class _Target(Enum):
    FRESH = "no qjobd tables"
    EMPTY = "a qjobd schema without data"
    OURS = "a migration from this store"


# -- the whole run -------------------------------------------------------------------------

def migrate(source: Path, url: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Report:
    """Copy the SQLite store at ``source`` into the PostgreSQL database at ``url``, check
    every row, and return what was done.

    Raises MigrationRefused (nothing written), Differs (the check failed) or another
    StoreError; a rerun after any of them, or after an interruption, is safe.
    """
    masked = mask_url(url)
    if url_password(url) is not None:
        log.warning("the database URL holds a password: keep it in $PGPASSWORD or "
                    "~/.pgpass instead", database=masked)
    source = source.resolve()
    if not source.is_file():
        raise MigrationRefused(f"{source}: no such database")
    with _source_lock(source), _open_source(source) as src:
        identity = _identity(src, source)
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        try:
            with _connect(url) as pg:
                return _run(src, pg, source, url, identity, digest, chunk_rows)
        except psycopg.Error as exc:
            raise StoreError(f"{masked}: {_safe(exc, url)}") from None


def _run(src: sqlite3.Connection, pg: psycopg.Connection[Any], source: Path, url: str,
         identity: dict[str, Any], digest: str, chunk_rows: int) -> Report:
    from qjobd.store.postgres import DAEMON_LOCK, MIGRATION_LOCK

    masked = mask_url(url)
    held = pg.execute("SELECT pg_try_advisory_lock(%s)", (DAEMON_LOCK,)).fetchone()
    if not held or not held[0]:
        raise MigrationRefused(f"a qjobd is serving on {masked} (or another migrate-store "
                               "is running on it): stop it first")
    kind, marker = _inspect_target(pg, masked)
    outcome = "copied"
    if kind is _Target.OURS:
        assert marker is not None
        outcome = _decide(pg, source, masked, identity, digest, marker)
        if outcome == "in use since":
            return Report(source, masked, outcome)
        _check_progress(pg, masked)
    _refuse_live_nodes(pg, masked)
    _create_schema(url)
    # held to the end: a daemon that starts meanwhile (one that does not take the daemon
    # lock: several on one database) waits in its schema step until the copy is done
    pg.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    _refuse_live_nodes(pg, masked)
    _check_progress(pg, masked)
    with pg.transaction():
        pg.execute(_MARKER_DDL)
        if outcome == "restarted":
            _truncate(pg)
        if kind is not _Target.OURS or outcome == "restarted":
            pg.execute("DELETE FROM qjobd_migration")
            pg.execute("DELETE FROM qjobd_migration_progress")
            pg.execute("INSERT INTO qjobd_migration (source, digest, identity, started_at) "
                       "VALUES (%s, %s, %s, %s)",
                       (str(source), digest, json.dumps(identity, sort_keys=True),
                        time.time()))
    log.info("migrating the store", source=str(source), target=masked, outcome=outcome,
             rows=identity["rows"])
    report = Report(source, masked, outcome)
    started = time.perf_counter()
    columns = {t: _columns(src, pg, t) for t in TABLES}
    chunks = _Chunks()
    for table in TABLES:
        report.tables.append(TableReport(table, rows=identity["rows"][table]))
        report.tables[-1].copied = _copy_table(src, pg, table, columns[table], chunk_rows,
                                               chunks)
    report.sequences = _set_sequences(pg, identity)
    version = pg.execute("SELECT version FROM qjobd_schema").fetchone()
    report.schema = (int(identity["schema"]), int(version[0]) if version else 0)
    report.copy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for entry in report.tables:
        entry.verified, entry.digest = _verify_table(src, pg, entry.name, columns[entry.name],
                                                     chunk_rows)
    report.verify_seconds = time.perf_counter() - started
    with pg.transaction():
        pg.execute("UPDATE qjobd_migration SET finished_at = %s WHERE finished_at IS NULL",
                   (time.time(),))
    log.info("store migrated and checked", source=str(source), target=masked,
             rows=sum(t.rows for t in report.tables), copied=report.copied,
             copy_seconds=round(report.copy_seconds, 3),
             verify_seconds=round(report.verify_seconds, 3))
    return report


def _decide(pg: psycopg.Connection[Any], source: Path, masked: str, identity: dict[str, Any],
            digest: str, marker: tuple[Any, ...]) -> str:
    """What to do with a target that holds a migration: resume, restart, check, or refuse."""
    from_path, from_digest, finished_at = str(marker[0]), str(marker[1]), marker[2]
    when = "" if finished_at is None else time.strftime(
        " (finished %Y-%m-%d %H:%M:%S UTC)", time.gmtime(finished_at))
    if from_path != str(source):
        raise MigrationRefused(
            f"{masked} holds a migration of another store, {from_path}{when}: refusing to "
            "mix stores (use an empty database, or drop this one's tables)")
    if from_digest == digest:
        if finished_at is None:
            return "resumed"
        top = pg.execute("SELECT max(seq) FROM events").fetchone()
        if top and top[0] is not None and top[0] > identity["top"]["events"]:
            log.info("already migrated, and in use since", target=masked)
            return "in use since"
        return "verified"
    if finished_at is None:
        log.warning("the store changed since the interrupted migration: copying it again",
                    source=str(source))
        return "restarted"
    raise MigrationRefused(
        f"{masked} holds a finished migration of {source}{when}, and the store changed "
        "since (a daemon ran on it again?): the PostgreSQL copy may be in use; drop its "
        "tables to migrate again")


def _refuse_live_nodes(pg: psycopg.Connection[Any], masked: str) -> None:
    """Refuse a database some daemon (node) has said it is alive on within a minute."""
    if _missing(pg, "nodes"):
        return
    live = pg.execute(
        "SELECT name, extract(epoch from clock_timestamp()) - heartbeat_at FROM nodes "
        "WHERE heartbeat_at > extract(epoch from clock_timestamp()) - %s ORDER BY name",
        (LIVE_NODE_SECONDS,)).fetchall()
    if live:
        raise MigrationRefused(
            f"a qjobd is serving on {masked} (node " + ", ".join(
                f"{name} seen {max(0.0, float(age)):.0f} s ago" for name, age in live)
            + "): stop it first")


def _missing(pg: psycopg.Connection[Any], table: str) -> bool:
    row = pg.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone()
    return bool(row and row[0])


def _check_progress(pg: psycopg.Connection[Any], masked: str) -> None:
    """A migration's tables hold what it recorded, and nothing else: a daemon started on
    a half-copied database would have added rows (refused, not wiped: it may have
    recorded remote jobs that exist nowhere else)."""
    copied = {} if _missing(pg, "qjobd_migration_progress") else {
        str(t): int(n) for t, n in pg.execute(
            "SELECT table_name, rows FROM qjobd_migration_progress").fetchall()}
    for table in TABLES:
        if _missing(pg, table):
            continue
        row = pg.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
            psycopg.sql.Identifier(table))).fetchone()
        n = int(row[0]) if row else 0
        if n != copied.get(table, 0):
            raise MigrationRefused(
                f"{masked}: table {table} holds {n:,} rows, but the migration there "
                f"copied {copied.get(table, 0):,}: the database changed since (a daemon "
                "served on it?); drop its tables to migrate again")


# -- the source ----------------------------------------------------------------------------

@contextlib.contextmanager
def _source_lock(source: Path) -> Iterator[None]:
    """Hold the lock ``qjobd serve`` holds on the store (store's path + ``.lock``): refuse
    while a daemon serves on it, and keep one from starting until the copy is done."""
    lock = Path(f"{source}.lock")
    try:
        # read-only is enough for flock, and leaves the daemon's own file as it is
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = _create_lock(lock, source)
    except OSError as exc:
        raise MigrationRefused(f"{lock}: cannot open the store's lock: {exc.strerror}") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrationRefused(
                f"a qjobd is serving on {source} (it holds {lock}): stop it first, e.g. "
                "systemctl stop qjobd") from None
        yield
    finally:
        os.close(fd)


def _create_lock(lock: Path, source: Path) -> int:
    """The lock file, as the daemon would create it: owned by the store's owner (run as
    root, a file of root's would keep the daemon's user from opening it)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MigrationRefused(f"{lock}: cannot create the store's lock: {exc.strerror}") \
            from None
    if os.geteuid() == 0:
        owner = source.stat()
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            os.close(fd)
            raise
    return fd


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[sqlite3.Connection]:
    """The store, checked, at the current schema, inside one read transaction."""
    version = _sqlite_version(source)
    if version > len(MIGRATIONS):
        raise SchemaTooNew(f"{source}: schema version {version} is newer than this qjobd "
                           f"knows ({len(MIGRATIONS)}); upgrade qjobd first")
    if version < len(MIGRATIONS):
        log.info("upgrading the store's schema first", source=str(source), version=version)
        _upgrade(source)
    try:
        conn = sqlite3.connect(source, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: cannot open the database: {exc}") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        problems = [r[0] for r in conn.execute("PRAGMA quick_check") if r[0] != "ok"]
        if problems:
            raise MigrationRefused(f"{source}: the database failed its check: {problems[:3]}")
        conn.execute("BEGIN")
        yield conn
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: {exc}") from None
    finally:
        conn.close()


def _sqlite_version(source: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: not a readable qjobd store: {exc}") from None


def _upgrade(source: Path) -> None:
    from qjobd.store.store import Store

    async def upgrade() -> None:
        store = await Store.open(source)
        await store.close()

    asyncio.run(upgrade())


def _identity(src: sqlite3.Connection, source: Path) -> dict[str, Any]:
    """What the store is: its path, schema version, row counts and highest keys."""
    rows = {t: int(src.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
    return {
        "path": str(source),
        "schema": int(src.execute("PRAGMA user_version").fetchone()[0]),
        "rows": rows,
        "top": {t: _high_water(src, t, c) for t, c in SEQUENCES},
        "updated": {t: src.execute(f"SELECT max(updated_at) FROM {t}").fetchone()[0]
                    for t in ("batches", "jobs")},
    }


def _high_water(src: sqlite3.Connection, table: str, column: str) -> int:
    """The highest key the table ever had: its last row's, or AUTOINCREMENT's record of a
    deleted later one."""
    top = src.execute(f"SELECT max({column}) FROM {table}").fetchone()[0] or 0
    seq = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return max(int(top), int(seq[0]) if seq else 0)


# -- the target ----------------------------------------------------------------------------

def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=30)


def _inspect_target(pg: psycopg.Connection[Any], masked: str
                    ) -> tuple[_Target, tuple[Any, ...] | None]:
    """What the target holds; refuse anything but nothing, nothing of qjobd's data, or a
    migration's record."""
    names = {r[0] for r in pg.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema()").fetchall()}
    ours = names & {*TABLES, *OWN_TABLES}
    if not ours:
        return _Target.FRESH, None
    if "qjobd_migration" in names:
        marker = pg.execute("SELECT source, digest, finished_at FROM qjobd_migration "
                            "ORDER BY started_at DESC LIMIT 1").fetchone()
        if marker is not None:
            return _Target.OURS, tuple(marker)
    if "qjobd_schema" not in names:
        raise MigrationRefused(
            f"{masked} holds tables named as qjobd's ({', '.join(sorted(ours))}) but no "
            "qjobd_schema: not a qjobd database; use an empty one")
    row = pg.execute("SELECT version FROM qjobd_schema").fetchone()
    version = int(row[0]) if row else 0
    if version > len(POSTGRES_MIGRATIONS):
        raise SchemaTooNew(f"{masked}: schema version {version} is newer than this qjobd "
                           f"knows ({len(POSTGRES_MIGRATIONS)})")
    found = {}
    for table in sorted(set(TABLES) & names):
        n = pg.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
            psycopg.sql.Identifier(table))).fetchone()
        if n and n[0]:
            found[table] = int(n[0])
    if found:
        raise MigrationRefused(
            f"{masked} already holds qjobd data, not from a migration of this store ("
            + ", ".join(f"{n:,} {t}" for t, n in found.items())
            + "): migrate into an empty database")
    return _Target.EMPTY, None


def _create_schema(url: str) -> None:
    """The daemon's own schema, created or brought up to date as ``qjobd serve`` does.

    Before the rows: a PostgreSQL step that derives rows from existing ones (as SQLite's
    step 2 fills batch_job_counts) finds none here, so a table it fills must be derived
    again after the copy, or be one of TABLES.
    """
    from qjobd.store.postgres import _migrate

    async def create() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=30)
        try:
            await _migrate(conn, mask_url(url))
        finally:
            await conn.close()

    asyncio.run(create())


def _truncate(pg: psycopg.Connection[Any]) -> None:
    pg.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    pg.execute("DELETE FROM qjobd_migration_progress")


@dataclass(frozen=True)
class _Columns:
    table: str
    names: tuple[str, ...]
    key: tuple[str, ...]
    #: per column, the exact value PostgreSQL's type holds of a value (ValueError if
    #: none): how a row PostgreSQL refused is explained
    casts: tuple[Callable[[Any], Any], ...]
    text_key: tuple[bool, ...]

    def key_of(self, row: Sequence[Any]) -> list[Any]:
        return [row[self.names.index(k)] for k in self.key]


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool) or v in (0, 1):
        return bool(v)
    raise ValueError("not 0 or 1")


def _to_int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise ValueError("not an integer")


def _to_float(v: Any) -> float:
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and float(v) == v:
        return float(v)
    raise ValueError("not a number")


def _to_text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not text")
    if "\x00" in v:
        raise ValueError("a NUL character, which PostgreSQL's text cannot hold")
    return v


def _same(value: Any) -> Any:
    return value


#: PostgreSQL's type -> the exact value of that type (ValueError if there is none)
_CASTS: dict[str, Callable[[Any], Any]] = {
    "boolean": _to_bool, "double precision": _to_float, "real": _to_float,
    "bigint": _to_int, "integer": _to_int, "smallint": _to_int, "text": _to_text,
}


def _columns(src: sqlite3.Connection, pg: psycopg.Connection[Any], table: str) -> _Columns:
    """The table's columns as SQLite has them, each one's PostgreSQL type; its key."""
    info = src.execute(f"PRAGMA table_info({table})").fetchall()
    names = tuple(str(r[1]) for r in info)
    key = tuple(str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    types = dict(pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s", (table,)).fetchall())
    missing = [n for n in names if n not in types]
    if missing:
        raise MigrationRefused(f"table {table}: the PostgreSQL schema lacks the SQLite "
                               f"store's columns {', '.join(missing)}")
    if not key:
        raise MigrationRefused(f"table {table} has no primary key")
    casts = tuple(_CASTS.get(types[n], _same) for n in names)
    return _Columns(table, names, key, casts, tuple(types[k] == "text" for k in key))


def _cast(row: Sequence[Any], cols: _Columns) -> tuple[Any, ...]:
    """The row as PostgreSQL stores it, each value exact (or StoreError, saying which)."""
    try:
        return tuple(None if v is None else f(v) for v, f in zip(row, cols.casts, strict=True))
    except ValueError:
        for name, v, f in zip(cols.names, row, cols.casts, strict=True):
            try:
                None if v is None else f(v)
            except ValueError as exc:
                raise StoreError(
                    f"table {cols.table}: the row with key {_show_key(cols.key_of(row))} "
                    f"holds {_short(v)} in column {name} ({exc}): its PostgreSQL column "
                    "cannot hold that exactly") from None
        raise


# -- copying -------------------------------------------------------------------------------

class _Chunks:
    """Counts committed chunks across tables, for the test hook."""

    def __init__(self) -> None:
        self.n = 0
        pause = os.environ.get(PAUSE_ENV)
        self.pause_at = int(pause) if pause else None
        if self.pause_at is not None:
            log.warning("test hook on: pausing in a chunk before its commit",
                        env=PAUSE_ENV, chunk=self.pause_at)

    def written(self, table: str) -> None:
        """Chunk written, not committed yet: the test hook's moment."""
        self.n += 1
        if self.n == self.pause_at:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            print(f"qjobd: test hook: paused in chunk {self.n} ({table}), before its commit",
                  file=sys.stderr, flush=True)
            signal.sigwait({signal.SIGUSR1})
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def _copy_table(src: sqlite3.Connection, pg: psycopg.Connection[Any], table: str,
                cols: _Columns, chunk_rows: int, chunks: _Chunks) -> int:
    """Copy what is left of one table, chunk by chunk; return how many rows."""
    progress = pg.execute("SELECT last_key, done FROM qjobd_migration_progress "
                          "WHERE table_name = %s", (table,)).fetchone()
    if progress is not None and progress[1]:
        return 0
    after = None if progress is None or progress[0] is None else json.loads(progress[0])
    order = ", ".join(cols.key)
    sql = f"SELECT {', '.join(cols.names)} FROM {table}"
    if after is not None:
        sql += f" WHERE ({order}) > ({', '.join('?' for _ in cols.key)})"
    cursor = src.execute(sql + f" ORDER BY {order}", after or ())
    copy_sql = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg.sql.Identifier(table),
        psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(n) for n in cols.names))
    copied = 0
    log.info("copying", table=table, after=after)
    while rows := cursor.fetchmany(chunk_rows):
        last = cols.key_of(rows[-1])
        try:
            with pg.transaction():
                with pg.cursor() as cur, cur.copy(copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                pg.execute("INSERT INTO qjobd_migration_progress (table_name, last_key, rows) "
                           "VALUES (%s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET "
                           "last_key = excluded.last_key, "
                           "rows = qjobd_migration_progress.rows + excluded.rows",
                           (table, json.dumps(last), len(rows)))
                chunks.written(table)
        except psycopg.DataError as exc:
            for row in rows:  # which value it was, by name (the fast path sends them as is)
                _cast(row, cols)
            raise StoreError(f"table {table}: PostgreSQL refused a row up to key "
                             f"{_show_key(last)}: {str(exc).strip()}") from None
        copied += len(rows)
        log.debug("chunk copied", table=table, rows=len(rows), copied=copied)
    pg.execute("INSERT INTO qjobd_migration_progress (table_name, done) VALUES (%s, true) "
               "ON CONFLICT (table_name) DO UPDATE SET done = true", (table,))
    return copied


def _set_sequences(pg: psycopg.Connection[Any], identity: dict[str, Any]) -> dict[str, int]:
    """Each identity sequence's next value past the source's highest key."""
    out = {}
    for table, column in SEQUENCES:
        top = int(identity["top"][table])
        # setval(s, n, true): the next value is n + 1; (s, 1, false): it is 1
        pg.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)",
                   (table, column, max(top, 1), top > 0))
        out[f"{table}.{column}"] = top
    return out


# -- checking ------------------------------------------------------------------------------

def _verify_table(src: sqlite3.Connection, pg: psycopg.Connection[Any], table: str,
                  cols: _Columns, chunk_rows: int) -> tuple[int, str]:
    """Compare every row of ``table`` on both sides, in key order; return the count and a
    digest of the rows. Raises Differs at the first difference."""
    names = ", ".join(cols.names)
    order = ", ".join(cols.key)
    mine = src.execute(f"SELECT {names} FROM {table} ORDER BY {order}")
    pg_order = ", ".join(f'{k} COLLATE "C"' if text else k
                         for k, text in zip(cols.key, cols.text_key, strict=True))
    digest = hashlib.sha256()
    n = 0
    with pg.transaction(), pg.cursor(name=f"verify_{table}") as theirs:
        theirs.itersize = chunk_rows
        theirs.execute(f"SELECT {names} FROM {table} ORDER BY {pg_order}")
        for a, b in zip_longest(_rows(mine, chunk_rows), theirs):
            if b is None:
                raise Differs(table, cols.key_of(a), "is missing in PostgreSQL")
            if a is None:
                raise Differs(table, cols.key_of(b),
                              "is in PostgreSQL but not in the SQLite store")
            # Python's == is exact across int, float and bool (1 == True, 2 == 2.0 and
            # never 2 == 2.0000000000000004): no cast needed to compare values
            if a != b:
                raise Differs(table, cols.key_of(a), _difference(cols, a, b))
            digest.update(repr(a).encode())
            n += 1
    return n, digest.hexdigest()


def _rows(cursor: sqlite3.Cursor, size: int) -> Iterator[tuple[Any, ...]]:
    while rows := cursor.fetchmany(size):
        yield from rows


def _difference(cols: _Columns, left: Sequence[Any], right: Sequence[Any]) -> str:
    if cols.key_of(left) != cols.key_of(right):
        return (f"is missing in PostgreSQL (or out of order there: it has "
                f"{_show_key(cols.key_of(right))} instead)")
    for name, a, b in zip(cols.names, left, right, strict=True):
        if a != b:
            return f"differs in column {name}: {_short(a)} in SQLite, {_short(b)} in PostgreSQL"
    return "differs"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_key(key: Any) -> str:
    parts = [_short(k) for k in key]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def _safe(exc: object, url: str) -> str:
    """``exc``'s text without the URL's password."""
    text = str(exc).strip()
    password = url_password(url)
    return text.replace(password, "***") if password else text
