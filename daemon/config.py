"""Configuration: TOML file, environment overrides, and zero-config defaults.

Lookup order for the file: ``--config``, else ``$QJOBD_CONFIG``, else
``/etc/qjobd/qjobd.toml`` if present, else built-in defaults. ``QJOBD_SOCKET`` and
``QJOBD_DATABASE`` override those two settings whatever the file says.

``[daemon] database`` is a path (an SQLite file) or a ``postgresql://USER@HOST/DB`` URL
(the store in PostgreSQL; its password from ``$PGPASSWORD`` or ``~/.pgpass``, never here).
"""

from __future__ import annotations

import math
import os
import re
import socket as socketlib
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qjobd.errors import QjobdError
from qjobd.store.factory import is_url, mask_url

SYSTEM_CONFIG = Path("/etc/qjobd/qjobd.toml")


class ConfigError(QjobdError):
    """The configuration is invalid."""


def default_socket_path() -> Path:
    """Where the control socket lives when nothing says otherwise."""
    if runtime := os.environ.get("RUNTIME_DIRECTORY"):  # systemd RuntimeDirectory=
        return Path(runtime.split(":")[0]) / "qjobd.sock"
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "qjobd" / "qjobd.sock"
    if os.geteuid() == 0:
        return Path("/run/qjobd/qjobd.sock")
    return Path(f"/tmp/qjobd-{os.geteuid()}/qjobd.sock")


def default_database_path() -> Path:
    """Where the SQLite database lives when nothing says otherwise."""
    if state := os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(state.split(":")[0]) / "qjobd.sqlite3"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "qjobd" / "qjobd.sqlite3"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    socket: Path
    #: an SQLite file, or a PostgreSQL URL (a str starting with postgresql://)
    database: Path | str
    socket_mode: int = 0o660
    #: largest accepted request body, bytes
    max_request_bytes: int = 64 * 1024 * 1024
    #: deepest nesting of arrays and objects in a request body (a submission needs 2,
    #: plus whatever a backend's options nest)
    max_json_depth: int = 64
    #: JSON keys and values a request body may hold besides two for each circuit and tag
    #: the limits below allow: what the parser builds stays bounded
    max_json_values: int = 100_000
    #: most circuits in one batch (a backend may take fewer)
    max_circuits: int = 10_000
    #: longest circuit label, in characters
    max_label_length: int = 200
    #: a regular expression each label must match whole; "" takes any printable text
    label_pattern: str = ""
    #: most tags on a batch, and the longest tag key or value, in characters
    max_tags: int = 64
    max_tag_length: int = 500
    #: longest batch name, in characters
    max_name_length: int = 500
    #: largest ``metadata`` object of a batch, in bytes of compact JSON
    max_metadata_bytes: int = 64 * 1024
    #: most operations (gate calls, measurements, resets, barriers...) in one circuit
    max_operations: int = 1_000_000
    #: most qubits in one circuit on a backend that states no limit of its own
    #: ([backends.NAME] max_qubits, or what the backend knows of its target)
    max_qubits: int = 1024
    #: most classical bits in one circuit (the width of its counts' keys)
    max_clbits: int = 4096
    #: processes that parse submitted circuits; 0: one per core
    parse_workers: int = 0
    #: each parse worker's address-space limit, bytes; 0: none
    parse_worker_memory: int = 4 * 1024**3
    #: seconds a submission's circuits may take to check before it is refused (413)
    validation_timeout: int = 300
    log_level: str = "info"
    #: finished batches older than this many days are deleted; 0 keeps everything
    retention_days: float = 0.0
    #: seconds between two retention cleanups (the first runs at start)
    retention_interval: float = 3600.0
    #: this daemon's name among several on one PostgreSQL store ("": the host's name and
    #: the socket's path, ``node_name()``); unique per database
    node: str = ""
    #: seconds a node's job leases last unless renewed (renewed every third of it): a
    #: dead node's jobs pass to the others within this time
    lease_seconds: float = 15.0

    def node_name(self) -> str:
        """``node``, or the host's name and the socket's path."""
        return self.node or f"{socketlib.gethostname()}:{self.socket}"


