"""qjobd's backend conformance suite, run against the toy backend: copy this file.

A Subject tells the suite how to build the backend and, where the provider lets it,
how to provoke what the checks need: an HTTP error, a lost create, a request count,
the jobs made with a submission key. Leave out a hook your provider cannot do, and the
checks that need it are skipped, saying so. Run it with ``pytest``
(``pip install -e '.[test]'`` first).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qjobd.backends import Backend
from qjobd.testing.conformance import BackendConformance, Subject

from qjobd_example_plugin.backend import ToyBackend
from qjobd_example_plugin.provider import ToyCloud

KEY = "toy-conformance-key"
KEY_ENV = "TOY_CONFORMANCE_KEY"


class ToySubject(Subject):
    name = "toy"

    def __init__(self, cloud: ToyCloud) -> None:
        self.cloud = cloud

    def backend(self) -> Backend:
        return ToyBackend("toy", {"base_url": self.cloud.base_url, "api_key_env": KEY_ENV})

    async def finish(self, remote_id: str) -> None:
        self.cloud.finish_now(remote_id)

    async def requests(self) -> int:
        return len(self.cloud.request_log)

    async def fail_next(self, status: int, retry_after: float | None = None) -> None:
        self.cloud.fail_next(status, retry_after)

    async def lose_create(self, how: str) -> None:
        self.cloud.drop_next_create()

    async def jobs_with_key(self, submission_key: str) -> list[str]:
        return self.cloud.jobs_with_key(submission_key)


class TestToyBackend(BackendConformance):
    @pytest.fixture
    def subject(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Subject]:
        monkeypatch.setenv(KEY_ENV, KEY)
        with ToyCloud(api_key=KEY, duration=0.1) as cloud:
            yield ToySubject(cloud)
