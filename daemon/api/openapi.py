"""The API described as OpenAPI 3.1, served as ``GET /v1/openapi.json``.

The document carries the daemon's configured request limits (``[daemon] max_*``), so it
says what this daemon takes; ``docs/openapi.json`` is the one for the built-in limits::

    python -m qjobd.daemon.api.openapi > docs/openapi.json

(``tests/integration/test_openapi.py`` checks that file against what a daemon serves, and
the document's paths and methods against the app's routes.)
"""

from __future__ import annotations

import json
import sys
from typing import Any

import qjobd
from qjobd.daemon.config import DaemonConfig
from qjobd.store.states import JobState

__all__ = ["document"]

_STATES = [str(s) for s in JobState]
_TIME = {"type": ["string", "null"], "format": "date-time",
         "description": "RFC 3339, UTC (`Z`), milliseconds"}
_TEXT_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out = dict(ok)
    for status in (*errors, 500):
        out[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return out


_ERROR_TEXT = {
    400: "Malformed request: not JSON, a field or parameter out of range, or a request "
         "limit passed; the error names the field and the limit",
    403: "The batch belongs to another user",
    404: "No such batch (or path)",
    405: "Method not allowed on this path",
    409: "Conflict: an Idempotency-Key reused with another body, or results asked for "
         "before the batch is terminal",
    413: "The body is larger than [daemon] max_request_bytes",
    422: "Invalid OpenQASM: the details name each bad circuit's label, line, column and "
         "reason",
    500: "Internal error; the daemon logs it with its traceback",
    503: "The store is unavailable for now",
    507: "The store's disk is full",
}
#: the store may fail any request that reads or writes it
_STORE = (503, 507)


def _path_id() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": "a batch id",
            "schema": {"type": "string", "minLength": 1}}


