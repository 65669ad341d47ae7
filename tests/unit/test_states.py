"""The job state machine and the batch state derived from it."""

from __future__ import annotations

import itertools

import pytest

from qjobd.store.states import (
    ACTIVE,
    LEGAL_MOVES,
    TERMINAL,
    IllegalTransition,
    JobState,
    batch_state,
    can_move,
    check_move,
    predecessors,
)

Q, SING, SUB, RUN = JobState.QUEUED, JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING
DONE, FAIL, CANC, TIME = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED,
                          JobState.TIMED_OUT)

LEGAL = sorted((a, b) for a, moves in LEGAL_MOVES.items() for b in moves)
ILLEGAL = sorted(set(itertools.product(JobState, JobState)) - set(LEGAL))


def test_every_state_has_an_entry_in_the_table():
    assert set(LEGAL_MOVES) == set(JobState)


def test_terminal_and_active_partition_the_states():
    assert TERMINAL == {DONE, FAIL, CANC, TIME}
    assert ACTIVE == {Q, SING, SUB, RUN}
    assert all(s.terminal for s in TERMINAL)
    assert not any(s.terminal for s in ACTIVE)


def test_the_documented_moves_are_exactly_the_legal_ones():
    endings = {FAIL, CANC, TIME}
    assert LEGAL_MOVES == {
        Q: {SING} | endings,
        SING: {Q, SUB, RUN, DONE} | endings,
        SUB: {Q, RUN, DONE} | endings,
        RUN: {Q, DONE} | endings,
        DONE: set(), FAIL: set(), CANC: set(), TIME: set(),
    }


@pytest.mark.parametrize(("current", "target"), LEGAL)
def test_a_legal_move_is_allowed(current, target):
    assert can_move(current, target)
    check_move("j1", current, target)  # does not raise


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_any_other_move_raises_illegal_transition(current, target):
    assert not can_move(current, target)
    with pytest.raises(IllegalTransition) as info:
        check_move("j1", current, target)
    assert (info.value.job_id, info.value.current, info.value.target) == ("j1", current, target)
    assert f"job j1 is {current}; it cannot move to {target}" == str(info.value)


def test_no_state_moves_to_itself():
    assert all(s not in LEGAL_MOVES[s] for s in JobState)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_terminal_state_has_no_moves(state):
    assert LEGAL_MOVES[state] == frozenset()
    assert not any(can_move(state, target) for target in JobState)


def test_only_a_proven_absent_job_goes_back_to_queued():
    assert predecessors(Q) == {SING, SUB, RUN}


def test_a_job_reaches_submitting_only_from_queued():
    assert predecessors(SING) == {Q}


@pytest.mark.parametrize("target", sorted(JobState))
def test_predecessors_agree_with_the_table(target):
    assert predecessors(target) == {s for s in JobState if target in LEGAL_MOVES[s]}
    assert all(can_move(s, target) for s in predecessors(target))


def test_illegal_transition_names_a_missing_job():
    error = IllegalTransition("j9", None, RUN)
    assert str(error) == "job j9 does not exist; it cannot move to running"


# -- batch_state -----------------------------------------------------------------------

def test_a_batch_has_at_least_one_job():
    with pytest.raises(ValueError):
        batch_state([])


def test_a_batch_is_completed_only_if_every_job_completed():
    assert batch_state([DONE]) == DONE
    assert batch_state([DONE, DONE, DONE]) == DONE
    assert batch_state([DONE, DONE, FAIL]) == FAIL
    assert batch_state([DONE, RUN]) != DONE


@pytest.mark.parametrize("ending", [FAIL, CANC, TIME])
def test_one_unsuccessful_ending_makes_the_finished_batch_unsuccessful(ending):
    assert batch_state([DONE, ending, DONE]) == ending


def test_a_timeout_wins_over_a_failure():
    assert batch_state([FAIL, TIME, DONE]) == TIME
    assert batch_state([FAIL, TIME], cancel_requested=True) == TIME


def test_a_users_cancel_wins_over_timeout_and_failure():
    assert batch_state([FAIL, TIME, CANC], cancel_requested=True) == CANC
    assert batch_state([DONE, CANC], cancel_requested=True) == CANC


def test_without_a_cancel_request_a_canceled_job_ranks_below_timeout_and_failure():
    assert batch_state([TIME, CANC]) == TIME
    assert batch_state([FAIL, CANC]) == FAIL
    assert batch_state([CANC, DONE]) == CANC


def test_a_cancel_request_alone_does_not_end_a_batch():
    assert batch_state([Q, Q], cancel_requested=True) == Q
    assert batch_state([RUN, CANC], cancel_requested=True) == RUN


def test_all_queued_is_queued():
    assert batch_state([Q]) == Q
    assert batch_state([Q, Q, Q]) == Q


@pytest.mark.parametrize("ended", sorted(TERMINAL))
@pytest.mark.parametrize("waiting", sorted(ACTIVE))
def test_a_batch_with_some_jobs_finished_and_others_not_is_running(ended, waiting):
    # the finished job is the most advanced one: the batch never looks less advanced
    # than "running" once a job ended, whatever stage the others are at
    assert batch_state([ended, waiting]) == RUN


@pytest.mark.parametrize(("states", "expected"), [
    ([Q, SING], SING),
    ([Q, SING, SUB], SUB),
    ([Q, SUB, RUN], RUN),
    ([SING, SING], SING),
    ([SUB, SUB], SUB),
])
def test_a_batch_in_flight_shows_its_most_advanced_job(states, expected):
    assert batch_state(states) == expected


def test_the_batch_state_ignores_order_and_duplicates():
    states = [DONE, Q, SUB, DONE, RUN]
    for perm in itertools.permutations(states):
        assert batch_state(perm) == RUN
    assert batch_state(iter([Q, SING])) == SING  # any iterable, consumed once
