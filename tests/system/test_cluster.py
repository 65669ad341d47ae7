"""Several daemons, one PostgreSQL store: three ``qjobd serve`` processes on one database of
the suite's own PostgreSQL server, the fake IonQ behind them. Batches are submitted to all
three; one daemon is killed with -9 mid-run, then a second. Every batch completes, every
circuit is created exactly once at the provider, the provider's request rate stays within
the one budget all nodes share, and batches are waited for and read on a node other than
the one that took them."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator

import pytest

from qjobd.testing.daemon_process import TERMINAL, DaemonProcess, wait_until
from qjobd.testing.fake_ionq import FakeIonQProcess
from tests.conftest import BELL3, short_tmpdir

KEY = "sk-cluster-8c41"
#: the budget of every node together
BUDGET = 20
LEASE = 3.0
RUNS = int(os.environ.get("QJOBD_CLUSTER_RUNS", "1"))


def config(base_url: str) -> str:
    return (f'[daemon]\nlease_seconds = {LEASE}\n'
            '[polling]\ninitial_interval = 0.3\nmax_interval = 1.0\n'
            f'[backends.ionq]\ntype = "ionq"\nbase_url = "{base_url}"\n'
            f'requests_per_second = {BUDGET}\n')


@pytest.fixture
def fake() -> Iterator[FakeIonQProcess]:
    f = FakeIonQProcess(api_key=KEY, knobs={"duration": [3.0, 8.0]}, seed=15).start()
    yield f
    f.stop()


def start_nodes(postgres_url: str, base_url: str, n: int) -> list[DaemonProcess]:
    nodes = []
    for i in range(n):
        d = DaemonProcess(short_tmpdir(), config(base_url),
                          {"IONQ_API_KEY": KEY, "QJOBD_DATABASE": postgres_url,
                           "QJOBD_NODE": f"node-{i}"})
        d.start()
        nodes.append(d)
    return nodes


def health(d: DaemonProcess) -> dict:
    with d.http() as c:
        return c.get("/v1/health").json()


@pytest.mark.parametrize("run", range(RUNS))
def test_three_daemons_lose_two_and_every_batch_completes_once(
        postgres_url: str, fake: FakeIonQProcess, run: int) -> None:
    nodes = start_nodes(postgres_url, fake.base_url, 3)
    try:
        wait_until(lambda: len(health(nodes[0])["cluster"]["nodes"]) == 3, 20,
                   "three live nodes")
        submitted: dict[str, tuple[int, int]] = {}  # batch -> (node, circuits)
        for i in range(40):
            node = i % 3
            with nodes[node].http() as c:
                r = c.post("/v1/batches", json={"backend": "ionq", "shots": 100, "circuits": {
                    f"c{k}": BELL3 for k in range(1 + i % 3)}})
            assert r.status_code == 201, r.text
            submitted[r.json()["id"]] = (node, 1 + i % 3)
        circuits = sum(n for _, n in submitted.values())
        # mid-run: node-0's jobs are created and running remotely, none has finished
        wait_until(lambda: fake.stats()["creates"] >= circuits // 2, 30, "half the creates")
        assert nodes[0].signal(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()

        def node0_gone() -> bool:
            cluster = health(nodes[1])["cluster"]
            return [n["name"] for n in cluster["nodes"]] == ["node-1", "node-2"]
        wait_until(node0_gone, 3 * LEASE + 5, "node-0 to be seen dead")
        # its jobs are taken over by the two others, then one of those dies too
        assert nodes[1].signal(signal.SIGKILL) == -signal.SIGKILL
        survivor = nodes[2]
        with survivor.http() as c:
            def all_terminal() -> bool:
                return all(c.get(f"/v1/batches/{b}").json()["state"] in TERMINAL
                           for b in submitted)
            wait_until(all_terminal, 120, "every batch to finish on the last node")
            taken_over_after = time.monotonic() - killed_at
            for batch_id, (node, n) in submitted.items():
                # waited for and read on a node other than the submitter, for 2 in 3
                waited = c.get(f"/v1/batches/{batch_id}/wait", params={"timeout": 5}).json()
                assert waited["state"] == "completed", (batch_id, node, waited)
                results = c.get(f"/v1/batches/{batch_id}/results").json()["results"]
                assert len(results) == n
                assert all(sum(r["counts"].values()) == 100 for r in results.values())
            events = [line for line in c.get("/v1/events").text.splitlines() if line]
        cluster = health(survivor)["cluster"]
        stats = fake.stats(window=1.0)
    finally:
        for d in nodes:
            d.stop()
    print(f"cluster run {run}: {len(submitted)} batches, {circuits} circuits, "
          f"{stats['creates']} creates, most requests in any 1 s "
          f"{stats['max_requests_in_window']}, every batch done {taken_over_after:.1f} s "
          "after the first kill")
    assert stats["duplicate_keys"] == {}, "a circuit was created twice"
    assert stats["creates"] == circuits, "every circuit was created exactly once"
    # one budget for all nodes together (each node's bucket may hold one token at a split)
    assert stats["max_requests_in_window"] <= BUDGET + 3, stats["max_requests_in_window"]
    assert [n["name"] for n in cluster["nodes"]] == ["node-2"]
    assert cluster["budget_share"] == 1.0
    # one event sequence, written by three nodes
    seqs = [json.loads(line)["seq"] for line in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_wait_and_cancel_on_one_node_for_jobs_another_drives_and_a_clean_handover(
        postgres_url: str, fake: FakeIonQProcess) -> None:
    """Node-1 is asked about batches node-0 drives: its long-poll wakes when node-0
    completes one (LISTEN/NOTIFY), and its cancel reaches node-0, which cancels the remote
    jobs. Then node-0 stops cleanly and node-1 takes its jobs at its next round, before
    their leases would have run out."""
    # finished by the test, when it says; no predicted times (they would stretch the polls)
    fake.set_knobs(duration=[600.0, 600.0], predictions=False)
    lease = 9.0
    nodes = []
    for i in range(2):
        d = DaemonProcess(short_tmpdir(), config(fake.base_url).replace(
            f"lease_seconds = {LEASE}", f"lease_seconds = {lease}"),
            {"IONQ_API_KEY": KEY, "QJOBD_DATABASE": postgres_url, "QJOBD_NODE": f"node-{i}"})
        d.start()
        nodes.append(d)
    first, second = nodes
    try:
        wait_until(lambda: len(health(second)["cluster"]["nodes"]) == 2, 20, "two live nodes")
        with second.http() as c:
            exposition = c.get("/metrics").text
        # every sample labelled by the node that serves it
        assert 'qjobd_cluster_nodes{node="node-1"} 2' in exposition
        assert not [line for line in exposition.splitlines()
                    if line and not line.startswith("#") and 'node="node-1"' not in line]
        ids = []
        with first.http() as c:
            for _ in range(3):
                r = c.post("/v1/batches", json={"backend": "ionq", "shots": 10,
                                                "circuits": {"bell": BELL3}})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])

        def remote_id(batch_id: str) -> str | None:
            with second.http() as c:
                return c.get(f"/v1/batches/{batch_id}").json()["jobs"][0]["remote_id"]
        wait_until(lambda: all(remote_id(b) for b in ids), 30, "every job created")
        done, cancel, handed = ids

        import threading
        answer: list[dict] = []

        def long_poll() -> None:
            with second.http(timeout=90) as c:
                answer.append(c.get(f"/v1/batches/{done}/wait", params={"timeout": 60}).json())
        waiter = threading.Thread(target=long_poll)
        waiter.start()
        finished = time.monotonic()
        fake.finish([remote_id(done)])  # node-0 polls it, completes it, node-1 hears
        waiter.join(75)
        woke = time.monotonic() - finished
        assert answer and answer[0]["state"] == "completed", answer
        # woken by node-0's notification, not by its own 60 s timeout running out (after
        # which it would read the completed batch too)
        assert woke < 30, f"the long-poll on node-1 answered after {woke:.1f} s"

        with second.http() as c:
            assert c.post(f"/v1/batches/{cancel}/cancel").status_code in (200, 202)
        canceled = remote_id(cancel)
        wait_until(lambda: fake.jobs([canceled])[canceled]["status"] == "canceled", 30,
                   "node-0 to cancel the remote job")
        with second.http() as c:
            wait_until(lambda: c.get(f"/v1/batches/{cancel}").json()["state"] == "canceled",
                       30, "the batch canceled")

        assert first.signal(signal.SIGTERM) == 0
        stopped = time.monotonic()

        def second_holds_it() -> bool:
            return health(second)["cluster"]["nodes"][0]["leases"] == 1
        wait_until(second_holds_it, lease, "node-1 to take node-0's last job")
        took = time.monotonic() - stopped
        fake.finish([remote_id(handed)])
        with second.http() as c:
            final = c.get(f"/v1/batches/{handed}/wait", params={"timeout": 30}).json()
        assert final["state"] == "completed"
    finally:
        for d in nodes:
            d.stop()
    print(f"clean stop: node-1 held node-0's job {took:.1f} s later (lease {lease} s); "
          f"node-1's long-poll woke {woke:.1f} s after node-0's job finished")
    assert took < lease  # handed over, not left to expire
    assert fake.stats()["creates"] == 3


CHAOS_ROUNDS = int(os.environ.get("QJOBD_CLUSTER_CHAOS_ROUNDS", "6"))


def test_chaos_repeated_kills_and_restarts_of_random_nodes(
        postgres_url: str, fake: FakeIonQProcess) -> None:
    """Rounds of: submit a few batches to random live nodes, kill -9 a random node at an
    arbitrary instant, restart it (or not) — always one node alive. Nothing acknowledged
    is lost, nothing is created twice."""
    rng = random.Random(20261203)
    fake.set_knobs(duration=[0.5, 3.0])
    nodes = start_nodes(postgres_url, fake.base_url, 3)
    acked: dict[str, int] = {}
    kills = 0
    try:
        for _ in range(CHAOS_ROUNDS):
            live = [d for d in nodes if d.proc is not None and d.proc.poll() is None]
            for _ in range(rng.randint(1, 3)):
                d = rng.choice(live)
                n = rng.randint(1, 4)
                with d.http() as c:
                    r = c.post("/v1/batches", json={"backend": "ionq", "shots": 10,
                                                    "circuits": {f"c{k}": BELL3
                                                                 for k in range(n)}})
                assert r.status_code == 201, r.text
                acked[r.json()["id"]] = n
            time.sleep(rng.uniform(0.05, 1.5))  # the chaos: an arbitrary instant
            if len(live) > 1:
                victim = rng.choice(live)
                victim.kill()
                kills += 1
            for d in nodes:  # some come back at once, some later
                if (d.proc is None or d.proc.poll() is not None) and rng.random() < 0.6:
                    d.start()
        for d in nodes:
            if d.proc is None or d.proc.poll() is not None:
                d.start()
        with nodes[0].http() as c:
            def all_terminal() -> bool:
                return all(c.get(f"/v1/batches/{b}").json()["state"] in TERMINAL
                           for b in acked)
            wait_until(all_terminal, 180, "every acknowledged batch to finish")
            states = {b: c.get(f"/v1/batches/{b}").json()["state"] for b in acked}
        stats = fake.stats()
    finally:
        for d in nodes:
            d.stop()
    print(f"cluster chaos: {CHAOS_ROUNDS} rounds, {kills} kills, {len(acked)} batches, "
          f"{sum(acked.values())} circuits, {stats['creates']} creates")
    assert kills >= CHAOS_ROUNDS // 2
    assert set(states.values()) == {"completed"}, states
    assert stats["duplicate_keys"] == {}, "a circuit was created twice"
    assert stats["creates"] == sum(acked.values())
