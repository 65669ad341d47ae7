"""Configuration: file lookup, environment overrides, zero-config defaults, and errors
that name the file and the key (SPEC "Config")."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from qjobd.daemon import config as config_mod
from qjobd.daemon.config import (
    BackendConfig,
    ConfigError,
    PollingConfig,
    default_database_path,
    default_socket_path,
    load_config,
    parse_config,
)
from qjobd.daemon.process.main import main

SPEC_POLLING = PollingConfig(initial_interval=1.0, backoff_factor=1.5, max_interval=30.0,
                             jitter=0.1)
ENV_VARS = ("QJOBD_CONFIG", "QJOBD_SOCKET", "QJOBD_DATABASE", "RUNTIME_DIRECTORY",
            "STATE_DIRECTORY", "XDG_RUNTIME_DIR", "XDG_STATE_HOME")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient configuration: none of our variables, and no system file."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "etc" / "absent.toml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- zero config ---------------------------------------------------------------------------


def test_zero_config_gives_one_local_backend_and_the_spec_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    cfg = load_config()

    assert cfg.source == "built-in defaults"
    assert cfg.daemon.socket == tmp_path / "run" / "qjobd" / "qjobd.sock"
    assert cfg.daemon.database == tmp_path / "state" / "qjobd" / "qjobd.sqlite3"
    assert cfg.daemon.socket_mode == 0o660
    assert cfg.daemon.max_request_bytes == 64 * 1024 * 1024
    assert cfg.daemon.log_level == "info"
    assert cfg.polling == SPEC_POLLING
    assert list(cfg.backends) == ["local"]
    local = cfg.backends["local"]
    assert local.type == "local"
    assert local.requests_per_second == 0.0  # unlimited
    assert dict(local.options) == {}


def test_an_empty_file_is_the_same_as_no_file(tmp_path):
    cfg = load_config(write(tmp_path / "empty.toml", ""))
    assert cfg.source == str(tmp_path / "empty.toml")
    assert list(cfg.backends) == ["local"]
    assert cfg.polling == SPEC_POLLING


# -- where the file comes from -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "env", "system", "winner"),
    [
        (True, True, True, "cli"),
        (False, True, True, "env"),
        (False, False, True, "system"),
        (False, False, False, None),
    ],
)
def test_file_lookup_order(monkeypatch, tmp_path, cli, env, system, winner):
    files = {name: write(tmp_path / f"{name}.toml", f'[daemon]\nsocket = "/{name}.sock"\n')
             for name in ("cli", "env", "system")}
    if env:
        monkeypatch.setenv("QJOBD_CONFIG", str(files["env"]))
    if system:
        monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", files["system"])

    cfg = load_config(files["cli"] if cli else None)

    if winner is None:
        assert cfg.source == "built-in defaults"
        assert cfg.daemon.socket == default_socket_path()
    else:
        assert cfg.source == str(files[winner])
        assert cfg.daemon.socket == Path(f"/{winner}.sock")


def test_a_named_file_that_is_missing_is_an_error_not_the_defaults(monkeypatch, tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file") as cli_err:
        load_config(missing)
    assert str(missing) in str(cli_err.value)

    monkeypatch.setenv("QJOBD_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="no such file") as env_err:
        load_config()
    assert str(missing) in str(env_err.value)


def test_an_unreadable_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as err:
        load_config(tmp_path)  # a directory
    assert str(tmp_path) in str(err.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path / "broken.toml", "[daemon\nsocket = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\nsocket = "/run/caf\xe9.sock"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


# -- environment overrides and default paths -----------------------------------------------


def test_env_overrides_the_files_socket_and_database(monkeypatch, tmp_path):
    path = write(tmp_path / "q.toml",
                 '[daemon]\nsocket = "/file.sock"\ndatabase = "/file.sqlite3"\n')
    monkeypatch.setenv("QJOBD_SOCKET", "/env.sock")
    monkeypatch.setenv("QJOBD_DATABASE", "/env.sqlite3")

    cfg = load_config(path)

    assert cfg.daemon.socket == Path("/env.sock")
    assert cfg.daemon.database == Path("/env.sqlite3")


def test_each_override_is_independent_and_works_without_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("QJOBD_SOCKET", "/env.sock")
    cfg = load_config()
    assert cfg.daemon.socket == Path("/env.sock")
    assert cfg.daemon.database == tmp_path / "state" / "qjobd" / "qjobd.sqlite3"


def test_systemd_directories_win_over_xdg(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/xdg-run")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg-state")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/qjobd")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/qjobd")

    cfg = load_config()

    assert cfg.daemon.socket == Path("/run/qjobd/qjobd.sock")
    assert cfg.daemon.database == Path("/var/lib/qjobd/qjobd.sqlite3")


def test_systemd_directory_lists_use_the_first_entry(monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/qjobd:/run/other")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/qjobd:/var/lib/other")
    assert default_socket_path() == Path("/run/qjobd/qjobd.sock")
    assert default_database_path() == Path("/var/lib/qjobd/qjobd.sqlite3")


def test_xdg_directories_get_a_qjobd_subdirectory(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert default_socket_path() == Path("/run/user/1000/qjobd/qjobd.sock")
    assert default_database_path() == Path("/home/u/.state/qjobd/qjobd.sqlite3")


def test_without_any_directory_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(config_mod.os, "geteuid", lambda: 1000)
    assert default_socket_path() == Path("/tmp/qjobd-1000/qjobd.sock")
    assert default_database_path() == tmp_path / ".local" / "state" / "qjobd" / "qjobd.sqlite3"
    monkeypatch.setattr(config_mod.os, "geteuid", lambda: 0)
    assert default_socket_path() == Path("/run/qjobd/qjobd.sock")


# -- errors say file and key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        # unknown keys
        ('[deamon]\nsocket = "/s"\n', ["top level", "deamon"]),
        ('[daemon]\nsockets = "/s"\n', ["[daemon]", "sockets"]),
        ("[polling]\ninitial = 1.0\n", ["[polling]", "initial"]),
        ('[backends.b]\ntype = "local"\n[backends.b.polling]\nfactor = 2\n',
         ["[backends.b.polling]", "factor"]),
        # wrong types
        ("daemon = 5\n", ["[daemon]", "table"]),
        ("[daemon]\nsocket = 5\n", ["[daemon] socket", "string"]),
        ("[daemon]\ndatabase = ['/a']\n", ["[daemon] database", "string"]),
        ("[daemon]\nmax_request_bytes = '1MB'\n", ["[daemon] max_request_bytes", "number"]),
        ('[polling]\nmax_interval = "30"\n', ["[polling] max_interval", "number"]),
        ("[polling]\njitter = true\n", ["[polling] jitter", "number"]),
        ("[backends]\nb = 5\n", ["[backends.b]", "table"]),
        ('[backends.b]\ntype = "local"\nrequests_per_second = "10"\n',
         ["[backends.b] requests_per_second", "number"]),
        # bad socket_mode
        ('[daemon]\nsocket_mode = "rw-rw----"\n', ["[daemon] socket_mode", "octal"]),
        ('[daemon]\nsocket_mode = "0999"\n', ["[daemon] socket_mode", "octal"]),
        ('[daemon]\nsocket_mode = "1777"\n', ["[daemon] socket_mode", "range"]),
        ("[daemon]\nsocket_mode = 0o660\n", ["[daemon] socket_mode", "string"]),
        ('[daemon]\nlog_level = "verbose"\n', ["[daemon] log_level", "verbose"]),
        # negative budget
        ('[backends.b]\ntype = "local"\nrequests_per_second = -1\n',
         ["[backends.b] requests_per_second", ">= 0"]),
        # bad polling values
        ("[polling]\ninitial_interval = 0\n", ["[polling]", "initial_interval"]),
        ("[polling]\ninitial_interval = -1.0\n", ["[polling]", "initial_interval"]),
        ("[polling]\ninitial_interval = 5.0\nmax_interval = 2.0\n",
         ["[polling]", "max_interval"]),
        ("[polling]\nbackoff_factor = 0.5\n", ["[polling] backoff_factor", ">= 1"]),
        ("[polling]\njitter = 1.0\n", ["[polling] jitter"]),
        ("[polling]\njitter = -0.1\n", ["[polling] jitter"]),
        ("[polling]\nprediction_trust = 1.5\n", ["[polling] prediction_trust", "[0, 1]"]),
        ("[polling]\nprediction_max_wait = -1\n", ["[polling] prediction_max_wait", ">= 0"]),
        ("[polling]\nnear_end_factor = 0\n", ["[polling] near_end_factor", "(0, 1]"]),
        ('[backends.b]\ntype = "ionq"\n[backends.b.polling]\nprediction_trust = "half"\n',
         ["[backends.b.polling] prediction_trust", "number"]),
        ('[backends.b]\ntype = "local"\n[backends.b.polling]\nbackoff_factor = 0.9\n',
         ["[backends.b.polling]", "backoff_factor", ">= 1"]),
        # backend without a type
        ('[backends.b]\ntarget = "simulator"\n', ["[backends.b] type", "required"]),
        ('[backends.b]\ntype = ""\n', ["[backends.b] type", "required"]),
        ("[backends.b]\ntype = 3\n", ["[backends.b] type"]),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, toml, expected):
    path = write(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_a_backend_polling_that_is_not_a_table_names_the_backend(tmp_path):
    path = write(tmp_path / "bad.toml", '[backends.b]\ntype = "local"\npolling = 5\n')
    with pytest.raises(ConfigError, match=r"\[backends\.b\] polling must be a table"):
        load_config(path)


@pytest.mark.parametrize(
    "toml",
    [
        "[polling]\ninitial_interval = nan\n",
        "[polling]\nbackoff_factor = nan\n",
        "[polling]\nmax_interval = nan\n",
        '[backends.b]\ntype = "local"\nrequests_per_second = nan\n',
    ],
)
def test_nan_is_not_a_valid_number(tmp_path, toml):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path / "nan.toml", toml))


def test_max_request_bytes_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max_request_bytes"):
        load_config(write(tmp_path / "neg.toml", "[daemon]\nmax_request_bytes = -5\n"))


# -- backends and their polling ------------------------------------------------------------


def test_socket_mode_is_read_as_octal():
    cfg = parse_config({"daemon": {"socket_mode": "0600"}})
    assert cfg.daemon.socket_mode == 0o600


def test_extra_backend_keys_land_in_options():
    cfg = parse_config({"backends": {
        "ionq": {"type": "ionq", "base_url": "https://api.ionq.co/v0.4",
                 "api_key_env": "IONQ_API_KEY", "target": "simulator",
                 "requests_per_second": 10},
        "ionq-fake": {"type": "ionq", "base_url": "http://127.0.0.1:9999"},
    }})
    ionq = cfg.backends["ionq"]
    assert ionq == BackendConfig(
        name="ionq", type="ionq", requests_per_second=10.0, polling=SPEC_POLLING,
        options={"base_url": "https://api.ionq.co/v0.4", "api_key_env": "IONQ_API_KEY",
                 "target": "simulator"})
    assert isinstance(ionq.requests_per_second, float)
    # several backends of one type under different names
    assert cfg.backends["ionq-fake"].type == "ionq"
    assert dict(cfg.backends["ionq-fake"].options) == {"base_url": "http://127.0.0.1:9999"}


def test_a_backends_polling_overrides_inherit_the_global_polling():
    top = {"initial_interval": 2.0, "backoff_factor": 2.0, "max_interval": 60.0, "jitter": 0.2}
    cfg = parse_config({
        "polling": top,
        "backends": {
            "plain": {"type": "ionq"},
            "tuned": {"type": "ionq", "polling": {"max_interval": 10.0,
                                                  "prediction_trust": 0.0}},
        },
    })
    assert cfg.polling == PollingConfig(**top)
    assert cfg.backends["plain"].polling == cfg.polling
    assert cfg.backends["tuned"].polling == PollingConfig(2.0, 2.0, 10.0, 0.2,
                                                          prediction_trust=0.0)
    assert "polling" not in cfg.backends["tuned"].options


def test_local_type_polling_defaults_apply_without_a_polling_table():
    cfg = parse_config({"backends": {"sim": {"type": "local"}, "cloud": {"type": "ionq"}}})
    local_defaults = PollingConfig(**{**asdict(SPEC_POLLING), **config_mod.TYPE_POLLING["local"]})
    assert cfg.backends["sim"].polling == local_defaults
    assert local_defaults.initial_interval < SPEC_POLLING.initial_interval
    assert cfg.backends["cloud"].polling == SPEC_POLLING
    assert cfg.polling == SPEC_POLLING


def test_local_type_polling_defaults_do_not_apply_when_polling_is_given():
    cfg = parse_config({"polling": {"jitter": 0.2},
                        "backends": {"sim": {"type": "local"}}})
    assert cfg.backends["sim"].polling == PollingConfig(1.0, 1.5, 30.0, 0.2)


def test_a_local_backends_own_polling_builds_on_the_type_defaults():
    cfg = parse_config({"backends": {"sim": {"type": "local",
                                             "polling": {"max_interval": 0.5}}}})
    p = cfg.backends["sim"].polling
    assert p.initial_interval == config_mod.TYPE_POLLING["local"]["initial_interval"]
    assert p.max_interval == 0.5


# -- qjobd check-config ---------------------------------------------------------------------


def test_check_config_prints_the_effective_config_as_json(capsys, monkeypatch, tmp_path):
    path = write(tmp_path / "q.toml", """