@dataclass(frozen=True, slots=True)
class PollingConfig:
    """Per-job backoff: IonQ's helper schedule plus jitter."""

    initial_interval: float = 1.0
    backoff_factor: float = 1.5
    max_interval: float = 30.0
    jitter: float = 0.1
    #: when the provider predicts how long a job has left (IonQ's predicted wait and
    #: execution times), the next poll waits at least this fraction of it; 0 ignores them
    prediction_trust: float = 0.5
    #: ...but never longer than this many seconds on a prediction alone
    prediction_max_wait: float = 300.0
    #: after such a wait the job is near its predicted end: polled every
    #: ``max_interval`` times this (the polls the wait saved buy quicker detection)
    near_end_factor: float = 0.8


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    type: str
    #: requests per second for the whole backend; 0 means unlimited
    requests_per_second: float = 0.0
    polling: PollingConfig = field(default_factory=PollingConfig)
    #: every other key of the backend's table, passed to the backend as is
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig
    polling: PollingConfig
    backends: Mapping[str, BackendConfig]
    #: where the settings came from (a path, or "built-in defaults")
    source: str = "built-in defaults"

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, as ``check-config`` prints it."""
        out = asdict(self)
        out["daemon"]["socket"] = str(self.daemon.socket)
        out["daemon"]["database"] = (mask_url(self.daemon.database)
                                     if isinstance(self.daemon.database, str)
                                     else str(self.daemon.database))
        out["daemon"]["socket_mode"] = f"{self.daemon.socket_mode:04o}"
        out["daemon"]["node"] = self.daemon.node_name()  # the name it joins a cluster as
        return out


DEFAULT_BACKENDS: dict[str, dict[str, Any]] = {"local": {"type": "local"}}
#: polling defaults by backend type, under [polling]'s: a simulator's jobs take
#: milliseconds, so waiting a second for the first poll would be most of the latency
TYPE_POLLING: dict[str, dict[str, float]] = {"local": {"initial_interval": 0.05,
                                                       "max_interval": 1.0}}


def find_config_file(cli_path: str | os.PathLike[str] | None) -> Path | None:
    """The config file to read, or None for built-in defaults."""
    if cli_path:
        return Path(cli_path)
    if env := os.environ.get("QJOBD_CONFIG"):
        return Path(env)
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


def load_config(cli_path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration; raise ConfigError saying what is wrong where."""
    path = find_config_file(cli_path)
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are "
                              "UTF-8") from None
        source = str(path)
    return parse_config(raw, source=source)


def parse_config(raw: Mapping[str, Any], *, source: str = "built-in defaults") -> Config:
    """Build a Config from a parsed TOML document."""
    where = source
    _only_keys(raw, {"daemon", "polling", "backends"}, where, "top level")
    d = _table(raw, "daemon", where)
    _only_keys(d, {"socket", "database", "socket_mode", "max_request_bytes", "log_level",
                   "retention_days", "retention_interval", *_LIMITS, "label_pattern",
                   "node", "lease_seconds"},
               where, "[daemon]")
    socket = os.environ.get("QJOBD_SOCKET") or _str(d, "socket", where, "[daemon]")
    database = os.environ.get("QJOBD_DATABASE") or _str(d, "database", where, "[daemon]")
    mode_text = _str(d, "socket_mode", where, "[daemon]") or "0660"
    try:
        mode = int(mode_text, 8)
    except ValueError:
        msg = f"{where}: [daemon] socket_mode: {mode_text!r} is not an octal mode"
        raise ConfigError(msg) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{where}: [daemon] socket_mode: {mode_text!r} is out of range")
    max_bytes = _num(d, "max_request_bytes", where, "[daemon]", 64 * 1024 * 1024)
    if max_bytes != int(max_bytes) or not 1024 <= max_bytes <= 2**40:
        raise ConfigError(f"{where}: [daemon] max_request_bytes: must be a whole number of "
                          f"bytes from 1024, got {max_bytes!r}")
    limits = {key: _whole(d, key, where, low, high) for key, (low, high) in _LIMITS.items()}
    label_pattern = _str(d, "label_pattern", where, "[daemon]") or ""
    try:
        re.compile(label_pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: [daemon] label_pattern: not a regular expression: "
                          f"{exc}") from None
    log_level = _str(d, "log_level", where, "[daemon]") or "info"
    if log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigError(f"{where}: [daemon] log_level: {log_level!r} is not one of "
                          "debug, info, warning, error")
    retention_days = _num(d, "retention_days", where, "[daemon]", 0.0)
    if retention_days < 0:
        raise ConfigError(f"{where}: [daemon] retention_days: must be >= 0 days (0 keeps "
                          f"every batch forever), got {retention_days!r}")
    retention_interval = _num(d, "retention_interval", where, "[daemon]", 3600.0)
    if retention_interval <= 0:
        raise ConfigError(f"{where}: [daemon] retention_interval: must be > 0 seconds, "
                          f"got {retention_interval!r}")
    node = os.environ.get("QJOBD_NODE") or _str(d, "node", where, "[daemon]") or ""
    if len(node) > 200 or not node.isprintable():
        raise ConfigError(f"{where}: [daemon] node: a printable name of at most 200 "
                          f"characters, got {node[:40]!r}")
    lease_seconds = _num(d, "lease_seconds", where, "[daemon]", 15.0)
    if not 1 <= lease_seconds <= 3600:
        raise ConfigError(f"{where}: [daemon] lease_seconds: from 1 to 3600 seconds, got "
                          f"{lease_seconds!r}")
    daemon = DaemonConfig(
        node=node,
        lease_seconds=float(lease_seconds),
        socket=Path(socket) if socket else default_socket_path(),
        database=(database if is_url(database) else Path(database)) if database
        else default_database_path(),
        socket_mode=mode,
        max_request_bytes=int(max_bytes),
        label_pattern=label_pattern,
        **limits,
        log_level=log_level,
        retention_days=float(retention_days),
        retention_interval=float(retention_interval),
    )
    polling = _polling(_table(raw, "polling", where), PollingConfig(), where, "[polling]")
    tables = _table(raw, "backends", where) or DEFAULT_BACKENDS
    backends = {}
    for name, table in tables.items():
        ctx = f"[backends.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: {ctx} must be a table")
        btype = table.get("type")
        if not isinstance(btype, str) or not btype:
            raise ConfigError(f"{where}: {ctx} type: required, e.g. type = \"local\"")
        rps = _num(table, "requests_per_second", where, ctx, 0.0)
        if rps < 0:
            raise ConfigError(f"{where}: {ctx} requests_per_second: must be >= 0")
        base = polling
        if btype in TYPE_POLLING and "polling" not in raw:
            base = PollingConfig(**{**asdict(polling), **TYPE_POLLING[btype]})
        own_polling = _polling(_table(table, "polling", where, f"{ctx} polling"), base, where,
                               f"[backends.{name}.polling]")
        options = {k: v for k, v in table.items()
                   if k not in {"type", "requests_per_second", "polling"}}
        backends[name] = BackendConfig(name=name, type=btype, requests_per_second=float(rps),
                                       polling=own_polling, options=options)
    return Config(daemon=daemon, polling=polling, backends=backends, source=source)


