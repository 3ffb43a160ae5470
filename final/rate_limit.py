"""A token bucket: the final tier's limit on how many attempts start per second.

The bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; an
attempt starts only when it can take one. It throttles starts and never drops a
job: a worker that finds the bucket empty waits for the next token.

Why a burst of a tenth of a second's worth (at least one token)? A burst of one
would space starts perfectly, but every late wake-up of a worker (a few hundred
microseconds on a busy machine) would then be rate lost for good. A tenth of a
second of credit absorbs that jitter, while no window of one second can see more
than ``rate`` plus the burst: 1.1 times the limit from 10 starts a second up, and
``rate + 1`` below that (a job cannot start in tenths).
"""

from __future__ import annotations


class TokenBucket:
    """Not thread-safe on purpose: the queue calls it under its own lock."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 10)
        self._tokens = self.burst
        self._stamp = now

    def take(self, now: float) -> float:
        """Take a token and return 0.0, or return the seconds until one is there."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
