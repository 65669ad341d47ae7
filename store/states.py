"""The job state machine: every state, every legal move, in one place.

    queued ──> submitting ──> submitted ──> running ──> completed
      │  ^          │  │          │            │
      │  └──────────┘  │          │            ├──> failed
      │  (reconciled:  └──────────┴────────────┼──> canceled
      │   proven absent)                       └──> timed_out
      └──> failed | canceled | timed_out

A job goes back to ``queued`` only when the daemon has proven its remote job does not
exist: an interrupted submission that the provider does not know, or a job of a
non-durable backend (the local simulator) whose worker died with the daemon.
A move not listed is a bug and raises :class:`IllegalTransition`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from qjobd.errors import QjobdError


class JobState(enum.StrEnum):
    #: stored, not yet sent
    QUEUED = "queued"
    #: the intent to submit is stored; the request may be in flight
    SUBMITTING = "submitting"
    #: the remote id is stored; the provider says queued
    SUBMITTED = "submitted"
    #: the provider says running
    RUNNING = "running"
    #: finished; its results are stored
    COMPLETED = "completed"
    #: finished without results
    FAILED = "failed"
    #: canceled by a user
    CANCELED = "canceled"
    #: the batch's timeout passed first
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED, JobState.TIMED_OUT})
ACTIVE = frozenset(JobState) - TERMINAL

_ENDINGS = {JobState.FAILED, JobState.CANCELED, JobState.TIMED_OUT}

#: state -> the states it may move to
LEGAL_MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTING, *_ENDINGS}),
    JobState.SUBMITTING: frozenset(
        {JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING, JobState.COMPLETED, *_ENDINGS}
    ),
    JobState.SUBMITTED: frozenset(
        {JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED, *_ENDINGS}
    ),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.COMPLETED, *_ENDINGS}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


class IllegalTransition(QjobdError):
    """A job was asked to make a move the state machine does not allow."""

    def __init__(self, job_id: str, current: str | None, target: JobState) -> None:
        self.job_id, self.current, self.target = job_id, current, target
        where = "does not exist" if current is None else f"is {current}"
        super().__init__(f"job {job_id} {where}; it cannot move to {target}")


class JobEnded(IllegalTransition):
    """The job had already ended (a cancel or a timeout came first) when this move was
    asked for: a race the daemon expects, not a bug."""


def illegal(job_id: str, current: str | None, target: JobState) -> IllegalTransition:
    """The error for a forbidden move: :class:`JobEnded` when the job had ended."""
    ended = current is not None and current in TERMINAL
    return (JobEnded if ended else IllegalTransition)(job_id, current, target)


def can_move(current: JobState, target: JobState) -> bool:
    return target in LEGAL_MOVES[current]


def check_move(job_id: str, current: JobState, target: JobState) -> None:
    if not can_move(current, target):
        raise illegal(job_id, current, target)


def predecessors(target: JobState) -> frozenset[JobState]:
    """The states from which ``target`` can be reached."""
    return frozenset(s for s, moves in LEGAL_MOVES.items() if target in moves)


def batch_state(job_states: Iterable[JobState], *, cancel_requested: bool = False) -> JobState:
    """A batch's state, derived from its jobs'.

    Terminal only when every job is; ``completed`` only if every job completed. Among
    unsuccessful endings a user's cancel wins, then a timeout, then a failure. A
    batch in flight shows its most advanced job's progress.
    """
    states = set(job_states)
    if not states:
        raise ValueError("a batch has at least one job")
    if states <= TERMINAL:
        if states == {JobState.COMPLETED}:
            return JobState.COMPLETED
        if cancel_requested and JobState.CANCELED in states:
            return JobState.CANCELED
        for ending in (JobState.TIMED_OUT, JobState.FAILED, JobState.CANCELED):
            if ending in states:
                return ending
    if states & TERMINAL:  # some ended, the rest still on their way
        return JobState.RUNNING
    for progress in (JobState.RUNNING, JobState.SUBMITTED, JobState.SUBMITTING):
        if progress in states:
            return progress
    return JobState.QUEUED
