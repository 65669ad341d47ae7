"""Several daemons, one PostgreSQL store: three ``qjobd serve`` processes on one database of
the suite's own PostgreSQL server, the fake IonQ behind them. Batches are submitted to all
three; one daemon is killed with -9 mid-run, then a second. Every batch completes, every
circuit is created exactly once at the provider, the provider's request rate stays within
the one budget all nodes share, and batches are waited for and read on a node other than
the one that took them."""

from __future__ import annotations

import os
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
    import json
    seqs = [json.loads(line)["seq"] for line in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
