"""The README's picture of the dashboard, from a real run: ``make screenshot``.

A queue on SQLite behind a live server, jobs posted over HTTP faster than its four
workers run them, some failing now and then (a few for good, into the dead letters),
watched by headless Chromium for most of a minute; then the page is saved as a PNG.

    python -m tests.screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from final import Job
from tests.browser import chromium, served

ERRORS: list[Callable[[], Exception]] = [
    lambda: TimeoutError("the mail server did not answer within 5 s"),
    lambda: ValueError(f"invoice {random.randint(1000, 9999)} has no customer"),
    lambda: ConnectionResetError(104, "Connection reset by peer"),
]


def handler(job: Job) -> None:
    """Work of 20 to 150 ms; one attempt in sixteen fails, with one of three errors."""
    time.sleep(random.uniform(0.02, 0.15))
    if random.random() < 1 / 16:
        raise random.choice(ERRORS)()


def produce(url: str, seconds: float, stop: threading.Event) -> None:
    """Post jobs in waves: the lanes fill faster than the workers drain them, then rest."""
    priorities = ["high", "medium", "medium", "low", "low", "low"]
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= seconds and 3 <= elapsed % 8 < 4:
                return  # inside a wave: the lanes deep, the charts full
            wave = elapsed % 8 < 5  # five seconds busy, three quiet
            for _ in range(6 if wave else 1):
                body = {"payload": {"order": random.randint(1000, 9999)}}
                client.post("/jobs", json={**body, "priority": random.choice(priorities)})
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--seconds", type=float, default=50.0, help="how long jobs flow")
    args = parser.parse_args()
    random.seed(7)
    # The failures are the picture's, not news: the queue logs each with its traceback.
    logging.getLogger("final").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as folder, chromium() as browser:
        options: dict[str, Any] = {"path": Path(folder) / "jobs.db", "workers": 4}
        options |= {"queue_size": 200}
        options |= {"max_retries": 1, "backoff": 3.0, "max_backoff": 3.0}
        with served(handler, **options) as s:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(s.url + "/")
            stop = threading.Event()
            producer = threading.Thread(target=produce, args=(s.url, args.seconds, stop))
            producer.start()
            try:
                producer.join()
            finally:
                stop.set()
                producer.join()
            page.locator('#lanes tr[data-lane="low"]').wait_for()
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            page.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
