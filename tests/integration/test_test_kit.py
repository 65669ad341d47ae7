"""qjobd.testing is a kit beside the daemon, not a part of it: importing the daemon or the
backends never loads it (nor pytest), and its pytest-free parts load without pytest."""

from __future__ import annotations

import subprocess
import sys

import qjobd.testing

WALK = """
import importlib, pkgutil, sys
import qjobd, qjobd.client, qjobd.errors
for pkg in ("qjobd.daemon", "qjobd.backends", "qjobd.store"):
    module = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), pkg + "."):
        if not info.name.endswith(("__main__", "_aer_worker")):
            importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.startswith(("qjobd.testing", "pytest", "_pytest")))
print(" ".join(loaded))
"""

PYTEST_FREE = """
import sys
from qjobd.testing import DaemonProcess, FakeIonQ, FakeQoro, FakeServer, ScriptedBackend
import qjobd.testing.fake_ionq, qjobd.testing.fake_qoro, qjobd.testing.daemon_process
print(" ".join(sorted(m for m in sys.modules if m.startswith(("pytest", "_pytest")))))
"""


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_every_module_of_the_daemon_loads_neither_the_kit_nor_pytest():
    assert _python(WALK) == ""


def test_the_fakes_and_the_scripted_backend_load_without_pytest():
    assert _python(PYTEST_FREE) == ""


def test_every_name_the_kit_declares_is_there():
    for name in qjobd.testing.__all__:
        assert getattr(qjobd.testing, name).__doc__, name
    assert set(dir(qjobd.testing)) == set(qjobd.testing.__all__)
