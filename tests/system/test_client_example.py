"""examples/client_example.py (the README's "Python client" example) runs as written
against a real `qjobd serve`, finding the socket as qjobctl does."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from qjobd.testing.daemon_process import DaemonProcess
from tests.conftest import EXAMPLES, short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG


def test_the_client_example_runs_against_a_real_daemon() -> None:
    d = DaemonProcess(short_tmpdir(), LOCAL_CONFIG)
    d.start()
    try:
        # the environment names the daemon's config and socket, as a user's shell would
        run = subprocess.run([sys.executable, str(EXAMPLES / "client_example.py")],
                             env=d.env, cwd=d.root, capture_output=True, text=True,
                             timeout=180)
        listed = json.loads(d.ctl("--json", "list").stdout)["batches"]
    finally:
        d.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"submitted \S+: 2 job\(s\), \w+", lines[0])
    bell = next(line for line in lines if line.startswith("bell: "))
    counts = {k: int(v) for k, v in re.findall(r"'([01]+)': (\d+)", bell)}
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 1000
    assert bell.endswith("(1000 shots)")
    ghz = next(line for line in lines if line.startswith("ghz3: "))
    assert set(re.findall(r"'([01]+)'", ghz)) <= {"000", "111"}
    assert len([line for line in lines if line.startswith("async ")]) == 3
    # one batch of two circuits, then three from AsyncClient, all completed
    assert sorted(len(b["jobs"]) for b in listed) == [1, 1, 1, 2]
    assert {b["state"] for b in listed} == {"completed"}
    assert [b["tags"] for b in listed if len(b["jobs"]) == 2] == [{"example": "client"}]
