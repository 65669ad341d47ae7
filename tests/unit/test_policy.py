"""The retry and recovery policy: each failure and situation the engine meets, and what it
does about it. Pure: no event loop, no server, no sleeping (delays are returned, not slept).
"""

from __future__ import annotations

import ast
import dataclasses
import random
from pathlib import Path

import pytest

from qjobd.backends.base import Capabilities
from qjobd.backends.errors import (
    AuthError,
    BackendError,
    ProtocolError,
    RateLimited,
    Rejected,
    Unavailable,
)
from qjobd.backends.qasm import QasmError
from qjobd.daemon.config import PollingConfig
from qjobd.daemon.engine import policy as policy_module
from qjobd.daemon.engine.policy import (
    AUTH_PAUSE,
    RULES,
    Action,
    Decision,
    RetryPolicy,
    Rule,
    Step,
)
from qjobd.store.errors import DiskFull, StoreError
from qjobd.store.states import IllegalTransition, JobState

#: no jitter: delays are exact
POLLING = PollingConfig(initial_interval=1.0, backoff_factor=1.5, max_interval=30.0, jitter=0.0)
ERRORS: dict[str, BaseException] = {
    "unavailable": Unavailable("503"),
    "rate limited": RateLimited("429", retry_after=7.0),
    "rejected": Rejected("bad shots"),
    "auth": AuthError("401"),
    "protocol": ProtocolError("garbled"),
    "backend": BackendError("odd"),
    "store": StoreError("locked"),
    "disk full": DiskFull("no space"),
    "illegal": IllegalTransition("j1", "completed", JobState.RUNNING),
    "qasm": QasmError("bell", "no such gate", 3, 1),
    "bug": RuntimeError("a bug"),
}


def policy(polling: PollingConfig = POLLING) -> RetryPolicy:
    return RetryPolicy("ionq", polling, random.Random(0))


def action(step: Step, error: str) -> Action:
    return policy().decide(step, ERRORS[error]).action


# -- the table, step by step -----------------------------------------------------------

@pytest.mark.parametrize(("error", "expected"), [
    ("unavailable", Action.RECONCILE),   # the job may exist now: found by key first
    ("protocol", Action.RECONCILE),
    ("backend", Action.RECONCILE),
    ("rate limited", Action.RECONCILE),
    ("rejected", Action.FAIL),           # never retried
    ("auth", Action.REQUEUE),            # nothing was created: queued again
    ("store", Action.RAISE),             # the submitter's own last resort handles these
    ("bug", Action.RAISE),
])
def test_a_failed_create(error, expected):
    assert action(Step.CREATE, error) is expected


def test_a_create_whose_outcome_is_unknown_is_reconciled_after_the_first_interval():
    decision = policy().decide(Step.CREATE, Unavailable("timeout"))
    assert decision == Decision(Action.RECONCILE, delay=1.0,
                                say="submission outcome unknown; will reconcile")


def test_a_rejected_create_fails_the_job_naming_the_backend():
    decision = policy().decide(Step.CREATE, Rejected("shots must be in [1, 10000]"))
    assert decision.error == "rejected by ionq: shots must be in [1, 10000]"


def test_refused_credentials_requeue_the_job_and_pause_the_backend():
    decision = policy().decide(Step.CREATE, AuthError("401 unauthorized"))
    assert (decision.action, decision.pause, decision.delay) == (Action.REQUEUE, AUTH_PAUSE, 0)
    assert decision.error == "401 unauthorized" and decision.level == "error"


def test_a_429_pauses_the_backend_for_retry_after_whatever_the_step():
    for step in (Step.CREATE, Step.SETTLE, Step.POLL, Step.RESULTS, Step.CANCEL, Step.CONFIRM):
        decision = policy().decide(step, RateLimited("429", retry_after=7.0))
        assert decision.pause == 7.0, step
        assert decision.say is not None and decision.say.startswith("rate limited"), step


def test_a_429_without_retry_after_pauses_for_the_first_interval():
    assert policy().decide(Step.POLL, RateLimited("429")).pause == 1.0


def test_only_a_429_pauses_a_poll():
    assert [name for name, exc in ERRORS.items()
            if policy().decide(Step.POLL, exc).pause] == ["rate limited"]


def test_an_error_the_step_does_not_handle_never_pauses_the_backend():
    decision = policy().decide(Step.SCHEDULE, RateLimited("429", retry_after=9.0))
    assert decision.action is Action.RAISE and decision.pause == 0


@pytest.mark.parametrize(("error", "expected"), [
    ("qasm", Action.FAIL), ("store", Action.RAISE), ("bug", Action.RAISE)])
