"""The README and docs/ work for a newcomer on a fresh clone: every command shown runs as
written, and nothing points at a file the clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qjobd.daemon import config as config_mod
from qjobd.daemon.process.main import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _shell_lines(text: str) -> list[str]:
    """The lines of every ```sh block, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_point_at_nothing_outside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    # ../x, not an ellipsis such as GET .../results
    assert not re.search(r"(?<!\.)\.\./", text), f"{doc.name} points outside the clone"
    assert "SPEC.md" not in text


def test_readme_sets_sock_before_curl_uses_it():
    lines = _shell_lines(README.read_text(encoding="utf-8"))
    uses = [i for i, line in enumerate(lines) if "$SOCK" in line]
    sets = [i for i, line in enumerate(lines) if line.startswith("SOCK=")]
    assert uses and sets and sets[0] < uses[0]


def test_readme_shows_how_to_get_the_commands_on_path_before_using_them_bare():
    lines = _shell_lines(README.read_text(encoding="utf-8"))
    bare = [i for i, line in enumerate(lines)
            if re.match(r"(SOCK=\$\()?(qjobctl|qjobd) ", line)]
    activate = [i for i, line in enumerate(lines) if line.startswith(". .venv/bin/activate")]
    assert bare and activate and activate[0] < bare[0]


def test_the_readmes_socket_lookup_prints_the_default_socket(capsys, monkeypatch, tmp_path):
    [command] = re.findall(r"SOCK=\$\(qjobd (check-config [^)]*)\)",
                           README.read_text(encoding="utf-8"))
    for var in ("QJOBD_CONFIG", "QJOBD_SOCKET", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "absent.toml")

    assert main(command.split()) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'qjobd' / 'qjobd.sock'}\n"