def _schemas(limits: DaemonConfig) -> dict[str, Any]:
    label: dict[str, Any] = {"type": "string", "minLength": 1,
                             "maxLength": limits.max_label_length}
    if limits.label_pattern:
        label["pattern"] = f"^(?:{limits.label_pattern})$"
    return {
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "details"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "description": "machine-readable, e.g. "
                             "invalid_request, too_deep, duplicate_key, invalid_qasm"},
                    "message": {"type": "string", "description": "what is wrong, for people"},
                    "details": {"description": "more, by code: the field, the limit, the "
                                "label, line and column..."},
                }}},
        },
        "Submission": {
            "type": "object", "required": ["backend", "circuits"], "additionalProperties": False,
            "description": "A batch to run. Every key appears once in any object, and arrays "
                           f"and objects nest at most {limits.max_json_depth} deep ([daemon] "
                           "max_json_depth).",
            "properties": {
                "backend": {"type": "string", "minLength": 1,
                            "description": "the name of a configured backend"},
                "circuits": {
                    "type": "object", "minProperties": 1,
                    "maxProperties": limits.max_circuits,
                    "propertyNames": label,
                    "additionalProperties": {"type": "string",
                                             "description": "OpenQASM 2 or 3 source"},
                    "description": "label -> OpenQASM source. Labels are printable text "
                                   f"of 1 to {limits.max_label_length} characters; a backend "
                                   "may take fewer circuits than the daemon's "
                                   f"{limits.max_circuits}",
                },
                "shots": {"type": "integer", "minimum": 1,
                          "description": "default and maximum per backend"},
                "name": {"type": ["string", "null"], "maxLength": limits.max_name_length},
                "tags": {"type": ["object", "null"], "maxProperties": limits.max_tags,
                         "propertyNames": {"type": "string",
                                           "maxLength": limits.max_tag_length},
                         "additionalProperties": {"type": "string",
                                                  "maxLength": limits.max_tag_length}},
                "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0,
                            "description": "seconds; jobs not finished by then end timed_out"},
                "options": {"type": ["object", "null"],
                            "description": "backend options; each backend checks its own"},
                "metadata": {"type": ["object", "null"],
                             "description": "the submitter's own JSON object, stored with "
                                            "the batch and returned as given; at most "
                                            f"{limits.max_metadata_bytes} bytes of compact "
                                            "JSON ([daemon] max_metadata_bytes)"},
            },
        },
        "Job": {
            "type": "object", "required": ["id", "remote_id", "state", "remote_status",
                                           "labels", "error", "next_poll_at"],
            "properties": {
                "id": {"type": "string"},
                "remote_id": _TEXT_OR_NULL,
                "state": {"type": "string", "enum": _STATES},
                "remote_status": _TEXT_OR_NULL,
                "labels": {"type": "array", "items": {"type": "string"}},
                "error": _TEXT_OR_NULL,
                "attempts": {"type": "integer", "minimum": 0},
                "next_poll_at": _TIME,
                "created_at": _TIME,
                "updated_at": _TIME,
                "finished_at": _TIME,
            },
        },
        "Batch": {
            "type": "object",
            "required": ["id", "state", "backend", "shots", "name", "tags", "owner",
                         "created_at", "updated_at", "finished_at", "error", "jobs"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": _STATES},
                "backend": {"type": "string"},
                "shots": {"type": "integer"},
                "name": _TEXT_OR_NULL,
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "options": {"type": "object"},
                "timeout": {"type": ["number", "null"]},
                "owner": {"type": "string", "description": "the submitter's user name"},
                "owner_uid": {"type": "integer"},
                "cancel_requested": {"type": "boolean"},
                "created_at": _TIME,
                "updated_at": _TIME,
                "finished_at": _TIME,
                "error": _TEXT_OR_NULL,
                "metadata": {"type": ["object", "null"],
                             "description": "the submission's metadata, or null"},
                "warnings": {"type": "array", "items": {"type": "string"},
                             "description": "checks the daemon could not make on the "
                                            "circuits (e.g. OpenQASM 3 Qiskit cannot import, "
                                            "sent as written to a provider that parses it)"},
                "jobs": {"type": "array", "items": _ref("Job")},
            },
        },
        "BatchList": {
            "type": "object", "required": ["batches", "next_cursor"],
            "properties": {
                "batches": {"type": "array", "items": _ref("Batch")},
                "next_cursor": {"type": ["string", "null"],
                                "description": "pass as `cursor` for the next page"},
            },
        },
        "Results": {
            "type": "object", "required": ["id", "state", "results"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": _STATES},
                "results": {
                    "type": "object", "description": "label -> result; a failed batch's "
                                                     "partial results are included",
                    "additionalProperties": {
                        "type": "object", "required": ["counts", "shots", "job_id"],
                        "properties": {
                            "counts": {"type": "object", "description": "bitstring (highest "
                                       "classical bit leftmost, as Qiskit) -> count",
                                       "additionalProperties": {"type": "integer",
                                                                "minimum": 0}},
                            "shots": {"type": "integer"},
                            "job_id": {"type": "string"},
                        }}},
            },
        },
        "Event": {
            "type": "object", "required": ["seq", "ts", "batch_id", "job_id", "kind", "state",
                                           "detail"],
            "properties": {
                "seq": {"type": "integer"},
                "ts": _TIME,
                "batch_id": _TEXT_OR_NULL,
                "job_id": _TEXT_OR_NULL,
                "kind": {"type": "string"},
                "state": _TEXT_OR_NULL,
                "detail": {"type": ["object", "null"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version", "pid", "uptime", "batches", "jobs", "backends"],
            "properties": {
                "status": {"type": "string"},
                "version": {"type": "string"},
                "pid": {"type": "integer"},
                "uptime": {"type": "number", "description": "seconds"},
                "database": {"type": "string"},
                "batches": {"type": "object", "description": "count by state",
                            "additionalProperties": {"type": "integer"}},
                "jobs": {"type": "object", "description": "count by state",
                         "additionalProperties": {"type": "integer"}},
                "in_flight": {"type": "integer"},
                "store": {"type": "object"},
                "backends": {"type": "object", "description": "name -> the backend's "
                             "engine figures (requests, errors, rate-limit pause, poll lag) "
                             "and its own health details",
                             "additionalProperties": {"type": "object"}},
                "cluster": {"type": "object", "description": "only when several daemons "
                            "share a PostgreSQL store: this node, its lease time, whether its "
                            "leases are good, its budget share, and the live nodes with "
                            "their leases (jobs held) and budget shares"},
            },
        },
    }


def document(limits: DaemonConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, with ``limits``'s request limits in it."""
    batch = _json(_ref("Batch"), "the batch with its jobs")
    paths: dict[str, Any] = {
        "/v1/batches": {
            "post": {
                "operationId": "submit", "summary": "Submit a batch",
                "description": "Stored (and fsynced) before the answer. A rejected request "
                               "stores nothing.",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "the same key and body again returns the existing batch "
                                   "(200); the same key with another body is 409",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("Submission")}}},
                "responses": _responses({
                    "201": _json(_ref("Batch"), "stored: the new batch"),
                    "200": _json(_ref("Batch"), "the batch an Idempotency-Key names")},
                    400, 409, 413, 422, *_STORE),
            },
            "get": {
                "operationId": "list", "summary": "List batches, newest first",
                "description": "Only the caller's own, unless the caller is root or the "
                               "daemon's user.",
                "parameters": [
                    {"name": "state", "in": "query", "description": "only batches in "
                     "this state (empty: any)", "schema": {"type": "string",
                                                          "enum": [*_STATES, ""]}},
                    {"name": "backend", "in": "query", "description": "only batches on "
                     "this backend (empty: any)", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "cursor", "in": "query", "description": "next_cursor of the "
                     "page before", "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}},
                ],
                "responses": _responses({"200": _json(_ref("BatchList"), "one page")}, 400,
                                        *_STORE),
            },
        },
        "/v1/batches/{id}": {
            "get": {
                "operationId": "show", "summary": "A batch with its jobs",
                "parameters": [_path_id()],
                "responses": _responses({"200": batch}, 403, 404, *_STORE),
            },
        },
        "/v1/batches/{id}/results": {
            "get": {
                "operationId": "results", "summary": "A terminal batch's results",
                "parameters": [_path_id()],
                "responses": _responses({"200": _json(_ref("Results"), "the results")},
                                        403, 404, 409, *_STORE),
            },
        },
        "/v1/batches/{id}/cancel": {
            "post": {
                "operationId": "cancel", "summary": "Cancel a batch (idempotent)",
                "parameters": [_path_id()],
                "responses": _responses({
                    "202": _json(_ref("Batch"), "cancel requested"),
                    "200": _json(_ref("Batch"), "the batch was terminal already")},
                    403, 404, *_STORE),
            },
        },
        "/v1/batches/{id}/wait": {
            "get": {
                "operationId": "wait", "summary": "Long-poll until the batch is terminal",
                "parameters": [_path_id(), {
                    "name": "timeout", "in": "query", "description": "seconds",
                    "schema": {"type": "number", "minimum": 0, "maximum": 300,
                               "default": 30}}],
                "responses": _responses({"200": _json(_ref("Batch"), "the batch, terminal "
                                                      "or as it was at the timeout")},
                                        400, 403, 404, *_STORE),
            },
        },
        "/v1/events": {
            "get": {
                "operationId": "events", "summary": "State changes, streamed",
                "description": "Newline-delimited JSON, one Event a line, from after `since`; "
                               "with `follow` the stream stays open. A stream that fails "
                               "after it began ends with an Error line.",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {
                        "type": "integer", "minimum": 0, "default": 0}},
                    {"name": "follow", "in": "query", "description": "keep the stream "
                     "open for new events (any case)", "schema": {
                        "type": "string", "pattern": ("^(0|1|[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|"
                                   "[yY][eE][sS]|[nN][oO])?$")}},
                ],
                "responses": _responses({"200": {
                    "description": "one JSON Event per line",
                    "content": {"application/x-ndjson": {
                        "schema": {"type": "string", "description": "lines, each an Event "
                                   "(#/components/schemas/Event) or, last, an Error"}}}}},
                    400, *_STORE),
            },
        },
        "/v1/health": {
            "get": {
                "operationId": "health", "summary": "Version, uptime, counts, backends",
                "responses": _responses({"200": _json(_ref("Health"), "the daemon's health")},
                                        *_STORE),
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics", "summary": "Prometheus metrics",
                "responses": _responses({"200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}, *_STORE),
            },
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi", "summary": "This document",
                "responses": _responses({"200": _json({"type": "object"},
                                                      "OpenAPI 3.1")}),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qjobd",
            "version": qjobd.__version__,
            "description": "Batches of OpenQASM circuits, stored before they are "
                           "acknowledged and run on remote quantum backends. Served on the "
                           "daemon's Unix socket: `curl --unix-socket SOCK "
                           "http://localhost/v1/health`. Every error answer is an Error "
                           "object.",
        },
        "servers": [{"url": "http://localhost", "description": "the Unix socket"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "responses": {f"E{status}": _json(_ref("Error"), text)
                          for status, text in _ERROR_TEXT.items()},
        },
    }


def main() -> None:
    """Print the document for the built-in limits (docs/openapi.json)."""
    from qjobd.daemon.api.validation import DEFAULT_LIMITS

    json.dump(document(DEFAULT_LIMITS), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
