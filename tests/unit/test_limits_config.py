"""[daemon]'s request limits (SPEC "Limits"): defaults, checks, check-config, and the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qjobd.daemon.config import ConfigError, parse_config
from qjobd.daemon.process.main import main

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"max_request_bytes": 64 * 1024 * 1024, "max_json_depth": 64,
            "max_json_values": 100_000, "max_circuits": 10_000,
            "max_label_length": 200, "label_pattern": "", "max_tags": 64,
            "max_tag_length": 500, "max_name_length": 500}


def test_the_limits_default_to_the_documented_values() -> None:
    daemon = parse_config({}).to_dict()["daemon"]
    assert {k: daemon[k] for k in DEFAULTS} == DEFAULTS


def test_each_limit_can_be_set() -> None:
    given = {"max_request_bytes": 4096, "max_json_depth": 8, "max_circuits": 3,
             "max_label_length": 10, "label_pattern": "[a-z]+", "max_tags": 0,
             "max_tag_length": 7, "max_name_length": 9}
    daemon = parse_config({"daemon": given}).to_dict()["daemon"]
    assert {k: daemon[k] for k in given} == given


@pytest.mark.parametrize(("key", "value", "words"), [
    ("max_json_depth", 1, "from 2 to 512"),
    ("max_json_depth", 513, "from 2 to 512"),
    ("max_circuits", 0, "from 1"),
    ("max_circuits", 2.5, "whole number"),
    ("max_label_length", "long", "finite number"),
    ("max_tags", -1, "from 0"),
    ("label_pattern", "(", "not a regular expression"),
    ("label_pattern", 5, "must be a string"),
])
def test_a_bad_limit_is_a_config_error_naming_it(key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"[daemon] {key}")) as caught:
        parse_config({"daemon": {key: value}})
    assert words in str(caught.value)


def test_check_config_shows_the_limits(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text("[daemon]\nmax_circuits = 500\nmax_json_depth = 16\n")
    assert main(["check-config", "--config", str(path)]) == 0
    daemon = json.loads(capsys.readouterr().out)["daemon"]
    assert (daemon["max_circuits"], daemon["max_json_depth"]) == (500, 16)
    assert daemon["max_label_length"] == 200
    assert main(["check-config", "--config", str(path), "--get", "daemon.max_circuits"]) == 0
    assert capsys.readouterr().out.strip() == "500"


@pytest.mark.parametrize("doc", ["README.md", "systemd/qjobd.toml"])
def test_every_limit_is_documented_with_its_default(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    for key, value in DEFAULTS.items():
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        assert re.search(rf"^#?{key} = {re.escape(shown)}(?=\s|$)", text, re.M), \
            f"{doc} does not show {key} = {shown}"
