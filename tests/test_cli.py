"""``python -m final``: its help, the demo run to its end and stopped by Ctrl+C, inspect."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from final import Job, JobQueue, Priority
from final.__main__ import main
from final.inspection import format_snapshot, read
from final.sqlite_store import StoreError
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
    assert other.read_text() == "not a database"  # untouched
