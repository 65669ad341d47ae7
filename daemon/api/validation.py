"""Checking a submission before anything is stored: shape, limits, backend, and every circuit."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qjobd.backends import qasm
from qjobd.backends.base import Backend, Grouping
from qjobd.daemon.api import jsonbody
from qjobd.daemon.config import DaemonConfig
from qjobd.errors import QjobdError
from qjobd.store.models import CircuitRecord, NewBatch

#: the request limits of a daemon configured with none ([daemon] max_*, label_pattern)
DEFAULT_LIMITS = DaemonConfig(socket=Path(), database=Path())
_FIELDS = {"backend", "circuits", "shots", "name", "tags", "timeout", "options", "metadata"}


class InvalidRequest(QjobdError):
    """The request is malformed (HTTP 400)."""

    code = "invalid_request"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class InvalidCircuits(QjobdError):
    """One or more circuits are not valid OpenQASM (HTTP 422)."""

    code = "invalid_qasm"

    def __init__(self, errors: list[qasm.QasmError]) -> None:
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        self.message = f"{errors[0]}{more}"
        self.details = [e.to_dict() for e in errors]
        super().__init__(self.message)


def parse_body(raw: bytes, limits: DaemonConfig = DEFAULT_LIMITS) -> dict[str, Any]:
    """The body as a JSON object: UTF-8, nested at most ``max_json_depth``, no key twice."""
    try:
        body = jsonbody.loads(raw, max_depth=limits.max_json_depth,
                              max_values=json_values(limits))
    except jsonbody.BodyError as exc:
        raise InvalidRequest(exc.message, exc.details, code=exc.code) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", code="malformed_json")
    return body


def json_values(limits: DaemonConfig) -> int:
    """The most JSON keys and values a body may hold: [daemon] max_json_values, plus two
    (a key and its value) for each circuit and tag the other limits allow."""
    return limits.max_json_values + 2 * (limits.max_circuits + limits.max_tags)


def check_submission(body: Mapping[str, Any], backends: Mapping[str, Backend],
                     limits: DaemonConfig = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check everything but the circuits' QASM; return the normalised fields."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}",
                             {"fields": unknown, "allowed": sorted(_FIELDS)})
    name = body.get("backend")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'backend' is required: the name of a configured backend",
                             {"field": "backend", "backends": sorted(backends)})
    backend = backends.get(name)
    if backend is None:
        raise InvalidRequest(f"unknown backend {name!r}; configured: {', '.join(sorted(backends))}",
                             {"field": "backend", "backends": sorted(backends)},
                             code="unknown_backend")
    caps = backend.capabilities
    circuits = body.get("circuits")
    if not isinstance(circuits, dict):
        raise InvalidRequest("'circuits' is required: an object mapping labels to OpenQASM source",
                             {"field": "circuits"})
    if not circuits:
        raise InvalidRequest("'circuits' is empty: a batch needs at least one circuit",
                             {"field": "circuits"}, code="empty_batch")
    if len(circuits) > limits.max_circuits:
        raise InvalidRequest(f"too many circuits: {len(circuits)}; a batch takes at most "
                             f"{limits.max_circuits} ([daemon] max_circuits)",
                             {"field": "circuits", "limit": limits.max_circuits,
                              "setting": "max_circuits"}, code="too_many_circuits")
    if len(circuits) > caps.max_circuits_per_batch:
        raise InvalidRequest(f"too many circuits: {len(circuits)}; backend {name!r} takes at "
                             f"most {caps.max_circuits_per_batch} in a batch",
                             {"field": "circuits", "limit": caps.max_circuits_per_batch},
                             code="too_many_circuits")
    pattern = re.compile(limits.label_pattern) if limits.label_pattern else None
    for label, source in circuits.items():
        _check_label(label, limits, pattern)
        if not isinstance(source, str):
            raise InvalidRequest(f"circuit {label!r}: the source must be a string of OpenQASM, "
                                 f"not {type(source).__name__}", {"field": "circuits",
                                                                  "label": label})
    shots = body.get("shots", caps.default_shots)
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise InvalidRequest(f"'shots' must be an integer, not {shots!r}", {"field": "shots"})
    if not 1 <= shots <= caps.max_shots:
        raise InvalidRequest(f"'shots' must be between 1 and {caps.max_shots} for backend "
                             f"{name!r}, got {shots}", {"field": "shots", "min": 1,
                                                        "max": caps.max_shots},
                             code="out_of_range")
    batch_name = body.get("name")
    if batch_name is not None and not isinstance(batch_name, str):
        raise InvalidRequest(f"'name' must be a string, not {type(batch_name).__name__}",
                             {"field": "name"})
    if batch_name is not None and len(batch_name) > limits.max_name_length:
        raise InvalidRequest(f"'name' is {len(batch_name)} characters; the limit is "
                             f"{limits.max_name_length} ([daemon] max_name_length)",
                             {"field": "name", "limit": limits.max_name_length,
                              "setting": "max_name_length"}, code="too_long")
    tags = body.get("tags")
    tags = {} if tags is None else tags
    _check_tags(tags, limits)
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not math.isfinite(timeout) or timeout <= 0):
        raise InvalidRequest(f"'timeout' must be a positive number of seconds, got {timeout!r}",
                             {"field": "timeout"})
    options = body.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object", {"field": "options"})
    try:
        backend.validate_options(options)
    except ValueError as exc:
        raise InvalidRequest(f"'options': {exc}", {"field": "options"},
                             code="invalid_options") from None
    metadata = body.get("metadata")
    _check_metadata(metadata, limits)
    return {"backend": name, "circuits": circuits, "shots": shots, "name": batch_name,
            "tags": tags, "timeout": float(timeout) if timeout is not None else None,
            "options": options, "metadata": metadata}


def _check_metadata(metadata: Any, limits: DaemonConfig) -> None:
    """The submitter's own object (a toolkit's result layout): stored and returned as given.

    Its nesting is bounded by the body's ([daemon] max_json_depth); its size, as compact
    JSON in UTF-8, by [daemon] max_metadata_bytes.
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"'metadata' must be an object, not {type(metadata).__name__}",
                             {"field": "metadata"})
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_metadata_bytes:
        raise InvalidRequest(f"'metadata' is {size} bytes as JSON; the limit is "
                             f"{limits.max_metadata_bytes} ([daemon] max_metadata_bytes)",
                             {"field": "metadata", "limit": limits.max_metadata_bytes,
                              "setting": "max_metadata_bytes"}, code="too_large")


