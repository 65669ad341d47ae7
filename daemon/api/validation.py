"""Checking a submission before anything is stored: shape, limits, backend, and every circuit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from qjobd.backends import _aer_cost, qasm
from qjobd.backends.base import Backend, Grouping
from qjobd.daemon.api import jsonbody
from qjobd.daemon.api.parsing import ParsePool, WorkerDied
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
    """One or more circuits are not valid OpenQASM, or not for this backend (HTTP 422)."""

    code = "invalid_qasm"

    def __init__(self, errors: list[qasm.QasmError]) -> None:
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        self.message = f"{errors[0]}{more}"
        self.details = [e.to_dict() for e in errors]
        if all(isinstance(e, qasm.OverLimit) for e in errors) and self.code == "invalid_qasm":
            self.code = "over_limit"
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


# -- the circuits ------------------------------------------------------------------------
#
# Checked in the daemon's parse workers (daemon/api/parsing.py), never on the event loop:
# a batch is cut into chunks of about CHUNK_BYTES of source, handed out round-robin with
# other requests' chunks; each chunk's circuits are scanned (declarations against the
# limits) before any of them is parsed.

#: a chunk of a batch for one worker: big enough that its overhead is small, small enough
#: that two workers share a batch and other requests get a turn between chunks
CHUNK_BYTES = 256 * 1024
#: limits whose refusal is a 413 (the request is too big to check), not a 422
SIZE_LIMITS = frozenset({"operations", "parser memory", "time"})


class CircuitsTooLarge(InvalidCircuits):
    """Circuits over a size limit: operations, the parser's memory, the time to check (413)."""

    code = "circuit_too_large"


@dataclass(frozen=True, slots=True)
class CircuitPlan:
    """What each circuit of a submission is checked against; sent to the parse workers."""

    backend: str
    limits: qasm.CircuitLimits
    #: the OpenQASM versions the backend takes (others are converted)
    versions: frozenset[int]
    #: the versions its provider parses itself (see Capabilities.provider_parsed)
    provider_parsed: frozenset[int]
    #: limit name -> the sentence that says where it comes from
    sources: Mapping[str, str]
    #: a simulator's cost check for the batch's shots (Capabilities.simulation_cost)
    cost: _aer_cost.CostCheck | None = None


@dataclass(frozen=True, slots=True)
class CheckedCircuits:
    records: list[CircuitRecord]
    #: the checks that could not be made, one sentence per circuit concerned
    warnings: list[str]


def circuit_plan(backend: Backend, limits: DaemonConfig = DEFAULT_LIMITS, *,
                 shots: int | None = None, options: Mapping[str, Any] | None = None
                 ) -> CircuitPlan:
    """What each circuit is checked against; ``shots`` and ``options`` (the batch's) for a
    backend that estimates its circuits' simulation (without them, no estimate is made)."""
    caps = backend.capabilities
    name = backend.name
    if caps.max_qubits is not None:
        qubits = caps.max_qubits
        why = f"{caps.max_qubits_reason}; " if caps.max_qubits_reason else ""
        qubit_source = (f"backend {name!r} takes at most {qubits} qubits ({why}"
                        f"[backends.{name}] max_qubits sets it)")
    else:
        qubits = limits.max_qubits
        qubit_source = (f"backend {name!r} states no qubit limit, so the daemon's applies: "
                        f"{qubits} ([daemon] max_qubits)")
    model = caps.simulation_cost
    cost = None
    if model is not None and shots is not None:
        method = (options or {}).get("method", "automatic")
        cost = _aer_cost.CostCheck(model, shots, method if isinstance(method, str) else "")
    return CircuitPlan(
        backend=name,
        limits=qasm.CircuitLimits(max_qubits=qubits, max_clbits=limits.max_clbits,
                                  max_operations=limits.max_operations),
        versions=caps.qasm_versions, provider_parsed=caps.provider_parsed,
        sources={"qubits": qubit_source,
                 "classical bits": f"at most {limits.max_clbits} classical bits per circuit "
                                   "([daemon] max_clbits)",
                 "operations": f"at most {limits.max_operations} operations per circuit "
                               "([daemon] max_operations)",
                 "parser memory": f"each parse worker may use {limits.parse_worker_memory:,} "
                                  "bytes ([daemon] parse_worker_memory)",
                 "time": f"a submission's circuits are checked in at most "
                         f"{limits.validation_timeout} s ([daemon] validation_timeout)",
                 "estimated seconds": _cost_source(name, model)},
        cost=cost)


def _cost_source(name: str, model: _aer_cost.CostModel | None) -> str:
    if model is None:
        return f"backend {name!r} estimates no simulation cost"
    return (f"backend {name!r} refuses a circuit whose simulation is estimated at more than "
            f"{model.max_seconds:g} s ({model.setting} sets it, 0 for no limit); fewer "
            "shots cost less, and so does measuring only at the end (no reset, no condition, "
            "nothing on a qubit after it is measured), which lets Aer sample every shot "
            "from one run")


