"""``qjobd migrate-store --to postgresql://...``: the command around store/migrate.py.

Exit status: 0 copied (or found copied) and equal row by row; 1 refused or failed (the
message says why; a rerun resumes); 2 a usage or configuration error; 3 the check found a
difference (the message names the table and the first differing key).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qjobd.daemon.config import Config
from qjobd.daemon.process import logs
from qjobd.store.errors import StoreError
from qjobd.store.factory import is_url, mask_url

__all__ = ["add_parser", "run"]

DIFFERS = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "copy an SQLite store into an empty PostgreSQL database, checked row by row"
    p = sub.add_parser("migrate-store", help=text, description=text + (
        ". The daemon must be stopped. An interrupted copy is resumed by running the same "
        "command again; a finished one is checked again. Exit status: 0 equal, 1 refused "
        "or failed, 2 usage, 3 a difference found."))
    p.add_argument("--config", metavar="PATH", help="the TOML configuration file")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="the SQLite store (default: the configuration's [daemon] database)")
    p.add_argument("--to", dest="target", metavar="URL", required=True,
                   help="postgresql://USER@HOST/DB; the password from $PGPASSWORD or "
                        "~/.pgpass, not the URL")
    p.add_argument("--chunk-rows", type=int, default=5000, metavar="N",
                   help="rows per transaction (default 5000)")


def run(args: argparse.Namespace, config: Config) -> int:
    if not is_url(args.target):
        print(f"qjobd: migrate-store: --to must be a postgresql:// URL, not "
              f"{mask_url(args.target)!r}", file=sys.stderr)
        return 2
    source = args.source or config.daemon.database
    if is_url(source):
        print("qjobd: migrate-store: the configured database is already a PostgreSQL URL: "
              "name the SQLite store with --from PATH", file=sys.stderr)
        return 2
    if args.chunk_rows < 1:
        print("qjobd: migrate-store: --chunk-rows must be at least 1", file=sys.stderr)
        return 2
    logs.configure(config.daemon.log_level)
    try:
        from qjobd.store.migrate import Differs, migrate
    except ImportError as exc:
        print(f"qjobd: migrate-store needs psycopg, which is not installed ({exc.name}): "
              "install qjobd's extra 'postgresql'", file=sys.stderr)
        return 1
    target = mask_url(args.target)
    print(f"qjobd: migrate-store: {source} -> {target}", flush=True)
    try:
        report = migrate(Path(source), args.target, chunk_rows=args.chunk_rows)
    except Differs as exc:
        print(f"qjobd: migrate-store: the copy differs: {exc}", file=sys.stderr)
        return DIFFERS
    except StoreError as exc:
        print(f"qjobd: migrate-store: {exc}", file=sys.stderr)
        return 1
    if report.outcome == "in use since":
        print(f"qjobd: {target} holds a finished migration of {report.source}, and has been "
              "served on since (it has events the store has not): nothing to do")
        return 0
    for line in report.lines():
        print(line)
    return 0
