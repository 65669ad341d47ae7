"""The QH1/QH2 decoder (backends/qh.py) against the fake's independent encoder and by hand."""

from __future__ import annotations

import base64
import random

import pytest

from qjobd.backends.qh import MAX_WIDTH, QHError, decode_envelope, decode_payload
from qjobd.testing.fake_qoro import (
    corrupt_envelope,
    encode_qh,
    planted_counts,
    qh_envelope,
    uleb128,
)

COUNTS = {0b0001: 1, 0b0100: 7, 0b0101: 1, 0b0110: 1, 0b1111: 300}


def test_a_payload_built_byte_by_byte_decodes_msb_first():
    # {01: 1, 11: 5} in 2 bits: gaps 1, 2; runs [1 one, 1 not-one]; extra 5 - 2 = 3
    blob = b"QH1" + bytes([2, 2, 6, 2, 1, 2, 4, 2, 1, 1, 1, 1, 3])
    assert decode_payload(blob) == {"01": 1, "11": 5}
    qh2 = b"QH2" + bytes([2]) + blob[4:]
    assert decode_payload(qh2) == {"01": 1, "11": 5}
    # index 1 in 3 bits is "001": most significant bit first, Qiskit's order
    assert decode_payload(encode_qh({1: 4}, 3)) == {"001": 4}


def test_an_empty_histogram_decodes_to_no_counts():
    assert decode_payload(encode_qh({}, 5)) == {}


def test_ulebs_of_many_bytes_carry_large_counts():
    counts = {0: 1, 5: 2, 9: 10**12}
    assert decode_payload(encode_qh(counts, 4)) == {"0000": 1, "0101": 2, "1001": 10**12}


@pytest.mark.parametrize(("width", "version"), [
    *[(w, v) for w in (1, 8, 64, 65, 130, 255) for v in (1, 2)],
    (300, 2),  # QH1 carries its width in one byte
])
def test_every_width_round_trips(width, version):
    rng = random.Random(width * 10 + version)
    top = (1 << width) - 1
    counts: dict[int, int] = {}
    while len(counts) < min(38, 1 << width):
        counts[rng.getrandbits(width)] = rng.choice([1, 1, 2, 17, 1000])
    counts |= {0: 3, top: 1}  # both extreme indices
    env = qh_envelope(counts, width, version)
    decoded = decode_envelope(env)
    assert decoded == {format(i, f"0{width}b"): c for i, c in counts.items()}
    assert all(len(k) == width for k in decoded)
    assert decoded["1" * width] == 1 and decoded["0" * width] == 3


@pytest.mark.parametrize("width", [1, 8, 64, 65, 130])
def test_planted_histograms_round_trip(width):
    for job in range(20):
        counts = planted_counts(f"job-{job}", "c", 1000, width)
        assert sum(counts.values()) == 1000
        decoded = decode_envelope(qh_envelope(counts, width, 2))
        assert decoded == {format(i, f"0{width}b"): c for i, c in counts.items()}


# -- every integrity check, one at a time ---------------------------------------------------

CHECKS = [
    ("magic", {"magic": b"QHX"}, r"bad magic b'QHX'"),
    ("runs over", {"runs": [3, 3], "first_value": 0},
     r"run lengths sum to more than num_gaps = 5"),
    ("runs under", {"runs": [1, 1], "first_value": 0}, r"run lengths sum to 2, but num_gaps = 5"),
    ("extras_len", {"extras_len": 3, "extras": [5, 298, 0]},
     r"extras_len = 3, but 2 outcomes have a count other than 1"),
    ("total_shots", {"total_shots": 311}, r"counts sum to 310, but total_shots = 311"),
    ("unique", {"unique": 4}, r"unique = 4, but 5 outcomes were decoded"),
    ("rle_len long", {"rle_len": 40}, r"truncated payload: rle_len = 40"),
    ("rle_len leftover", {"rle_len": 7}, r"the run-length block has 1 bytes left over"),
    ("first_value", {"first_value": 2}, r"first_value is 2; it must be 0 or 1"),
    ("repeated index", {"gaps": [1, 3, 0, 1, 9]}, r"gap 2 is 0: outcome index 4 is listed twice"),
    ("index too wide", {"gaps": [1, 3, 1, 1, 20]}, r"outcome 4 has index 26, which does not fit"),
    ("width zero", {"width": 0}, r"width 0 is out of range"),
]


