"""The engine's cache of in-flight jobs' circuits: bounded by the QASM it holds."""

from __future__ import annotations

from qjobd.daemon.engine.circuitcache import CircuitCache
from qjobd.store.models import CircuitRecord


def records(label: str, size: int) -> list[CircuitRecord]:
    return [CircuitRecord(label, "x" * size, 3, 2, 2)]


def test_a_job_s_circuits_come_back_as_they_were_put() -> None:
    cache = CircuitCache(1000)
    assert cache.put("j1", records("a", 10) + records("b", 20))
    got = cache.get("j1")
    assert got is not None and [r.label for r in got] == ["a", "b"]
    assert cache.chars == 30 and cache.get("j2") is None


def test_when_full_new_circuits_are_not_kept_and_the_oldest_stay() -> None:
    # the oldest entries are the next creates (jobs go out in the order they came)
    cache = CircuitCache(100)
    kept = [cache.put(f"j{n}", records("c", 30)) for n in range(4)]
    assert kept == [True, True, True, False]
    assert cache.chars == 90 and len(cache) == 3
    assert [cache.get(f"j{n}") is not None for n in range(4)] == [True, True, True, False]
    cache.drop("j0")  # a job ended: room for the next
    assert cache.put("j3", records("c", 30)) and cache.chars == 90


def test_circuits_larger_than_the_bound_and_jobs_without_circuits_are_not_kept() -> None:
    cache = CircuitCache(100)
    assert cache.put("small", records("c", 10))
    assert not cache.put("huge", records("c", 101))
    assert not cache.put("none", [])
    assert cache.get("huge") is None and cache.get("none") is None
    assert cache.get("small") is not None and cache.chars == 10 and len(cache) == 1


def test_dropping_a_job_frees_its_share_and_putting_it_again_does_not_count_twice() -> None:
    cache = CircuitCache(100)
    cache.put("j", records("c", 40))
    cache.put("j", records("c", 40))
    assert cache.chars == 40
    cache.drop("j")
    cache.drop("j")
    assert cache.chars == 0 and len(cache) == 0
