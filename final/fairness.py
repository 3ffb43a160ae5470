"""Which lane a free worker takes from: strict priority, with a bound on starvation.

Each lane counts how many picks in a row went to a higher lane while it had a job
waiting. A lane passed over ``fairness`` times is *owed*, and goes next; when more
than one lane is owed, the lowest goes first. A pick from a lane resets its count;
a pick from a lower lane leaves it alone.

The bounds that follow, measured in picks (one pick = one attempt started):

- LOW: from the moment a LOW job is at the head of its lane, it starts within
  ``fairness + 1`` picks, however busy HIGH and MEDIUM are;
- MEDIUM: within ``fairness + 3`` picks. LOW wins a tie between owed lanes, and a
  MEDIUM pick counts against LOW, so up to two owed LOW picks can come first: one
  right after MEDIUM's previous pick, and one at the moment MEDIUM is owed again
  (with everything saturated and ``fairness=1`` the picks run H L M L H L M L ...);
- HIGH: what is left. With every lane saturated, LOW gets exactly one pick in
  ``fairness + 1`` (it counts MEDIUM's picks against HIGH's alike), MEDIUM a little
  less, and HIGH the rest: 83% of the picks at the default of 10, 56% at 3, and
  only 25% at 1. That is the price of fairness, paid in HIGH's latency.

``fairness=0`` turns fairness off: strict priority, as in the improved tier.

Why a count of picks (a token window) rather than the alternatives?

- Weighted random choice (take LOW with probability p) has no bound at all: a LOW
  job can lose any number of draws in a row, so the worst case, which is what
  starvation is about, is unbounded; it also makes tests and incidents
  irreproducible.
- Ageing (raise a job's priority with its wait) bounds waiting in *time*, which is
  what users feel, but the bound then depends on the arrival rate and on how long
  jobs take, it needs a clock read and a re-sort (or a scan of every lane's head)
  on every pick, and it quietly turns old LOW jobs into HIGH ones, which makes
  "HIGH first" hard to reason about.
- The count costs two passes over three counters per pick, its bound is exact and
  independent of timing, and it is easy to state in one sentence.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sized
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class FairPicker(Generic[K]):
    """Not thread-safe on purpose: the queue calls it under its own lock.

    ``lanes`` maps a key (a priority) to a lane, highest priority first; a lane
    only needs a length here.
    """

    def __init__(self, fairness: int, lanes: Mapping[K, Sized]) -> None:
        self.fairness = fairness
        self._keys = list(lanes)  # highest first
        self._lanes = list(lanes.values())
        self._passed_over = [0] * len(self._lanes)

    def pick(self) -> K | None:
        """The lane to take from next (None when all are empty), and count the pick."""
        # Runs under the queue's lock for every job, so it is written for speed:
        # an empty lane is falsy, and the usual case (nothing below the first
        # non-empty lane is waiting) touches no counter at all.
        lanes = self._lanes
        first = 0
        for lane in lanes:
            if lane:
                break
            first += 1
        else:
            return None
        if not self.fairness:
            return self._keys[first]  # strict priority: nothing to count
        passed = self._passed_over
        chosen = first  # what strict priority would take...
        waiting = False
        for i in range(first + 1, len(lanes)):
            if lanes[i]:
                waiting = True
                if passed[i] >= self.fairness:
                    chosen = i  # ...unless a lower lane is owed; the lowest owed wins
        if waiting:
            for i in range(chosen + 1, len(lanes)):
                if lanes[i]:
                    passed[i] += 1
        passed[chosen] = 0
        return self._keys[chosen]

    def strict_for(self, picks: int) -> bool:
        """Whether the next ``picks`` picks are strict priority whatever the lanes hold.

        True when no lower lane can become owed within them (each pick adds at most
        one to a lane's count): a caller may then take the highest jobs without
        counting the lanes first, and replay the picks afterwards to keep the counts.
        """
        return all(p + picks < self.fairness for p in self._passed_over[1:])
