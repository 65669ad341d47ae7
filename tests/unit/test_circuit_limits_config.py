"""[daemon]'s circuit limits and parse workers: defaults, checks, check-config, the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qjobd.backends.local import DEFAULT_MAX_QUBITS, LocalBackend, memory_qubits
from qjobd.daemon.config import ConfigError, parse_config
from qjobd.daemon.process.main import main

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"max_operations": 1_000_000, "max_qubits": 1024, "max_clbits": 4096,
            "validation_timeout": 300, "parse_workers": 0, "parse_worker_memory": 4 * 1024**3}


def test_the_circuit_limits_default_to_the_documented_values() -> None:
    daemon = parse_config({}).to_dict()["daemon"]
    assert {k: daemon[k] for k in DEFAULTS} == DEFAULTS


@pytest.mark.parametrize(("key", "value"), [("max_operations", 0), ("max_qubits", 0),
                                            ("validation_timeout", 0), ("parse_workers", -1),
                                            ("max_clbits", 1.5)])
def test_a_bad_circuit_limit_is_a_config_error_naming_it(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"[daemon] {key}")):
        parse_config({"daemon": {key: value}})


@pytest.mark.parametrize("doc", ["README.md", "systemd/qjobd.toml"])
def test_every_circuit_limit_is_documented_with_its_default(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    for key, value in DEFAULTS.items():
        assert re.search(rf"^#?{key} = {value}(?=\s|$)", text, re.M), \
            f"{doc} does not show {key} = {value}"


def test_check_config_shows_each_backends_circuit_limits_and_their_source(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text("[daemon]\nmax_operations = 5000\n[backends.local]\ntype = \"local\"\n"
                    "max_qubits = 12\n")
    assert main(["check-config", "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["daemon"]["max_operations"] == 5000
    local = shown["circuit_limits"]["local"]
    assert (local["max_qubits"], local["max_operations"]) == (12, 5000)
    assert "[backends.local] max_qubits" in local["qubits_from"]


def test_the_local_backend_takes_no_wider_circuits_than_its_memory_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory_qubits(1) >= memory_qubits(64)
    monkeypatch.setattr("qjobd.backends.local.memory_qubits", lambda workers: 20)
    backend = LocalBackend("local", {"workers": 2})
    assert backend.capabilities.max_qubits == 20 < DEFAULT_MAX_QUBITS
    assert "memory" in backend.capabilities.max_qubits_reason
    # a configured value is the operator's call (MPS and stabilizer need little memory)
    assert LocalBackend("local", {"max_qubits": 40}).capabilities.max_qubits == 40
