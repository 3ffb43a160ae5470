"""The final tier over HTTP: a FastAPI app around one ``JobQueue``.

``create_app(queue)`` returns the app; ``final/serve.py`` runs it under uvicorn with
the signals handled. The endpoints:

- ``POST /jobs`` accepts ``{"payload": any JSON value, "priority": "high"|"medium"|"low",
  "idempotency_key": str?, "max_retries": int?, "run_at": str?}`` and answers 201 with the job's id
  and a ``Location``; 409 with the first job's id for a used idempotency key; 503
  with ``Retry-After`` when the job's lane is full or the server is shutting down
  (the server enqueues with ``timeout=0``: it never holds a request on a full lane);
  413 for a body over 64 KiB, 415 for one that is not JSON, 422 for one that does
  not validate. A string ``payload`` reaches the handler as its UTF-8 bytes; any
  other JSON value (object, array, number, boolean, null) as its compact encoding,
  ``json.dumps(value, separators=(",", ":"))`` in UTF-8, so ``{"to": "a@b.c"}``
  arrives as ``b'{"to":"a@b.c"}'``. ``run_at``, an ISO 8601 date and time with an
  offset (``2030-01-01T09:00:00+02:00``, or ``Z`` for UTC), schedules the job: it is
  not started before that instant. Without an offset the instant is unknown: a 422
  that names the value, as for a string that is not a date and time.
- ``DELETE /jobs/{id}`` cancels a job that has not started: 200 with the job, now
  ``cancelled``; 409 once it has started or settled; 404 for an id the queue does
  not know.
- ``GET /jobs/{id}`` (status, attempts, last error, times, run_at), ``GET /dlq``,
  ``POST /dlq/{id}/retry`` (202), ``GET /metrics`` (Prometheus), ``GET /healthz``.
- ``GET /`` is the dashboard, a page that shows the queue live from ``GET /overview``
  (the queue at a glance, as JSON) and ``GET /dlq``: see ``final/dashboard/``.

The names of priorities and statuses on the wire come from ``Priority`` (its
members' names, in lower case) and ``Status`` (its values), so they cannot drift
from the queue's.

Why FastAPI: the OpenAPI document at ``/openapi.json`` comes from the same models
that validate requests, so it cannot drift from what the server does, and pydantic's
own JSON parser (not ``json.loads``) rejects ``NaN``, lone surrogates, numbers too
big to convert and deep nesting as invalid JSON, which is exactly the hostile input
a public endpoint must answer with a 4xx rather than a 500. Starlette alone would
have meant writing both the validation and the schema by hand.

Every error is ``{"detail": ...}`` with a status that names the problem (except the
plain-text 400 that uvicorn gives any request that is not valid HTTP); no error
echoes the body back (a lone surrogate cannot even be encoded in a response): only a
404 repeats the id from the URL, once it has matched ``ID_PATTERN``. When the queue's
store fails (a full disk, an I/O error), any endpoint answers 503 with
``Retry-After`` and the store's own message, and a job it could not store was not
accepted. No response carries a stack trace.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and those of closures could not be resolved from strings.
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from final.dashboard import dashboard_routes
from final.errors import DuplicateJob, QueueClosed, QueueFull
from final.job_queue import JobQueue
from final.jobs import Job, JobInfo, Priority, Status
from final.store import StoreError
from final.validation import MAX_KEY_LENGTH, MAX_RUN_AT_YEAR

__all__ = ["MAX_BODY", "HttpState", "create_app", "instrument", "payload_bytes"]

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes in a request body
MAX_RETRIES = 100  # the most a client may ask for: a bound, so a huge number is a 422
MAX_RUN_AT = 64  # characters in a run_at: any ISO 8601 instant fits, and a 422 may repeat it
ID_PATTERN = r"^[A-Za-z0-9._~-]{1,1024}$"  # what an id in a URL may be: unreserved characters
RETRY_AFTER = "1"  # seconds a client is told to wait after a 503
PRIORITY_NAMES = {priority: priority.name.lower() for priority in Priority}
PRIORITIES = {name: priority for priority, name in PRIORITY_NAMES.items()}
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SHUTTING_DOWN = "the server is shutting down; try another, or again later"
RECENT_WAITS = (
    1000  # the waits the dashboard's percentiles are taken over, when the queue's are not
)


# -- the bodies, in and out: the OpenAPI document is made from these ----------------------


def _priority(value: object) -> Priority:
    if isinstance(value, Priority):  # a response model, made from the queue's answers
        return value
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    raise ValueError(f"priority must be one of {', '.join(map(repr, PRIORITIES))}")


# A Priority inside, its lower-case name on the wire and in the document.
HttpPriority = Annotated[
    Priority,
    PlainValidator(_priority),
    PlainSerializer(lambda priority: PRIORITY_NAMES[priority], return_type=str),
    WithJsonSchema({"type": "string", "enum": list(PRIORITIES)}),
]

# Inline (no $ref): the request body's schema is pasted into the document by hand.
Payload = Annotated[
    JsonValue,
    WithJsonSchema(
        {
            "description": "what the handler is given: a string as its UTF-8 bytes, any"
            ' other JSON value as its compact encoding (json.dumps with separators=(",", ":"))'
        }
    ),
]


def payload_bytes(payload: JsonValue) -> bytes:
    """The bytes a handler gets for ``payload`` (a JSON value as parsed): a string's
    UTF-8 encoding, or any other value's compact JSON encoding in UTF-8.
    Raises ``ValueError`` for a float that is not finite (JSON has none)."""
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class JobRequest(BaseModel):
    """A job to run. Fields not listed here are refused, so a typo is not silently lost."""

    model_config = ConfigDict(extra="forbid", strict=True)

    payload: Payload
    priority: HttpPriority
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
    run_at: str | None = Field(
        default=None,
        max_length=MAX_RUN_AT,
        json_schema_extra={"format": "date-time"},
        description="not started before this instant: ISO 8601 with an offset,"
        " such as 2030-01-01T09:00:00+00:00; default: at once",
    )

    @field_validator("payload", mode="after")
    @classmethod
    def _encodable(cls, value: JsonValue) -> JsonValue:
        # 1e400 parses as infinity, which no JSON encoding can give back to the handler.
        try:
            payload_bytes(value)
        except ValueError:
            raise ValueError("payload holds a number too large for JSON") from None
        return value

    @field_validator("run_at", mode="after")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is not None:
            parse_run_at(value)  # the ValueError names the value: the 422 says it
        return value

    @field_validator("idempotency_key", mode="after")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        # PostgreSQL's text cannot hold a NUL: refused whatever the queue, so that a
        # body valid on one server is valid on all of them.
        if value is not None and "\x00" in value:
            raise ValueError("idempotency_key must not contain NUL (\\x00)")
        return value

    @field_validator("max_retries", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # JSON Schema's "integer" includes 3.0; strict mode alone would refuse it.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def job(self) -> Job:
        return Job(
            payload=payload_bytes(self.payload),
            priority=self.priority,
            idempotency_key=self.idempotency_key,
            max_retries=self.max_retries,
            run_at=None if self.run_at is None else parse_run_at(self.run_at),
        )


def parse_run_at(text: str) -> datetime:
    """The instant ``text`` names, an ISO 8601 date and time with an offset.

    Raises ``ValueError`` naming ``text`` when it is not one, has no offset (its
    instant would depend on the server's time zone), or is after year ``MAX_RUN_AT_YEAR``."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"run_at must be an ISO 8601 date and time with an offset, such as"
            f" 2030-01-01T09:00:00+00:00; got {text!r}"
        ) from None
    if when.utcoffset() is None:
        raise ValueError(f"run_at {text!r} has no offset: add one, such as +00:00 (or Z)")
    if when.year > MAX_RUN_AT_YEAR:  # the library's bound (check_run_at), in this field's name
        raise ValueError(f"run_at must be in year {MAX_RUN_AT_YEAR} or before, got {text!r}")
    return when