#: [daemon]'s request limits (README "Limits"): the lowest and highest value each takes
_LIMITS: dict[str, tuple[int, int]] = {
    # json.loads recurses once per level; the scan before it keeps it under this
    "max_json_depth": (2, 512),
    "max_json_values": (100, 100_000_000),
    "max_circuits": (1, 10_000_000),
    "max_label_length": (1, 100_000),
    "max_tags": (0, 100_000),
    "max_tag_length": (1, 1_000_000),
    "max_name_length": (1, 1_000_000),
    # 0 refuses any metadata object
    "max_metadata_bytes": (0, 64 * 1024 * 1024),
    # the circuits' limits (README "Limits"), checked from the declarations first
    "max_operations": (1, 1_000_000_000),
    "max_qubits": (1, 1_000_000),
    "max_clbits": (1, 10_000_000),
    "parse_workers": (0, 1024),
    "parse_worker_memory": (0, 2**50),
    "validation_timeout": (1, 86_400),
}


def _whole(d: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    default = next(f.default for f in fields(DaemonConfig) if f.name == key)
    value = _num(d, key, where, "[daemon]", default)
    if value != int(value) or not low <= value <= high:
        raise ConfigError(f"{where}: [daemon] {key}: must be a whole number from {low} to "
                          f"{high}, got {value!r}")
    return int(value)


def _polling(t: Mapping[str, Any], base: PollingConfig, where: str, ctx: str) -> PollingConfig:
    _only_keys(t, {"initial_interval", "backoff_factor", "max_interval", "jitter",
                   "prediction_trust", "prediction_max_wait", "near_end_factor"}, where, ctx)
    p = PollingConfig(
        initial_interval=float(_num(t, "initial_interval", where, ctx, base.initial_interval)),
        backoff_factor=float(_num(t, "backoff_factor", where, ctx, base.backoff_factor)),
        max_interval=float(_num(t, "max_interval", where, ctx, base.max_interval)),
        jitter=float(_num(t, "jitter", where, ctx, base.jitter)),
        prediction_trust=float(_num(t, "prediction_trust", where, ctx, base.prediction_trust)),
        prediction_max_wait=float(_num(t, "prediction_max_wait", where, ctx,
                                       base.prediction_max_wait)),
        near_end_factor=float(_num(t, "near_end_factor", where, ctx, base.near_end_factor)),
    )
    if p.initial_interval <= 0 or p.max_interval < p.initial_interval:
        raise ConfigError(f"{where}: {ctx}: need 0 < initial_interval <= max_interval")
    if p.backoff_factor < 1:
        raise ConfigError(f"{where}: {ctx} backoff_factor: must be >= 1")
    if not 0 <= p.jitter < 1:
        raise ConfigError(f"{where}: {ctx} jitter: must be in [0, 1)")
    if not 0 <= p.prediction_trust <= 1:
        raise ConfigError(f"{where}: {ctx} prediction_trust: must be in [0, 1]")
    if p.prediction_max_wait < 0:
        raise ConfigError(f"{where}: {ctx} prediction_max_wait: must be >= 0")
    if not 0 < p.near_end_factor <= 1:
        raise ConfigError(f"{where}: {ctx} near_end_factor: must be in (0, 1]")
    return p


def _table(raw: Mapping[str, Any], key: str, where: str, name: str | None = None
           ) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {name or f'[{key}]'} must be a table")
    return value


def _only_keys(t: Mapping[str, Any], allowed: set[str], where: str, ctx: str) -> None:
    unknown = sorted(set(t) - allowed)
    if unknown:
        raise ConfigError(f"{where}: {ctx}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _str(t: Mapping[str, Any], key: str, where: str, ctx: str) -> str | None:
    value = t.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {ctx} {key}: must be a string, got {value!r}")
    return value


def _num(t: Mapping[str, Any], key: str, where: str, ctx: str, default: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ConfigError(f"{where}: {ctx} {key}: must be a finite number, got {value!r}")
    return value