@pytest.mark.parametrize(("overrides", "message"), [c[1:] for c in CHECKS],
                         ids=[c[0] for c in CHECKS])
@pytest.mark.parametrize("version", [1, 2])
def test_each_integrity_check_names_what_failed(version, overrides, message):
    blob = encode_qh(COUNTS, 4, version, **overrides)
    with pytest.raises(QHError, match=message):
        decode_payload(blob)


def test_the_width_must_agree_with_the_envelope():
    with pytest.raises(QHError, match=r"width mismatch: the payload is 4 bits wide but the "
                                      r"envelope says n_bits = 5"):
        decode_envelope(corrupt_envelope(COUNTS, 4, 1, "width"))


@pytest.mark.parametrize("version", [1, 2])
def test_the_magic_must_agree_with_the_envelopes_encoding(version):
    env = corrupt_envelope(COUNTS, 4, version, "encoding")
    other = "qh2" if version == 1 else "qh1"
    with pytest.raises(QHError, match=f"the payload's magic QH{version} disagrees with the "
                                      f"envelope's encoding '{other}'"):
        decode_envelope(env)


@pytest.mark.parametrize("version", [1, 2])
def test_every_truncation_is_reported_as_truncated(version):
    blob = encode_qh(COUNTS, 4, version)
    assert decode_payload(blob)
    for cut in range(3, len(blob)):
        with pytest.raises(QHError, match="truncated payload"):
            decode_payload(blob[:cut])


def test_bytes_after_the_end_are_refused():
    with pytest.raises(QHError, match=r"1 unexpected bytes after the histogram's end"):
        decode_payload(encode_qh(COUNTS, 4) + b"\x00")


def test_a_varint_too_long_for_its_field_is_refused():
    blob = b"QH1\x04" + b"\xff" * 11 + b"\x01"
    with pytest.raises(QHError, match=r"unique at byte 4 is longer than 10 ULEB128 bytes"):
        decode_payload(blob)


def test_a_declared_width_beyond_the_limit_is_refused():
    with pytest.raises(QHError, match="out of range"):
        decode_payload(b"QH2" + uleb128(MAX_WIDTH + 1) + b"\x00\x00\x00\x01\x00\x00")


def test_num_gaps_larger_than_the_payload_is_truncation_not_an_allocation():
    blob = b"QH1\x04" + uleb128(5) + uleb128(10) + uleb128(10**15)
    with pytest.raises(QHError, match=r"truncated payload: num_gaps = 1000000000000000"):
        decode_payload(blob)


@pytest.mark.parametrize(("envelope", "message"), [
    ({"encoding": "qh3", "n_bits": 4, "payload": "UUgx"}, "unknown histogram encoding 'qh3'"),
    ({"encoding": "qh1", "n_bits": True, "payload": "UUgx"}, "n_bits True is not a positive"),
    ({"encoding": "qh1", "n_bits": 0, "payload": "UUgx"}, "n_bits 0 is not a positive"),
    ({"encoding": "qh1", "n_bits": 4, "payload": ""}, "the payload is missing or empty"),
    ({"encoding": "qh1", "n_bits": 4}, "the payload is missing or empty"),
    ({"encoding": "qh1", "n_bits": 4, "payload": "*not base64*"}, "not valid base64"),
])
def test_malformed_envelopes_are_refused(envelope, message):
    with pytest.raises(QHError, match=message):
        decode_envelope(envelope)


def test_corrupted_bytes_raise_qherror_or_decode_never_anything_else():
    rng = random.Random(7)
    blobs = [encode_qh(planted_counts(f"j{i}", "x", 500, w), w, v)
             for i, (w, v) in enumerate([(3, 1), (9, 2), (70, 1), (130, 2)])]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(2000):
        blob = bytearray(rng.choice(blobs))
        for _ in range(rng.randint(1, 3)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            counts = decode_payload(bytes(blob))
        except QHError:
            outcomes["refused"] += 1
        else:
            outcomes["decoded"] += 1
            assert all(set(k) <= {"0", "1"} for k in counts)
    assert outcomes["refused"] > 1000


def test_the_envelope_payload_is_standard_base64():
    env = qh_envelope(COUNTS, 4, 1)
    assert base64.b64decode(env["payload"]).startswith(b"QH1\x04")
    assert decode_envelope(env) == {format(i, "04b"): c for i, c in COUNTS.items()}
