"""What every HTTP backend shares: its client, sending without retries, translating failures.

A backend never retries by itself (a retried create can duplicate a job); it turns each
failure into the most specific :mod:`qjobd.backends.errors` class and the daemon decides.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, ClassVar

import httpx

from qjobd.backends.base import Backend
from qjobd.backends.errors import AuthError, ProtocolError, RateLimited, Rejected, Unavailable
from qjobd.backends.transport import make_transport

__all__ = ["HttpBackend", "check", "error_text", "json_body", "read_api_key", "retry_after",
           "send"]

_TRANSIENT = {408, 425, 500, 502, 503, 504} | set(range(520, 530))


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """The provider's own words for an error, from a JSON body if it has one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    if isinstance(body, Mapping):
        # IonQ: {"statusCode", "error": reason phrase, "message"}; Qoro: {"detail"}/{"error"}
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, Mapping):
                value = value.get("message") or value.get("error") or json.dumps(value)
            if value:
                body = value
                break
    text = body if isinstance(body, str) else json.dumps(body)
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def check(response: httpx.Response, what: str) -> httpx.Response:
    """Raise the BackendError that fits a failed response; return it when it succeeded."""
    status = response.status_code
    if status < 400:
        return response
    detail = f"{what}: HTTP {status}: {error_text(response)}"
    request_id = response.headers.get("x-request-id")
    if request_id:
        detail += f" (request {request_id})"
    if status == 429:
        raise RateLimited(detail, retry_after=retry_after(response.headers))
    if status in (401, 403):
        raise AuthError(detail)
    if status in _TRANSIENT or status >= 500:
        raise Unavailable(detail)
    raise Rejected(detail)


async def send(client: httpx.AsyncClient, method: str, url: str, what: str,
               **kwargs: Any) -> httpx.Response:
    """One request; transport failures become Unavailable (the outcome is unknown)."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise Unavailable(f"{what}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from None


def json_body(response: httpx.Response, what: str) -> Any:
    """The answer's JSON; ProtocolError if it is not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what}: the answer is not JSON: {exc}") from None


def read_api_key(backend: str, config: Mapping[str, Any], default_env: str) -> str:
    """The backend's API key: a systemd credential named after the backend, else an env var.

    Under systemd, ``LoadCredential=<backend>:/etc/qjobd/credentials/<backend>`` puts
    the key in ``$CREDENTIALS_DIRECTORY/<backend>``; the credential name can be changed
    with ``api_key_credential``. Raises ValueError saying where it looked.
    """
    credential = str(config.get("api_key_credential", backend))
    env = str(config.get("api_key_env", default_env))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / credential
        if path.is_file():
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key
    key = os.environ.get(env, "").strip()
    if key:
        return key
    places = f"${env}"
    if directory:
        places = f"$CREDENTIALS_DIRECTORY/{credential} or " + places
    raise ValueError(f"no API key for backend {backend!r}: set {places}")



class HttpBackend(Backend):
    """A backend that speaks to its provider through one pooled httpx client, keyed by an API key.

    A subclass names its provider, settings, default URL, key variable and auth scheme,
    sets ``timeout`` and reads its key with :meth:`read_key` in ``__init__``; this class
    refuses unknown settings, opens the client on :meth:`start`, closes it on
    :meth:`aclose`, and replaces it when :meth:`reconfigure` finds a rotated key;
    :meth:`request` sends one request, paced unless it is the first of its call. The key
    is only ever sent in the Authorization header and reported by :meth:`secrets`, so
    that logs redact it.
    """

    #: the provider's name, as messages say it
    provider: ClassVar[str]
    #: every setting the backend takes; any other is refused
    settings: ClassVar[Set[str]]
    #: the provider's API root, unless ``base_url`` says otherwise
    default_base_url: ClassVar[str]
    #: the environment variable read for the API key when no credential holds it
    key_env: ClassVar[str]
    #: the Authorization header's scheme the key is sent under
    auth_scheme: ClassVar[str]

    base_url: str
    #: seconds for a request (connecting: at most 10)
    timeout: float
    _key: str

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        unknown = sorted(set(config) - self.settings)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(self.settings))}")
        self.base_url = str(config.get("base_url", self.default_base_url)).rstrip("/")
        self._client: httpx.AsyncClient | None = None

    def read_key(self, config: Mapping[str, Any]) -> str:
        """The API key ``config`` points at; raises ValueError saying where it looked."""
        return read_api_key(self.name, config, self.key_env)

    def qubit_limit(self, config: Mapping[str, Any], known: Mapping[str, int], target: str
                    ) -> tuple[int | None, str]:
        """(max_qubits, why): the ``max_qubits`` setting, else what is known of ``target``."""
        value = config.get("max_qubits")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"max_qubits must be a positive integer, not {value!r}")
            return value, f"[backends.{self.name}] max_qubits"
        if target in known:
            return known[target], f"{self.provider}'s {target} has {known[target]}"
        return None, ""

    async def start(self) -> None:
        self._client = self._make_client()

    def _make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"{self.auth_scheme} {self._key}", "User-Agent": "qjobd"},
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            # httpx's default pool, which this client has always had (a client's limits=
            # is ignored beside its own transport=); the pool's checks of its connections
            # cost a poll each (backends/transport.py): 8 or 20 kept cost the same CPU
            transport=make_transport(httpx.Limits(max_connections=100,
                                                  max_keepalive_connections=20)),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def reconfigure(self, config: Mapping[str, Any]) -> None:
        key = self.read_key(config)
        if key != self._key:
            self._key = key
            old, self._client = self._client, self._make_client()
            if old is not None:
                await old.aclose()

    def secrets(self) -> list[str]:
        return [self._key]

    async def request(self, method: str, url: str, what: str, *, first: bool = False,
                      **kwargs: Any) -> httpx.Response:
        """One request to the provider, sent once (see :func:`send`); ``what`` names it in errors.

        The daemon budgets each protocol call as one request. Every request after the
        first of a call (a page after the first, an upload's next fragment, a cancel after
        a status) therefore waits for :attr:`~qjobd.backends.Backend.pace` first, so that
        it draws from the budget too: pass ``first=True`` for a call's first request only.
        """
        if not first and self.pace is not None:
            await self.pace()
        return await send(self.client, method, url, what, **kwargs)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"the {self.provider} backend is not started")
        return self._client
