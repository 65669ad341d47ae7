"""Distil ionq_openapi_schemas.json from IonQ's OpenAPI document (run by hand, rarely).

    pip download --no-deps --no-binary :all: ionq-core==0.2.0 && tar xzf ionq_core-0.2.0.tar.gz
    python tests/integration/data/distill_ionq_openapi.py ionq_core-0.2.0/openapi.json

Keeps the schemas of the answers the fake IonQ gives (and every schema they refer to),
without descriptions and examples: what tests/integration/test_fake_ionq.py checks the
fake against. The document is ionq-core's, Apache-2.0.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOTS = ("JobCreationResponse", "SingleCircuitJob", "BaseJob", "CircuitJobStats",
         "ArtifactDescriptor", "GetJobsResponse", "JobCanceledResponse", "JobsCanceledResponse",
         "Error", "BadRequestError", "Failure")
DROP = {"description", "example", "examples", "title", "x-mint"}


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROP}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if "$ref" in node else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def main(source: str) -> None:
    raw = Path(source).read_bytes()
    document = json.loads(raw)
    schemas = document["components"]["schemas"]
    kept: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in kept:
            kept[name] = strip(schemas[name])
            todo += sorted(refs(kept[name]) - set(kept))
    out = {"source": f"ionq-core 0.2.0 sdist, openapi.json ({document['info']['version']}), "
                     f"sha256 {hashlib.sha256(raw).hexdigest()}; Apache-2.0",
           "schemas": dict(sorted(kept.items()))}
    target = Path(__file__).with_name("ionq_openapi_schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
