"""The overnight guarantee: kill -9 at any instant loses nothing and duplicates nothing.

A real `qjobd serve` against the fake IonQ (its own process) is killed with SIGKILL again
and again: right after a submission is acknowledged, while a remote create has happened
but its answer (the remote id) has not reached the store, and at random instants of
heavy activity. After a last restart every acknowledged batch must be there, terminal,
with exactly the counts the fake planted, and the fake must have seen one create per
submission key.

Set QJOBD_CHAOS_ROUNDS / QJOBD_CHAOS_SEED for a longer or different run
(docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator

import pytest

from qjobd.testing.daemon_process import TERMINAL, DaemonProcess, wait_until
from qjobd.testing.fake_ionq import FakeIonQProcess
from tests.conftest import BELL3, short_tmpdir

KEY = "sk-chaos-5d1e0b7a"
ROUNDS = int(os.environ.get("QJOBD_CHAOS_ROUNDS", "9"))
SEED = int(os.environ.get("QJOBD_CHAOS_SEED", "20261123"))


@pytest.fixture
def fake() -> Iterator[FakeIonQProcess]:
    f = FakeIonQProcess(api_key=KEY, knobs={"duration": [0.5, 2.0]}, seed=SEED).start()
    yield f
    f.stop()


def config(base_url: str) -> str:
    return (f'[polling]\ninitial_interval = 0.1\nmax_interval = 0.5\n'
            f'[backends.ionq]\ntype = "ionq"\nbase_url = "{base_url}"\n')


def submit(d: DaemonProcess, rng: random.Random, acked: dict[str, int]) -> str:
    n = rng.randint(1, 5)
    with d.http() as c:
        r = c.post("/v1/batches", json={"backend": "ionq", "shots": 100,
                                        "circuits": {f"c{i}": BELL3 for i in range(n)}})
    assert r.status_code == 201, r.text
    acked[r.json()["id"]] = n  # acknowledged: from here on it must never be lost
    return r.json()["id"]


def test_kill_9_at_any_instant_loses_nothing_and_duplicates_nothing(fake) -> None:
    rng = random.Random(SEED)
    d = DaemonProcess(short_tmpdir(), config(fake.base_url), {"IONQ_API_KEY": KEY})
    acked: dict[str, int] = {}
    kills = {"after_ack": 0, "create_in_flight": 0, "random": 0}
    try:
        for round_ in range(ROUNDS):
            d.start()
            kind = ("after_ack", "create_in_flight", "random")[round_ % 3]
            if kind == "after_ack":
                submit(d, rng, acked)
            elif kind == "create_in_flight":
                stalled = len(fake.stats()["stalled_creates"])
                # the next create happens at the provider, but its answer waits 3 s
                fake.set_knobs(stall_create_seconds=3.0, stall_create_count=1)
                submit(d, rng, acked)
                wait_until(lambda n=stalled: len(fake.stats()["stalled_creates"]) > n, 20,
                           "a create to stall")
            else:
                for _ in range(rng.randint(1, 3)):
                    submit(d, rng, acked)
                time.sleep(rng.uniform(0.05, 1.5))  # the chaos: an arbitrary instant
            d.kill()
            kills[kind] += 1
            fake.set_knobs(stall_create_seconds=0.0)

        d.start()
        with d.http() as c:
            def all_terminal() -> bool:
                return all(c.get(f"/v1/batches/{b}").json()["state"] in TERMINAL
                           for b in acked)
            wait_until(all_terminal, 120, "every acknowledged batch to finish")
            batches = {b: c.get(f"/v1/batches/{b}").json() for b in acked}
            results = {b: c.get(f"/v1/batches/{b}/results").json()["results"] for b in acked}
        remote = fake.jobs(counts=True)
        stats = fake.stats()
    finally:
        d.stop()

    print(f"chaos: seed {SEED}, {ROUNDS} kills {kills}, {len(acked)} batches, "
          f"{sum(acked.values())} circuits, {stats['creates']} creates")
    assert all(kills.values())
    assert stats["duplicate_keys"] == {}, "a circuit was created twice remotely"
    for batch_id, n in acked.items():
        batch = batches[batch_id]
        assert batch["state"] == "completed", (batch_id, [j["error"] for j in batch["jobs"]])
        assert len(results[batch_id]) == n
        for job in batch["jobs"]:
            (label,) = job["labels"]
            planted = remote[job["remote_id"]]["expected_counts"]
            assert results[batch_id][label]["counts"] == planted
    assert stats["creates"] == sum(acked.values()), "every circuit ran exactly once"


def test_sigterm_during_heavy_polling_stops_fast_and_the_next_start_resumes(fake) -> None:
    fake.set_knobs(duration=[2.0, 4.0])
    d = DaemonProcess(short_tmpdir(), config(fake.base_url), {"IONQ_API_KEY": KEY})
    acked: dict[str, int] = {}
    try:
        d.start()
        with d.http() as c:
            for _ in range(3):
                r = c.post("/v1/batches", json={"backend": "ionq", "shots": 10, "circuits": {
                    f"c{i}": BELL3 for i in range(100)}})
                assert r.status_code == 201
                acked[r.json()["id"]] = 100
        wait_until(lambda: fake.stats()["by_route"].get("GET /jobs", 0) >= 10, 30,
                   "polling under way")
        started = time.monotonic()
        assert d.signal(signal.SIGTERM) == 0
        took = time.monotonic() - started
        assert took < 5, f"SIGTERM took {took:.2f} s"
        assert not d.socket.exists()

        d.start()
        with d.http() as c:
            wait_until(lambda: all(c.get(f"/v1/batches/{b}").json()["state"] in TERMINAL
                                   for b in acked), 60, "the resumed batches to finish")
            states = {c.get(f"/v1/batches/{b}").json()["state"] for b in acked}
    finally:
        d.stop()
    print(f"SIGTERM with 300 jobs in flight took {took:.2f} s")
    assert states == {"completed"}
    stats = fake.stats()
    assert stats["duplicate_keys"] == {} and stats["creates"] == 300