class JobCreated(BaseModel):
    id: str


class JobView(BaseModel):
    id: str
    priority: HttpPriority
    status: Status
    attempts: int
    max_retries: int
    last_error: str | None
    idempotency_key: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None = Field(description="not started before this instant, if set")


class DeadJob(BaseModel):
    id: str
    priority: HttpPriority
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
        priority=info.priority,
        status=info.status,
        attempts=info.attempts,
        max_retries=info.max_retries,
        last_error=info.last_error,
        idempotency_key=info.idempotency_key,
        enqueued_at=datetime.fromtimestamp(info.enqueued_at, UTC),
        started_at=_when(info.started_at),
        finished_at=_when(info.finished_at),
        run_at=_when(info.run_at),
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
        # For the dashboard, where the queue measures no waits (on PostgreSQL).
        self.recent_waits: deque[float] = deque(maxlen=RECENT_WAITS)

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
            waited = time.monotonic() - acknowledged
            state.wait.labels(PRIORITY_NAMES[job.priority]).observe(waited)
            state.recent_waits.append(waited)
        return handler(job)

    return timed


# The queue's Metrics fields by lane, each with what its series tells.
_COUNTERS = {
    "submitted": "Jobs accepted, recovered at start, or replayed from the dead letters",
    "started": "Attempts begun",
    "completed": "Jobs that succeeded",
    "failed": "Jobs that failed for good and went to the dead letters",
    "retried": "Retries scheduled",
    "timed_out": "Attempts that ran past the job timeout",
    "lost": "Accepted jobs a close left unrun (never, with a path: they stay on disk)",
    "cancelled": "Jobs this queue's cancel() called off before they started",
}
# Every counter only grows, on every store: on PostgreSQL too each is the handle's own
# (the database's cancelled rows, which retention prunes, would read as a reset).
_GAUGES = {
    "queued": "Jobs waiting in their lane",
    "retrying": "Jobs waiting out a backoff",
    "scheduled": "Jobs waiting for their run_at",
    "in_flight": "Attempts running",
}


