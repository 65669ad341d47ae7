"""``qjobd.backends`` is the plugin surface: exactly the declared names, each documented.

A name added to or dropped from the package, or a module a plugin imports losing its
``__all__``, fails here (as httpx's tests/test_exported_members.py does for httpx).
"""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import pytest

import qjobd.backends
from qjobd.backends import base, errors, http, registry

#: what SPEC ("Python entry points") promises, plus the entry-point group's name
SURFACE = {
    "Backend", "HttpBackend", "Capabilities", "Circuit", "SubmitRequest", "RemoteStatus",
    "RemoteState", "Grouping", "Counts",
    "BackendError", "Unavailable", "RateLimited", "Rejected", "AuthError", "ProtocolError",
    "ENTRY_POINT_GROUP",
}
#: the modules a plugin imports from
PLUGIN_MODULES = (base, errors, http)
ROOT = Path(__file__).resolve().parents[2]


def _doc_comment(name: str, modules: tuple[types.ModuleType, ...]) -> str | None:
    """The ``#:`` comment above ``name``'s assignment in the first module assigning it."""
    for module in modules:
        source = inspect.getsource(module)
        lines = source.splitlines()
        for node in ast.parse(source).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                return above[2:].strip() if above.startswith("#:") else None
    return None


def _is_documented(name: str, obj: object, modules: tuple[types.ModuleType, ...]) -> bool:
    if inspect.isclass(obj):
        own = obj.__dict__.get("__doc__")  # not one inherited from a base class
        return bool(own and own.strip())
    if inspect.isfunction(obj):
        return bool(obj.__doc__ and obj.__doc__.strip())
    return bool(_doc_comment(name, modules))


def test_all_is_exactly_the_declared_surface():
    assert sorted(qjobd.backends.__all__) == sorted(SURFACE)
    assert len(qjobd.backends.__all__) == len(set(qjobd.backends.__all__))


def test_every_public_name_of_the_package_is_in_all():
    public = {name for name, value in vars(qjobd.backends).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)
              and name != "annotations"}
    assert public == set(qjobd.backends.__all__)


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_each_name_is_importable_and_documented(name):
    namespace: dict[str, object] = {}
    exec(f"from qjobd.backends import {name}", namespace)
    obj = namespace[name]
    assert _is_documented(name, obj, (base, errors, http, registry)), \
        f"qjobd.backends.{name} has no docstring (or #: comment)"


def test_the_backend_errors_are_one_tree_and_a_rate_limit_says_how_long():
    names = ("Unavailable", "RateLimited", "Rejected", "AuthError", "ProtocolError")
    assert all(issubclass(getattr(qjobd.backends, n), qjobd.backends.BackendError)
               for n in names)
    assert issubclass(qjobd.backends.RateLimited, qjobd.backends.Unavailable)
    assert qjobd.backends.RateLimited("slow down", retry_after=2.5).retry_after == 2.5


def test_the_entry_point_group_is_the_one_the_registry_reads():
    assert qjobd.backends.ENTRY_POINT_GROUP == "qjobd.backends"
    assert {"ionq", "qoro", "local"} <= set(registry.available_types())


@pytest.mark.parametrize("module", PLUGIN_MODULES, ids=lambda m: m.__name__)
def test_the_modules_a_plugin_imports_declare_all_and_document_it(module):
    exported = module.__all__
    assert exported and len(exported) == len(set(exported))
    for name in exported:
        obj = getattr(module, name)  # AttributeError: __all__ names something missing
        assert _is_documented(name, obj, (module,)), f"{module.__name__}.{name} is undocumented"


def test_the_protocols_abstract_methods_are_the_documented_four():
    assert base.Backend.__abstractmethods__ == {"submit", "status", "results", "cancel"}
    for method in ("submit", "status", "results", "cancel", "resume_interrupted", "lookup",
                   "validate_options", "start", "aclose", "reconfigure", "secrets", "health"):
        assert inspect.getdoc(getattr(base.Backend, method)), method


def test_neither_the_daemon_nor_the_backends_import_the_test_kit_or_pytest():
    offenders = []
    for folder in ("daemon", "backends", "store"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n.split(".")[0] == "pytest" or n.startswith("qjobd.testing")]
    assert offenders == []