def _check_label(label: str, limits: DaemonConfig, pattern: re.Pattern[str] | None) -> None:
    shown = label if len(label) <= 100 else label[:100] + "..."
    where = {"field": "circuits", "label": shown}
    if not 1 <= len(label) <= limits.max_label_length:
        raise InvalidRequest(f"circuit label {shown!r} is {len(label)} characters; a label is 1 "
                             f"to {limits.max_label_length} ([daemon] max_label_length)",
                             {**where, "limit": limits.max_label_length,
                              "setting": "max_label_length"}, code="invalid_label")
    if not label.isprintable():
        at = next(i for i, ch in enumerate(label) if not ch.isprintable())
        raise InvalidRequest(f"circuit label {shown!r}: character {at} ({label[at]!r}) is not "
                             "printable; a label is printable text (no control, line-break or "
                             "format characters)", {**where, "position": at},
                             code="invalid_label")
    if pattern is not None and not pattern.fullmatch(label):
        raise InvalidRequest(f"circuit label {shown!r} does not match [daemon] label_pattern "
                             f"{pattern.pattern!r}", {**where, "pattern": pattern.pattern,
                                                      "setting": "label_pattern"},
                             code="invalid_label")


def _check_tags(tags: Any, limits: DaemonConfig) -> None:
    if not isinstance(tags, dict):
        raise InvalidRequest("'tags' must be an object of string -> string pairs",
                             {"field": "tags"})
    if len(tags) > limits.max_tags:
        raise InvalidRequest(f"too many tags: {len(tags)}; a batch takes at most "
                             f"{limits.max_tags} ([daemon] max_tags)",
                             {"field": "tags", "limit": limits.max_tags, "setting": "max_tags"},
                             code="too_many_tags")
    for key, value in tags.items():
        shown = key if len(key) <= 100 else key[:100] + "..."
        if not isinstance(value, str):
            raise InvalidRequest(f"tag {shown!r}: the value must be a string, not "
                                 f"{type(value).__name__}", {"field": "tags", "tag": shown})
        longest = max(len(key), len(value))
        if longest > limits.max_tag_length:
            raise InvalidRequest(f"tag {shown!r}: {'key' if len(key) == longest else 'value'} is "
                                 f"{longest} characters; the limit is {limits.max_tag_length} "
                                 "([daemon] max_tag_length)",
                                 {"field": "tags", "tag": shown, "limit": limits.max_tag_length,
                                  "setting": "max_tag_length"}, code="too_long")


def parse_circuits(circuits: Mapping[str, str], backend: Backend) -> list[CircuitRecord]:
    """Parse every circuit and check it can be sent to the backend; CPU-bound (run in a thread).

    Reports every invalid circuit, not only the first.
    """
    records, errors = [], []
    versions = backend.capabilities.qasm_versions
    for label, source in circuits.items():
        try:
            parsed = qasm.parse_circuit(label, source)
            limit = backend.capabilities.max_qubits
            if limit is not None and parsed.num_qubits > limit:
                raise qasm.QasmError(label, f"the circuit uses {parsed.num_qubits} qubits; "
                                     f"backend {backend.name!r} takes at most {limit}")
            if parsed.qasm_version not in versions:
                qasm.convert(parsed, versions)  # raises if it has no form the backend takes
        except qasm.QasmError as exc:
            errors.append(exc)
            continue
        records.append(CircuitRecord(label=label, source=source,
                                     qasm_version=parsed.qasm_version,
                                     num_qubits=parsed.num_qubits, num_clbits=parsed.num_clbits))
    if errors:
        raise InvalidCircuits(errors)
    return records


def build_batch(fields: Mapping[str, Any], records: list[CircuitRecord], backend: Backend, *,
                owner_uid: int, idempotency_key: str | None, raw_body: Mapping[str, Any]
                ) -> NewBatch:
    if backend.capabilities.grouping == Grouping.PER_BATCH:
        groups = [[r.label for r in records]]
    else:
        groups = [[r.label] for r in records]
    digest = None
    if idempotency_key is not None:
        canonical = json.dumps(raw_body, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
    return NewBatch(owner_uid=owner_uid, backend=fields["backend"], shots=fields["shots"],
                    circuits=records, groups=groups, name=fields["name"], tags=fields["tags"],
                    options=fields["options"], timeout=fields["timeout"],
                    idempotency_key=idempotency_key, request_hash=digest,
                    metadata=fields.get("metadata"))