class QueueCollector(Collector):
    """Reads ``queue.metrics()`` at each scrape: one consistent snapshot per scrape,
    and nothing on the queue's hot path."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    def collect(self) -> list[Metric]:
        m = self._queue.metrics()
        families: list[Metric] = []
        for kind, names in ((CounterMetricFamily, _COUNTERS), (GaugeMetricFamily, _GAUGES)):
            for name, text in names.items():
                family = kind(f"job_queue_{name}", text, labels=["priority"])
                for priority, lane in m.by_priority.items():
                    family.add_metric([PRIORITY_NAMES[priority]], getattr(lane, name))
                families.append(family)
        families.append(GaugeMetricFamily("job_queue_dead", "Jobs in the dead letters", m.dead))
        families.append(
            GaugeMetricFamily(
                "job_queue_utilization",
                "Share of worker time spent in handlers since the queue began",
                m.utilization,
            )
        )
        return families


# -- what the document says of errors -------------------------------------------------------

Responses = dict[int | str, dict[str, Any]]

_UNAUTHORIZED: Responses = {
    401: {"model": Error, "description": "No bearer token, or the wrong one"}
}
# Any operation: the server answers a request that is not valid HTTP (a malformed
# header, say) itself, in plain text, before the API sees it.
_MALFORMED: Responses = {
    400: {
        "description": "Not a valid HTTP request: rejected by the server, before the API",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
_INVALID: Responses = {422: {"model": Invalid, "description": "The request does not validate"}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
_STORE_FAILED: Responses = {
    503: {
        "model": Error,
        "description": "The queue's storage failed (a full disk, say): try again later",
        "headers": _RETRY_AFTER,
    }
}
_BUSY: Responses = {
    503: {
        "model": Error,
        "description": "The lane is full, the server is shutting down, or its storage"
        " failed (a full disk, say): try again later",
        "headers": _RETRY_AFTER,
    }
}

_ENQUEUED: Responses = {
    201: {
        "description": "Accepted, and on disk if the server has a path",
        "headers": {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}},
    },
    409: {"model": Conflict, "description": "The idempotency key was used before"},
    413: {"model": Error, "description": f"The body is over {MAX_BODY} bytes"},
    415: {"model": Error, "description": "The body is not application/json"},
    **_INVALID,
    **_BUSY,
}


# -- what every endpoint shares: the token, the query, the errors ---------------------------


def _bearer(token: str | None) -> list[Any]:
    """The dependencies that ask for ``Authorization: Bearer <token>`` (none without one)."""
    if token is None:
        return []
    if not token:
        raise ValueError("token must be a non-empty string, or None for no token")
    if not (token.isascii() and token.isprintable()) or token != token.strip():
        # Nothing else can be presented: a browser refuses to send it, an HTTP header
        # is read as Latin-1 and loses the spaces at its ends. Such a token would
        # refuse every request, the right one included.
        raise ValueError(
            "token must be printable ASCII without spaces at its ends, as an HTTP header carries it"
        )
    secret = token.encode()
    bearer = HTTPBearer(auto_error=False, description="the token given to `serve`")

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        presented = (
            b"" if credentials is None else credentials.credentials.encode("utf-8", "replace")
        )
        # compare_digest takes as long whatever prefix matches: no timing oracle.
        if not hmac.compare_digest(presented, secret):
            raise StarletteHTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return [Depends(authorized)]


def _only_query(*names: str) -> Any:
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(StoreError)
    async def store_failed(request: Request, exc: StoreError) -> JSONResponse:
        # The operator's problem more than the client's, but the client may try
        # again once there is room; what was not stored was not accepted.
        logger.error("%s %s: the store failed: %s", request.method, request.url.path, exc)
        return _unavailable(f"the server could not use its storage: {exc}; try again later")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; the client learns only that it was ours.
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")


# -- the routes, by what they serve ---------------------------------------------------------

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job's id")]


async def _read_job(request: Request) -> Job | JSONResponse:
    """The job a ``POST /jobs`` asks for, or the 415, 413 or 422 that refuses it."""
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
        return JobRequest.model_validate_json(bytes(body)).job()
    except ValidationError as exc:
        return _invalid(exc.errors(include_url=False, include_context=False))


async def _enqueue(queue: JobQueue, state: HttpState, job: Job) -> None:
    """``queue.enqueue(job, timeout=0)``, in a thread: with a path, it returns once the
    job is committed to disk. Whatever it raises (``QueueFull``, ``StoreError``...),
    the job was not accepted, and leaves no entry in ``state.acknowledged``."""
    state.acknowledged[job.id] = time.monotonic()  # before: the first attempt may win
    try:
        await run_in_threadpool(queue.enqueue, job, 0)
    except BaseException:
        state.acknowledged.pop(job.id, None)
        raise


def _job_routes(queue: JobQueue, state: HttpState, auth: list[Any]) -> APIRouter:
    """``POST /jobs`` and ``GET /jobs/{id}``."""
    router = APIRouter(dependencies=[*auth, _only_query()])
    auth_errors = _UNAUTHORIZED if auth else {}

    @router.post(
        "/jobs",
        status_code=201,
        response_model=JobCreated,
        summary="Enqueue a job",
        responses={**_ENQUEUED, **auth_errors},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": JobRequest.model_json_schema()}},
            }
        },
    )
    async def post_job(request: Request) -> Response:
        if not state.accepting:
            return _unavailable(SHUTTING_DOWN)
        job = await _read_job(request)
        if isinstance(job, JSONResponse):
            return job
        try:
            await _enqueue(queue, state, job)
        except DuplicateJob as exc:
            return JSONResponse(
                {"detail": "this idempotency key was used by an earlier job", "id": exc.job_id},
                status_code=409,
            )
        except QueueFull:
            return _unavailable(f"the {PRIORITY_NAMES[job.priority]} lane is full; try again later")
        except QueueClosed:
            return _unavailable(SHUTTING_DOWN)
        # A StoreError (a full disk) goes on to the app's handler: a 503 naming it.
        return JSONResponse(
            {"id": job.id}, status_code=201, headers={"Location": f"/jobs/{job.id}"}
        )

    @router.get(
        "/jobs/{job_id}",
        response_model=JobView,
        summary="A job's status, attempts, last error and times",
        responses={
            404: {"model": Error, "description": "No such job"},
            **_INVALID,
            **_STORE_FAILED,
            **auth_errors,
        },
    )
    def get_job(job_id: JobId) -> JobView | JSONResponse:
        info = queue.info(job_id)
        if info is None:
            return _error(404, f"no job with id {job_id}")
        return _view(info)

    return router


def _cancel_routes(queue: JobQueue, auth: list[Any]) -> APIRouter:
    """``DELETE /jobs/{id}``: only the queue's public ``cancel`` and ``info``, so that
    any queue that has them (in memory, on SQLite, in PostgreSQL) serves it."""
    router = APIRouter(dependencies=[*auth, _only_query()])
    auth_errors = _UNAUTHORIZED if auth else {}

    @router.delete(
        "/jobs/{job_id}",
        response_model=JobView,
        summary="Cancel a job that has not started: it will never run",
        responses={
            404: {"model": Error, "description": "No such job"},
            409: {"model": Error, "description": "The job has started, or has settled"},
            **_INVALID,
            503: {
                "model": Error,
                "description": "The server is shutting down, or its storage failed:"
                " try again later",
                "headers": _RETRY_AFTER,
            },
            **auth_errors,
        },
    )
    def cancel_job(job_id: JobId) -> JobView | JSONResponse:
        try:
            cancelled = queue.cancel(job_id)
        except KeyError:
            return _error(404, f"no job with id {job_id}")
        except QueueClosed:
            return _unavailable("the server is shutting down; cancel the job after a restart")
        info = queue.info(job_id)
        if info is None:  # settled and let go of since: it was not ours to cancel
            return _error(409, f"job {job_id} has settled")
        if info.status is Status.PROCESSING:  # a retried job was running again, say
            return _error(409, f"job {job_id} has started: too late to cancel it")
        if not cancelled:
            return _error(409, f"job {job_id} has settled ({info.status.value}): nothing to cancel")
        return _view(info)

    return router


def _dead_letter_routes(queue: JobQueue, state: HttpState, auth: list[Any]) -> APIRouter:
    """``GET /dlq`` and ``POST /dlq/{id}/retry``."""
    router = APIRouter(dependencies=auth)
    auth_errors = _UNAUTHORIZED if auth else {}

    @router.get(
        "/dlq",
        response_model=DeadLetters,
        summary="The jobs that failed for good, oldest first",
        dependencies=[_only_query("limit")],
        responses={**_INVALID, **_STORE_FAILED, **auth_errors},
    )
    def get_dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000, description="most jobs listed")] = 100,
    ) -> DeadLetters:
        dead = queue.dead_letters()
        # One read of the store for every job's details, not one per job listed.
        infos = {info.id: info for info in queue.dead_letter_info()}
        listed: list[DeadJob] = []
        for job in dead[:limit]:
            info = infos.get(job.id)
            listed.append(
                DeadJob(
                    id=job.id,
                    priority=job.priority,
                    payload=job.payload.decode("utf-8", "replace"),
                    attempts=0 if info is None else info.attempts,
                    last_error=None if info is None else info.last_error,
                    finished_at=None if info is None else _when(info.finished_at),
                )
            )
        return DeadLetters(total=len(dead), jobs=listed)

    @router.post(
        "/dlq/{job_id}/retry",
        status_code=202,
        response_model=Replayed,
        summary="Put a dead job back in its lane with a fresh retry budget",
        dependencies=[_only_query()],
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

    return router


def _operation_routes(state: HttpState, registry: CollectorRegistry, auth: list[Any]) -> APIRouter:
    """``GET /metrics`` and ``GET /healthz``, for the machines that watch the server."""
    router = APIRouter()

    @router.get(
        "/metrics",
        summary="Counters, gauges and the queue-wait histogram, in the Prometheus text format",
        response_class=Response,
        dependencies=[*auth, _only_query()],
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **_INVALID,
            **(_UNAUTHORIZED if auth else {}),
        },
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Outside the token: a load balancer's probe carries none.
    @router.get(
        "/healthz",
        response_model=Health,
        summary="200 while the server accepts jobs, 503 once it is shutting down",
        dependencies=[_only_query()],
        responses={503: {"model": Health, "description": "Shutting down"}, **_INVALID},
    )
    def healthz() -> Health | JSONResponse:
        if state.accepting:
            return Health(status="ok")
        return JSONResponse({"status": "draining"}, status_code=503)

    return router


# -- the app --------------------------------------------------------------------------------


def create_app(
    queue: JobQueue,
    *,
    token: str | None = None,
    state: HttpState | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """An app serving ``queue``. With a ``token``, every endpoint but ``/healthz``, the
    OpenAPI document and the dashboard's page (which holds nothing of the queue) asks
    for ``Authorization: Bearer <token>``; an empty token, or one that is not printable
    ASCII without spaces at its ends, is a ``ValueError``.

    Pass the ``state`` (and its ``registry``) whose ``instrument`` wraps the queue's
    handler to get the wait histogram; a fresh one is made otherwise.
    """
    auth = _bearer(token)
    registry = registry if registry is not None else CollectorRegistry()
    state = state if state is not None else HttpState(registry)
    registry.register(QueueCollector(queue))
    app = FastAPI(
        title="job-queue-course: the final tier",
        version="0.1.0",
        description="A priority job queue with retries, dead letters and idempotency keys."
        " A job's payload may be any JSON value: a string reaches the handler as its UTF-8"
        " bytes, any other value as its compact JSON encoding.",
        docs_url=None,
        redoc_url=None,
        responses=_MALFORMED,
    )
    app.state.http = state
    _install_error_handlers(app)
    app.include_router(_job_routes(queue, state, auth))
    app.include_router(_cancel_routes(queue, auth))
    app.include_router(_dead_letter_routes(queue, state, auth))
    app.include_router(_operation_routes(state, registry, auth))
    overview_errors = {**_INVALID, **_STORE_FAILED, **(_UNAUTHORIZED if auth else {})}
    app.include_router(
        dashboard_routes(
            queue, lambda: list(state.recent_waits), auth, _only_query, overview_errors
        )
    )
    return app
