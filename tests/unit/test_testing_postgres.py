"""Finding PostgreSQL's programs, and what the suite does without them (no server here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qjobd.testing.postgres import PostgresNotFound, find_bindir
from tests.conftest import _no_postgres

PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_isready")


def fake_bindir(path: Path, programs: tuple[str, ...] = PROGRAMS) -> Path:
    path.mkdir(parents=True)
    for name in programs:
        (path / name).write_text("#!/bin/sh\n")
        (path / name).chmod(0o755)
    return path


def test_the_newest_debian_version_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv("QJOBD_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    fake_bindir(tmp_path / "lib" / "9.6" / "bin")
    newest = fake_bindir(tmp_path / "lib" / "15" / "bin")
    fake_bindir(tmp_path / "lib" / "16" / "bin", PROGRAMS[:2])  # incomplete: not taken
    assert find_bindir(tmp_path / "lib") == newest


def test_the_environment_wins(tmp_path, monkeypatch):
    chosen = fake_bindir(tmp_path / "mine")
    fake_bindir(tmp_path / "lib" / "15" / "bin")
    monkeypatch.setenv("QJOBD_PG_BINDIR", str(chosen))
    assert find_bindir(tmp_path / "lib") == chosen


def test_none_found_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("QJOBD_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(PostgresNotFound, match="install Debian's package postgresql"):
        find_bindir(tmp_path / "lib")


def test_without_postgresql_the_tests_skip_but_fail_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        _no_postgres("no server")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _no_postgres("no server")
