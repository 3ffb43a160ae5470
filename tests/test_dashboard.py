"""The dashboard (``GET /`` of ``python -m final serve``), in a real browser and out of one.

The browser tests drive headless Chromium (``tests/browser.py``) against a live server
in this process: they see a lane fill while the handler is held and drain once it is
released, replay a dead letter by clicking its button, and find that a page without
the token shows nothing of the queue. They wait with Playwright's own ``expect``,
which polls the page: the page reads the server every second. Without a browser they
are skipped, with the reason; under CI (``CI`` set) that is a failure instead.

Without a browser: the page and its assets (content types, the policy that forbids
loads from elsewhere), that the HTML holds nothing of the queue and the data refuses
a request without the token, and ``GET /overview`` on every kind of queue, PostgreSQL
included.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from final import Job, JobQueue, Priority, Status
from final.dashboard import ASSETS
from final.http import create_app
from tests.browser import Served, chromium, served, why_no_browser
from tests.pg import Database
from tests.support import PATIENCE, Recorder

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.tiers("final")

TOKEN = "dashboard-s3cret"
EXPECT_MS = PATIENCE * 1000  # how long expect() may wait, in milliseconds


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The queue's options: in memory, on SQLite (``path``), or on PostgreSQL (``dsn``,
    a schema of the test's own)."""
    fast: dict[str, Any] = {"workers": 1, "max_retries": 0, "backoff": 0.001, "max_backoff": 0.01}
    if request.param == "sqlite":
        fast["path"] = tmp_path / "jobs.db"
    elif request.param == "postgresql":
        pytest.importorskip("psycopg")
        fast["dsn"] = request.getfixturevalue("db").queue_dsn
    return fast


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = why_no_browser()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_MS)
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(EXPECT_MS)
    yield context.new_page()
    context.close()


def lane(page: Page, priority: str, field: str) -> Any:
    return page.locator(f'#lanes tr[data-lane="{priority}"] td[data-field="{field}"]')


# -- in the browser -----------------------------------------------------------------------


