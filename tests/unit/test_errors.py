"""One exception root: every error qjobd raises on purpose is a QjobdError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from qjobd.errors import QjobdError


def _modules() -> list[str]:
    names = []
    for pkg in ("qjobd.daemon", "qjobd.backends", "qjobd.store"):
        module = importlib.import_module(pkg)
        names.append(pkg)
        names += [m.name for m in pkgutil.walk_packages(module.__path__, pkg + ".")]
    return [n for n in names if not n.endswith("__main__") and "_aer_worker" not in n]


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [cls for _, cls in sorted(found.items())]


def test_the_package_defines_its_exceptions():
    # the walk below would pass vacuously if it found nothing
    names = {cls.__name__ for cls in _exception_classes()}
    assert {"BackendError", "StoreError", "ConfigError", "ClientError", "QasmError"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_exception_descends_from_qjobd_error(cls):
    assert issubclass(cls, QjobdError), f"{cls.__module__}.{cls.__name__} has another root"


def test_no_two_public_exceptions_share_a_name():
    seen: dict[str, str] = {}
    for cls in _exception_classes():
        assert cls.__name__ not in seen, f"{cls.__name__} in {seen.get(cls.__name__)} and " \
                                         f"{cls.__module__}"
        seen[cls.__name__] = cls.__module__


def test_terminal_states_have_one_source():
    from qjobd.backends.base import RemoteState
    from qjobd.daemon.client.connection import TERMINAL_STATES
    from qjobd.store.states import TERMINAL, JobState

    assert TERMINAL_STATES == {str(s) for s in JobState if s.terminal} == {str(s) for s in TERMINAL}
    assert {s for s in RemoteState if s.terminal} == {
        RemoteState.COMPLETED, RemoteState.FAILED, RemoteState.CANCELED}
