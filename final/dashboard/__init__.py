"""The dashboard of ``python -m final serve``: ``GET /``, the queue at a glance, live.

The page (``index.html``, ``dashboard.js``, ``dashboard.css`` and ``icon.svg``,
files beside this module and shipped in the wheel) is served by the server itself, with a
Content-Security-Policy that lets it load nothing from anywhere else: it works with
no network at all. It carries nothing of the queue. Its script reads
``GET /overview`` (lanes, attempts in flight, waits, counters, recent failures) and
``GET /dlq`` every second, draws the waits and the throughput as it goes, and
replays a dead letter through ``POST /dlq/{id}/retry``. When the server has a token,
those endpoints ask for it like every other: the page asks the user for it, keeps it
in the tab's ``sessionStorage``, and sends it as ``Authorization: Bearer`` with each
request; without it, it shows nothing but the form.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and those of closures could not be resolved from strings.
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from final.job_queue import JobQueue
from final.jobs import JobInfo, Status

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "Overview", "dashboard_routes"]

# Every file the page loads, with its media type: nothing else is served from here.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    # Its own icon: without one the browser asks for /favicon.ico, and logs the 404.
    "icon.svg": "image/svg+xml",
}
# Only this server, for everything: no CDN, no web font, no inline script to inject.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Lane(BaseModel):
    priority: str = Field(description="high, medium or low")
    queued: int = Field(
        description="jobs waiting in the lane (with PostgreSQL, and for their time)"
    )
    scheduled: int = Field(description="jobs waiting for their run_at")
    retrying: int = Field(description="jobs waiting out a backoff")
    in_flight: int = Field(description="attempts running")
    submitted: int
    started: int
    completed: int
    failed: int


class Failure(BaseModel):
    id: str
    priority: str
    status: Status = Field(description="retrying, or failed: a dead letter")
    attempts: int
    last_error: str | None
    failed_at: datetime | None = Field(description="a dead letter's end, a retry's latest start")


class Overview(BaseModel):
    time: datetime = Field(description="when the server took this snapshot")
    lanes: list[Lane] = Field(description="highest priority first")
    in_flight: int
    dead: int = Field(description="jobs in the dead letters")
    completed: int = Field(description="jobs that succeeded since the server started")
    failed: int = Field(description="jobs that failed for good since the server started")
    wait_p50: float | None = Field(description="seconds from lane to start, recent attempts")
    wait_p99: float | None
    utilization: float = Field(description="share of worker time spent in handlers")
    failures: list[Failure] = Field(description="jobs whose latest attempt failed, newest first")


def _failure(info: JobInfo) -> Failure:
    failed_at = info.finished_at if info.finished_at is not None else info.started_at
    return Failure(
        id=info.id,
        priority=info.priority.name.lower(),
        status=info.status,
        attempts=info.attempts,
        last_error=info.last_error,
        failed_at=None if failed_at is None else datetime.fromtimestamp(failed_at, UTC),
    )


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of ``ordered`` (sorted), nearest rank; None if empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overview(queue: JobQueue, server_waits: Callable[[], list[float]], failures: int) -> Overview:
    """A snapshot of ``queue`` for the page. Waits come from the queue; a queue that does
    not measure them (PostgreSQL's) gets those the server measured (``server_waits``)."""
    m = queue.metrics()
    p50, p99 = m.wait_p50, m.wait_p99
    if p50 is None:
        waits = sorted(server_waits())
        p50, p99 = _percentile(waits, 0.50), _percentile(waits, 0.99)
    lanes = [
        Lane(priority=p.name.lower(), **{name: getattr(m.by_priority[p], name) for name in _LANE})
        for p in sorted(m.by_priority, reverse=True)
    ]
    return Overview(
        time=datetime.now(UTC),
        lanes=lanes,
        in_flight=m.in_flight,
        dead=m.dead,
        completed=m.completed,
        failed=m.failed,
        wait_p50=p50,
        wait_p99=p99,
        utilization=m.utilization,
        failures=[_failure(info) for info in queue.recent_failures(failures)],
    )


_LANE = tuple(name for name in Lane.model_fields if name != "priority")


def _asset(name: str) -> Callable[[], Response]:
    """The endpoint that serves the file ``name``, read once, now: a file missing from
    the install fails the server's start, not the first look at the page."""
    body = resources.files(__name__).joinpath(name).read_bytes()

    def serve_file() -> Response:
        return Response(body, media_type=ASSETS[name], headers=_HEADERS)

    return serve_file


def dashboard_routes(
    queue: JobQueue,
    server_waits: Callable[[], list[float]],
    auth: list[Any],
    refuse_query: Callable[..., Any],
    responses: dict[int | str, dict[str, Any]],
) -> APIRouter:
    """``GET /`` and its assets (outside the token: they hold nothing of the queue), and
    ``GET /overview`` behind ``auth``, its errors documented as ``responses``.
    ``refuse_query(*names)`` is the dependency that refuses query parameters other
    than ``names``."""
    router = APIRouter()
    pages = {"/": "index.html", **{f"/dashboard/{name}": name for name in ASSETS}}
    for path, name in pages.items():
        router.add_api_route(
            path,
            _asset(name),
            methods=["GET"],
            include_in_schema=False,
            dependencies=[refuse_query()],
        )

    @router.get(
        "/overview",
        response_model=Overview,
        summary="The queue at a glance: what the dashboard shows",
        dependencies=[*auth, refuse_query("failures")],
        responses=responses,
    )
    def get_overview(
        failures: Annotated[int, Query(ge=1, le=100, description="most failures listed")] = 20,
    ) -> Overview:
        return overview(queue, server_waits, failures)

    return router
