"""What the engine does when something fails: one table, one decision method.

Every failure a backend's engine meets, and every situation where it has lost track of a
job, comes here as a :class:`Step` (what the engine was doing) and the error (if any);
:meth:`RetryPolicy.decide` answers with a :class:`Decision`: an :class:`Action`, how long
to wait first, how long to pause the whole backend, the job's error text, and what to
log. The runner does what it says and decides nothing itself, so a change to what is
retried, after how long or how often, is a change to this module alone: most often to
one row of :data:`RULES`.

The rules, in short:

- ``Unavailable`` (5xx, timeout, network): retry later. A status poll polls again on
  the job's backoff; a result fetch likewise; a create's outcome is unknown, so the job
  is reconciled (found by its key) before anything is sent again; a settling request
  (lookup, resume) is retried with backoff until it answers.
- ``RateLimited``: as ``Unavailable``, and the whole backend pauses for ``retry_after``
  (the first interval if the provider did not say). Other backends go on.
- ``Rejected``: never retried: the job fails, saying so.
- ``AuthError`` on a create: nothing was created; the job is queued again and the
  backend pauses for ``AUTH_PAUSE`` (a SIGHUP with new credentials is the cure).
- ``ProtocolError`` and any other ``BackendError``: a create is reconciled, a poll
  polls again, unreadable results fail the job.
- A store error: the step is tried again later (a poll: with the next poll; a
  submission: after ``max_interval``); a job that changed under the engine
  (``IllegalTransition``): the store's word is taken.
- Anything else (a bug): logged with its traceback, and treated like a store error, so
  one job's surprise never stops the engine for the others.
- An error no rule names for its step is not that step's to handle: it goes on to the
  step that called (``Action.RAISE``).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

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
from qjobd.daemon.engine.schedule import Backoff
from qjobd.store.errors import LeaseLost, StoreError
from qjobd.store.states import IllegalTransition, JobEnded

#: how long a backend whose credentials were refused waits before trying again
AUTH_PAUSE = 60.0
#: how far the provider's clock may run behind ours, for lookups by creation time
LOOKUP_CLOCK_SKEW = 60.0
#: the capabilities of a backend that declares none
_ANY_BACKEND = Capabilities()


class Step(enum.Enum):
    """What the engine was doing when it failed (or what it found)."""

    #: building a job's create request (converting its circuits)
    PREPARE = "prepare"
    #: the create request of a submission
    CREATE = "create"
    #: anything else of a submission (its store writes; the submitter's last resort)
    SUBMIT = "submit"
    #: a lookup or resume that settles an interrupted submission (RETRY or RAISE only:
    #: until it answers, nothing is known)
    SETTLE = "settle"
    #: a status request for a group of jobs
    POLL = "poll"
    #: recording what a poll found
    RECORD = "record"
    #: fetching a completed job's results
    RESULTS = "results"
    #: the remote cancel of a user's cancel or a timeout (CARRY_ON or RAISE only)
    CANCEL = "cancel"
    #: the status request after a cancel, to keep what finished first (CARRY_ON or RAISE)
    CONFIRM = "confirm"
    #: storing the poll schedule (REWRITE or RAISE only)
    SCHEDULE = "schedule"
    #: a status answer did not include the job: the provider does not know it
    UNKNOWN_JOB = "unknown_job"
    #: a job whose submission or remote job may have been lost (a crash, a restart)
    RECOVER = "recover"


class Action(enum.Enum):
    """What the engine does next."""

    #: send the same request again after ``delay``
    RETRY = "retry"
    #: poll the job again on its schedule (its backoff grows)
    POLL_AGAIN = "poll_again"
    #: go on without the answer (it was a courtesy)
    CARRY_ON = "carry_on"
    #: not this step's to handle: the error goes on to the step that called it
    RAISE = "raise"
    #: a create's outcome is unknown: wait ``delay`` (the submitter too: an outage slows
    #: submission down), then settle the job in the background, as a restart would
    RECONCILE = "reconcile"
    #: settle the job now, as a restart would
    RECOVER = "recover"
    #: after ``delay``, in the background: submit the job again if it is still queued,
    #: else settle it as a restart would
    RETRY_LATER = "retry_later"
    #: back to queued, to be submitted again (``error`` says why, in the event log)
    REQUEUE = "requeue"
    #: end the job as failed, with ``error``
    FAIL = "fail"
    #: the job changed under the engine: take the store's word for it
    RESYNC = "resync"
    #: store it again with the job's next poll
    REWRITE = "rewrite"
    #: ask the provider for the job by its submission key
    LOOKUP = "lookup"
    #: finish, or cancel, the upload a crash interrupted
    RESUME_UPLOAD = "resume_upload"
    #: another node holds the job now (several daemons, one store): forget it here
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one failure or situation."""

    action: Action
    #: seconds to wait before acting
    delay: float = 0.0
    #: seconds the whole backend sends nothing (0: no pause)
    pause: float = 0.0
    #: FAIL: the job's error; REQUEUE: why, for the event log
    error: str | None = None
    #: what to log (None: nothing), at ``level``; "exception" adds the traceback
    say: str | None = None
    level: str = "warning"


