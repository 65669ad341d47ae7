"""The backend conformance suite (qjobd.testing.conformance) against every backend qjobd
ships and the example plugin: IonQ and Qoro on their fakes over real HTTP, the local
simulator with real Aer workers, and examples/plugin's toy backend on its toy provider."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from qjobd.backends import Backend
from qjobd.backends.ionq import IonQBackend
from qjobd.backends.local import LocalBackend
from qjobd.backends.qoro import QoroBackend
from qjobd.testing.conformance import BackendConformance, Subject
from qjobd.testing.fake_ionq import FakeIonQ
from qjobd.testing.fake_qoro import FakeQoro

KEY = "conformance-key-1f2e3d"
KEY_ENV = "QJOBD_CONFORMANCE_KEY"
#: the example plugin's own conformance tests, the file a plugin author copies
EXAMPLE_TESTS = Path(__file__).resolve().parents[2] / "examples/plugin/tests/test_conformance.py"


def _example_tests() -> ModuleType:
    """examples/plugin/tests/test_conformance.py (the plugin must be installed: `make`)."""
    spec = importlib.util.spec_from_file_location("qjobd_example_plugin_tests", EXAMPLE_TESTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class IonQSubject(Subject):
    name = "ionq"
    #: more than a page (25): status and lookup take two
    many = 30

    def __init__(self, fake: FakeIonQ) -> None:
        self.fake = fake

    def backend(self) -> Backend:
        return IonQBackend("ionq", {"base_url": self.fake.base_url, "api_key_env": KEY_ENV,
                                    "max_ids_per_request": 40})

    async def finish(self, remote_id: str) -> None:
        self.fake.finish_now(remote_id)

    async def requests(self) -> int:
        return len(self.fake.request_log)

    async def fail_next(self, status: int, retry_after: float | None = None) -> None:
        self.fake.inject(1, status, retry_after)

    async def lose_create(self, how: str) -> None:
        self.fake.drop_create_response(1)

    async def jobs_with_key(self, submission_key: str) -> list[str]:
        return [job.id for job in list(self.fake.jobs.values())
                if (job.metadata or {}).get("qjobd_key") == submission_key
                and (job.canceled_at is None or job.canceled_at >= job.started_at)]


class QoroSubject(Subject):
    name = "qoro"
    lost_creates = ("the init's answer", "the finalized fragment's answer")

    def __init__(self, fake: FakeQoro) -> None:
        self.fake = fake

    def backend(self) -> Backend:
        return QoroBackend("qoro", {"base_url": self.fake.base_url, "api_key_env": KEY_ENV})

    async def finish(self, remote_id: str) -> None:
        self.fake.finish_now(remote_id)

    async def requests(self) -> int:
        return len(self.fake.request_log)

    async def fail_next(self, status: int, retry_after: float | None = None) -> None:
        self.fake.inject(1, status, retry_after)

    async def lose_create(self, how: str) -> None:
        if how == "the init's answer":
            self.fake.configure(drop_init_responses=1)
        else:
            self.fake.configure(drop_add_responses=1, drop_add_fragment=None)

    async def jobs_with_key(self, submission_key: str) -> list[str]:
        # an unfinalized job never runs; one canceled before it ran never did
        return [job.id for job in list(self.fake.jobs.values())
                if job.tag == submission_key and job.finalized_at is not None
                and (job.canceled_at is None or job.canceled_at >= job.running_at)]


class LocalSubject(Subject):
    """Real Aer in one worker process: no remote provider, so nothing to provoke."""

    name = "local"

    def backend(self) -> Backend:
        return LocalBackend("local", {"workers": 1})


@pytest.fixture(scope="module")
def fake_ionq() -> Iterator[FakeIonQ]:
    with FakeIonQ(api_key=KEY, duration=(0.05, 0.2)) as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_qoro() -> Iterator[FakeQoro]:
    # two results per page: three labels take two pages
    with FakeQoro(api_key=KEY, duration=(0.05, 0.2), max_page=2) as fake:
        yield fake


class TestEveryBackend(BackendConformance):
    @pytest.fixture(params=["ionq", "qoro", "local"])
    def subject(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                ) -> Subject:
        monkeypatch.setenv(KEY_ENV, KEY)
        if request.param == "ionq":
            fake = request.getfixturevalue("fake_ionq")
            fake.reset()
            return IonQSubject(fake)
        if request.param == "qoro":
            fake = request.getfixturevalue("fake_qoro")
            fake.reset()
            return QoroSubject(fake)
        return LocalSubject()


#: the suite against the example plugin, through the example's own test class
TestExamplePlugin = _example_tests().TestToyBackend