def test_a_request_that_cannot_be_built(error, expected):
    assert action(Step.PREPARE, error) is expected


def test_an_unconvertible_circuit_fails_its_job_with_the_parser_s_message():
    exc = ERRORS["qasm"]
    assert policy().decide(Step.PREPARE, exc).error == str(exc)


@pytest.mark.parametrize(("error", "expected", "level"), [
    ("store", Action.RETRY_LATER, "error"),
    ("disk full", Action.RETRY_LATER, "error"),
    ("illegal", Action.RESYNC, "error"),
    ("bug", Action.RETRY_LATER, "exception"),  # logged with its traceback
])
def test_a_submission_that_could_not_be_recorded(error, expected, level):
    decision = policy().decide(Step.SUBMIT, ERRORS[error])
    assert (decision.action, decision.level) == (expected, level)
    if expected is Action.RETRY_LATER:
        assert decision.delay == POLLING.max_interval  # once the store may be back


def test_a_settling_request_is_retried_through_outages_with_growing_waits():
    p, delay, delays = policy(), None, []
    for _ in range(12):
        decision = p.decide(Step.SETTLE, Unavailable("503"), previous=delay)
        assert decision.action is Action.RETRY
        delay = decision.delay
        delays.append(delay)
    assert delays == pytest.approx([1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 11.390625,
                                    17.0859375, 25.62890625, 30.0, 30.0, 30.0])


@pytest.mark.parametrize("error", ["rejected", "auth", "protocol", "backend", "store", "bug"])
def test_a_settling_request_that_fails_otherwise_is_not_retried(error):
    assert action(Step.SETTLE, error) is Action.RAISE


@pytest.mark.parametrize(("error", "level"), [
    ("unavailable", "warning"), ("rate limited", "warning"), ("rejected", "warning"),
    ("auth", "warning"), ("protocol", "warning"), ("backend", "warning"),
    ("store", "exception"), ("bug", "exception"),
])
def test_a_failed_status_poll_polls_every_job_again(error, level):
    decision = policy().decide(Step.POLL, ERRORS[error])
    assert (decision.action, decision.level) == (Action.POLL_AGAIN, level)


@pytest.mark.parametrize(("error", "expected"), [
    ("store", Action.POLL_AGAIN), ("disk full", Action.POLL_AGAIN),  # stored once it can be
    ("illegal", Action.RESYNC), ("bug", Action.POLL_AGAIN),
])
def test_a_poll_that_could_not_be_recorded(error, expected):
    assert action(Step.RECORD, error) is expected


@pytest.mark.parametrize(("error", "expected"), [
    ("unavailable", Action.POLL_AGAIN), ("rate limited", Action.POLL_AGAIN),
    ("rejected", Action.FAIL), ("auth", Action.FAIL), ("protocol", Action.FAIL),
    ("backend", Action.FAIL), ("store", Action.RAISE), ("bug", Action.RAISE),
])
def test_a_failed_result_fetch(error, expected):
    assert action(Step.RESULTS, error) is expected


def test_unreadable_results_fail_the_job_saying_why():
    decision = policy().decide(Step.RESULTS, ProtocolError("counts do not add up"))
    assert decision.error == "results could not be read: counts do not add up"


@pytest.mark.parametrize("step", [Step.CANCEL, Step.CONFIRM])
def test_a_failed_cancel_or_check_after_it_ends_the_jobs_anyway(step):
    assert action(step, "unavailable") is Action.CARRY_ON
    assert action(step, "protocol") is Action.CARRY_ON
    assert action(step, "bug") is Action.RAISE


def test_a_schedule_that_could_not_be_stored_is_written_with_the_next_poll():
    assert action(Step.SCHEDULE, "disk full") is Action.REWRITE
    assert action(Step.SCHEDULE, "bug") is Action.RAISE


# -- situations: a job the provider does not know, a submission a crash interrupted ----

DURABLE = Capabilities(lookup_by_key=True)
SIMULATOR = Capabilities(durable=False)


def test_a_job_the_provider_does_not_know_is_polled_again_unless_it_died_with_a_process():
    assert policy().decide(Step.UNKNOWN_JOB, caps=DURABLE).action is Action.POLL_AGAIN
    assert policy().decide(Step.UNKNOWN_JOB, caps=SIMULATOR).action is Action.RECOVER


