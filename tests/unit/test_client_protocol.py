"""The client's request/response layer without I/O: the wait plan on a fake clock, the
typed answers, and what BatchFailed/BatchTimeout carry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qjobd.client import (
    ApiError,
    Batch,
    BatchFailed,
    BatchTimeout,
    DaemonTimeout,
    DaemonUnreachable,
    Results,
)
from qjobd.daemon.client import protocol
from qjobd.daemon.client.protocol import Request, Sleep

SOCK = Path("/run/qjobd.sock")


def batch(state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"id": "b1", "state": state, "backend": "local", "shots": 10,
            "created_at": "2026-01-02T03:04:05.678Z", "jobs": [], **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Answer = dict[str, Any] | BaseException | Callable[[Request], dict[str, Any] | BaseException]


def drive(plan: protocol.Plan, clock: Clock, answers: list[Answer],
          took: float = 0.0) -> tuple[list[Request | Sleep], Any]:
    """Run a plan: each request takes ``took`` seconds and gets the next answer (an
    exception is thrown in); each Sleep advances the clock. Returns the steps and the
    result (or the exception the plan raised)."""
    steps: list[Request | Sleep] = []
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as done:
            return steps, done.value
        except Exception as exc:
            return steps, exc
        steps.append(step)
        reply, error = None, None
        if isinstance(step, Sleep):
            clock.now += step.seconds
            continue
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(step)
        clock.now += took
        if isinstance(answer, BaseException):
            error = answer
        else:
            reply = answer


def plan(clock: Clock, timeout: float | None, **kw: Any) -> protocol.Plan:
    kw.setdefault("reconnect_for", 10.0)
    return protocol.wait_plan("b1", timeout, base_timeout=30.0, clock=clock,
                              jitter=lambda: 1.0, **kw)


def refused() -> DaemonUnreachable:
    return DaemonUnreachable(SOCK, "connection refused (stale socket?)")


def requests(steps: list[Request | Sleep]) -> list[Request]:
    return [s for s in steps if isinstance(s, Request)]


def sleeps(steps: list[Request | Sleep]) -> list[float]:
    return [round(s.seconds, 3) for s in steps if isinstance(s, Sleep)]


def test_a_long_wait_is_long_polls_of_at_most_the_daemons_cap() -> None:
    clock = Clock()

    def held(request: Request) -> dict[str, Any]:
        clock.now += float(request.params["timeout"])  # the daemon holds it that long
        return batch()

    steps, last = drive(plan(clock, 700.0), clock, [held, held, held])
    assert [r.params["timeout"] for r in requests(steps)] == ["300", "300", "100"]
    assert all(r.path == "/v1/batches/b1/wait" for r in requests(steps))
    # the read timeout leaves the daemon room to answer "still running"
    assert requests(steps)[0].timeout.read == 300 + 30
    assert last["state"] == "running" and sleeps(steps) == []


def test_a_terminal_answer_ends_the_wait_at_once() -> None:
    clock = Clock()
    steps, last = drive(plan(clock, None), clock, [batch(), batch("completed")], took=300)
    assert last["state"] == "completed" and len(requests(steps)) == 2


def test_without_a_timeout_the_wait_goes_on() -> None:
    clock = Clock()
    answers: list[Answer] = [batch()] * 50 + [batch("failed")]
    steps, last = drive(plan(clock, None), clock, answers, took=300)
    assert last["state"] == "failed" and len(requests(steps)) == 51


def test_lost_contact_is_retried_with_backoff_then_the_wait_goes_on() -> None:
    clock = Clock()
    steps, last = drive(plan(clock, 600.0), clock,
                        [refused(), refused(), refused(), refused(), refused(),
                         DaemonTimeout(SOCK, "no answer in time"),
                         ApiError(503, "store_unavailable", "not now"), batch("completed")],
                        took=0.001)
    assert last["state"] == "completed"
    # 0.05 s doubling, with the jitter at its top
    assert sleeps(steps)[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]


def test_the_reconnect_pause_is_capped() -> None:
    clock = Clock()
    steps, last = drive(plan(clock, 600.0, reconnect_for=60.0), clock, [refused()])
    assert isinstance(last, DaemonUnreachable)
    assert max(sleeps(steps)) == protocol.RECONNECT_MAX_DELAY


def test_reconnecting_stops_after_reconnect_for() -> None:
    clock = Clock()
    start = clock.now
    _, last = drive(plan(clock, 600.0, reconnect_for=5.0), clock, [batch(), refused()],
                        took=0.001)
    assert isinstance(last, DaemonUnreachable) and "refused" in str(last)
    assert 5.0 <= clock.now - start < 5.1


def test_the_reconnect_window_restarts_after_contact() -> None:
    clock = Clock()
    outage = [refused()] * 6  # 3.15 s of pauses each time
    _, last = drive(plan(clock, None, reconnect_for=4.0), clock,
                        [*outage, batch(), *outage, batch(), *outage, batch("completed")],
                        took=0.001)
    assert last["state"] == "completed"  # three outages of 3+ s, each under the limit
    assert clock.now - 100.0 > 9


def test_no_reconnecting_with_reconnect_for_zero() -> None:
    clock = Clock()
    steps, last = drive(plan(clock, 600.0, reconnect_for=0.0), clock, [refused()])
    assert isinstance(last, DaemonUnreachable) and len(steps) == 1


def test_an_outage_past_the_timeout_raises_the_outage() -> None:
    # the batch's state is unknown: saying it timed out would be a guess
    clock = Clock()
    _, last = drive(plan(clock, 1.0, reconnect_for=60.0), clock, [refused()])
    assert isinstance(last, DaemonUnreachable)
    assert clock.now - 100.0 == pytest.approx(1.0)


@pytest.mark.parametrize("error", [ApiError(404, "not_found", "no such batch"),
                                   ApiError(403, "forbidden", "not yours"),
                                   ApiError(400, "bad_request", "timeout too long")])
def test_an_answer_that_says_no_is_raised_at_once(error: ApiError) -> None:
    clock = Clock()
    steps, last = drive(plan(clock, 600.0), clock, [error])
    assert last is error and len(steps) == 1


def test_a_daemon_answering_early_is_not_hammered() -> None:
    # a stopping daemon ends its long-polls at once
    clock = Clock()
    steps, last = drive(plan(clock, 10.0), clock, [batch()], took=0.001)
    assert isinstance(last, dict) and last["state"] == "running"
    assert len(requests(steps)) < 20
    assert clock.now - 100.0 == pytest.approx(10.0, abs=0.05)


def test_qjobctls_rounds_end_with_the_poll_that_covers_the_deadline() -> None:
    clock = Clock()
    steps, last = drive(plan(clock, 1.0, to_deadline=False), clock, [batch()], took=0.001)
    assert len(steps) == 1 and last["state"] == "running"


def test_wait_outcome_returns_a_completed_batch() -> None:
    done = protocol.wait_outcome(batch("completed"), 5.0)
    assert isinstance(done, Batch) and done.completed
    assert done.created_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.mark.parametrize("state", ["failed", "canceled", "timed_out"])
def test_wait_outcome_raises_batch_failed_with_the_jobs_errors(state: str) -> None:
    jobs = [{"id": "b1-0", "state": state, "error": "boom", "labels": ["a"]},
            {"id": "b1-1", "state": "completed", "error": None, "labels": ["b"]}]
    answer = batch(state, jobs=jobs, error="the batch's timeout of 5 s passed")
    with pytest.raises(BatchFailed) as caught:
        protocol.wait_outcome(answer, 5.0)
    exc = caught.value
    assert (exc.batch_id, exc.state, exc.errors) == ("b1", state, {"b1-0": "boom"})
    assert exc.error == "the batch's timeout of 5 s passed"
    assert str(exc) == (f"batch b1 ended {state}: the batch's timeout of 5 s passed; "
                        "job b1-0: boom")
    assert protocol.wait_outcome(answer, 5.0, raise_on_failure=False).state == state


def test_batch_failed_says_how_many_errors_it_does_not_show() -> None:
    jobs = [{"id": f"b1-{i}", "state": "failed", "error": f"e{i}"} for i in range(5)]
    with pytest.raises(BatchFailed, match=r"job b1-2: e2; and 2 more$"):
        protocol.wait_outcome(batch("failed", jobs=jobs), None)


def test_wait_outcome_raises_batch_timeout_with_the_last_state() -> None:
    with pytest.raises(BatchTimeout) as caught:
        protocol.wait_outcome(batch("submitted"), 2.5)
    exc = caught.value
    assert (exc.batch_id, exc.timeout, exc.last_state) == ("b1", 2.5, "submitted")
    assert str(exc) == "batch b1 did not finish within 2.5 s (last state: submitted)"


def test_results_keep_labels_counts_shots_and_the_raw_answer() -> None:
    raw = {"id": "b1", "state": "failed", "results": {
        "bell": {"counts": {"00": 6, "11": 4}, "shots": 10, "job_id": "b1-0"}}}
    results = Results.from_dict(raw)
    assert list(results) == ["bell"] and results["bell"].shots == 10
    assert results["bell"].probabilities() == {"00": 0.6, "11": 0.4}
    assert results.raw == raw and results.counts == {"bell": {"00": 6, "11": 4}}


def test_submit_sends_only_what_was_given() -> None:
    request = protocol.submit_request({"a": "x"}, "local", shots=5, idempotency_key="k")
    assert request.json == {"backend": "local", "circuits": {"a": "x"}, "shots": 5}
    assert request.headers == {"Idempotency-Key": "k"}
    assert protocol.batch_path("a/b", "wait") == "/v1/batches/a%2Fb/wait"
