"""The plugin surface: everything a backend needs from qjobd, in one import.

A backend translates the :class:`Backend` protocol's few calls into one provider's
wire format and raises the errors below; the daemon does retries, request budgets,
backoff and persistence. An HTTP provider's backend subclasses :class:`HttpBackend`
(its helpers ``check``, ``send`` and ``json_body`` are in :mod:`qjobd.backends.http`).
A package makes its backend class known under :data:`ENTRY_POINT_GROUP`::

    [project.entry-points."qjobd.backends"]
    mycloud = "mypkg.backend:MyCloudBackend"

The guide is docs/plugins.md; :mod:`qjobd.testing.conformance` checks a backend.

The errors, translated from the provider's wire at the boundary::

    BackendError
    ├── Unavailable      the provider could not answer now (5xx, timeout, network): retry later
    │   └── RateLimited  the provider said 429: pause the whole backend for retry_after
    ├── Rejected         the provider refused the request itself (bad input): never retry
    ├── AuthError        the credentials were refused: retrying will not help until reconfigured
    └── ProtocolError    the provider answered something this backend does not understand
"""

from __future__ import annotations

from qjobd.backends.base import (
    Backend,
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.errors import (
    AuthError,
    BackendError,
    ProtocolError,
    RateLimited,
    Rejected,
    Unavailable,
)
from qjobd.backends.http import HttpBackend
from qjobd.backends.registry import ENTRY_POINT_GROUP

__all__ = [
    "ENTRY_POINT_GROUP",
    "AuthError",
    "Backend",
    "BackendError",
    "Capabilities",
    "Circuit",
    "Counts",
    "Grouping",
    "HttpBackend",
    "ProtocolError",
    "RateLimited",
    "Rejected",
    "RemoteState",
    "RemoteStatus",
    "SubmitRequest",
    "Unavailable",
]
