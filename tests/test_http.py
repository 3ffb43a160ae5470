"""The final tier over HTTP: a real server in a subprocess, driven by a real client.

Every endpoint and every error the API promises, the OpenAPI document fuzzed by
schemathesis, shutdown on SIGTERM (once: drain; twice: at once), and a load test
whose every 201 must complete, across a SIGTERM and a restart too.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from final import Job, JobQueue
from final.http import MAX_BODY, create_app
from tests.support import PATIENCE

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
JSON = {"Content-Type": "application/json"}


class Server:
    """``python -m final serve`` in a subprocess, on a free port, with the test handler."""

    def __init__(self, path: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.path = path
        command = [sys.executable, "-m", "final", "serve", "--port", "0", "--path", str(path)]
        command += ["--handler", "tests.http_handlers:handle", *options]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._logged = threading.Condition()
        lines: queue.Queue[str | None] = queue.Queue()
        # The server logs every failed attempt: its stderr must be read all along.
        self._reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + PATIENCE
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                self.wait()
                raise AssertionError("the server exited at start:\n" + "".join(self.log))
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0]
                return

    def _read(self, lines: queue.Queue[str | None]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()
            lines.put(line)
        lines.put(None)

    def wait_for_log(self, text: str) -> None:
        with self._logged:
            found = self._logged.wait_for(lambda: any(text in line for line in self.log), PATIENCE)
        assert found, f"the server never logged {text!r}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=PATIENCE)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self) -> int:
        code = self.process.wait(timeout=PATIENCE * 3)
        self._reader.join(PATIENCE)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; every one is stopped after it."""
    started: list[Server] = []

    def start(*options: str, path: Path | None = None, env: dict[str, str] | None = None) -> Server:
        server = Server(path or tmp_path / "jobs.db", *options, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.wait()


# One server for the endpoint tests: two workers, lanes of four, fast retries.
SHARED: tuple[str, ...] = ("--workers", "2", "--queue-size", "4", "--max-retries", "1")
SHARED += ("--backoff", "0.001", "--max-backoff", "0.01", "--token", TOKEN)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("http") / "jobs.db", *SHARED)
    yield s
    assert s.stop() == 0
    # A job that fails for good is logged at ERROR; any other error would be the
    # server's own fault.
    assert not [line for line in s.log if "ERROR" in line and "failed for good" not in line]


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def post(client: httpx.Client, payload: str = "ok", priority: str = "high", **more: Any) -> str:
    answer = client.post("/jobs", json={"payload": payload, "priority": priority, **more})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def wait_for(client: httpx.Client, job_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses``: the server is another
    process, and its answers are the only thing there is to wait on."""
    deadline = time.monotonic() + PATIENCE
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}")
        time.sleep(0.01)


def statuses_on_disk(path: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        db.close()


# -- POST /jobs and GET /jobs/{id} ---------------------------------------------------------


def test_a_posted_job_gets_201_a_location_and_runs(client: httpx.Client) -> None:
    answer = client.post("/jobs", json={"payload": "ok", "priority": "medium"})
    assert answer.status_code == 201
    job_id = answer.json()["id"]
    assert answer.headers["location"] == f"/jobs/{job_id}"
    job = wait_for(client, job_id, "completed")
    assert job["attempts"] == 1 and job["priority"] == "medium" and job["last_error"] is None
    assert job["enqueued_at"] <= job["started_at"] <= job["finished_at"]
    assert client.get(answer.headers["location"]).json()["id"] == job_id


def test_a_failing_job_shows_its_attempts_and_last_error(client: httpx.Client) -> None:
    job_id = post(client, "fail", "low", max_retries=1)
    job = wait_for(client, job_id, "failed")
    assert job["attempts"] == 2 and job["max_retries"] == 1
    assert job["last_error"] == "Refused: the payload asked to fail"


def test_a_used_idempotency_key_is_a_409_naming_the_first_job(client: httpx.Client) -> None:
    first = post(client, idempotency_key="order-42")
    again = client.post(
        "/jobs", json={"payload": "other", "priority": "low", "idempotency_key": "order-42"}
    )
    assert again.status_code == 409
    assert again.json()["id"] == first


def test_a_full_lane_is_a_503_with_retry_after_never_a_wait(
    client: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    # Two workers and a lane of four: at most six held jobs are accepted.
    answers = [
        client.post("/jobs", json={"payload": f"hold:{gate}", "priority": "low"}) for _ in range(7)
    ]
    codes = [a.status_code for a in answers]
    gate.touch()
    assert codes.count(503) >= 1 and set(codes) <= {201, 503}
    full = answers[codes.index(503)]
    # Had the server waited for room, this answer would have come only once a held
    # job ended, which none can before the gate opens (after every post), so after
    # the client's own timeout. A bound far above a loaded machine's answer time:
    assert full.elapsed.total_seconds() < 1.0, full.elapsed
    assert full.headers["retry-after"] == "1"
    assert "low lane is full" in full.json()["detail"]
    for answer in answers:
        if answer.status_code == 201:
            wait_for(client, answer.json()["id"], "completed")


BAD_BODIES = {
    "missing priority": b'{"payload": "x"}',
    "unknown priority": b'{"payload": "x", "priority": "urgent"}',
    "unknown field": b'{"payload": "x", "priority": "low", "delay": 5}',
    "payload with a number JSON cannot hold": b'{"payload": [1e400], "priority": "low"}',
    "surrogate deep in the payload": b'{"payload": {"k": ["\\udfff"]}, "priority": "low"}',
    "NaN": b'{"payload": "x", "priority": "low", "max_retries": NaN}',
    "Infinity": b'{"payload": "x", "priority": "low", "max_retries": Infinity}',
    "huge integer": b'{"payload": "x", "priority": "low", "max_retries": ' + b"9" * 5000 + b"}",
    "integer over the bound": b'{"payload": "x", "priority": "low", "max_retries": 1000}',
    "negative retries": b'{"payload": "x", "priority": "low", "max_retries": -1}',
    "retries as a string": b'{"payload": "x", "priority": "low", "max_retries": "3"}',
    "retries as a bool": b'{"payload": "x", "priority": "low", "max_retries": true}',
    "lone surrogate": b'{"payload": "\\ud800", "priority": "low"}',
    "surrogate in the key": b'{"payload": "x", "priority": "low", "idempotency_key": "\\udfff"}',
    "empty key": b'{"payload": "x", "priority": "low", "idempotency_key": ""}',
    "NUL in the key": b'{"payload": "x", "priority": "low", "idempotency_key": "a\\u0000b"}',
    "deep nesting": b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not an object": b'["x", "low"]',
    "not JSON": b"payload=x&priority=low",
    "invalid UTF-8": b'{"payload": "\xff", "priority": "low"}',
    "empty": b"",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_body_that_does_not_validate_is_a_422_without_a_trace(
    client: httpx.Client, body: bytes
) -> None:
    if len(body) > MAX_BODY:
        body = body[: MAX_BODY - 2] + b"]}"  # deep nesting, within the size limit
    answer = client.post("/jobs", content=body, headers=JSON)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail and all({"loc", "msg", "type"} <= set(error) for error in detail)
    assert "Traceback" not in answer.text and "File " not in answer.text


def test_a_body_over_64_kib_is_a_413_declared_or_chunked(client: httpx.Client) -> None:
    big = json.dumps({"payload": "x" * MAX_BODY, "priority": "low"}).encode()
    assert client.post("/jobs", content=big, headers=JSON).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    assert client.post("/jobs", content=chunks(), headers=JSON).status_code == 413


def test_a_body_that_is_not_json_is_a_415(client: httpx.Client) -> None:
    answer = client.post("/jobs", content=b'{"payload": "x", "priority": "low"}')
    assert answer.status_code == 415
    answer = client.post(
        "/jobs", content=b"x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 415


def test_an_unknown_id_is_a_404_and_a_malformed_one_a_422(client: httpx.Client) -> None:
    assert client.get("/jobs/0123456789abcdef").status_code == 404
    for bad in ("a%20b", "%ED%A0%80", "x" * 1025, "a%00b"):
        answer = client.get(f"/jobs/{bad}")
        assert answer.status_code == 422, bad
        assert answer.json()["detail"][0]["loc"] == ["path", "job_id"]


# -- the dead letters ----------------------------------------------------------------------


def test_a_dead_job_is_listed_and_replayed_with_202(client: httpx.Client) -> None:
    job_id = post(client, "fail", "medium", max_retries=0)
    wait_for(client, job_id, "failed")
    dead = client.get("/dlq").json()
    listed = {job["id"]: job for job in dead["jobs"]}
    assert listed[job_id]["payload"] == "fail"
    assert listed[job_id]["last_error"] == "Refused: the payload asked to fail"
    assert dead["total"] >= 1

    answer = client.post(f"/dlq/{job_id}/retry")
    assert answer.status_code == 202
    assert answer.json() == {"id": job_id, "status": "queued"}
    assert wait_for(client, job_id, "failed")["attempts"] == 1  # a fresh budget, used again


def test_replaying_a_job_that_is_not_dead_is_a_404(client: httpx.Client) -> None:
    assert client.post("/dlq/0123456789abcdef/retry").status_code == 404
    done = post(client)
    wait_for(client, done, "completed")
    assert client.post(f"/dlq/{done}/retry").status_code == 404
    assert client.get("/dlq", params={"limit": 0}).status_code == 422


# -- metrics, health, the token, the document ----------------------------------------------


def test_metrics_are_prometheus_text_with_counters_gauges_and_the_wait_histogram(
    client: httpx.Client,
) -> None:
    wait_for(client, post(client, priority="low"), "completed")
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    completed = {s.labels["priority"]: s.value for s in families["job_queue_completed"].samples}
    assert set(completed) == {"high", "medium", "low"} and completed["low"] >= 1
    assert families["job_queue_completed"].type == "counter"
    for gauge in ("job_queue_queued", "job_queue_in_flight", "job_queue_dead"):
        assert families[gauge].type == "gauge"
    wait = families["job_queue_wait_seconds"]
    assert wait.type == "histogram"
    counts = [
        s for s in wait.samples if s.name.endswith("_count") and s.labels["priority"] == "low"
    ]
    assert counts[0].value >= 1


def test_healthz_needs_no_token(server: Server) -> None:
    with server.client(token=None) as anonymous:
        answer = anonymous.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_the_dashboard_page_needs_no_token_and_its_data_does(
    server: Server, client: httpx.Client
) -> None:
    # The page holds nothing of the queue; what it shows, it reads with the token.
    # tests/test_dashboard.py drives it in a browser.
    job_id = post(client, "dashboard")
    with server.client(token=None) as anonymous:
        page = anonymous.get("/")
        assert anonymous.get("/overview").status_code == 401
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        job_id not in page.text and "default-src 'none'" in page.headers["content-security-policy"]
    )
    assert client.get("/overview").json()["lanes"][0]["priority"] == "high"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/jobs"),
        ("GET", "/jobs/abc"),
        ("GET", "/dlq"),
        ("POST", "/dlq/abc/retry"),
        ("GET", "/metrics"),
        ("GET", "/overview"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN],
)
def test_every_other_endpoint_is_a_401_without_the_right_token(
    server: Server, method: str, url: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with server.client(token=None) as c:
        answer = c.request(method, url, json={"payload": "x", "priority": "low"}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_the_openapi_document_describes_every_endpoint_and_its_errors(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/jobs"]["post"]["responses"]) >= {"201", "401", "409", "413", "415", "422"}
    assert "Retry-After" in paths["/jobs"]["post"]["responses"]["503"]["headers"]
    assert "requestBody" in paths["/jobs"]["post"]
    assert set(paths["/jobs/{job_id}"]["get"]["responses"]) >= {"200", "401", "404", "422"}
    assert set(paths["/dlq/{job_id}/retry"]["post"]["responses"]) >= {"202", "404", "503"}
    assert {"/dlq", "/metrics", "/healthz"} <= set(paths)


def test_a_request_that_is_not_valid_http_gets_the_documented_400(
    server: Server, client: httpx.Client
) -> None:
    # The server answers it before the API sees it; the document says so for every
    # operation, so that a client (and schemathesis's negative cases) can expect it.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as conn:
        conn.sendall(b"GET /dlq HTTP/1.1\r\nHost: x\r\nContent-Length: )cE>\r\n\r\n")
        answer = conn.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 400 ")
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            assert "400" in operation["responses"], f"{method.upper()} {path}"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_failure(server: Server, mode: str) -> None:
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.core.parameters import ParameterLocation
    from schemathesis.generation.modes import GenerationMode

    # A 503 (a full lane) and a 413 (a payload within maxLength whose body is still over
    # 64 KiB) are answers the document promises, not failures of the server.
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "404", "405", "413", "415", "422"]
                },
            }
        }
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.url}/openapi.json"
    schema = schemathesis.openapi.from_url(url, config=config, headers=headers)
    checked: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here, as it should

        # Few examples each: the point is every operation, its errors included.
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(GenerationMode(mode)))
        def check(case: Any) -> None:
            # A negative case may break the Authorization header on purpose (leave it
            # out, say); the token would mend it, and the 401 expected would be a 200.
            broken = case.meta.components.get(ParameterLocation.HEADER)
            if broken is not None and broken.mode is GenerationMode.NEGATIVE:
                case.call_and_validate(base_url=server.url)
            else:
                case.call_and_validate(base_url=server.url, headers=headers)

        try:
            check()
        except Unsatisfiable:
            # Nothing to get wrong (no parameter, no body): no negative case exists.
            assert mode == "negative", operation.label
            continue
        checked.append(operation.label)
    assert "POST /jobs" in checked and "GET /jobs/{job_id}" in checked, checked


# -- draining, shutdown, restart ------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_signal_handler_drains_posts_and_replays_are_503_and_health_says_so(
    sig: signal.Signals,
) -> None:
    # In process, calling the very handler serve() installs for both signals: a real
    # server stops listening a moment after the signal, so a client may see only that.
    import uvicorn

    from final.http import HttpState
    from final.serve import _Server

    def handler(job: Job) -> None:
        if job.payload == b"fail":
            raise ValueError("no")

    registry = CollectorRegistry()
    state = HttpState(registry)
    q = JobQueue(handler, max_retries=0)
    app = create_app(q, state=state, registry=registry)
    queue_stopped = threading.Event()
    server = _Server(uvicorn.Config(app), state, queue_stopped.set)
    body = {"payload": "x", "priority": "low"}

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.post("/jobs", json=body)).status_code == 201
            dead = (await c.post("/jobs", json={"payload": "fail", "priority": "low"})).json()
            assert q.join(timeout=PATIENCE)
            assert (await c.get("/healthz")).status_code == 200

            server.handle_exit(sig, None)

            assert server.should_exit and queue_stopped.wait(PATIENCE)
            answer = await c.post("/jobs", json=body)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert "shutting down" in answer.json()["detail"]
            replay = await c.post(f"/dlq/{dead['id']}/retry")
            assert replay.status_code == 503 and replay.headers["retry-after"] == "1"
            health = await c.get("/healthz")
            assert health.status_code == 503 and health.json() == {"status": "draining"}

    try:
        asyncio.run(drive())
    finally:
        q.close()


def test_sigterm_lets_the_running_job_finish_and_leaves_the_queued_on_disk(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    server = servers("--workers", "1", "--grace", "20", env={"JOB_QUEUE_TOKEN": TOKEN})
    with server.client(token=None) as anonymous:
        assert anonymous.get("/dlq").status_code == 401  # the token came from the environment
    with server.client() as c:
        running = post(c, f"hold:{gate}", "high")
        wait_for(c, running, "processing")
        queued = [post(c, "ok", "low") for _ in range(3)]
    server.signal(signal.SIGTERM)
    server.wait_for_log("signal: draining")  # logged once the handler stopped accepting
    with server.client() as late:
        try:
            refused = late.post("/jobs", json={"payload": "x", "priority": "low"}).status_code
        except httpx.TransportError:
            refused = 0  # no longer listening
    # Never a 201 after the signal; which refusal it is depends on when uvicorn stops
    # listening (the 503 itself is checked in process, above).
    assert refused in (0, 503)
    gate.touch()  # the running job may finish now, within the grace period
    assert server.wait() == 0
    on_disk = statuses_on_disk(server.path)
    assert on_disk[running] == "completed"
    assert [on_disk[q] for q in queued] == ["queued"] * 3

    again = servers("--workers", "1", env={"JOB_QUEUE_TOKEN": TOKEN})
    with again.client() as c:
        for job_id in queued:
            wait_for(c, job_id, "completed")


def test_a_second_sigterm_exits_at_once_and_the_cut_job_runs_at_the_next_start(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    server = servers("--workers", "1", "--grace", "60", "--token", TOKEN)
    with server.client() as c:
        held = post(c, f"hold:{gate}", "high")
        wait_for(c, held, "processing")
    server.signal(signal.SIGTERM)
    server.wait_for_log("signal: draining")  # two signals at once would merge into one
    server.signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM
    assert "exiting at once" in "".join(server.log)
    gate.touch()
    again = servers("--workers", "1", "--token", TOKEN)
    with again.client() as c:
        job = wait_for(c, held, "completed")
    assert job["attempts"] == 2  # the cut attempt counted, as at-least-once says


def test_sigint_in_memory_gives_the_queued_jobs_the_grace_period_too(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    gate = tmp_path / "open"
    server = servers("--memory", "--workers", "1", "--grace", "20", "--token", TOKEN)
    with server.client() as c:
        held = post(c, f"hold:{gate}", "high")
        wait_for(c, held, "processing")
        for _ in range(3):
            post(c, "ok", "low")
    server.signal(signal.SIGINT)
    server.wait_for_log("signal: draining")
    gate.touch()
    assert server.wait() == 0
    log = "".join(server.log)
    # Nothing would survive a restart, so the queued jobs ran within the grace period.
    assert "stopped: 4 completed, 0 failed, 0 still running, 0 lost\n" in log, log
    assert "path=None" in log and not server.path.exists()


def test_the_server_binds_loopback_unless_told_otherwise(server: Server) -> None:
    assert server.url.startswith("http://127.0.0.1:"), server.url


def test_a_second_server_on_the_same_file_is_refused(
    server: Server, servers: Callable[..., Server]
) -> None:
    with pytest.raises(AssertionError, match="already open"):
        servers(path=server.path)


# -- load -----------------------------------------------------------------------------------


class Load:
    """16 clients posting ``payload`` as fast as they can until stopped; every answer recorded."""

    def __init__(
        self, url: str, payload: str = "ok", clients: int = 16, enough: int | None = None
    ) -> None:
        self.url = url
        self.payload = payload
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self._enough = enough
        self.enough = threading.Event()  # set once ``enough`` posts were answered 201
        self.codes: dict[int, int] = {}
        self.transport_errors = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=PATIENCE) as c:
            while not self.stop.is_set():
                body = {"payload": self.payload, "priority": rng.choice(["high", "medium", "low"])}
                try:
                    answer = c.post("/jobs", json=body)
                except httpx.TransportError:
                    with self._lock:
                        self.transport_errors += 1
                    # Refused once the server stops listening: a short back-off, not a
                    # spin that takes the CPU the draining server needs.
                    self.stop.wait(0.05)
                    continue
                with self._lock:
                    self.codes[answer.status_code] = self.codes.get(answer.status_code, 0) + 1
                    if answer.status_code == 201:
                        self.accepted.append(answer.json()["id"])
                        if self._enough is not None and len(self.accepted) >= self._enough:
                            self.enough.set()


def wait_until_settled(client: httpx.Client) -> None:
    """Until the server's metrics show nothing queued, retrying or running."""
    deadline = time.monotonic() + PATIENCE * 3
    while True:
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        busy = sum(
            s.value
            for name in ("job_queue_queued", "job_queue_in_flight", "job_queue_retrying")
            for s in families[name].samples
        )
        if busy == 0:
            return
        assert time.monotonic() < deadline, f"{busy} jobs still unsettled"
        time.sleep(0.05)


def stop_and_read(server: Server) -> dict[str, str]:
    """SIGTERM the server, wait for it to exit, and read its file. Not while it runs:
    a job's last write reaches the file a few milliseconds after its attempt ends,
    so only ``GET /jobs/{id}`` tells the truth about a running server."""
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    return statuses_on_disk(server.path)


@pytest.mark.slow
def test_under_load_every_201_completes(servers: Callable[..., Server]) -> None:
    server = servers("--token", TOKEN, "--queue-size", "200")
    with Load(server.url) as load:
        load.stop.wait(10.0)  # the ten seconds of load
    assert load.accepted and set(load.codes) <= {201, 503}, load.codes
    assert load.transport_errors == 0
    with server.client() as c:
        wait_until_settled(c)
    on_disk = stop_and_read(server)
    left = [job_id for job_id in load.accepted if on_disk[job_id] != "completed"]
    assert not left, f"{len(left)} of {len(load.accepted)} accepted jobs did not complete"


@pytest.mark.slow
def test_under_load_every_201_completes_across_a_sigterm_and_a_restart(
    servers: Callable[..., Server],
) -> None:
    # One worker and jobs of 50 ms: at most 20 jobs a second run, far fewer than 16
    # clients post, so the lanes hold a backlog when the signal lands.
    server = servers("--token", TOKEN, "--queue-size", "50", "--workers", "1")
    # The signal lands once 100 jobs are accepted, not after a fixed time: a loaded
    # machine may answer no post at all in the first second.
    with Load(server.url, payload="sleep:0.05", enough=100) as load:
        assert load.enough.wait(PATIENCE), load.codes
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    assert load.accepted and set(load.codes) <= {201, 503}, load.codes
    on_disk = statuses_on_disk(server.path)
    waiting = [job_id for job_id in load.accepted if on_disk[job_id] != "completed"]
    assert waiting, "no backlog when the signal landed: the restart proves nothing"

    again = servers("--token", TOKEN, "--queue-size", "50", "--workers", "4")
    with again.client() as c:
        for job_id in load.accepted:
            wait_for(c, job_id, "completed")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_the_load_benchmark_counts_wrk_answers_by_status(server: Server) -> None:
    from benchmarks.http_load import load_wrk

    # No token: every answer is a 401, neither a 201 nor a 503.
    result = load_wrk("final", server.url, clients=2, warmup=0, seconds=1)
    assert result.created == 0 and result.unavailable == 0 and result.other > 0


# -- the command line -----------------------------------------------------------------------


def test_inspect_reads_the_file_while_the_server_runs(server: Server, client: httpx.Client) -> None:
    wait_for(client, post(client, "fail", "high", max_retries=0), "failed")
    shown = subprocess.run(
        [sys.executable, "-m", "final", "inspect", "--path", str(server.path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    )
    snapshot = json.loads(shown.stdout)
    assert snapshot["counts"]["failed"]["high"] >= 1
    assert snapshot["dead_total"] >= 1
    assert any(d["last_error"] == "Refused: the payload asked to fail" for d in snapshot["dead"])
    assert client.get("/healthz").status_code == 200  # the server did not notice
