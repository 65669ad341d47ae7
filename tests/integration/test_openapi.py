"""GET /v1/openapi.json: the whole API as OpenAPI 3.1, the same as docs/openapi.json, with
exactly the app's routes, and the daemon's limits in its schemas."""

from __future__ import annotations

import json
from pathlib import Path

import schemathesis
from openapi_spec_validator import validate
from starlette.routing import Route

from qjobd.daemon.api import app as api_app
from qjobd.daemon.api.openapi import document
from qjobd.daemon.api.validation import DEFAULT_LIMITS
from qjobd.daemon.config import parse_config
from tests.integration.served import served

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


def test_the_endpoint_serves_docs_openapi_json() -> None:
    with served() as d, d.client() as c:
        r = c.get("/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert r.json() == on_disk, "regenerate: python -m qjobd.daemon.api.openapi > " \
                                "docs/openapi.json"
    assert on_disk["openapi"].startswith("3.1.")


def test_the_documents_paths_and_methods_are_the_apps_routes() -> None:
    with served() as d:
        routes = {(r.path, m.lower()) for r in d.wired.app.routes if isinstance(r, Route)
                  for m in r.methods or ()
                  if m != "HEAD" or "GET" not in (r.methods or ())}  # Starlette adds HEAD
        documented = {(path, method) for path, item in document(DEFAULT_LIMITS)["paths"].items()
                      for method in item if method in METHODS}
    assert documented == routes


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document(DEFAULT_LIMITS))
    validate(document(parse_config({"daemon": {"label_pattern": "[a-z]+"}}).daemon))


def test_every_operation_documents_its_errors_and_refs_resolve() -> None:
    doc = document(DEFAULT_LIMITS)
    schemathesis.openapi.from_dict(doc)  # loads (and resolves) without complaint
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in doc[section][kind], ref
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "500" in op["responses"], (path, method)
            assert any(s.startswith("2") for s in op["responses"]), (path, method)


def test_the_documents_bounds_are_the_apps() -> None:
    doc = document(DEFAULT_LIMITS)
    wait = doc["paths"]["/v1/batches/{id}/wait"]["get"]["parameters"][1]["schema"]
    assert wait["maximum"] == api_app.MAX_WAIT


def test_the_served_document_carries_the_configured_limits() -> None:
    limits = {"max_circuits": 7, "max_label_length": 9, "label_pattern": "[a-z]+",
              "max_tags": 2, "max_tag_length": 11, "max_name_length": 13, "max_json_depth": 5}
    with served(limits) as d, d.client() as c:
        doc = c.get("/v1/openapi.json").json()
    sub = doc["components"]["schemas"]["Submission"]
    circuits = sub["properties"]["circuits"]
    assert circuits["maxProperties"] == 7
    assert circuits["propertyNames"] == {"type": "string", "minLength": 1, "maxLength": 9,
                                         "pattern": "^(?:[a-z]+)$"}
    assert sub["properties"]["tags"]["maxProperties"] == 2
    assert sub["properties"]["tags"]["additionalProperties"]["maxLength"] == 11
    assert sub["properties"]["name"]["maxLength"] == 13
    assert "5 deep" in sub["description"]
