"""Finding backend classes by type name, through the ``qjobd.backends`` entry points.

A third party adds a backend by declaring, in its own package::

    [project.entry-points."qjobd.backends"]
    mycloud = "mypkg.backend:MyCloudBackend"

and configuring ``[backends.<name>] type = "mycloud"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from qjobd.backends.base import Backend
from qjobd.errors import QjobdError

__all__ = ["ENTRY_POINT_GROUP", "UnknownBackendType", "available_types", "backend_class",
           "create_backend"]

#: the entry-point group a package declares its backend classes in (name: the type name)
ENTRY_POINT_GROUP = "qjobd.backends"


class UnknownBackendType(QjobdError, LookupError):
    """No installed backend has this type name."""


def available_types() -> list[str]:
    """The type names of every installed backend, sorted."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def backend_class(type_name: str) -> type[Backend]:
    """The backend class installed under ``type_name``; UnknownBackendType if none is."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"entry point {ep.value!r} for {type_name!r} is not a Backend class")
        return cls
    raise UnknownBackendType(
        f"no backend type {type_name!r} is installed (installed: "
        f"{', '.join(available_types()) or 'none'})")


def create_backend(name: str, type_name: str, options: Mapping[str, Any]) -> Backend:
    """Instantiate the backend configured as ``[backends.<name>]``."""
    return backend_class(type_name)(name, options)
