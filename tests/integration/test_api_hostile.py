"""Hostile and oversized requests, refused with a 4xx in the API's error shape, storing
nothing, on a connection that stays usable (SPEC "Limits"; issue 13).

Most go through the real uvicorn server on a Unix socket (tests/integration/served.py),
since what happens to the connection after an answer is uvicorn's business.
"""

from __future__ import annotations

import json
import time

import pytest

from qjobd.store.store import Store
from tests.conftest import BELL2, count_rows
from tests.integration.served import error_of, raw_exchange, read_answer, served

EMPTY = {"batches": 0, "jobs": 0, "circuits": 0, "results": 0, "events": 0}
HEALTH = ("GET", "/v1/health")


def body(**fields: object) -> bytes:
    return json.dumps({"backend": "fake", "circuits": {"a": BELL2}, **fields}).encode()


def test_a_body_nested_100000_deep_is_400_and_the_connection_goes_on() -> None:
    # before: json.loads raised RecursionError, a 500 "internal", and uvicorn dropped the
    # connection, so the client's next request on it failed too
    deep = b'{"backend": "fake", "circuits": {"a": "x"}, "options": {"o": ' + \
        b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with served() as d, d.connect() as sock:
        started = time.monotonic()
        status, headers, answer = raw_exchange(sock, "POST", "/v1/batches", deep,
                                               {"Content-Type": "application/json"})
        took = time.monotonic() - started
        assert status == 400, answer
        assert headers["content-type"] == "application/json"
        error = error_of(answer)
        assert error["code"] == "too_deep"
        assert "64" in error["message"] and "max_json_depth" in error["message"]
        assert error["details"]["limit"] == 64
        assert took < 5
        status, _, answer = raw_exchange(sock, *HEALTH)  # the same connection
        assert status == 200 and json.loads(answer)["status"] == "ok"
        assert len(d.connections) == 1
        assert count_rows(d.db) == EMPTY


def test_an_unhandled_exception_is_a_json_500_and_the_connection_goes_on() -> None:
    broken = {"on": True}

    def prepare(wired: object) -> None:
        store: Store = wired.context.store  # type: ignore[attr-defined]
        real = store.counts_by_state

        async def counts() -> dict:
            if broken["on"]:
                raise RuntimeError("a bug")
            return await real()

        store.counts_by_state = counts  # type: ignore[method-assign]

    with served(prepare=prepare) as d, d.connect() as sock:
        status, headers, answer = raw_exchange(sock, *HEALTH)
        assert status == 500 and headers["content-type"] == "application/json"
        assert error_of(answer)["code"] == "internal"
        broken["on"] = False
        status, _, answer = raw_exchange(sock, *HEALTH)
        assert status == 200, answer
        assert len(d.connections) == 1


def test_a_request_uvicorn_cannot_parse_gets_a_json_400() -> None:
    with served() as d, d.connect() as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: qjobd\r\nBad Header\r\n\r\n")
        status, headers, answer = read_answer(sock)
        assert status == 400 and headers["content-type"] == "application/json"
        assert error_of(answer)["code"] == "bad_http"


@pytest.mark.parametrize(("raw", "path"), [
    (b'{"backend": "fake", "circuits": {"a": "%s", "a": "%s"}}', 'circuits."a"'),
    (b'{"backend": "fake", "backend": "held", "circuits": {"a": "%s", "b": "%s"}}',
     '"backend"'),
    (b'{"backend": "fake", "circuits": {"a": "%s", "b": "%s"}, "tags": {"k": "1", "k": "2"}}',
     'tags."k"'),
    (b'{"backend": "fake", "circuits": {"a": "%s", "b": "%s"}, '
     b'"options": {"x": [1, {"deep key": {"q": 1, "q": 2}}]}}', 'options.x[1]."deep key"."q"'),
])
def test_a_duplicate_key_anywhere_is_400_naming_the_key_and_where(raw: bytes, path: str) -> None:
    # before: 201, the last value kept, and circuit "a"'s first source silently gone
    source = json.dumps(BELL2)[1:-1].encode()
    with served() as d, d.connect() as sock:
        status, _, answer = raw_exchange(sock, "POST", "/v1/batches", raw % (source, source))
        assert status == 400, answer
        error = error_of(answer)
        assert error["code"] == "duplicate_key"
        assert error["details"]["path"] == path
        assert path in error["message"]
        assert count_rows(d.db) == EMPTY
        assert raw_exchange(sock, *HEALTH)[0] == 200


