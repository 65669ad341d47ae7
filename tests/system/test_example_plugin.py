"""The example plugin (examples/plugin) as a real daemon's backend: `qjobd serve` in a
subprocess finds it through its ``qjobd.backends`` entry point, by the type name alone,
and runs batches on Toy Cloud (its provider, here in a thread of the test)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from qjobd_example_plugin.provider import ToyCloud

from qjobd.backends.registry import backend_class
from qjobd.testing.conformance import CIRCUITS
from qjobd.testing.daemon_process import DaemonProcess
from tests.conftest import EXAMPLES, short_tmpdir

KEY = "toy-e2e-key-5a1b"


@pytest.fixture
def cloud() -> Iterator[ToyCloud]:
    with ToyCloud(api_key=KEY, duration=0.3) as c:
        yield c


@pytest.fixture
def qjobd(cloud: ToyCloud) -> Iterator[DaemonProcess]:
    config = ("[polling]\ninitial_interval = 0.05\nmax_interval = 0.2\n"
              f'[backends.toycloud]\ntype = "toy"\nbase_url = "{cloud.base_url}"\n'
              'api_key_env = "TOY_E2E_KEY"\n')
    d = DaemonProcess(short_tmpdir(), config, env={"TOY_E2E_KEY": KEY})
    d.start()
    yield d
    d.stop()


def test_the_entry_point_names_the_plugins_class():
    from qjobd_example_plugin.backend import ToyBackend

    assert backend_class("toy") is ToyBackend


def test_a_batch_runs_on_the_plugin_through_a_real_daemon(qjobd: DaemonProcess,
                                                          cloud: ToyCloud) -> None:
    r = qjobd.ctl("--json", "submit", str(EXAMPLES / "bell.qasm"), str(EXAMPLES / "ghz3.qasm"),
                  "--backend", "toycloud", "--shots", "200", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    results = out["results"]["results"]
    assert set(results) == {"bell", "ghz3"}
    # Toy Cloud simulates for real: entangled pairs and triples only
    assert set(results["bell"]["counts"]) <= {"00", "11"}
    assert set(results["ghz3"]["counts"]) <= {"000", "111"}
    assert all(sum(r["counts"].values()) == 200 for r in results.values())
    # one remote job for the whole batch (grouping per batch), made once
    (job,) = out["batch"]["jobs"]
    assert list(cloud.jobs) == [job["remote_id"]]
    with qjobd.http() as c:
        health = c.get("/v1/health").json()
    assert health["backends"]["toycloud"]["type"] == "toy"


def test_openqasm_3_reaches_the_plugin_as_openqasm_2(qjobd: DaemonProcess,
                                                     cloud: ToyCloud) -> None:
    with qjobd.http() as c:
        r = c.post("/v1/batches", json={"backend": "toycloud", "shots": 50,
                                        "circuits": {"bell3": CIRCUITS["bell"][1]}})
        assert r.status_code == 201, r.text
        batch = c.get(f"/v1/batches/{r.json()['id']}/wait", params={"timeout": 30}).json()
        assert batch["state"] == "completed", batch
        results = c.get(f"/v1/batches/{batch['id']}/results").json()["results"]
    assert set(results["bell3"]["counts"]) <= {"00", "11"}
