"""``python -m final``: its help, the demo run to its end and stopped by Ctrl+C, inspect."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from final import Job, JobQueue, Priority
from final.__main__ import main
from final.inspection import format_snapshot, read
from final.store import StoreError
from tests.support import PATIENCE

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "final", "demo", "--jobs", "10", "--every", "0.25", "--settle", "20"]


@pytest.mark.parametrize("command", [[], ["serve"], ["demo"], ["inspect"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m final" in capsys.readouterr().out


def test_a_handler_that_cannot_be_imported_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = str(tmp_path / "jobs.db")
    assert main(["serve", "--path", path, "--handler", "no_such_module:run"]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err
    assert main(["serve", "--path", path, "--handler", "final.demo"]) == 2
    assert "module:function" in capsys.readouterr().err


def test_the_demo_runs_to_its_report() -> None:
    done = subprocess.run(
        [*DEMO, "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE * 6,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "idempotency: a second job with key 'order-42' refused" in out
    assert "backpressure: the LOW lane took" in out and "QueueFull" in out
    assert "wait p99" in out  # the periodic stats line
    assert "=== final: report" in out and "lost                        0" in out
    assert "dead letters (" in out and "the payload asked to fail" in out
    assert "Traceback" not in done.stderr


def test_ctrl_c_stops_the_demo_cleanly_with_a_report() -> None:
    demo = subprocess.Popen(
        [*DEMO, "--duration", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None
    for line in demo.stdout:  # Ctrl+C once the demo is under way
        if "wait p99" in line:
            break
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=PATIENCE * 3)
    assert demo.returncode == 130, err
    assert "stopped by Ctrl+C" in out and "=== final: report" in out
    assert "Traceback" not in err


def test_inspect_counts_by_status_and_lists_the_dead(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    def handler(job: Job) -> None:
        if job.payload == b"fail":
            raise ValueError("no")

    with JobQueue(handler, path=path, max_retries=0) as q:
        q.enqueue(Job(payload=b"fail", priority=Priority.LOW))
        q.enqueue(Job(payload=b"ok", priority=Priority.HIGH))
        assert q.join(timeout=PATIENCE)
    snapshot = read(path)
    assert snapshot.counts["completed"]["high"] == 1
    assert snapshot.counts["failed"]["low"] == 1 and snapshot.dead_total == 1
    assert snapshot.dead[0].last_error == "ValueError: no"
    table = format_snapshot(snapshot, now=0.0)
    assert "dead letters: 1" in table and "ValueError: no" in table


def test_inspect_refuses_a_file_that_is_not_a_queue(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not a database")
    with pytest.raises(StoreError, match="not an SQLite database"):
        read(other)
    with pytest.raises(StoreError, match="no such file"):
        read(tmp_path / "missing.db")
    with pytest.raises(StoreError, match="not a file"):
        read(tmp_path)  # a directory
    assert other.read_text() == "not a database"  # untouched


def test_inspect_writes_control_characters_of_ids_and_errors_escaped(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    sneaky = "job\x1b[31m\r\nred\x00"  # an escape sequence, a line break and a NUL

    def handler(job: Job) -> None:
        raise ValueError("bad\x1b[2Jcleared")

    with JobQueue(handler, path=path, max_retries=0) as q:
        q.enqueue(Job(id=sneaky))
        assert q.join(timeout=PATIENCE)
    table = format_snapshot(read(path), now=0.0)
    assert all(c.isprintable() for line in table.splitlines() for c in line)
    assert len(table.splitlines()) == len(table.split("\n"))  # no row split in two
    assert "job\\x1b[31m\\r\\nred\\x00" in table and "bad\\x1b[2Jcleared" in table


OUT_OF_RANGE = {
    "port over 65535": (["serve", "--port", "99999"], "--port", "from 0 to 65535"),
    "negative port": (["serve", "--port", "-1"], "--port", "from 0 to 65535"),
    "port not a number": (["serve", "--port", "http"], "--port", "not a whole number"),
    "negative grace": (["serve", "--grace", "-1"], "--grace", ">= 0"),
    "NaN grace": (["serve", "--grace", "nan"], "--grace", "finite"),
    "infinite grace": (["serve", "--grace", "inf"], "--grace", "finite"),
    "no workers": (["serve", "--workers", "0"], "--workers", ">= 1"),
    "empty lanes": (["serve", "--queue-size", "0"], "--queue-size", ">= 1"),
    "negative retries": (["serve", "--max-retries", "-1"], "--max-retries", ">= 0"),
    "NaN backoff": (["serve", "--backoff", "nan"], "--backoff", "finite"),
    "negative max backoff": (["serve", "--max-backoff", "-2"], "--max-backoff", ">= 0"),
    "zero job timeout": (["serve", "--job-timeout", "0"], "--job-timeout", "> 0"),
    "negative fairness": (["serve", "--fairness", "-1"], "--fairness", ">= 0"),
    "zero rate limit": (["serve", "--rate-limit", "0"], "--rate-limit", "> 0"),
    "no history": (["serve", "--history", "0"], "--history", ">= 1"),
    "zero rate": (["demo", "--rate", "0"], "--rate", "> 0"),
    "infinite rate": (["demo", "--rate", "inf"], "--rate", "finite"),
    "negative duration": (["demo", "--duration", "-1"], "--duration", ">= 0"),
    "negative jobs": (["demo", "--jobs", "-5"], "--jobs", ">= 0"),
    "demo without workers": (["demo", "--workers", "0"], "--workers", ">= 1"),
    "demo with empty lanes": (["demo", "--queue-size", "0"], "--queue-size", ">= 1"),
    "stats every 0 s": (["demo", "--every", "0"], "--every", "> 0"),
    "NaN settle": (["demo", "--settle", "nan"], "--settle", "finite"),
    "negative limit": (["inspect", "--limit", "-1"], "--limit", ">= 0"),
}


@pytest.mark.parametrize(("argv", "option", "why"), OUT_OF_RANGE.values(), ids=list(OUT_OF_RANGE))
def test_a_number_out_of_range_is_refused_by_argparse_naming_the_option(
    argv: list[str], option: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused while parsing: nothing has started, no queue, no socket, no thread.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and why in err, err


def test_in_range_edges_are_accepted() -> None:
    from final.arguments import integer, number

    assert integer(0, 65535)("65535") == 65535 and integer(0, 65535)("0") == 0
    assert number()("0") == 0.0 and number(positive=True)("0.001") == 0.001


def test_serve_refuses_a_nan_grace_before_the_queue_starts(tmp_path: Path) -> None:
    from final.serve import serve

    with pytest.raises(ValueError, match="grace"):
        serve(lambda job: None, port=0, grace=float("nan"), path=tmp_path / "jobs.db")
    assert not (tmp_path / "jobs.db").exists()  # refused before the queue made its file


QUICK = {"serve": ["--port", "0"], "demo": ["--duration", "0", "--settle", "0"]}


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_path_in_a_missing_directory_is_one_line_not_a_traceback(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "no-such-dir" / "jobs.db"
    assert main([command, "--path", str(path), *QUICK[command]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{command}: ") and "No such file or directory" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_file_that_is_not_a_queue_is_one_line_and_left_alone(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a database")
    assert main([command, "--path", str(other), *QUICK[command]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{command}: ") and "not an SQLite database" in err, err
    assert err.count("\n") == 1
    assert other.read_text() == "not a database"


# -- defaults, the library's rules, a reader that goes away ---------------------------------


def option_entries(help_text: str) -> list[str]:
    """The help of each option, one string each, whatever its line wrapping."""
    entries: list[str] = []
    within = False  # whether the line before belongs to an option's entry
    for line in help_text.splitlines():
        if line.startswith("  -"):
            entries.append(line)
            within = True
        elif within and line.startswith("    "):
            entries[-1] += " " + line.strip()
        else:
            within = False  # a heading, a blank line, the usage
    return [" ".join(entry.split()) for entry in entries]


@pytest.mark.parametrize("command", ["serve", "demo", "inspect"])
def test_every_option_shows_its_default_in_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = [e for e in option_entries(capsys.readouterr().out) if not e.startswith("-h,")]
    assert len(entries) >= 3
    assert all("(default: " in entry for entry in entries), entries
    # The help promises nothing the flag refuses: None is a default, never a value to type.
    assert not any("None:" in entry for entry in entries), entries


def test_the_queue_options_default_to_the_queue_s_own() -> None:
    from final.__main__ import build_parser
    from final.arguments import queue_options

    parsed = queue_options(build_parser().parse_args(["serve"]))
    signature = inspect.signature(JobQueue.__init__).parameters
    assert parsed and parsed == {name: signature[name].default for name in parsed}


def test_every_option_of_the_queue_is_an_option_of_serve() -> None:
    from final.arguments import QUEUE_OPTIONS, queue_defaults

    # The file is --path (or --memory), as each command says; a store of your own
    # (store=) is a Python object, for callers of the library only.
    assert set(QUEUE_OPTIONS) == set(queue_defaults()) - {"path", "store"}


REFUSED = {
    "--workers": ("0", {"workers": 0}),
    "--queue-size": ("0", {"queue_size": 0}),
    "--max-retries": ("-1", {"max_retries": -1}),
    "--backoff": ("nan", {"backoff": float("nan")}),
    "--job-timeout": ("0", {"job_timeout": 0.0}),
    "--rate-limit": ("-1", {"rate_limit": -1.0}),
    "--history": ("0", {"history": 0}),
    "--retention": ("-1", {"retention": -1.0}),
}


@pytest.mark.parametrize(("option", "text", "given"), [(o, *v) for o, v in REFUSED.items()])
def test_a_queue_option_is_refused_in_the_queue_s_own_words(
    option: str, text: str, given: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="must be") as refused:
        JobQueue(lambda job: None, **given)  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as exit_:
        main(["serve", option, text])
    assert exit_.value.code == 2
    assert f"argument {option}: {refused.value}" in capsys.readouterr().err


def run_into_a_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m final argv`` into a pipe whose reader reads one line and goes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "final", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline()
    process.stdout.close()  # as `| head -1` does once it has its line
    err = process.stderr.read()
    process.stderr.close()
    code = process.wait(timeout=PATIENCE * 3)
    return subprocess.CompletedProcess(argv, code, "", err)


def test_inspect_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    def fail(job: Job) -> None:
        raise ValueError("no")

    # Far more than a pipe holds (64 KiB): the writes after the reader left must fail.
    with JobQueue(fail, path=path, max_retries=0) as q:
        q.enqueue_many(Job(payload=b"x") for _ in range(1000))
        assert q.join(timeout=PATIENCE * 3)
    done = run_into_a_closed_pipe(["inspect", "--path", str(path), "--limit", "1000", "--json"])
    assert done.stderr == "" and done.returncode == 1


def test_the_demo_into_a_pipe_closed_early_stops_and_exits_quietly() -> None:
    # Stats ten times a second for a minute: it must stop soon after the reader goes.
    argv = ["demo", "--duration", "60", "--every", "0.1", "--settle", "5"]
    done = run_into_a_closed_pipe(argv)
    assert done.stderr == "" and done.returncode == 1
