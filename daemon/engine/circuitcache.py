"""The circuits of jobs in flight, kept in memory between their create and their results.

A job's circuits are read twice after its batch is stored: to build its create request
and again for its results (a backend's ``results`` is given them). Both reads were a
round trip to the store's reader thread, for circuits the API had in hand as it stored
them. The API now hands them over with the batch, and the engine keeps them here until
the job ends.

Bounded by the bytes of QASM held (oldest out first), so a deep queue of large batches
costs no more memory than the bound: a job whose circuits are not here is read from the
store, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from qjobd.store.models import CircuitRecord

#: the default bound: 16 MiB of QASM (a few thousand ordinary jobs)
MAX_BYTES = 16 * 1024 * 1024


class CircuitCache:
    """Circuit records by job id, at most ``max_bytes`` of QASM source in all."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._jobs: OrderedDict[str, tuple[Sequence[CircuitRecord], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, job_id: str, records: Sequence[CircuitRecord]) -> None:
        """Keep a job's circuits, putting out the oldest if need be; circuits larger than
        the whole bound are not kept."""
        self.drop(job_id)
        size = sum(len(r.source) for r in records)
        if size > self._max_bytes:
            return
        while self._jobs and self._bytes + size > self._max_bytes:
            _, (_, old) = self._jobs.popitem(last=False)
            self._bytes -= old
        self._jobs[job_id] = (tuple(records), size)
        self._bytes += size

    def get(self, job_id: str) -> Sequence[CircuitRecord] | None:
        entry = self._jobs.get(job_id)
        return None if entry is None else entry[0]

    def drop(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id, None)
        if entry is not None:
            self._bytes -= entry[1]