def check_chunk(circuits: Sequence[tuple[str, str]], plan: CircuitPlan
                ) -> list[qasm.Checked | qasm.QasmError]:
    """Check circuits (in a parse worker): every declaration scan first, then each parse."""
    outcomes: list[qasm.Checked | qasm.QasmError | qasm.Declared] = []
    for label, source in circuits:
        try:
            outcomes.append(qasm.check_declarations(label, source, plan.limits))
        except qasm.QasmError as exc:
            outcomes.append(_explained(exc, plan))
    for index, (label, source) in enumerate(circuits):
        declared = outcomes[index]
        if not isinstance(declared, qasm.Declared):
            continue
        try:
            outcomes[index] = qasm.check_circuit(label, source, limits=plan.limits,
                                                 versions=plan.versions,
                                                 provider_parsed=plan.provider_parsed,
                                                 declared=declared, cost=plan.cost)
        except qasm.QasmError as exc:
            outcomes[index] = _explained(exc, plan)
    return [o for o in outcomes if not isinstance(o, qasm.Declared)]


def _explained(error: qasm.QasmError, plan: CircuitPlan) -> qasm.QasmError:
    if not isinstance(error, qasm.OverLimit) or error.limit not in plan.sources:
        return error
    return qasm.OverLimit(error.label, f"{error.reason}: {plan.sources[error.limit]}",
                          error.line, error.column, error.limit, error.maximum, error.value)


async def check_circuits(circuits: Mapping[str, str], backend: Backend,
                         limits: DaemonConfig = DEFAULT_LIMITS, pool: ParsePool | None = None,
                         *, shots: int | None = None, options: Mapping[str, Any] | None = None
                         ) -> CheckedCircuits:
    """Check every circuit of a submission, in ``pool``'s workers (else in a thread).

    ``shots`` and ``options``: the batch's, for a backend that estimates each circuit's
    simulation cost (the local simulator) and refuses one over its limit.

    Reports every invalid circuit, not only the first: :class:`InvalidCircuits` (422), or
    :class:`CircuitsTooLarge` (413) when every refusal is over a size limit. Gives up
    after ``validation_timeout`` seconds (413), and when cancelled, abandons the work.
    """
    plan = circuit_plan(backend, limits, shots=shots, options=options)
    chunks = _chunks(list(circuits.items()))
    group = object()
    try:
        with anyio.fail_after(limits.validation_timeout):
            answers = await asyncio.gather(*(_check(chunk, plan, pool, group)
                                             for chunk in chunks))
    except TimeoutError:
        label = next(iter(circuits))
        raise CircuitsTooLarge([qasm.OverLimit(
            label, f"checking the batch's {len(circuits)} circuits took longer than "
            f"{limits.validation_timeout} s: {plan.sources['time']}", None, None, "time",
            limits.validation_timeout, None)]) from None
    outcomes = [outcome for answer in answers for outcome in answer]
    errors = [o for o in outcomes if isinstance(o, qasm.QasmError)]
    if errors:
        if all(isinstance(e, qasm.OverLimit) and e.limit in SIZE_LIMITS for e in errors):
            raise CircuitsTooLarge(errors)
        raise InvalidCircuits(errors)
    records, warnings = [], []
    for checked in outcomes:
        assert isinstance(checked, qasm.Checked)
        qasm.remember(checked)  # the job's submission finds its facts and conversion here
        records.append(CircuitRecord(label=checked.label, source=circuits[checked.label],
                                     qasm_version=checked.qasm_version,
                                     num_qubits=checked.num_qubits,
                                     num_clbits=checked.num_clbits))
        warnings += [f"circuit {checked.label!r}: {note}" for note in checked.skipped]
    return CheckedCircuits(records, warnings)


def _chunks(items: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    chunks: list[list[tuple[str, str]]] = [[]]
    size = 0
    for item in items:
        if chunks[-1] and size + len(item[1]) > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1])
    return chunks


async def _check(chunk: list[tuple[str, str]], plan: CircuitPlan, pool: ParsePool | None,
                 group: object) -> list[qasm.Checked | qasm.QasmError]:
    if pool is None:
        # no parse workers (tests, embedded use): a thread, with the reference path only
        answer: list[qasm.Checked | qasm.QasmError] = await anyio.to_thread.run_sync(
            check_chunk, chunk, plan)
        return answer
    try:
        result: list[qasm.Checked | qasm.QasmError] = await pool.run("check", (chunk, plan),
                                                                     group=group)
        return result
    except WorkerDied as exc:
        if len(chunk) > 1:
            # which circuit killed it? each on its own, so the others are still answered
            parts = await asyncio.gather(*(_check([item], plan, pool, group) for item in chunk))
            return [outcome for part in parts for outcome in part]
        label = chunk[0][0]
        return [qasm.OverLimit(label, f"{exc}, probably over its memory limit: "
                               f"{plan.sources['parser memory']}", None, None, "parser memory",
                               0, None)]


def build_batch(fields: Mapping[str, Any], records: list[CircuitRecord], backend: Backend, *,
                owner_uid: int, idempotency_key: str | None, raw_body: Mapping[str, Any],
                warnings: Sequence[str] = ()) -> NewBatch:
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
                    metadata=fields.get("metadata"), warnings=tuple(warnings))
