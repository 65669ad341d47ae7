"""Errors a backend raises, translated from its provider's wire at the boundary.

    BackendError
    ├── Unavailable      the provider could not answer now (5xx, timeout, network): retry later
    │   └── RateLimited  the provider said 429: pause the whole backend for retry_after
    ├── Rejected         the provider refused the request itself (bad input): never retry
    ├── AuthError        the credentials were refused: retrying will not help until reconfigured
    └── ProtocolError    the provider answered something this backend does not understand
"""

from __future__ import annotations

from qjobd.errors import QjobdError

__all__ = ["AuthError", "BackendError", "ProtocolError", "RateLimited", "Rejected",
           "Unavailable"]


class BackendError(QjobdError):
    """The backend failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Unavailable(BackendError):
    """The provider is unavailable; try again later."""


class RateLimited(Unavailable):
    """The provider asked us to slow down."""

    def __init__(self, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds to wait before the next request to this backend, if the provider said
        self.retry_after = retry_after


class Rejected(BackendError):
    """The provider rejected the request; retrying will not help."""


class AuthError(BackendError):
    """The provider refused the credentials."""


class ProtocolError(BackendError):
    """The provider's answer could not be understood."""