[daemon]
socket = "/run/q/q.sock"
database = "/var/lib/q/q.sqlite3"
socket_mode = "0600"
[polling]
max_interval = 20.0
[backends.sim]
type = "local"
workers = 1
requests_per_second = 5
""")
    monkeypatch.setenv("QJOBD_DATABASE", "/env/q.sqlite3")

    assert main(["check-config", "--config", str(path)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    doc = json.loads(out)
    assert doc["source"] == str(path)
    assert doc["daemon"]["socket"] == "/run/q/q.sock"
    assert doc["daemon"]["database"] == "/env/q.sqlite3"
    assert doc["daemon"]["socket_mode"] == "0600"
    assert doc["polling"]["max_interval"] == 20.0
    sim = doc["backends"]["sim"]
    assert sim["type"] == "local"
    assert sim["requests_per_second"] == 5.0
    assert sim["options"] == {"workers": 1}
    assert sim["polling"]["max_interval"] == 20.0


def test_check_config_without_a_file_prints_the_defaults(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert main(["check-config"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "built-in defaults"
    assert list(doc["backends"]) == ["local"]
    assert doc["daemon"]["socket"] == str(tmp_path / "qjobd" / "qjobd.sock")


def test_check_config_follows_qjobd_config(capsys, monkeypatch, tmp_path):
    path = write(tmp_path / "env.toml", '[daemon]\nlog_level = "debug"\n')
    monkeypatch.setenv("QJOBD_CONFIG", str(path))
    assert main(["check-config"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == str(path)
    assert doc["daemon"]["log_level"] == "debug"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[polling]\nbackoff_factor = 0.5\n", "[polling] backoff_factor"),
        ('[backends.q]\ntype = "nosuch"\n', "[backends.q]"),
        ('[backends.sim]\ntype = "local"\ncolour = "red"\n', "[backends.sim]"),
        ("[daemon\n", "invalid TOML"),
    ],
    ids=["bad-value", "type-not-installed", "backend-rejects-option", "invalid-toml"],
)
def test_check_config_exits_2_with_the_message_on_stderr(capsys, tmp_path, toml, expected):
    path = write(tmp_path / "bad.toml", toml)

    assert main(["check-config", "--config", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("qjobd: configuration error: ")
    assert str(path) in err
    assert expected in err


def test_check_config_names_the_missing_type(capsys, tmp_path):
    path = write(tmp_path / "q.toml", '[backends.q]\ntype = "nosuch"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'nosuch'" in err
    assert "local" in err  # what is installed


def test_check_config_with_a_missing_file_exits_2(capsys, tmp_path):
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_config_get_prints_one_setting_for_scripts(capsys, monkeypatch, tmp_path):
    # README: SOCK=$(qjobd check-config --get daemon.socket); curl --unix-socket "$SOCK" ...
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert main(["check-config", "--get", "daemon.socket"]) == 0
    assert capsys.readouterr() == (str(tmp_path / "qjobd" / "qjobd.sock") + "\n", "")

    path = write(tmp_path / "q.toml", '[daemon]\nsocket = "/run/q/q.sock"\n')
    monkeypatch.setenv("QJOBD_CONFIG", str(path))
    assert main(["check-config", "--get", "daemon.socket"]) == 0
    assert capsys.readouterr().out == "/run/q/q.sock\n"
    monkeypatch.setenv("QJOBD_SOCKET", "/env/q.sock")  # as qjobctl and the daemon see it
    assert main(["check-config", "--get", "daemon.socket"]) == 0
    assert capsys.readouterr().out == "/env/q.sock\n"

    assert main(["check-config", "--get", "polling.max_interval"]) == 0
    assert capsys.readouterr().out == "30.0\n"
    assert main(["check-config", "--get", "backends.local.polling"]) == 0
    assert json.loads(capsys.readouterr().out)["max_interval"] == 1.0


@pytest.mark.parametrize(("key", "expected"), [
    ("daemon.sockt", "no setting 'daemon.sockt' (daemon has: socket, database"),
    ("daemon.socket.path", "(daemon.socket is a single value)"),
    ("nosuch", "(the top level has: daemon, polling, backends"),
])
def test_check_config_get_of_an_unknown_key_exits_2_naming_what_exists(capsys, key,
                                                                        expected):
    assert main(["check-config", "--get", key]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("qjobd: check-config: ") and expected in err


def test_a_node_is_named_after_its_host_and_socket_unless_told(monkeypatch):
    """Several daemons on one PostgreSQL store: each joins under a name of its own."""
    import socket

    monkeypatch.delenv("QJOBD_NODE", raising=False)
    monkeypatch.delenv("QJOBD_SOCKET", raising=False)
    config = parse_config({"daemon": {"socket": "/run/q/a.sock"}})
    assert config.daemon.node_name() == f"{socket.gethostname()}:/run/q/a.sock"
    assert config.daemon.lease_seconds == 15.0  # SPEC's default
    named = parse_config({"daemon": {"node": "login1", "lease_seconds": 5}})
    assert (named.daemon.node_name(), named.daemon.lease_seconds) == ("login1", 5.0)
    assert named.to_dict()["daemon"]["node"] == "login1"
    monkeypatch.setenv("QJOBD_NODE", "from-env")
    assert parse_config({"daemon": {"node": "login1"}}).daemon.node_name() == "from-env"


@pytest.mark.parametrize("lease", [0, 0.5, 3601, "15"])
def test_a_lease_time_out_of_range_is_refused_naming_the_key(lease):
    with pytest.raises(ConfigError, match=r"lease_seconds"):
        parse_config({"daemon": {"lease_seconds": lease}})
