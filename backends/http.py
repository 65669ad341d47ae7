"""What every HTTP backend shares: sending without retries, and translating failures.

A backend never retries by itself (a retried create can duplicate a job); it turns each
failure into the most specific :mod:`backends.errors` class and the daemon decides.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from backends.errors import AuthError, ProtocolError, RateLimited, Rejected, Unavailable

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

