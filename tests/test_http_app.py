"""The HTTP app in process: what a payload becomes, and what a failing store answers.

No server here: httpx drives the ASGI app directly, so a test can reach into the queue
(fill its disk, break its store) and into the app's state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from final import Job, JobQueue, Priority
from final.http import HttpState, create_app, instrument
from final.jobs import JobInfo
from final.sqlite_store import SQLiteStore
from final.store import StoreError
from tests.support import PATIENCE, Recorder
from tests.test_final_disk_errors import PAYLOAD, fill_the_disk

pytestmark = pytest.mark.tiers("final")

Drive = Callable[[Callable[[httpx.AsyncClient], Awaitable[None]]], None]


def drive(app: Any) -> Drive:
    """Run ``steps(client)`` against ``app``; an exception the app did not answer
    becomes the 500 a real server would send, not an exception in the test."""

    def run(steps: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        async def main() -> None:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                await steps(c)

        asyncio.run(main())

    return run


# -- the payload ------------------------------------------------------------------------------


class Payloads:
    """A handler that records each payload it is given."""

    def __init__(self) -> None:
        self.seen: dict[str, bytes] = {}
        self._cond = threading.Condition()

    def __call__(self, job: Job) -> None:
        with self._cond:
            self.seen[job.id] = job.payload
            self._cond.notify_all()

    def of(self, job_id: str) -> bytes:
        with self._cond:
            assert self._cond.wait_for(lambda: job_id in self.seen, PATIENCE)
            return self.seen[job_id]


JSON_PAYLOADS = {
    "string": ("héllo", "héllo".encode()),
    "string that is JSON text": ('{"a": 1}', b'{"a": 1}'),
    "object": ({"to": "a@b.c", "n": [1, 2.5]}, b'{"to":"a@b.c","n":[1,2.5]}'),
    "array": ([1, "two", None], b'[1,"two",null]'),
    "integer": (42, b"42"),
    "float": (-0.5, b"-0.5"),
    "true": (True, b"true"),
    "null": (None, b"null"),
    "non-ASCII in an object": ({"k": "é"}, b'{"k":"\\u00e9"}'),
}


@pytest.mark.parametrize(("sent", "given"), JSON_PAYLOADS.values(), ids=list(JSON_PAYLOADS))
def test_any_json_payload_reaches_the_handler_as_its_compact_encoding(
    sent: object, given: bytes
) -> None:
    payloads = Payloads()
    with JobQueue(payloads) as q:
        app = create_app(q)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.post("/jobs", json={"payload": sent, "priority": "low"})
            assert answer.status_code == 201, answer.text
            assert payloads.of(answer.json()["id"]) == given

        drive(app)(steps)


def test_a_payload_number_json_cannot_encode_is_a_422() -> None:
    with JobQueue(Payloads()) as q:
        app = create_app(q)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.post(
                "/jobs",
                content=b'{"payload": {"big": 1e400}, "priority": "low"}',
                headers={"Content-Type": "application/json"},
            )
            assert answer.status_code == 422, answer.text
            assert answer.json()["detail"][0]["loc"] == ["payload"]

        drive(app)(steps)


def test_the_document_says_a_payload_may_be_any_json_value() -> None:
    with JobQueue(Payloads()) as q:
        document = create_app(q).openapi()
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    payload = body["schema"]["properties"]["payload"]
    assert "type" not in payload and "$ref" not in payload  # any value, no dangling $ref
    assert "compact" in payload["description"] and "compact" in document["info"]["description"]


# -- the names on the wire ------------------------------------------------------------------


def test_the_names_of_priorities_and_statuses_come_from_the_enums() -> None:
    from final.jobs import Status

    with JobQueue(Payloads()) as q:
        schemas = create_app(q).openapi()["components"]["schemas"]
    view = schemas["JobView"]["properties"]
    assert view["priority"]["enum"] == [p.name.lower() for p in Priority]
    status = schemas[view["status"]["$ref"].rsplit("/", 1)[1]]
    assert status["enum"] == [s.value for s in Status]


# -- a store that fails ---------------------------------------------------------------------


@pytest.fixture
def held_queue(tmp_path: Path) -> Iterator[tuple[JobQueue, HttpState, Recorder, SQLiteStore]]:
    """A queue on disk behind an instrumented handler, its one worker held on a gate job
    so that nothing it runs writes to the file while a test fills the disk."""
    registry = CollectorRegistry()
    state = HttpState(registry)
    recorder = Recorder(hold=lambda job: job.id == "gate")
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    q = JobQueue(instrument(recorder, state), workers=1, store=store)
    try:
        q.enqueue(Job(id="gate", priority=Priority.HIGH))
        recorder.wait_started(1)
        yield q, state, recorder, store
    finally:
        recorder.release()
        q.close(timeout=PATIENCE)


def test_a_full_disk_is_a_503_naming_it_and_acknowledges_nothing(
    held_queue: tuple[JobQueue, HttpState, Recorder, SQLiteStore],
) -> None:
    q, state, _, store = held_queue
    registry = CollectorRegistry()
    app = create_app(q, state=state, registry=registry)
    fill_the_disk(store, room=3)  # a few jobs fit, then none
    body = {"payload": PAYLOAD.decode(), "priority": "low"}

    async def steps(c: httpx.AsyncClient) -> None:
        created: list[str] = []
        for _ in range(100):
            answer = await c.post("/jobs", json=body)
            if answer.status_code != 201:
                break
            created.append(answer.json()["id"])
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert "database or disk is full" in answer.json()["detail"]
        assert "Traceback" not in answer.text
        # Only the jobs answered with 201 wait for their first attempt to be timed.
        assert sorted(state.acknowledged) == sorted(created)

    drive(app)(steps)


class BrokenStore(JobQueue):
    """A queue whose every call that reads or writes its store fails, as a disk does."""

    def enqueue(self, job: Job, timeout: float | None = None, *, connection: Any = None) -> None:
        raise StoreError("jobs.db: cannot write: database or disk is full")

    def info(self, job_id: str) -> JobInfo | None:
        raise StoreError("jobs.db: cannot read: disk I/O error")

    def dead_letters(self) -> list[Job]:
        raise StoreError("jobs.db: cannot read: disk I/O error")

    def retry_dead(self, job_id: str) -> None:
        raise StoreError("jobs.db: cannot write: database or disk is full")

    def cancel(self, job_id: str) -> bool:
        raise StoreError("jobs.db: cannot write: database or disk is full")


@pytest.mark.parametrize(
    ("method", "url", "problem"),
    [
        ("POST", "/jobs", "database or disk is full"),
        ("GET", "/jobs/abc", "disk I/O error"),
        ("DELETE", "/jobs/abc", "database or disk is full"),
        ("GET", "/dlq", "disk I/O error"),
        ("POST", "/dlq/abc/retry", "database or disk is full"),
    ],
)
def test_a_failing_store_is_a_503_on_every_endpoint(method: str, url: str, problem: str) -> None:
    registry = CollectorRegistry()
    state = HttpState(registry)
    with BrokenStore(lambda job: None) as q:
        app = create_app(q, state=state, registry=registry)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.request(method, url, json={"payload": "x", "priority": "low"})
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
            assert problem in answer.json()["detail"]
            assert state.acknowledged == {}

        drive(app)(steps)
    responses = app.openapi()["paths"]
    operation = {"POST /jobs": ("/jobs", "post"), "GET /jobs/abc": ("/jobs/{job_id}", "get")}
    operation["DELETE /jobs/abc"] = ("/jobs/{job_id}", "delete")
    operation |= {
        "GET /dlq": ("/dlq", "get"),
        "POST /dlq/abc/retry": ("/dlq/{job_id}/retry", "post"),
    }
    path, verb = operation[f"{method} {url}"]
    assert "503" in responses[path][verb]["responses"]  # and the document says so


# -- the dead letters ------------------------------------------------------------------------


class CountingLookups(JobQueue):
    """A queue that counts the lookups of one job by id: each may be a read of the disk."""

    lookups = 0

    def info(self, job_id: str) -> JobInfo | None:
        self.lookups += 1
        return super().info(job_id)


def test_the_dead_letters_are_listed_without_a_lookup_per_job(tmp_path: Path) -> None:
    def fail(job: Job) -> None:
        raise RuntimeError("no")

    q = CountingLookups(fail, path=tmp_path / "q.db", max_retries=0)
    with q:
        q.enqueue_many(Job(id=f"dead-{n}") for n in range(5))
        assert q.join(timeout=PATIENCE)
        app = create_app(q)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.get("/dlq")
            assert answer.status_code == 200, answer.text
            listed = answer.json()["jobs"]
            assert sorted(job["id"] for job in listed) == [f"dead-{n}" for n in range(5)]
            assert all(job["attempts"] == 1 and "no" in job["last_error"] for job in listed)

        drive(app)(steps)
        assert q.lookups == 0


# -- jobs in time: run_at and DELETE ----------------------------------------------------------


def test_run_at_schedules_the_job_and_delete_cancels_it() -> None:
    payloads = Payloads()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with JobQueue(payloads) as q:
        app = create_app(q)

        async def steps(c: httpx.AsyncClient) -> None:
            posted = await c.post(
                "/jobs", json={"payload": "x", "priority": "low", "run_at": later}
            )
            assert posted.status_code == 201, posted.text
            job_id = posted.json()["id"]
            shown = (await c.get(f"/jobs/{job_id}")).json()
            assert shown["status"] == "scheduled"
            assert datetime.fromisoformat(shown["run_at"]) == datetime.fromisoformat(later)
            deleted = await c.delete(f"/jobs/{job_id}")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["status"] == "cancelled"
            again = await c.delete(f"/jobs/{job_id}")
            assert again.status_code == 409
            assert "has settled (cancelled)" in again.json()["detail"]
            assert (await c.delete("/jobs/nobody")).status_code == 404
            now = await c.post("/jobs", json={"payload": "y", "priority": "low"})
            assert payloads.of(now.json()["id"]) == b"y"
            assert q.join(timeout=PATIENCE)
            done = await c.delete(f"/jobs/{now.json()['id']}")
            assert done.status_code == 409
            assert "has settled (completed)" in done.json()["detail"]

        drive(app)(steps)
    assert list(payloads.seen.values()) == [b"y"]  # the cancelled job never ran


@pytest.mark.parametrize(
    ("run_at", "problem"),
    [
        ("2030-01-01T09:00:00", "has no offset"),
        ("tomorrow at nine", "must be an ISO 8601 date and time with an offset"),
        ("2030-13-01T09:00:00+00:00", "must be an ISO 8601 date and time with an offset"),
        # Stored, it could not be read back (year 10000 in UTC): the queue would not reopen.
        ("9999-12-31T23:59:59-05:00", "must be in year 9000 or before"),
    ],
)
def test_a_run_at_without_an_offset_or_not_a_date_is_a_422_naming_it(
    run_at: str, problem: str
) -> None:
    with JobQueue(Payloads()) as q:
        app = create_app(q)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.post(
                "/jobs", json={"payload": "x", "priority": "low", "run_at": run_at}
            )
            assert answer.status_code == 422, answer.text
            (error,) = answer.json()["detail"]
            assert error["loc"] == ["run_at"]
            assert problem in error["msg"] and repr(run_at) in error["msg"]

        drive(app)(steps)
        assert q.metrics().submitted == 0  # nothing half accepted


def test_the_metrics_endpoint_shows_scheduled_and_cancelled_jobs() -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with JobQueue(Payloads()) as q:
        app = create_app(q)
        q.enqueue(Job(id="later", priority=Priority.HIGH, run_at=later))
        q.enqueue(Job(id="off", priority=Priority.HIGH, run_at=later))
        assert q.cancel("off")

        async def steps(c: httpx.AsyncClient) -> None:
            text = (await c.get("/metrics")).text
            assert 'job_queue_scheduled{priority="high"} 1.0' in text
            assert 'job_queue_cancelled_total{priority="high"} 1.0' in text

        drive(app)(steps)


def test_delete_of_a_running_job_is_a_409_and_it_runs_on() -> None:
    recorder = Recorder(hold=lambda job: job.id == "busy")
    with JobQueue(recorder, workers=1) as q:
        app = create_app(q)
        q.enqueue(Job(id="busy"))
        recorder.wait_started(1)

        async def steps(c: httpx.AsyncClient) -> None:
            answer = await c.delete("/jobs/busy")
            assert answer.status_code == 409, answer.text
            assert answer.json() == {"detail": "job busy has started: too late to cancel it"}

        drive(app)(steps)
        recorder.release()
        assert q.join(timeout=PATIENCE)
    assert recorder.succeeded == ["busy"]
