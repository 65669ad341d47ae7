"""qjobd's test kit: what our own tests use, shipped so that plugin authors and users can
test their code against the same fakes.

- :mod:`qjobd.testing.scripted`: ``ScriptedBackend``, the backend protocol in memory
  (jobs finish after a set number of polls or are held; fault knobs for 503s, 429s,
  corrupt results, two-phase creates), for tests of code above the backend.
- :mod:`qjobd.testing.fake_server`: ``FakeServer``, the base of a fake provider: an ASGI
  app over real HTTP on 127.0.0.1, in a thread or in its own process, with a request log
  and the means to drop an answer; ``TokenBucket``, a server-side request budget.
- :mod:`qjobd.testing.fake_ionq`: ``FakeIonQ`` (in a thread) and ``FakeIonQProcess``
  (``python -m qjobd.testing.fake_ionq``), IonQ's v0.4 jobs API with fault knobs.
- :mod:`qjobd.testing.fake_qoro`: ``FakeQoro``, Qoro's job API as divi speaks it.
- :mod:`qjobd.testing.harness`: ``backend_daemon``, the daemon's engine in-process
  around one real HTTP backend, with a ``Harness`` to submit, wait and read results.
- :mod:`qjobd.testing.daemon_process`: ``DaemonProcess``, ``qjobd serve`` as a real
  subprocess with its own config, socket, database and log.
- :mod:`qjobd.testing.conformance`: ``BackendConformance``, the checks every backend
  passes, run against your own backend through a ``Subject`` (docs/plugins.md).

Names load on first use, so ``from qjobd.testing import ScriptedBackend`` does not
import pytest; ``harness`` and ``conformance`` need it (``pip install 'qjobd[testing]'``).
Nothing in ``qjobd.daemon`` or ``qjobd.backends`` imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qjobd.testing.conformance import BackendConformance, Subject, Unsupported
    from qjobd.testing.daemon_process import DaemonProcess
    from qjobd.testing.fake_ionq import FakeIonQ, FakeIonQProcess
    from qjobd.testing.fake_qoro import FakeQoro
    from qjobd.testing.fake_server import FakeServer, TokenBucket
    from qjobd.testing.harness import Harness, backend_daemon
    from qjobd.testing.scripted import ScriptedBackend

#: public name -> the module that defines it
_WHERE = {
    "BackendConformance": "conformance",
    "Subject": "conformance",
    "Unsupported": "conformance",
    "DaemonProcess": "daemon_process",
    "FakeIonQ": "fake_ionq",
    "FakeIonQProcess": "fake_ionq",
    "FakeQoro": "fake_qoro",
    "FakeServer": "fake_server",
    "TokenBucket": "fake_server",
    "Harness": "harness",
    "backend_daemon": "harness",
    "ScriptedBackend": "scripted",
}

__all__ = [
    "BackendConformance",
    "DaemonProcess",
    "FakeIonQ",
    "FakeIonQProcess",
    "FakeQoro",
    "FakeServer",
    "Harness",
    "ScriptedBackend",
    "Subject",
    "TokenBucket",
    "Unsupported",
    "backend_daemon",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