@pytest.mark.parametrize(("limits", "fields", "code", "field", "setting"), [
    ({"max_circuits": 2}, {"circuits": {"a": BELL2, "b": BELL2, "c": BELL2}},
     "too_many_circuits", "circuits", "max_circuits"),
    ({"max_label_length": 5}, {"circuits": {"abcdef": BELL2}}, "invalid_label", "circuits",
     "max_label_length"),
    ({"label_pattern": "[a-z0-9_]+"}, {"circuits": {"Bell!": BELL2}}, "invalid_label",
     "circuits", "label_pattern"),
    ({"max_tags": 1}, {"tags": {"a": "1", "b": "2"}}, "too_many_tags", "tags", "max_tags"),
    ({"max_tag_length": 3}, {"tags": {"a": "long"}}, "too_long", "tags", "max_tag_length"),
    ({"max_name_length": 3}, {"name": "long"}, "too_long", "name", "max_name_length"),
    ({"max_json_depth": 3}, {"options": {"a": {"b": {"c": 1}}}}, "too_deep", None,
     "max_json_depth"),
    ({"max_json_values": 100, "max_circuits": 1, "max_tags": 0}, {"options": {"o": [1] * 200}},
     "too_many_values", None, "max_json_values"),
])
def test_each_configured_limit_is_a_400_naming_the_field_and_the_limit(
        limits: dict, fields: dict, code: str, field: str | None, setting: str) -> None:
    # before: none of these keys existed ([daemon] refused them as unknown)
    with served(limits) as d, d.client() as c:
        r = c.post("/v1/batches", content=body(**fields),
                   headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == code
        assert error["details"].get("field") == field
        assert error["details"]["setting"] == setting
        assert setting in error["message"]
        if "limit" in error["details"]:
            assert str(error["details"]["limit"]) in error["message"]
        assert count_rows(d.db) == EMPTY
        # within the limits the same daemon takes a batch
        assert c.post("/v1/batches", content=body()).status_code == 201


@pytest.mark.parametrize("raw", [
    json.dumps({"backend": "fake", "circuits": {"a": BELL2}}).encode("utf-16"),
    b'{"backend": "fake", "circuits": {"a": "x"}, "shots": NaN}',
    b'{"backend": "fake", "circuits": {"a": "x"}, "shots": ' + b"9" * 5000 + b"}",
    b'{"backend": "fake", "circuits": {"a": "' + b"[" * 100_000,
    b"[" * 100_000,
])
def test_other_malformed_bodies_are_400(raw: bytes) -> None:
    # before: the 5000-digit integer was a 500 (ValueError from int()), NaN was taken
    with served() as d, d.connect() as sock:
        status, _, answer = raw_exchange(sock, "POST", "/v1/batches", raw)
        assert status == 400, answer
        assert error_of(answer)["code"] in ("malformed_json", "too_deep")
        assert raw_exchange(sock, *HEALTH)[0] == 200
        assert count_rows(d.db) == EMPTY


@pytest.mark.parametrize("fields", [{"tags": 0}, {"tags": []}, {"options": False},
                                    {"options": ""}])
def test_tags_and_options_must_be_objects_or_null(fields: dict) -> None:
    # before: any false value was taken as {}
    with served() as d, d.client() as c:
        r = c.post("/v1/batches", content=body(**fields))
        assert r.status_code == 400 and r.json()["error"]["details"]["field"] in fields
        assert c.post("/v1/batches", content=body(tags=None, options=None)).status_code == 201


def test_an_oversized_body_is_413_and_the_connection_goes_on() -> None:
    with served({"max_request_bytes": 4096}) as d, d.connect() as sock:
        status, _, answer = raw_exchange(sock, "POST", "/v1/batches",
                                         body(name="x" * 5000))
        assert status == 413 and error_of(answer)["details"]["limit"] == 4096
        assert raw_exchange(sock, *HEALTH)[0] == 200
        assert count_rows(d.db) == EMPTY


def test_events_follow_takes_yes_or_no_only() -> None:
    with served() as d, d.client() as c:
        assert c.get("/v1/events", params={"follow": "maybe"}).status_code == 400
        assert c.get("/v1/events", params={"follow": "FALSE"}).status_code == 200


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/batches", {"limit": "1_0"}),
    ("/v1/batches", {"limit": " 5"}),
    ("/v1/batches", {"cursor": ""}),
    ("/v1/batches", {"cursor": "\u0661"}),
    ("/v1/events", {"since": ""}),
    ("/v1/batches/x/wait", {"timeout": "nan"}),
    ("/v1/batches/x/wait", {"timeout": "1_0"}),
])
def test_numeric_parameters_take_plain_numbers_only(path: str, params: dict) -> None:
    # before: int()/float() took these ("1_0" was 10, an empty cursor the first page)
    with served() as d, d.client() as c:
        r = c.get(path, params=params)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] in params
