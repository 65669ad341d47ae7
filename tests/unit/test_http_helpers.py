"""The shared HTTP plumbing of remote backends: error translation, Retry-After, API keys."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import httpx
import pytest

from qjobd.backends.errors import AuthError, ProtocolError, RateLimited, Rejected, Unavailable
from qjobd.backends.http import check, error_text, read_api_key, retry_after, send
from qjobd.backends.ionq import _histogram_counts, _probability_counts


def response(status: int, body: object = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers,
                          request=httpx.Request("GET", "http://x/"))


@pytest.mark.parametrize(("status", "error"), [
    (400, Rejected), (404, Rejected), (413, Rejected), (401, AuthError), (403, AuthError),
    (429, RateLimited), (500, Unavailable), (502, Unavailable), (503, Unavailable),
    (522, Unavailable), (408, Unavailable),
])
def test_failed_responses_become_the_most_specific_error(status: int, error: type) -> None:
    with pytest.raises(error) as info:
        check(response(status, {"detail": "nope"}, **{"x-request-id": "rq-1"}), "create job")
    assert "create job: HTTP" in str(info.value) and "nope" in str(info.value)
    assert "rq-1" in str(info.value)


def test_a_successful_response_passes_through() -> None:
    r = response(201, {"id": "x"})
    assert check(r, "create") is r


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after(httpx.Headers({"Retry-After": when})) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after(httpx.Headers({"Retry-After": past})) == 0
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None
    with pytest.raises(RateLimited) as info:
        check(response(429, {}, **{"Retry-After": "3"}), "poll")
    assert info.value.retry_after == 3.0


def test_error_text_prefers_the_providers_words_and_is_bounded() -> None:
    assert error_text(response(400, {"error": {"message": "bad gate"}})) == "bad gate"
    assert error_text(response(400, {"detail": "x" * 1000})).endswith("...")


async def test_transport_failures_are_unavailable() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(boom)) as client:
        with pytest.raises(Unavailable, match="create job: ConnectError"):
            await send(client, "POST", "http://x/jobs", "create job")


def test_api_key_comes_from_a_credential_file_before_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IONQ_API_KEY", "from-env")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_api_key("ionq", {}, "IONQ_API_KEY") == "from-env"
    (tmp_path / "ionq").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_api_key("ionq", {}, "IONQ_API_KEY") == "from-credential"
    assert read_api_key("ionq2", {"api_key_credential": "ionq"}, "X") == "from-credential"
    monkeypatch.setenv("OTHER", "other")
    assert read_api_key("nope", {"api_key_env": "OTHER"}, "IONQ_API_KEY") == "other"


def test_a_missing_api_key_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IONQ_API_KEY", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/nonexistent")
    with pytest.raises(ValueError, match=r"CREDENTIALS_DIRECTORY/ionq or \$IONQ_API_KEY"):
        read_api_key("ionq", {}, "IONQ_API_KEY")


def test_ionq_decimal_states_become_qiskit_ordered_bitstrings() -> None:
    assert _histogram_counts({"0": 500, "3": 250, "1": 250}, 2) == {"00": 500, "11": 250,
                                                                    "01": 250}
    assert _histogram_counts({"4": 10}, 3) == {"100": 10}
    with pytest.raises(ProtocolError, match="does not fit"):
        _histogram_counts({"4": 1}, 2)
    with pytest.raises(ProtocolError):
        _histogram_counts({"x": 1}, 2)


def test_probabilities_round_to_exactly_the_shots() -> None:
    counts = _probability_counts({"0": 1 / 3, "1": 1 / 3, "2": 1 / 3}, 2, 100)
    assert sum(counts.values()) == 100
    assert sorted(counts.values()) == [33, 33, 34]
    assert _probability_counts({"0": 0.5, "3": 0.5}, 2, 1000) == {"00": 500, "11": 500}
