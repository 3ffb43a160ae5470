"""Handlers the HTTP tests give ``python -m final serve --handler``: the payload says what to do.

- ``fail``: raise, every attempt;
- ``sleep:SECONDS``: take that long;
- ``hold:PATH``: wait until the file PATH exists (at most a minute), so that a test
  in another process decides when the job ends;
- anything else: return at once.
"""

from __future__ import annotations

import os
import time

from final import Job

HOLD_LIMIT = 60.0  # a held job gives up after this, so a failed test leaves no server stuck


class Refused(Exception):
    """What a ``fail`` job raises."""


def handle(job: Job) -> None:
    text = job.payload.decode()
    if text == "fail":
        raise Refused("the payload asked to fail")
    if text.startswith("sleep:"):
        time.sleep(float(text.removeprefix("sleep:")))
    elif text.startswith("hold:"):
        path = text.removeprefix("hold:")
        deadline = time.monotonic() + HOLD_LIMIT
        # A poll: the releasing side is another process, with no event to share.
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
