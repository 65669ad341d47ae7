"""A benchmark's settings from its command line (bench/scale_bench.py, bench/cluster_bench.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

S = TypeVar("S")


def settings_from(args: argparse.Namespace, defaults: S, quick: Mapping[str, Any],
                  **parsed: Any) -> S:
    """``defaults`` (a dataclass), with ``quick`` over them under ``--quick``, then every
    option given on the command line that names one of its fields. ``parsed``: the fields
    whose option needs parsing first, by name, already parsed (None: not given)."""
    settings = replace(defaults, **quick) if args.quick else defaults
    names = {f.name for f in fields(defaults)}
    given = {k: v for k, v in vars(args).items()
             if k in names and k not in parsed and v is not None}
    given.update((k, v) for k, v in parsed.items() if v is not None)
    return replace(settings, **given)
