"""The engine's cache of in-flight jobs' circuits: bounded by the QASM it holds."""

from __future__ import annotations

from qjobd.daemon.engine.circuitcache import CircuitCache
from qjobd.store.models import CircuitRecord


def records(label: str, size: int) -> list[CircuitRecord]:
    return [CircuitRecord(label, "x" * size, 3, 2, 2)]


def test_a_job_s_circuits_come_back_as_they_were_put() -> None:
    cache = CircuitCache(1000)
    cache.put("j1", records("a", 10) + records("b", 20))
    got = cache.get("j1")
    assert got is not None and [r.label for r in got] == ["a", "b"]
    assert cache.bytes == 30 and cache.get("j2") is None


def test_the_oldest_jobs_go_out_to_keep_within_the_bound() -> None:
    cache = CircuitCache(100)
    for n in range(4):
        cache.put(f"j{n}", records("c", 30))
    assert cache.bytes == 90 and len(cache) == 3
    assert cache.get("j0") is None and cache.get("j3") is not None
    cache.put("big", records("c", 80))  # out go j1 and j2 and j3 until it fits
    assert cache.bytes <= 100 and cache.get("big") is not None
    assert [cache.get(f"j{n}") for n in range(4)] == [None] * 4


def test_circuits_larger_than_the_bound_are_not_kept() -> None:
    cache = CircuitCache(100)
    cache.put("small", records("c", 10))
    cache.put("huge", records("c", 101))
    assert cache.get("huge") is None and cache.get("small") is not None and cache.bytes == 10


def test_dropping_a_job_frees_its_bytes_and_putting_it_again_does_not_count_twice() -> None:
    cache = CircuitCache(100)
    cache.put("j", records("c", 40))
    cache.put("j", records("c", 40))
    assert cache.bytes == 40
    cache.drop("j")
    cache.drop("j")
    assert cache.bytes == 0 and len(cache) == 0
