"""The final tier over HTTP: a FastAPI app around one ``JobQueue``.

``create_app(queue)`` returns the app; ``final/serve.py`` runs it under uvicorn with
the signals handled. The endpoints:

- ``POST /jobs`` accepts ``{"payload": str, "priority": "high"|"medium"|"low",
  "idempotency_key": str?, "max_retries": int?}`` and answers 201 with the job's id
  and a ``Location``; 409 with the first job's id for a used idempotency key; 503
  with ``Retry-After`` when the job's lane is full or the server is shutting down
  (the server enqueues with ``timeout=0``: it never holds a request on a full lane);
  413 for a body over 64 KiB, 415 for one that is not JSON, 422 for one that does
  not validate.
- ``GET /jobs/{id}`` (status, attempts, last error, times), ``GET /dlq``,
  ``POST /dlq/{id}/retry`` (202), ``GET /metrics`` (Prometheus), ``GET /healthz``.

Why FastAPI: the OpenAPI document at ``/openapi.json`` comes from the same models
that validate requests, so it cannot drift from what the server does, and pydantic's
own JSON parser (not ``json.loads``) rejects ``NaN``, lone surrogates, numbers too
big to convert and deep nesting as invalid JSON, which is exactly the hostile input
a public endpoint must answer with a 4xx rather than a 500. Starlette alone would
have meant writing both the validation and the schema by hand.

Every error is ``{"detail": ...}`` with a status that names the problem (except the
plain-text 400 that uvicorn gives any request that is not valid HTTP); no error
echoes the body back (a lone surrogate cannot even be encoded in a response): only a
404 repeats the id from the URL, once it has matched ``ID_PATTERN``. No response
carries a stack trace.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and those of closures could not be resolved from strings.
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from final.job_queue import (
    DuplicateJob,
    Job,
    JobInfo,
    JobQueue,
    Priority,
    QueueClosed,
    QueueFull,
    Status,
)
from final.validation import MAX_KEY_LENGTH

__all__ = ["MAX_BODY", "HttpState", "create_app", "instrument"]

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes in a request body
MAX_RETRIES = 100  # the most a client may ask for: a bound, so a huge number is a 422
ID_PATTERN = r"^[A-Za-z0-9._~-]{1,1024}$"  # what an id in a URL may be: unreserved characters
RETRY_AFTER = "1"  # seconds a client is told to wait after a 503
PRIORITY_NAMES: dict[Priority, Literal["high", "medium", "low"]] = {
    Priority.HIGH: "high",
    Priority.MEDIUM: "medium",
    Priority.LOW: "low",
}
STATUS_NAMES: dict[Status, Literal["queued", "processing", "retrying", "completed", "failed"]] = {
    Status.QUEUED: "queued",
    Status.PROCESSING: "processing",
    Status.RETRYING: "retrying",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
}
PRIORITIES = {name: priority for priority, name in PRIORITY_NAMES.items()}
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# -- the bodies, in and out: the OpenAPI document is made from these ----------------------


class JobRequest(BaseModel):
    """A job to run. Fields not listed here are refused, so a typo is not silently lost."""

    model_config = ConfigDict(extra="forbid", strict=True)

    payload: str = Field(max_length=MAX_BODY, description="what the handler is given, as UTF-8")
    priority: Literal["high", "medium", "low"]
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="a second job with this key is refused with 409",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RETRIES,
        description="retries after the first attempt; default: the server's",
    )

    @field_validator("max_retries", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # JSON Schema's "integer" includes 3.0; strict mode alone would refuse it.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class JobCreated(BaseModel):
    id: str


class JobView(BaseModel):
    id: str
    priority: Literal["high", "medium", "low"]
    status: Literal["queued", "processing", "retrying", "completed", "failed"]
    attempts: int
    max_retries: int
    last_error: str | None
    idempotency_key: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DeadJob(BaseModel):
    id: str
    priority: Literal["high", "medium", "low"]
    payload: str = Field(description="as UTF-8, with undecodable bytes replaced")
    attempts: int
    last_error: str | None
    finished_at: datetime | None


class DeadLetters(BaseModel):
    total: int = Field(description="how many jobs are dead, however many are listed")
    jobs: list[DeadJob]


class Replayed(BaseModel):
    id: str
    status: Literal["queued"]


class Health(BaseModel):
    status: Literal["ok", "draining"]


class Error(BaseModel):
    detail: str


class Conflict(BaseModel):
    detail: str
    id: str = Field(description="the id of the job that used the key first")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    detail: list[FieldError]


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _unavailable(detail: str) -> JSONResponse:
    return _error(503, detail, {"Retry-After": RETRY_AFTER})


def _invalid(errors: list[Any]) -> JSONResponse:
    # Only where and what: pydantic's "input" and "ctx" may hold what the client sent,
    # and that can be a string no response can encode.
    detail = [
        {
            "loc": [p for p in e["loc"] if p != "body"] or ["body"],
            "msg": e["msg"],
            "type": e["type"],
        }
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _when(wall: float | None) -> datetime | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC)


def _view(info: JobInfo) -> JobView:
    return JobView(
        id=info.id,
        priority=PRIORITY_NAMES[info.priority],
        status=STATUS_NAMES[info.status],
        attempts=info.attempts,
        max_retries=info.max_retries,
        last_error=info.last_error,
        idempotency_key=info.idempotency_key,
        enqueued_at=datetime.fromtimestamp(info.enqueued_at, UTC),
        started_at=_when(info.started_at),
        finished_at=_when(info.finished_at),
    )


# -- metrics --------------------------------------------------------------------------------


class HttpState:
    """What the app keeps beside its queue: whether it still accepts jobs, and the
    time each accepted job was acknowledged, until its first attempt starts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._accepting = threading.Event()
        self._accepting.set()
        self.acknowledged: dict[str, float] = {}  # id -> time.monotonic(); dict ops hold the GIL
        self.wait = Histogram(
            "job_queue_wait_seconds",
            "Seconds from a job's acceptance by POST /jobs to the start of its first attempt",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        for name in PRIORITY_NAMES.values():  # every series exists from the first scrape
            self.wait.labels(name)

    @property
    def accepting(self) -> bool:
        return self._accepting.is_set()

    def stop_accepting(self) -> None:
        """From now on POST /jobs answers 503 and /healthz says draining; safe from a
        signal handler (it only sets an event)."""
        self._accepting.clear()


def instrument(handler: Callable[[Job], object], state: HttpState) -> Callable[[Job], object]:
    """Wrap ``handler`` so that each job's first attempt observes its wait in ``state``."""

    def timed(job: Job) -> object:
        acknowledged = state.acknowledged.pop(job.id, None)
        if acknowledged is not None:
            state.wait.labels(PRIORITY_NAMES[job.priority]).observe(time.monotonic() - acknowledged)
        return handler(job)

    return timed


class QueueCollector(Collector):
    """Reads ``queue.metrics()`` at each scrape: one consistent snapshot per scrape,
    and nothing on the queue's hot path."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    def collect(self) -> list[Metric]:
        m = self._queue.metrics()
        counters = {
            "submitted": "Jobs accepted, recovered at start, or replayed from the dead letters",
            "started": "Attempts begun",
            "completed": "Jobs that succeeded",
            "failed": "Jobs that failed for good and went to the dead letters",
            "retried": "Retries scheduled",
            "timed_out": "Attempts that ran past the job timeout",
            "lost": "Accepted jobs a close left unrun (never, with a path: they stay on disk)",
        }
        gauges = {
            "queued": "Jobs waiting in their lane",
            "retrying": "Jobs waiting out a backoff",
            "in_flight": "Attempts running",
        }
        families: list[Metric] = []
        for name, text in counters.items():
            family = CounterMetricFamily(f"job_queue_{name}", text, labels=["priority"])
            for priority, lane in m.by_priority.items():
                family.add_metric([PRIORITY_NAMES[priority]], getattr(lane, name))
            families.append(family)
        for name, text in gauges.items():
            gauge = GaugeMetricFamily(f"job_queue_{name}", text, labels=["priority"])
            for priority, lane in m.by_priority.items():
                gauge.add_metric([PRIORITY_NAMES[priority]], getattr(lane, name))
            families.append(gauge)
        families.append(GaugeMetricFamily("job_queue_dead", "Jobs in the dead letters", m.dead))
        families.append(
            GaugeMetricFamily(
                "job_queue_utilization",
                "Share of worker time spent in handlers since the queue began",
                m.utilization,
            )
        )
        return families


# -- the app --------------------------------------------------------------------------------

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No bearer token, or the wrong one"}
}
# Any operation: the server answers a request that is not valid HTTP (a malformed
# header, say) itself, in plain text, before the API sees it.
_MALFORMED: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Not a valid HTTP request: rejected by the server, before the API",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Invalid, "description": "The request does not validate"}
}
_BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Error,
        "description": "The lane is full, or the server is shutting down: try again later",
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    }
}


def create_app(
    queue: JobQueue,
    *,
    token: str | None = None,
    state: HttpState | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """An app serving ``queue``. With a ``token``, every endpoint but ``/healthz`` and
    the OpenAPI document asks for ``Authorization: Bearer <token>``.

    Pass the ``state`` (and its ``registry``) whose ``instrument`` wraps the queue's
    handler to get the wait histogram; a fresh one is made otherwise.
    """
    if token is not None and not token:
        raise ValueError("token must be a non-empty string, or None for no token")
    registry = registry if registry is not None else CollectorRegistry()
    state = state if state is not None else HttpState(registry)
    registry.register(QueueCollector(queue))
    secret = None if token is None else token.encode()
    bearer = HTTPBearer(auto_error=False, description="the token given to `serve`")

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if secret is None:
            return
        presented = (
            b"" if credentials is None else credentials.credentials.encode("utf-8", "replace")
        )
        # compare_digest takes as long whatever prefix matches: no timing oracle.
        if not hmac.compare_digest(presented, secret):
            raise StarletteHTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    def only_query(*names: str) -> Any:
        """A dependency refusing query parameters the endpoint does not take: a typo
        in one (``?limt=5``) is an error, not a silently ignored wish."""
        allowed = frozenset(names)

        def check(request: Request) -> None:
            unknown = sorted(set(request.query_params) - allowed)
            if unknown:
                raise RequestValidationError(
                    [
                        {"loc": ("query", name), "msg": "unknown query parameter", "type": "extra"}
                        for name in unknown
                    ]
                )

        return Depends(check)

    auth = [Depends(authorized)] if secret is not None else []
    guarded = [*auth, only_query()]
    auth_errors = _UNAUTHORIZED if secret is not None else {}
    app = FastAPI(
        title="job-queue-course: the final tier",
        version="0.1.0",
        description="A priority job queue with retries, dead letters and idempotency keys.",
        docs_url=None,
        redoc_url=None,
        responses=_MALFORMED,
    )
    app.state.http = state
    JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job's id")]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; the client learns only that it was ours.
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobCreated,
        summary="Enqueue a job",
        dependencies=guarded,
        responses={
            201: {
                "description": "Accepted, and on disk if the server has a path",
                "headers": {
                    "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}
                },
            },
            409: {"model": Conflict, "description": "The idempotency key was used before"},
            413: {"model": Error, "description": f"The body is over {MAX_BODY} bytes"},
            415: {"model": Error, "description": "The body is not application/json"},
            **_INVALID,
            **_BUSY,
            **auth_errors,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": JobRequest.model_json_schema()}},
            }
        },
    )
    async def post_job(request: Request) -> Response:
        if not state.accepting:
            return _unavailable("the server is shutting down; try another, or again later")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return _error(415, "the body must be JSON, sent as Content-Type: application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return _error(413, f"the body is over {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.stream():  # counted as it comes: chunked bodies too
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"the body is over {MAX_BODY} bytes")
        try:
            # pydantic's parser, not json.loads: NaN, lone surrogates, huge numbers and
            # deep nesting are invalid JSON to it.
            wanted = JobRequest.model_validate_json(bytes(body))
        except ValidationError as exc:
            return _invalid(exc.errors(include_url=False, include_context=False))
        job = Job(
            payload=wanted.payload.encode(),
            priority=PRIORITIES[wanted.priority],
            idempotency_key=wanted.idempotency_key,
            max_retries=wanted.max_retries,
        )
        state.acknowledged[job.id] = time.monotonic()  # before: the first attempt may win
        try:
            # In a thread: with a path, enqueue returns once the job is committed to disk.
            await run_in_threadpool(queue.enqueue, job, 0)
        except DuplicateJob as exc:
            state.acknowledged.pop(job.id, None)
            return JSONResponse(
                {"detail": "this idempotency key was used by an earlier job", "id": exc.job_id},
                status_code=409,
            )
        except QueueFull:
            state.acknowledged.pop(job.id, None)
            return _unavailable(f"the {wanted.priority} lane is full; try again later")
        except QueueClosed:
            state.acknowledged.pop(job.id, None)
            return _unavailable("the server is shutting down; try another, or again later")
        return JSONResponse(
            {"id": job.id}, status_code=201, headers={"Location": f"/jobs/{job.id}"}
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=JobView,
        summary="A job's status, attempts, last error and times",
        dependencies=guarded,
        responses={404: {"model": Error, "description": "No such job"}, **_INVALID, **auth_errors},
    )
    def get_job(job_id: JobId) -> JobView | JSONResponse:
        info = queue.info(job_id)
        if info is None:
            return _error(404, f"no job with id {job_id}")
        return _view(info)

    @app.get(
        "/dlq",
        response_model=DeadLetters,
        summary="The jobs that failed for good, oldest first",
        dependencies=[*auth, only_query("limit")],
        responses={**_INVALID, **auth_errors},
    )
    def get_dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000, description="most jobs listed")] = 100,
    ) -> DeadLetters:
        dead = queue.dead_letters()
        listed: list[DeadJob] = []
        for job in dead[:limit]:
            info = queue.info(job.id)
            listed.append(
                DeadJob(
                    id=job.id,
                    priority=PRIORITY_NAMES[job.priority],
                    payload=job.payload.decode("utf-8", "replace"),
                    attempts=0 if info is None else info.attempts,
                    last_error=None if info is None else info.last_error,
                    finished_at=None if info is None else _when(info.finished_at),
                )
            )
        return DeadLetters(total=len(dead), jobs=listed)

    @app.post(
        "/dlq/{job_id}/retry",
        status_code=202,
        response_model=Replayed,
        summary="Put a dead job back in its lane with a fresh retry budget",
        dependencies=guarded,
        responses={
            404: {"model": Error, "description": "The job is not in the dead letters"},
            **_INVALID,
            **_BUSY,
            **auth_errors,
        },
    )
    def retry_dead(job_id: JobId) -> Replayed | JSONResponse:
        if not state.accepting:
            return _unavailable("the server is shutting down; replay the job after a restart")
        try:
            queue.retry_dead(job_id)
        except KeyError:
            return _error(404, f"job {job_id} is not in the dead letters")
        except QueueClosed:
            return _unavailable("the server is shutting down; replay the job after a restart")
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=202)

    @app.get(
        "/metrics",
        summary="Counters, gauges and the queue-wait histogram, in the Prometheus text format",
        response_class=Response,
        dependencies=guarded,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **_INVALID,
            **auth_errors,
        },
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Outside the token: a load balancer's probe carries none.
    @app.get(
        "/healthz",
        response_model=Health,
        summary="200 while the server accepts jobs, 503 once it is shutting down",
        dependencies=[only_query()],
        responses={503: {"model": Health, "description": "Shutting down"}, **_INVALID},
    )
    def healthz() -> Health | JSONResponse:
        if state.accepting:
            return Health(status="ok")
        return JSONResponse({"status": "draining"}, status_code=503)

    return app
