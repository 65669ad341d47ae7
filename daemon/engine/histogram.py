"""A fixed-bucket histogram, cheap enough to observe on every poll (Prometheus semantics).

Used for the scheduling lag of polls: the time between a job's due poll time and the
moment its status request is sent. Cumulative, so a reader that scrapes twice gets the
distribution of the interval between the scrapes from the difference.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

#: seconds; fine below 1 s where the target lives (p99 <= 250 ms), coarse above
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                  0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Counts of observations per bucket (``le`` upper bounds), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LAG_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        #: one per bound, plus the last for values above every bound (+Inf)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if value < 0.0:
            value = 0.0  # polled a little early (coalescing): no lag
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> Histogram:
        """The observations so far, in a histogram of their own (a snapshot)."""
        other = Histogram(self.bounds)
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, observations <= le) per bucket, ending with (+Inf, count)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1), linear within its bucket; NaN without observations."""
        return quantile(self.cumulative(), q)


def quantile(cumulative: Sequence[tuple[float, int]], q: float) -> float:
    """Estimate a quantile from cumulative bucket counts (as in PromQL's histogram_quantile).

    Linear interpolation within the bucket that holds the rank; a rank in the +Inf
    bucket answers the highest finite bound (a lower bound of the truth).
    """
    if not cumulative or cumulative[-1][1] == 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
