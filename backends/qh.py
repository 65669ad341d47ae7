"""Qoro's compressed histograms, QH1 and QH2: decoding with every integrity check.

The layout (``../shared/wire/qoro.md``; all integers ULEB128 unless said)::

    magic         b"QH1" then ONE byte width  |  b"QH2" then the width as ULEB128
    unique        number of distinct outcomes
    total_shots
    num_gaps      then num_gaps gaps: outcome indices are their running sums
                  (ascending; the first gap is measured from 0)
    rle_len       bytes of the run-length block, then the block:
                    num_runs; if num_runs > 0: one raw byte first_value (0/1), then
                    num_runs run lengths, values alternating from first_value.
                    Expanded: per outcome, whether its count is exactly 1.
    extras_len    then one value per outcome whose count is not 1: count = value + 2

An outcome's index written in binary, ``width`` digits, most significant bit first, is
its counts key: Qiskit's order (highest classical bit leftmost).

Pure functions. Anything that does not add up raises :class:`QHError` saying which
check failed and with which numbers; the caller names the circuit.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from qjobd.errors import QjobdError

__all__ = ["ENCODINGS", "MAX_WIDTH", "QHError", "decode_envelope", "decode_payload"]

#: envelope ``encoding`` -> payload magic
ENCODINGS = {"qh1": b"QH1", "qh2": b"QH2"}
#: widest histogram accepted; every outcome's key is this many characters
MAX_WIDTH = 1 << 16
#: a count, a length or a shot total never needs more than 64 bits (10 ULEB128 bytes)
_MAX_SCALAR_BYTES = 10


class QHError(QjobdError, ValueError):
    """A QH1/QH2 histogram is malformed or fails an integrity check."""


class _Reader:
    """ULEB128 and raw bytes from a buffer, with truncation reported by field name."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def byte(self, field: str) -> int:
        if self.pos >= self.end:
            raise QHError(f"truncated payload: {field} is missing (byte {self.pos} of "
                          f"{self.end})")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def uleb(self, field: str, max_bytes: int = _MAX_SCALAR_BYTES) -> int:
        start = self.pos
        value = shift = 0
        while True:
            if self.pos >= self.end:
                raise QHError(f"truncated payload: {field} runs past the end (starts at byte "
                              f"{start} of {self.end})")
            if self.pos - start >= max_bytes:
                raise QHError(f"{field} at byte {start} is longer than {max_bytes} ULEB128 "
                              "bytes: too large for its field")
            b = self.buf[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7


def decode_payload(blob: bytes, *, expected_bits: int | None = None,
                   expected_magic: bytes | None = None) -> dict[str, int]:
    """Counts keyed by bitstring from a raw QH1/QH2 payload.

    ``expected_bits`` (the envelope's ``n_bits``) and ``expected_magic`` (from the
    envelope's ``encoding``) are checked against the payload's own header when given.
    """
    r = _Reader(blob)
    magic = bytes(blob[:3])
    if magic not in (b"QH1", b"QH2"):
        raise QHError(f"bad magic {magic!r}: expected b'QH1' or b'QH2'")
    r.pos = 3
    if expected_magic is not None and magic != expected_magic:
        raise QHError(f"the payload's magic {magic.decode()} disagrees with the envelope's "
                      f"encoding {expected_magic.decode().lower()!r}")
    width = r.byte("the QH1 width byte") if magic == b"QH1" else r.uleb("the QH2 width")
    if width < 1 or width > MAX_WIDTH:
        raise QHError(f"width {width} is out of range (1 to {MAX_WIDTH} bits)")
    if expected_bits is not None and width != expected_bits:
        raise QHError(f"width mismatch: the payload is {width} bits wide but the envelope "
                      f"says n_bits = {expected_bits}")
    unique = r.uleb("unique")
    total_shots = r.uleb("total_shots")
    num_gaps = r.uleb("num_gaps")
    if num_gaps > r.remaining:  # every gap takes at least one byte
        raise QHError(f"truncated payload: num_gaps = {num_gaps} but only {r.remaining} "
                      "bytes remain")

    # outcome indices: running sums of the gaps, strictly ascending, below 2**width
    gap_bytes = width // 7 + 2
    indices: list[int] = []
    index = 0
    for i in range(num_gaps):
        gap = r.uleb(f"gap {i}", gap_bytes)
        if i and gap == 0:
            raise QHError(f"gap {i} is 0: outcome index {index} is listed twice")
        index += gap
        if index >> width:
            raise QHError(f"outcome {i} has index {index}, which does not fit in {width} "
                          "bits")
        indices.append(index)

    # the run-length block: which outcomes have a count of exactly 1
    rle_len = r.uleb("rle_len")
    if rle_len > r.remaining:
        raise QHError(f"truncated payload: rle_len = {rle_len} but only {r.remaining} bytes "
                      "remain")
    block = _Reader(blob, r.pos, r.pos + rle_len)
    r.pos += rle_len
    num_runs = block.uleb("num_runs")
    is_one: list[bool] = []
    if num_runs:
        first = block.byte("first_value")
        if first not in (0, 1):
            raise QHError(f"first_value is {first}; it must be 0 or 1")
        value = first == 1
        total = 0
        for i in range(num_runs):
            run = block.uleb(f"run length {i}")
            total += run
            if total > num_gaps:
                raise QHError(f"run lengths sum to more than num_gaps = {num_gaps} "
                              f"(at least {total} after {i + 1} of {num_runs} runs)")
            is_one.extend([value] * run)
            value = not value
    if len(is_one) != num_gaps:
        raise QHError(f"run lengths sum to {len(is_one)}, but num_gaps = {num_gaps}")
    if block.remaining:
        raise QHError(f"the run-length block has {block.remaining} bytes left over: "
                      f"rle_len = {rle_len} but its runs end after {rle_len - block.remaining}")

    # counts: 1, or an extra value + 2
    extras_len = r.uleb("extras_len")
    non_one = is_one.count(False)
    if extras_len != non_one:
        raise QHError(f"extras_len = {extras_len}, but {non_one} outcomes have a count other "
                      "than 1")
    extras = [r.uleb(f"extra {i}") + 2 for i in range(extras_len)]
    if r.remaining:
        raise QHError(f"{r.remaining} unexpected bytes after the histogram's end (byte "
                      f"{r.pos} of {len(blob)})")

    counts: list[int] = []
    it = iter(extras)
    for one in is_one:
        counts.append(1 if one else next(it))
    shots = sum(counts)
    if shots != total_shots:
        raise QHError(f"counts sum to {shots}, but total_shots = {total_shots}")
    if num_gaps != unique:
        raise QHError(f"unique = {unique}, but {num_gaps} outcomes were decoded")
    return {format(i, f"0{width}b"): c for i, c in zip(indices, counts, strict=True)}


def decode_envelope(envelope: Mapping[str, Any]) -> dict[str, int]:
    """Counts from ``{"encoding": "qh1" | "qh2", "n_bits": N, "payload": "<base64>"}``."""
    encoding = envelope.get("encoding")
    if encoding not in ENCODINGS:
        raise QHError(f"unknown histogram encoding {encoding!r}; expected 'qh1' or 'qh2'")
    n_bits = envelope.get("n_bits")
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits < 1:
        raise QHError(f"n_bits {n_bits!r} is not a positive integer")
    payload = envelope.get("payload")
    if not isinstance(payload, str) or not payload:
        raise QHError("the payload is missing or empty")
    try:
        blob = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QHError(f"the payload is not valid base64: {exc}") from None
    return decode_payload(blob, expected_bits=n_bits, expected_magic=ENCODINGS[encoding])
