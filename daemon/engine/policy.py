"""What the engine does when something fails: one table, one decision method.

Every failure a backend's engine meets, and every situation where it has lost track of a
job, comes here as a :class:`Step` (what the engine was doing) and the error (if any);
:meth:`RetryPolicy.decide` answers with a :class:`Decision`: an :class:`Action`, how long
to wait first, how long to pause the whole backend, the job's error text, and what to
log. The runner does what it says and decides nothing itself, so a change to what is
retried, after how long or how often, is a change to this module alone.

The rules, in short (``decide`` has the whole table):

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
"""

from __future__ import annotations

import dataclasses
import enum
import random
from dataclasses import dataclass

from qjobd.backends.base import Capabilities
from qjobd.backends.errors import (
    AuthError,
    BackendError,
    RateLimited,
    Rejected,
    Unavailable,
)
from qjobd.backends.qasm import QasmError
from qjobd.daemon.config import PollingConfig
from qjobd.daemon.engine.schedule import Backoff
from qjobd.store.errors import StoreError
from qjobd.store.states import IllegalTransition

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


class RetryPolicy:
    """What to do about each failure of one backend's engine.

    ``name`` is the backend's, for the errors it writes; delays follow ``polling``
    (jittered by ``rng``).
    """

    def __init__(self, name: str, polling: PollingConfig,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.polling = polling
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
        decision = self._decide(step, error, previous)
        if isinstance(error, RateLimited) and decision.action is not Action.RAISE:
            pause = error.retry_after if error.retry_after is not None \
                else self._backoff.first()
            decision = dataclasses.replace(
                decision, pause=pause, say=_joined("rate limited; pausing backend",
                                                    decision.say))
        return decision

    def _decide(self, step: Step, error: BaseException | None,
                previous: float | None) -> Decision:
        first = self._backoff.first
        match step, error:
            case Step.PREPARE, QasmError():
                return Decision(Action.FAIL, error=str(error), say=None)
            case Step.CREATE, Rejected():
                return Decision(Action.FAIL, error=f"rejected by {self.name}: {error}",
                                say=None)
            case Step.CREATE, AuthError():
                # refused before anything was created: wait for new credentials (SIGHUP)
                return Decision(Action.REQUEUE, pause=AUTH_PAUSE, error=str(error),
                                say="credentials refused; pausing backend", level="error")
            case Step.CREATE, BackendError():
                # the job may or may not exist remotely now: find out before resubmitting
                return Decision(Action.RECONCILE, delay=first(),
                                say="submission outcome unknown; will reconcile")
            case Step.SUBMIT, IllegalTransition():
                return Decision(Action.RESYNC, say="job changed under the submitter",
                                level="error")
            case Step.SUBMIT, StoreError():
                return Decision(Action.RETRY_LATER, delay=self.polling.max_interval,
                                say="submission could not be recorded", level="error")
            case Step.SUBMIT, Exception():
                # never let one job's surprise stop the submitter for everyone else
                return Decision(Action.RETRY_LATER, delay=self.polling.max_interval,
                                say="submission failed unexpectedly", level="exception")
            case Step.SETTLE, Unavailable():
                # until a settling request answers, nothing is safe: retry through outages
                return Decision(Action.RETRY, delay=self._backoff.next(previous),
                                say="settling request failed; retrying")
            case Step.POLL, BackendError():
                return Decision(Action.POLL_AGAIN, say="status poll failed")
            case Step.POLL, Exception():
                # a bug, or an answer nothing foresaw: polled again too
                return Decision(Action.POLL_AGAIN, say="status poll failed unexpectedly",
                                level="exception")
            case Step.RECORD, IllegalTransition():
                return Decision(Action.RESYNC, say="job changed under the poller",
                                level="error")
            case Step.RECORD, StoreError():
                return Decision(Action.POLL_AGAIN, say="could not record a poll",
                                level="error")
            case Step.RECORD, Exception():
                return Decision(Action.POLL_AGAIN,
                                say="could not handle a poll; will poll again",
                                level="exception")
            case Step.RESULTS, Unavailable():
                return Decision(Action.POLL_AGAIN, say="result fetch failed; retrying")
            case Step.RESULTS, BackendError():
                return Decision(Action.FAIL, error=f"results could not be read: {error}",
                                say=None)
            case Step.CANCEL, BackendError():
                return Decision(Action.CARRY_ON,
                                say="remote cancel failed; ending the jobs anyway")
            case Step.CONFIRM, BackendError():
                return Decision(Action.CARRY_ON, say=None)
            case Step.SCHEDULE, StoreError():
                # only the stored schedule is stale: a restart would poll these a little
                # early; their next poll writes it again
                return Decision(Action.REWRITE, say="could not store poll schedule")
        return Decision(Action.RAISE, say=None)

    def _unknown(self, caps: Capabilities) -> Decision:
        if not caps.durable:
            # the simulator's work died with its process: settle it as after a restart
            return Decision(Action.RECOVER, say=None)
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
