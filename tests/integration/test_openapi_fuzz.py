"""The API fuzzed against its own OpenAPI document with schemathesis, through the real
uvicorn server on a Unix socket, over one kept-alive connection.

Each operation gets a bounded number of generated requests, valid and invalid by the
schema, the same ones every run (derandomized: a failure reproduces; raise EXAMPLES and
drop derandomize to explore). Every answer must be documented (status, content type,
body schema), none may be a 5xx, the connection must never drop, and a rejected request
(4xx) must store nothing.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from qjobd.daemon.api.openapi import document
from qjobd.daemon.api.validation import DEFAULT_LIMITS
from tests.conftest import BELL2
from tests.integration.served import Served, served

#: generated requests per operation (an operation with few inputs gets fewer)
EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


def fuzz_document() -> dict[str, Any]:
    """The served document, with the test daemon's backends named in the submission
    schema and one valid submission as its example, so that generated requests reach
    past the first field check and some are stored."""
    doc = copy.deepcopy(document(DEFAULT_LIMITS))
    submission = doc["components"]["schemas"]["Submission"]
    submission["properties"]["backend"] = {"type": "string", "enum": ["fake", "held"]}
    submit = doc["paths"]["/v1/batches"]["post"]
    submit["requestBody"]["content"]["application/json"]["example"] = {
        "backend": "held", "circuits": {"bell": BELL2}, "shots": 10}
    return doc


schema = schemathesis.openapi.from_dict(fuzz_document())


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Served, httpx.Client]]:
    with served() as d, d.client(timeout=20) as client:
        yield d, client
        assert len(d.connections) == 1, "a connection was dropped and made again"
        assert stored(d.db)["batches"] >= 1, "no generated submission was ever accepted"


def stored(db: Path) -> dict[str, int]:
    """What a submission adds (results and events also come from accepted batches'
    jobs, running on in the background)."""
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("batches", "jobs", "circuits")}
    finally:
        conn.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
def test_api_conforms_to_its_openapi_document(case: Any, daemon: tuple[Served, httpx.Client]
                                              ) -> None:
    d, client = daemon
    if case.path == "/v1/events" and case.query:
        case.query.pop("follow", None)  # a followed stream never ends
    kwargs = case.as_transport_kwargs(base_url="http://qjobd")
    request = {k: kwargs[k] for k in ("method", "url", "headers", "params") if k in kwargs}
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif "data" in kwargs:
        request["content"] = kwargs["data"]
    before = stored(d.db)
    response = client.request(**request)
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        assert stored(d.db) == before, f"a {response.status_code} stored something"