class Wait(enum.Enum):
    """How long a rule waits before its action, in the backend's polling settings."""

    #: act at once
    NONE = "none"
    #: the schedule's first interval (``initial_interval``, jittered)
    FIRST = "first"
    #: the step's previous wait grown by ``backoff_factor`` (the first, the first time)
    BACKOFF = "backoff"
    #: ``max_interval``: long enough for a store or a provider to come back
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: ``step`` met an error of type ``error`` (or a subclass)."""

    step: Step
    error: type[BaseException]
    action: Action
    wait: Wait = Wait.NONE
    #: seconds the whole backend pauses
    pause: float = 0.0
    #: the job's error (FAIL) or the reason recorded (REQUEUE); ``{error}`` and
    #: ``{backend}`` are filled in
    text: str | None = None
    #: what is logged, at ``level`` ("exception" adds the traceback)
    say: str | None = None
    level: str = "warning"


#: what each step does about each error: the first row whose step and error type match
#: decides. A step meeting an error no row names lets it go on to its caller (RAISE).
RULES: tuple[Rule, ...] = (
    # -- several daemons, one store: a fenced write found the job's lease gone to another
    #    node (this one was partitioned, or paused, past its lease); that node settles the
    #    job as a restart would, this one lets go of it at once, whatever it was doing
    *(Rule(step, LeaseLost, Action.RELEASE, say="lease lost: another node has the job",
           level="info")
      for step in (Step.PREPARE, Step.CREATE, Step.SUBMIT, Step.RECORD, Step.RESULTS)),
    # -- submitting ------------------------------------------------------------------
    Rule(Step.PREPARE, QasmError, Action.FAIL, text="{error}"),
    Rule(Step.CREATE, Rejected, Action.FAIL, text="rejected by {backend}: {error}"),
    # refused before anything was created: wait for new credentials (SIGHUP)
    Rule(Step.CREATE, AuthError, Action.REQUEUE, pause=AUTH_PAUSE, text="{error}",
         say="credentials refused; pausing backend", level="error"),
    # the job may or may not exist remotely now: find out before any resubmission
    Rule(Step.CREATE, BackendError, Action.RECONCILE, Wait.FIRST,
         say="submission outcome unknown; will reconcile"),
    # a cancel or a timeout ended the job before its submitter stored the intent: nothing
    # was sent, the store's word is taken, and that is no error
    Rule(Step.SUBMIT, JobEnded, Action.RESYNC, say="job ended before it was submitted",
         level="debug"),
    Rule(Step.SUBMIT, IllegalTransition, Action.RESYNC,
         say="job changed under the submitter", level="error"),
    Rule(Step.SUBMIT, StoreError, Action.RETRY_LATER, Wait.MAX,
         say="submission could not be recorded", level="error"),
    # never let one job's surprise stop the submitter for everyone else
    Rule(Step.SUBMIT, Exception, Action.RETRY_LATER, Wait.MAX,
         say="submission failed unexpectedly", level="exception"),
    # until a settling request answers nothing is safe: retried through outages
    Rule(Step.SETTLE, Unavailable, Action.RETRY, Wait.BACKOFF,
         say="settling request failed; retrying"),
    # -- polling ---------------------------------------------------------------------
    Rule(Step.POLL, BackendError, Action.POLL_AGAIN, say="status poll failed"),
    # a bug, or an answer nothing foresaw: polled again too
    Rule(Step.POLL, Exception, Action.POLL_AGAIN, say="status poll failed unexpectedly",
         level="exception"),
    # a cancel or a timeout ended the job while its poll was out: expected, said quietly
    Rule(Step.RECORD, JobEnded, Action.RESYNC, say="job ended while it was polled",
         level="debug"),
    Rule(Step.RECORD, IllegalTransition, Action.RESYNC, say="job changed under the poller",
         level="error"),
    Rule(Step.RECORD, StoreError, Action.POLL_AGAIN, say="could not record a poll",
         level="error"),
    Rule(Step.RECORD, Exception, Action.POLL_AGAIN,
         say="could not handle a poll; will poll again", level="exception"),
    Rule(Step.RESULTS, Unavailable, Action.POLL_AGAIN, say="result fetch failed; retrying"),
    Rule(Step.RESULTS, ProtocolError, Action.FAIL, text="results could not be read: {error}"),
    Rule(Step.RESULTS, BackendError, Action.FAIL, text="results could not be read: {error}"),
    # -- canceling, and the stored schedule --------------------------------------------
    Rule(Step.CANCEL, BackendError, Action.CARRY_ON,
         say="remote cancel failed; ending the jobs anyway"),
    Rule(Step.CONFIRM, BackendError, Action.CARRY_ON),
    # only the stored schedule is stale (a restart would poll these a little early)
    Rule(Step.SCHEDULE, StoreError, Action.REWRITE, say="could not store poll schedule"),
)


class RetryPolicy:
    """What to do about each failure of one backend's engine.

    ``name`` is the backend's, for the errors it writes; delays follow ``polling``
    (jittered by ``rng``); ``rules`` is the table (:data:`RULES` unless given).
    """

    def __init__(self, name: str, polling: PollingConfig, rng: random.Random | None = None,
                 *, rules: Sequence[Rule] = RULES) -> None:
        self.name = name
        self.polling = polling
        self.rules = tuple(rules)
        self._backoff = Backoff(polling, rng)

    def decide(self, step: Step, error: BaseException | None = None, *,
               previous: float | None = None, caps: Capabilities = _ANY_BACKEND,
               uploading: bool = False) -> Decision:
        """The decision for ``error`` raised during ``step``.

        ``previous``: the delay this step's last retry waited (SETTLE's backoff grows).
        For the situations without an error: ``caps``, the backend's capabilities
        (UNKNOWN_JOB, RECOVER), and ``uploading``, whether the job's store row holds the
        id of an upload a crash interrupted (RECOVER).
        """
        if step is Step.UNKNOWN_JOB:
            return self._unknown(caps)
        if step is Step.RECOVER:
            return self._recover(caps, uploading)
        rule = next((r for r in self.rules if r.step is step and isinstance(error, r.error)),
                    None)
        if rule is None:
            return Decision(Action.RAISE)
        decision = Decision(
            rule.action, delay=self._wait(rule.wait, previous), pause=rule.pause,
            error=None if rule.text is None else rule.text.format(error=error,
                                                                  backend=self.name),
            say=rule.say, level=rule.level)
        if isinstance(error, RateLimited):
            # a 429 pauses the whole backend, whatever the step does about it
            pause = error.retry_after if error.retry_after is not None \
                else self._backoff.first()
            decision = dataclasses.replace(
                decision, pause=max(pause, decision.pause),
                say=_joined("rate limited; pausing backend", decision.say))
        return decision

    @staticmethod
    def released(error: BaseException | None) -> bool:
        """Whether ``error`` says the job's lease passed to another node: whatever the
        step, the engine lets go of the job (RELEASE)."""
        return isinstance(error, LeaseLost)

    def _wait(self, wait: Wait, previous: float | None) -> float:
        match wait:
            case Wait.FIRST:
                return self._backoff.first()
            case Wait.BACKOFF:
                return self._backoff.next(previous)
            case Wait.MAX:
                return self.polling.max_interval
        return 0.0

    def _unknown(self, caps: Capabilities) -> Decision:
        if not caps.durable:
            # the simulator's work died with its process: settle it as after a restart
            return Decision(Action.RECOVER)
        return Decision(Action.POLL_AGAIN,
                        say="the provider does not know this job; still polling")

    def _recover(self, caps: Capabilities, uploading: bool) -> Decision:
        if not caps.durable:
            # the simulator's work died with the old process: nothing exists remotely
            return Decision(Action.REQUEUE, error=f"{self.name} jobs do not survive a "
                                                  "restart; running it again")
        if uploading:
            return Decision(Action.RESUME_UPLOAD)
        if caps.lookup_by_key:
            return Decision(Action.LOOKUP)
        if caps.lost_create_is_inert:
            return Decision(Action.REQUEUE, error="interrupted submission: whatever the "
                            "lost create left can never run; submitting again")
        return Decision(Action.FAIL, error=(
            "the submission was interrupted and this backend cannot tell whether the "
            "job was created; not resubmitting to avoid a duplicate"))


def _joined(first: str, then: str | None) -> str:
    return first if then is None else f"{first}; {then}"
