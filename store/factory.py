"""Which store ``[daemon] database`` names, and opening it.

A path is an SQLite file (store/store.py, the embedded default); a ``postgresql://`` URL
is a PostgreSQL database (store/postgres.py, the ``postgresql`` extra). The URL carries
no password (libpq reads ``$PGPASSWORD`` or ``~/.pgpass``); one given anyway is masked
wherever the URL is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from qjobd.store.errors import StoreError

if TYPE_CHECKING:
    from qjobd.store.postgres import PostgresStore
    from qjobd.store.store import Store

    AnyStore: TypeAlias = Store | PostgresStore

__all__ = ["is_url", "mask_url", "open_store", "url_password"]

SCHEMES = ("postgresql://", "postgres://")


def is_url(database: object) -> bool:
    """Whether ``database`` names a PostgreSQL database (not an SQLite file)."""
    return isinstance(database, str) and database.startswith(SCHEMES)


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by ``***``: what logs and errors show."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:  # e.g. a port that is not a number: show nothing after the scheme
        return url.split("://", 1)[0] + "://***"
    return urlunsplit(parts._replace(netloc=netloc))


async def open_store(database: Path | str, *, check: str = "quick",
                     exclusive: bool = False) -> AnyStore:
    """Open the store ``database`` names.

    ``exclusive`` (PostgreSQL only; an SQLite file is locked by the service beside it):
    refuse to open a database another daemon serves.
    """
    if is_url(database):
        assert isinstance(database, str)
        try:
            from qjobd.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"{mask_url(database)}: PostgreSQL needs psycopg, which is not installed "
                f"({exc.name}): install qjobd's extra 'postgresql'") from None
        return await PostgresStore.open(database, check=check, exclusive=exclusive)
    from qjobd.store.store import Store

    return await Store.open(database, check=check)