def test_a_lane_fills_while_the_handler_is_held_and_drains_once_released(
    page: Page, options: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    recorder = Recorder(hold=lambda job: True)
    with served(recorder, **options) as s:
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        # The console would tell of a load the policy blocked, or of one that failed.
        complaints: list[str] = []
        page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
        try:
            page.goto(s.url + "/")
            expect(lane(page, "high", "queued")).to_have_text("0")
            with httpx.Client(base_url=s.url, timeout=PATIENCE) as client:
                for _ in range(6):  # over HTTP, as a client would: the server times the waits
                    job = {"payload": "x", "priority": "high"}
                    assert client.post("/jobs", json=job).status_code == 201
            recorder.wait_started(1)  # one attempt held, five waiting behind it
            expect(lane(page, "high", "in_flight")).to_have_text("1")
            expect(lane(page, "high", "queued")).to_have_text("5")
        finally:
            recorder.release()
        expect(lane(page, "high", "queued")).to_have_text("0")
        expect(lane(page, "high", "completed")).to_have_text("6")
        expect(page.locator("#completed")).to_have_text("6")
        expect(page.locator("#waits polyline").first).to_be_attached()
    # Everything the page asked for, it asked of this server, and got.
    assert asked and all(url.startswith(s.url + "/") for url in asked), asked
    assert complaints == []


def test_a_dead_letter_is_listed_with_its_error_and_replayed_by_its_button(
    page: Page, options: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    # The first attempt fails for good (max_retries=0); the replay succeeds.
    recorder = Recorder(fail=lambda job, n: n == 1)
    with served(recorder, **options) as s:
        s.queue.enqueue(Job(id="flaky-1", priority=Priority.LOW))
        assert s.queue.join(PATIENCE)
        page.goto(s.url + "/")
        dead = page.locator('#dead-letters tr[data-id="flaky-1"]')
        expect(dead).to_contain_text("Boom: flaky-1 attempt 1")
        failure = page.locator('#failures tr[data-id="flaky-1"]')
        expect(failure).to_contain_text("Boom: flaky-1 attempt 1")
        dead.get_by_role("button", name="Replay").click()
        expect(dead).to_have_count(0)
        expect(page.locator("#dead-empty")).to_be_visible()
        expect(lane(page, "low", "completed")).to_have_text("1")
    assert recorder.attempts["flaky-1"] == 2


def test_with_a_token_the_page_shows_nothing_until_it_is_given(browser: Browser) -> None:
    from playwright.sync_api import expect

    recorder = Recorder(fail=lambda job, n: True)
    with served(recorder, token=TOKEN, max_retries=0) as s:
        s.queue.enqueue(Job(id="secret-job", payload=b"secret payload"))
        assert s.queue.join(PATIENCE)
        context = browser.new_context()
        context.set_default_timeout(EXPECT_MS)
        try:
            page = context.new_page()
            page.goto(s.url + "/")
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#board")).to_be_hidden()
            assert "secret" not in page.content()
            assert page.locator("#board tbody tr").count() == 0

            page.locator("#token").fill("wrong")
            page.get_by_role("button", name="Show the queue").click()
            expect(page.locator("#login-error")).to_be_visible()
            expect(page.locator("#board")).to_be_hidden()
            assert "secret" not in page.content()

            page.locator("#token").fill(TOKEN)
            page.get_by_role("button", name="Show the queue").click()
            expect(page.locator('#dead-letters tr[data-id="secret-job"]')).to_be_visible()
            expect(page.locator("#login")).to_be_hidden()
        finally:
            context.close()


def test_a_token_a_header_cannot_carry_is_refused_by_the_form_not_sent_for_ever(
    browser: Browser,
) -> None:
    """fetch() threw on a token with an accent before any request: the page said "no
    answer" every second, with neither the form nor the board, even after a reload."""
    from playwright.sync_api import expect

    with served(lambda job: None, token=TOKEN) as s:
        context = browser.new_context()
        context.set_default_timeout(EXPECT_MS)
        try:
            page = context.new_page()
            page.goto(s.url + "/")
            page.locator("#token").fill("tök€n")
            page.get_by_role("button", name="Show the queue").click()
            expect(page.locator("#login-error")).to_contain_text("cannot be sent")
            page.locator("#token").fill(f" {TOKEN} ")  # pasted with spaces around it
            page.get_by_role("button", name="Show the queue").click()
            expect(page.locator("#board")).to_be_visible()
            expect(page.locator("#login")).to_be_hidden()
        finally:
            context.close()


def test_a_server_that_stops_answering_is_shown_as_such_not_as_live(page: Page) -> None:
    """A server that took the connection and never answered (stopped with SIGSTOP, its
    loop stuck) left the page saying "live" with the time of its last answer, for ever."""
    from playwright.sync_api import Route, expect

    with served(lambda job: None) as s:
        page.clock.install()  # the page's timers, run on when the test says so
        page.goto(s.url + "/")
        expect(page.locator("#state")).to_contain_text("live")
        held: list[Route] = []
        page.route("**/overview*", lambda route: held.append(route))  # taken, never answered
        deadline = time.monotonic() + PATIENCE
        while not held:  # the next read, sent at the page's next tick
            assert time.monotonic() < deadline, "the page made no read"
            page.clock.run_for(1000)
        page.clock.run_for(5000)  # the page's patience, at once
        expect(page.locator("#state")).to_contain_text("no answer from the server: silent")
        expect(page.locator("#state")).to_have_class(re.compile(r"\bstale\b"))
        page.unroute("**/overview*")
        expect(page.locator("#state")).to_contain_text("live")


def test_text_from_the_queue_is_shown_as_text_and_a_long_one_keeps_its_row(page: Page) -> None:
    """An id and an error that look like HTML stay text; a 1,900-character error or a
    1,000-character id made each row a screen tall, pushing the rest off the page."""
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'

    def fail(job: Job) -> None:
        raise RuntimeError(job.payload.decode())

    with served(fail, max_retries=0) as s:
        s.queue.enqueue(Job(id="html", payload=hostile.encode()))
        s.queue.enqueue(Job(id="i" * 1000, payload=b"e" * 1900))
        ordinary = Job(payload=b"plain")
        s.queue.enqueue(ordinary)
        assert s.queue.join(PATIENCE)
        page.goto(s.url + "/")
        html = page.locator('#failures tr[data-id="html"] td.err')
        expect(html).to_have_text("RuntimeError: " + hostile)
        assert page.locator("#board img, #board script").count() == 0
        assert page.evaluate("window.injected") is None
        long = page.locator('#dead-letters tr[data-id^="iii"]')
        expect(long).to_be_visible()
        row = long.bounding_box()
        panel = page.locator("#dead-letters").bounding_box()
        assert row is not None and panel is not None
        assert row["height"] < 200, row  # a few lines, not pages
        assert panel["width"] <= page.viewport_size["width"]  # type: ignore[index]
        assert long.locator("td.err").get_attribute("title") == "RuntimeError: " + "e" * 1900
        assert long.locator("td.id").get_attribute("title") == "i" * 1000
        # An id as the queue makes them (32 hex digits) stays whole, on one line.
        made = page.locator(f'#dead-letters tr[data-id="{ordinary.id}"] td.id')
        expect(made).to_have_text(ordinary.id)
        lines = "cell => { const r = document.createRange(); r.selectNodeContents(cell);"
        lines += " return r.getClientRects().length; }"
        assert made.evaluate(lines) == 1


# -- without a browser --------------------------------------------------------------------


@pytest.fixture
def quiet() -> Iterator[Served]:
    with served(lambda job: None, token=TOKEN) as s:
        yield s


def test_the_page_and_its_assets_are_served_with_their_types_and_a_closed_policy(
    quiet: Served,
) -> None:
    with httpx.Client(base_url=quiet.url, timeout=PATIENCE) as client:
        for path, name in [("/", "index.html")] + [(f"/dashboard/{n}", n) for n in ASSETS]:
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"] == ASSETS[name], path
            policy = answer.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert client.get("/dashboard/../http.py").status_code == 404
        assert client.get("/dashboard/__init__.py").status_code == 404
        # No asset names another host: a page that works with no network at all.
        for name in ASSETS:
            text = client.get(f"/dashboard/{name}").text
            assert not re.search(r"(?<![\w.])(https?:)?//[\w.-]+\.\w", text.replace(SVG_NS, "")), (
                name
            )


SVG_NS = "http://www.w3.org/2000/svg"  # a name, not a location: never fetched


def test_with_a_token_the_html_holds_nothing_of_the_queue_and_the_data_is_refused(
    quiet: Served,
) -> None:
    quiet.queue.enqueue(Job(id="job-in-the-queue", payload=b"the payload"))
    assert quiet.queue.join(PATIENCE)
    with httpx.Client(base_url=quiet.url, timeout=PATIENCE) as client:
        html = client.get("/").text
        assert "job-in-the-queue" not in html and "payload" not in html
        assert client.get("/overview").status_code == 401
        assert client.get("/dlq").status_code == 401
        assert client.post("/dlq/job-in-the-queue/retry").status_code == 401
        answer = client.get("/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["completed"] == 1


def test_a_token_no_header_can_carry_is_refused_when_the_server_starts() -> None:
    # Started with one, the server refused every request, the right token included.
    q = JobQueue(lambda job: None)
    try:
        for bad in ["tök€n", " padded", "line\nbreak"]:
            with pytest.raises(ValueError, match="printable ASCII"):
                create_app(q, token=bad)
        create_app(q, token="with spaces inside")  # sent and read back whole
    finally:
        q.close()


def test_the_overview_lists_the_failures_newest_first_with_their_errors(
    options: dict[str, Any],
) -> None:
    recorder = Recorder(fail=lambda job, n: job.id.startswith("bad"))
    with served(recorder, **options) as s:
        for name in ["bad-1", "good", "bad-2"]:
            s.queue.enqueue(Job(id=name))
            assert s.queue.join(PATIENCE)
        with httpx.Client(base_url=s.url, timeout=PATIENCE) as client:
            overview = client.get("/overview", params={"failures": 1}).json()
            assert client.get("/overview", params={"failures": 0}).status_code == 422
            assert client.get("/overview", params={"limit": 5}).status_code == 422
    assert [f["id"] for f in overview["failures"]] == ["bad-2"]
    assert overview["failures"][0]["last_error"] == "Boom: bad-2 attempt 1"
    assert overview["failures"][0]["status"] == "failed"
    assert overview["dead"] == 2 and overview["completed"] == 1
    assert [lane["priority"] for lane in overview["lanes"]] == ["high", "medium", "low"]
    # On PostgreSQL the queue measures no waits, and these jobs were not posted.
    assert (overview["wait_p50"] is None) == ("dsn" in options)


def test_the_overview_of_a_queue_on_postgresql_reads_the_database(db: Database) -> None:
    pytest.importorskip("psycopg")
    recorder = Recorder(hold=lambda job: job.id == "held", fail=lambda job, n: job.id != "held")
    options: dict[str, Any] = {"dsn": db.queue_dsn, "workers": 1, "max_retries": 0}
    with served(recorder, **options) as s, httpx.Client(base_url=s.url, timeout=PATIENCE) as client:
        try:
            # Posted, so that the server measures its wait: the queue on PostgreSQL does not.
            posted = client.post("/jobs", json={"payload": "x", "priority": "low"})
            dead_id = posted.json()["id"]
            assert s.queue.join(PATIENCE)
            s.queue.enqueue(Job(id="held", priority=Priority.HIGH))
            recorder.wait_started(2)
            s.queue.enqueue(Job(id="waiting", priority=Priority.HIGH))
            overview = client.get("/overview").json()
            dead = client.get("/dlq").json()
        finally:
            recorder.release()
    high = overview["lanes"][0]
    assert high["priority"] == "high" and high["in_flight"] == 1 and high["queued"] == 1
    assert [f["id"] for f in overview["failures"]] == [dead_id]
    assert overview["failures"][0]["last_error"] == f"Boom: {dead_id} attempt 1"
    assert overview["dead"] == 1 and [job["id"] for job in dead["jobs"]] == [dead_id]
    assert overview["wait_p50"] is not None and overview["wait_p99"] is not None


class Unruly(Exception):
    """What a handler may raise: its message is anybody's text."""


def unruly(job: Job) -> None:
    if job.id != "fine":
        # A name decoded with surrogateescape, a NUL, and more text than anyone reads.
        raise Unruly(b"caf\xe9".decode("utf-8", "surrogateescape") + " \x00 <b>" + "x" * 10_000)


def test_an_error_in_any_text_reaches_the_dead_letters_and_the_page_as_text(
    options: dict[str, Any],
) -> None:
    """A lone surrogate failed every read of the page's data (500), and the commit that
    settled the job on SQLite; on PostgreSQL it killed the worker, and a NUL had it
    retry its settle for ever. Neither may stop the queue or the page."""
    with served(unruly, **options) as s:
        s.queue.enqueue(Job(id="unruly"))
        s.queue.enqueue(Job(id="fine"))  # run by the same single worker, after it
        assert s.queue.join(PATIENCE)
        with httpx.Client(base_url=s.url, timeout=PATIENCE) as client:
            overview = client.get("/overview")
            dead = client.get("/dlq")
    assert overview.status_code == 200 and dead.status_code == 200
    error = dead.json()["jobs"][0]["last_error"]
    assert error.startswith("Unruly: caf\\udce9 \\x00 <b>xxx")
    assert error.endswith("... (8026 more characters)") and len(error) < 2100
    assert overview.json()["failures"][0]["last_error"] == error
    assert overview.json()["completed"] == 1


@pytest.mark.parametrize("where", ["memory", "sqlite", "postgresql"])
def test_recent_failures_are_the_retries_and_the_dead_newest_first(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"workers": 1, "max_retries": 1, "backoff": 60, "max_backoff": 60}
    if where == "sqlite":
        options["path"] = tmp_path / "jobs.db"
    elif where == "postgresql":
        pytest.importorskip("psycopg")
        options["dsn"] = request.getfixturevalue("db").queue_dsn
    recorder = Recorder(fail=lambda job, n: job.id != "fine")
    q = JobQueue(recorder, **options)
    try:
        q.enqueue(Job(id="dead", max_retries=0))
        q.enqueue(Job(id="fine"))
        recorder.wait_until(lambda r: "fine" in r.succeeded, "the job that succeeds")
        q.enqueue(Job(id="retrying"))  # its retry waits a minute
        recorder.wait_started(3)
        wait_until(lambda: len(q.recent_failures()) == 2, "the retry to be scheduled")
        failures = q.recent_failures()
        assert [(f.id, f.status, f.last_error) for f in failures] == [
            ("retrying", Status.RETRYING, "Boom: retrying attempt 1"),
            ("dead", Status.FAILED, "Boom: dead attempt 1"),
        ]
        assert [f.id for f in q.recent_failures(limit=1)] == ["retrying"]
        with pytest.raises(ValueError, match="limit"):
            q.recent_failures(limit=0)
    finally:
        q.close(timeout=0)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll the queue (a retry is scheduled after the handler returns) until it holds."""
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < deadline, f"gave up after {PATIENCE}s waiting for {what}"
        time.sleep(0.005)
