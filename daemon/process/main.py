"""``qjobd``: the daemon's command line.

    qjobd serve [--config PATH]          run in the foreground (systemd-friendly:
                                         Type=notify, watchdog, socket activation;
                                         SIGHUP reloads the configuration)
    qjobd check-config [--config PATH] [--get KEY]
                                         validate and print the effective configuration
                                         (--get daemon.socket: that one value, e.g.
                                         for `curl --unix-socket`)
    qjobd backup [--config PATH] [--database PATH] DEST
                                         a consistent copy of the database, safe while
                                         the daemon runs (SQLite's online backup)
    qjobd migrate-store [--config PATH] [--from PATH] --to postgresql://USER@HOST/DB
                                         copy an SQLite store (the daemon stopped) into
                                         an empty PostgreSQL database, checked row by row
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvloop

from qjobd.backends.base import Backend
from qjobd.backends.registry import UnknownBackendType, backend_class
from qjobd.daemon.api.app import VERSION
from qjobd.daemon.api.server import SocketInUse
from qjobd.daemon.api.validation import circuit_plan
from qjobd.daemon.config import Config, ConfigError, load_config
from qjobd.daemon.process import logs, migrate_store
from qjobd.daemon.process.systemd import ActivationError
from qjobd.store.errors import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qjobd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qjobd {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the daemon in the foreground"),
                       ("check-config", "validate and print the effective configuration")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", metavar="PATH", help="the TOML configuration file")
        if name == "check-config":
            p.add_argument("--get", metavar="KEY",
                           help="print only this setting, a dotted path into the printed "
                                "configuration (e.g. daemon.socket); text as is, tables "
                                "as JSON")
    text = "copy the database consistently, even while the daemon runs"
    p = sub.add_parser("backup", help=text, description=text + (
        ". The copy is written beside DEST and renamed into place once it is complete "
        "and has passed an integrity check."))
    p.add_argument("--config", metavar="PATH", help="the TOML configuration file")
    p.add_argument("--database", metavar="PATH",
                   help="the database to copy (default: the configuration's)")
    p.add_argument("destination", metavar="DEST", help="the file to write")
    migrate_store.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        backends = check_backends(config)
    except ConfigError as exc:
        print(f"qjobd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        return print_config(config, args.get, backends)
    if args.command == "backup":
        return backup(Path(args.database or config.daemon.database), Path(args.destination))
    if args.command == "migrate-store":
        return migrate_store.run(args, config)
    logs.configure(config.daemon.log_level)
    from qjobd.daemon.process import service  # after logging is configured

    try:
        # uvloop: the same asyncio, its loop in C; about 10% less CPU per job (benchmarks.md)
        uvloop.run(service.run(config, config_path=args.config))
    except (StoreError, SocketInUse, ActivationError, service.CoreTaskFailed) as exc:
        print(f"qjobd: {exc}", file=sys.stderr)
        return 1
    return 0


def print_config(config: Config, key: str | None,
                 backends: Mapping[str, Backend] | None = None) -> int:
    """``check-config``: the effective configuration as JSON, or one setting of it.

    With ``backends``, also each one's effective circuit limits (``circuit_limits``):
    what its circuits are checked against, and where each limit comes from.
    """
    value: Any = config.to_dict()
    if backends:
        value["circuit_limits"] = {name: circuit_limits(backend, config)
                                   for name, backend in backends.items()}
    if key is None:
        print(json.dumps(value, indent=2))
        return 0
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            where = ".".join(walked) or "the top level"
            about = (f"{where} has: {', '.join(map(str, value))}" if isinstance(value, dict)
                     else f"{where} is a single value")
            print(f"qjobd: check-config: no setting {key!r} ({about})", file=sys.stderr)
            return 2
        walked.append(part)
        value = value[part]
    print(value if isinstance(value, str) else json.dumps(value, indent=2))
    return 0


def backup(database: Path, destination: Path) -> int:
    from qjobd.store.backup import backup as copy_database

    try:
        size = copy_database(database, destination)
    except StoreError as exc:
        print(f"qjobd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qjobd: backup to {destination} failed: {exc}", file=sys.stderr)
        return 1
    print(f"qjobd: copied {database} to {destination} ({size:,} bytes)")
    return 0


def circuit_limits(backend: Backend, config: Config) -> dict[str, Any]:
    plan = circuit_plan(backend, config.daemon)
    return {"max_qubits": plan.limits.max_qubits, "max_clbits": plan.limits.max_clbits,
            "max_operations": plan.limits.max_operations,
            "qubits_from": plan.sources["qubits"],
            **_estimate_limits(backend),
            "qasm_versions": sorted(plan.versions),
            "sent_as_written_when_qiskit_cannot_import": sorted(plan.provider_parsed)}


def _estimate_limits(backend: Backend) -> dict[str, Any]:
    """A simulator's limit on each circuit's estimated simulation (README "Limits")."""
    model = backend.capabilities.simulation_cost
    if model is None:
        return {}
    return {"max_estimated_seconds": model.max_seconds,
            "seconds_per_amplitude_op": model.seconds_per_amplitude_op,
            "estimated_seconds_from": circuit_plan(backend).sources["estimated seconds"]}


def check_backends(config: Config) -> dict[str, Backend]:
    """Every configured backend's type must be installed and accept its options."""
    backends = {}
    for name, bc in config.backends.items():
        try:
            cls = backend_class(bc.type)
        except UnknownBackendType as exc:
            raise ConfigError(f"{config.source}: [backends.{name}] {exc}") from None
        try:
            backends[name] = cls(name, bc.options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{config.source}: [backends.{name}] {exc}") from None
    return backends


if __name__ == "__main__":
    sys.exit(main())
