"""The circuits of jobs in flight, kept in memory between their create and their results.

A job's circuits are read twice after its batch is stored: to build its create request
and again for its results (a backend's ``results`` is given them). Both reads were a
round trip to the store's reader thread, for circuits the API had in hand as it stored
them. The API now hands them over with the batch, and the engine keeps them here until
the job ends.

Bounded by the QASM it holds (in characters: about the bytes of the sources, which are
mostly ASCII), one cache for each backend's engine. When it is full, new circuits are not
kept, rather than old ones put out: jobs are submitted in the order they were queued, so
the oldest entries are the next creates, and putting them out for newer ones would leave
a queue longer than the bound with no hits at all. Room comes back as jobs end. A job
whose circuits are not here is read from the store, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from qjobd.store.models import CircuitRecord

#: the default bound: 16 Mi characters of QASM (a few thousand ordinary jobs)
MAX_CHARS = 16 * 1024 * 1024


class CircuitCache:
    """Circuit records by job id, at most ``max_chars`` characters of QASM source in all."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._jobs: dict[str, tuple[Sequence[CircuitRecord], int]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def chars(self) -> int:
        return self._chars

    def put(self, job_id: str, records: Sequence[CircuitRecord]) -> bool:
        """Keep a job's circuits if they fit in what is left of the bound; says whether
        they were kept."""
        self.drop(job_id)
        size = sum(len(r.source) for r in records)
        if not records or self._chars + size > self._max_chars:
            return False
        self._jobs[job_id] = (tuple(records), size)
        self._chars += size
        return True

    def get(self, job_id: str) -> Sequence[CircuitRecord] | None:
        entry = self._jobs.get(job_id)
        return None if entry is None else entry[0]

    def drop(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id, None)
        if entry is not None:
            self._chars -= entry[1]