@pytest.mark.parametrize(("caps", "uploading", "expected"), [
    (SIMULATOR, False, Action.REQUEUE),                  # nothing exists remotely
    (Capabilities(lookup_by_key=True), True, Action.RESUME_UPLOAD),
    (Capabilities(lookup_by_key=True), False, Action.LOOKUP),
    (Capabilities(lost_create_is_inert=True), False, Action.REQUEUE),
    (Capabilities(), False, Action.FAIL),                # rather than risk a duplicate
])
def test_an_interrupted_submission_is_settled_by_what_the_backend_can_do(caps, uploading,
                                                                          expected):
    decision = policy().decide(Step.RECOVER, caps=caps, uploading=uploading)
    assert decision.action is expected
    if expected in (Action.REQUEUE, Action.FAIL):
        assert decision.error  # the event log says which path the job took


# -- the policy as a whole -------------------------------------------------------------

@pytest.mark.parametrize("step", list(Step))
def test_every_step_answers_every_error_with_a_frozen_decision(step):
    for name, exc in ERRORS.items():
        decision = policy().decide(step, exc, caps=DURABLE)
        assert isinstance(decision.action, Action), (step, name)
        assert decision.delay >= 0 and decision.pause >= 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            decision.delay = 1.0  # type: ignore[misc]


def test_delays_follow_the_polling_settings_it_was_given():
    slow = policy(PollingConfig(initial_interval=4.0, max_interval=120.0, jitter=0.0))
    assert slow.decide(Step.CREATE, Unavailable()).delay == 4.0
    assert slow.decide(Step.SUBMIT, StoreError()).delay == 120.0


def test_the_table_is_data_a_changed_row_changes_what_is_retried():
    # e.g. unreadable results fetched again instead of failing the job: one row
    row = next(r for r in RULES if (r.step, r.error) == (Step.RESULTS, ProtocolError))
    retried = [dataclasses.replace(row, action=Action.POLL_AGAIN, text=None)
               if r is row else r for r in RULES]
    p = RetryPolicy("ionq", POLLING, rules=retried)
    assert p.decide(Step.RESULTS, ProtocolError("garbled")).action is Action.POLL_AGAIN
    assert p.decide(Step.RESULTS, BackendError("odd")).action is Action.FAIL  # the rest stay


def test_the_first_matching_row_decides_and_an_unnamed_error_is_raised():
    rules = [Rule(Step.POLL, Unavailable, Action.CARRY_ON),
             Rule(Step.POLL, BackendError, Action.POLL_AGAIN)]
    p = RetryPolicy("b", POLLING, rules=rules)
    assert p.decide(Step.POLL, RateLimited("429")).action is Action.CARRY_ON
    assert p.decide(Step.POLL, Rejected()).action is Action.POLL_AGAIN
    assert p.decide(Step.POLL, StoreError()).action is Action.RAISE


def test_every_row_can_be_carried_out_at_its_step():
    """The runner carries out these actions at these steps (the rest are its callers')."""
    job_actions = {Action.POLL_AGAIN, Action.FAIL, Action.REQUEUE, Action.RESYNC,
                   Action.RECOVER, Action.RECONCILE, Action.RETRY_LATER, Action.CARRY_ON,
                   Action.RELEASE}
    allowed = {Step.SETTLE: {Action.RETRY}, Step.CANCEL: {Action.CARRY_ON},
               Step.CONFIRM: {Action.CARRY_ON}, Step.SCHEDULE: {Action.REWRITE}}
    for rule in RULES:
        assert rule.action in allowed.get(rule.step, job_actions), rule


def test_the_runner_names_no_error_type_what_it_retries_is_decided_in_policy_py():
    """A change to what is retried touches policy.py alone: the runner catches broadly
    and asks. It only counts BackendErrors for its stats."""
    runner = Path(policy_module.__file__).with_name("runner.py")
    tree = ast.parse(runner.read_text())
    caught = {ast.unparse(h.type) for h in ast.walk(tree)
              if isinstance(h, ast.ExceptHandler) and h.type is not None}
    assert caught <= {"Exception", "BackendError", "TimeoutError"}, caught
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names}
    retry_words = {"Unavailable", "RateLimited", "Rejected", "AuthError", "ProtocolError",
                   "StoreError", "IllegalTransition", "QasmError", "Backoff", "AUTH_PAUSE"}
    assert not imported & retry_words


def test_a_lost_lease_releases_the_job_at_every_step_that_writes_for_it():
    """Several daemons, one store: a fenced write found another node holding the job."""
    from qjobd.store.errors import LeaseLost

    p = RetryPolicy("b", PollingConfig())
    for step in (Step.PREPARE, Step.CREATE, Step.SUBMIT, Step.RECORD, Step.RESULTS):
        decision = p.decide(step, LeaseLost("leased to node-2"))
        assert decision.action is Action.RELEASE, step
        assert decision.level == "info"  # expected after a partition: not an error
    assert p.released(LeaseLost("x")) and not p.released(StoreError("x"))
