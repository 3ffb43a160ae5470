"""What the dashboard's browser tests and ``make screenshot`` share: the server of a
queue in this process, and headless Chromium driven by Playwright.

The server runs in a thread here, not in a subprocess, so that a test can hold the
handler at an ``Event`` and see the lane fill, then release it and see it drain. The
browser is the machine's own Chromium (Debian's ``chromium``), never one that
Playwright would download: ``CHROMIUM`` names another executable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CollectorRegistry

from final import Job, JobQueue
from final.http import HttpState, create_app, instrument
from tests.support import PATIENCE

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# What works headless in a container, and keeps the browser from calling home.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The Chromium to drive: ``$CHROMIUM``, else ``chromium`` on the PATH; None if none."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set CHROMIUM)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium, with a fresh profile, closed on the way out."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    assert executable is not None, why_no_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=LAUNCH_ARGS, timeout=PATIENCE * 3000
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Served:
    """A queue behind a live server: ``url`` is where its dashboard is."""

    url: str
    queue: JobQueue
    state: HttpState


@contextlib.contextmanager
def served(
    handler: Callable[[Job], object], *, token: str | None = None, **options: Any
) -> Iterator[Served]:
    """A ``JobQueue(handler, **options)`` served over HTTP, as ``serve`` does, on a
    free loopback port, in a thread of this process; closed on the way out."""
    registry = CollectorRegistry()
    state = HttpState(registry)
    queue = JobQueue(instrument(handler, state), **options)
    app = create_app(queue, token=token, state=state, registry=registry)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening already: a request made before uvicorn is up waits in the backlog.
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard")
    thread.start()
    try:
        host, port = sock.getsockname()[:2]
        yield Served(f"http://{host}:{port}", queue, state)
    finally:
        server.should_exit = True
        thread.join(PATIENCE)
        sock.close()
        queue.close(timeout=PATIENCE)
