"""Which store ``[daemon] database`` names, and how its URL is shown (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qjobd.daemon.config import parse_config
from qjobd.store.factory import is_url, mask_url, url_password


@pytest.mark.parametrize(("value", "url"), [
    ("postgresql://qjobd@db.example/qjobd", True),
    ("postgres://qjobd@db.example/qjobd", True),
    ("/var/lib/qjobd/qjobd.sqlite3", False),
    ("postgresql.sqlite3", False),
    (Path("postgresql://x"), False),  # a Path is a file, whatever its name
])
def test_a_url_names_postgresql_anything_else_a_file(value, url):
    assert is_url(value) is url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://qjobd@db/qjobd", "postgresql://qjobd@db/qjobd"),
    ("postgresql://qjobd:hunter22@db:5433/qjobd?sslmode=require",
     "postgresql://qjobd:***@db:5433/qjobd?sslmode=require"),
    ("postgresql://qjobd:p%40ss@[::1]/qjobd", "postgresql://qjobd:***@[::1]/qjobd"),
    ("postgresql://qjobd:hunter22@db:notaport/qjobd", "postgresql://***"),
])
def test_the_password_of_a_url_is_masked(url, shown):
    assert mask_url(url) == shown
    assert "hunter22" not in mask_url(url)


def test_url_password():
    assert url_password("postgresql://u:pw@h/d") == "pw"
    assert url_password("postgresql://u@h/d") is None


def test_the_configuration_keeps_a_url_as_written_and_shows_it_masked(monkeypatch):
    monkeypatch.delenv("QJOBD_DATABASE", raising=False)
    cfg = parse_config({"daemon": {"database": "postgresql://qjobd:hunter22@db/qjobd"}})
    assert cfg.daemon.database == "postgresql://qjobd:hunter22@db/qjobd"  # not a Path
    assert cfg.to_dict()["daemon"]["database"] == "postgresql://qjobd:***@db/qjobd"
    monkeypatch.setenv("QJOBD_DATABASE", "postgresql://qjobd@elsewhere/qjobd")
    assert parse_config({}).daemon.database == "postgresql://qjobd@elsewhere/qjobd"
    monkeypatch.setenv("QJOBD_DATABASE", "/srv/q.sqlite3")
    assert parse_config({}).daemon.database == Path("/srv/q.sqlite3")
