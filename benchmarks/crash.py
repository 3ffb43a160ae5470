"""Kill -9: what each tier does with the jobs it had accepted when its process dies.

Two harnesses, one module, so that the tests, the tour and the benchmarks kill the
same way:

- ``kill_mid_run(tier, workdir)``: any tier. A child process accepts ``jobs`` jobs,
  starts running them, and is killed with SIGKILL once a quarter of them have run;
  for a tier with a ``path``, a second child opens the same file and drains it. The
  outcome says how many acknowledged jobs never ran.
- ``kill_repeatedly(workdir, kills)``: the final tier on disk, hammered. A child
  enqueues (printing each id once ``enqueue`` has returned), runs flaky jobs that
  retry with backoff, and is killed at a random moment, again and again: during
  start-up, enqueueing, running, backing off. After every kill the file must pass
  ``PRAGMA integrity_check``; at the end a last child drains it, and the tally says
  whether any acknowledged job was lost, whether anything ran that was never
  enqueued, and how many runs were repeats, against the bound derived below.

The children are the programs of ``benchmarks/crash_child.py``, run with ``-m``.
``python -m benchmarks.crash --kills 1000`` (``make crash-test``) prints the tally.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.crash_child import MIN_RUN, WORKERS
from final.sqlite_store import LAG

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("naive", "improved", "final")

# -- one kill, any tier -------------------------------------------------------------------


@dataclass(frozen=True)
class KillOutcome:
    tier: str
    acknowledged: int  # enqueue had returned for these
    ran: int  # distinct jobs whose handler started, before or after the kill
    lost: int  # acknowledged and never ran
    duplicates: int  # handler runs beyond the first of each job


def kill_mid_run(
    tier: str, workdir: Path, jobs: int = 200, seed: int = 0, dsn: str = ""
) -> KillOutcome:
    """Accept ``jobs`` jobs in a child, kill it with SIGKILL once a quarter have run,
    restart on the same file (or database) if the tier has one, and count.

    ``seed`` varies the moment of the kill a little (how many jobs have run); ``dsn``
    is the database of ``final-pg``, whose second child rescues the first one's claims.
    ``final-process`` is final on a file with ``executor="process"``: the parent is
    killed while its children run attempts.
    """
    if tier not in (*TIERS, "final-pg", "final-process") or (tier == "final-pg") != bool(dsn):
        raise ValueError(f"tier must be one of {TIERS}, or final-pg with a dsn, got {tier!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{tier}-{seed}-{time.monotonic_ns()}"
    path = str(workdir / f"{stem}.db") if tier in ("final", "final-process") else dsn
    ledger = workdir / f"{stem}.ledger"
    ledger.touch()
    threshold = max(1, jobs // 4 + random.Random(seed).randrange(max(1, jobs // 8)))
    acked: set[str] = set()
    with _child("mid-run", tier, path, str(ledger), str(jobs), "run") as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "accepted":
                break
            acked.add(line.strip())
        deadline = time.monotonic() + 30
        while _count_lines(ledger) < threshold and time.monotonic() < deadline:
            time.sleep(0.001)  # a harness, not a test: polling a file is fine here
        child.kill()
    if path:
        with _child("mid-run", tier, path, str(ledger), str(jobs), "drain") as child:
            assert child.stdout is not None
            if child.stdout.read().split()[-1:] != ["drained"]:
                raise RuntimeError(f"{tier}: the restarted child did not drain {path}")
    runs = Counter(ledger.read_text().split())
    return KillOutcome(
        tier=tier,
        acknowledged=len(acked),
        ran=len(runs),
        lost=len(acked - set(runs)),
        duplicates=sum(runs.values()) - len(runs),
    )


# -- many kills, the final tier on disk ------------------------------------------------


@dataclass(frozen=True)
class Tally:
    kills: int
    children: int  # processes started, the killed ones and the last
    acknowledged: int  # ids whose enqueue returned in some child
    completed: int  # acknowledged ids whose status on disk is completed at the end
    lost: int  # acknowledged ids not completed at the end: must be 0
    unknown: int  # ids that ran but were never enqueued: must be 0
    runs: int  # handler runs in all
    expected_runs: int  # one per job, two for the jobs made to fail their first attempt
    duplicates: int  # runs - expected_runs: repeats caused by the kills
    duplicate_bound: int  # kills x what one kill can make run again (see below)
    integrity_failures: int  # restarts after which integrity_check was not "ok"
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unknown == 0
            and self.integrity_failures == 0
            and self.duplicates <= self.duplicate_bound
        )


def per_kill_bound() -> int:
    """How many runs one kill can make happen again.

    A job runs again after a kill when its end (completed, or retrying) was not yet
    committed: the attempts running at that instant (at most ``WORKERS``), and the
    ones that ended while their end waited for the flusher's next commit, which
    comes ``LAG`` seconds after the first of them. A handler takes at least
    ``MIN_RUN``, so each worker ends at most ``window / MIN_RUN + 1`` attempts in a
    window. The window allowed here is ``4 * LAG``: the flusher needs the GIL to
    wake, and its commit takes time, on a machine that may be loaded.
    """
    return WORKERS + WORKERS * (math.ceil(4 * LAG / MIN_RUN) + 1)


def kill_repeatedly(
    workdir: Path, kills: int, seed: int = 0, batch: int = 60, progress: bool = False
) -> Tally:
    """Kill a child at random moments ``kills`` times, then drain, and tally."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, ledger = str(workdir / "jobs.db"), workdir / "ledger"
    ledger.touch()
    rng = random.Random(seed)
    acked: set[int] = set()
    done_kills = children = integrity_failures = 0
    next_id = 0
    begun = time.monotonic()
    while True:
        draining = done_kills >= kills  # the last child adds nothing, and is not killed
        last = next_id if draining else next_id + batch
        with _child("hammer", path, str(ledger), str(next_id), str(last)) as child:
            assert child.stdout is not None
            timer = None
            if not draining:
                # Start-up, enqueueing, running, backing off: anywhere.
                timer = threading.Timer(rng.uniform(0.05, 0.3), child.kill)
                timer.start()
            lines = child.stdout.read().split()
            child.wait()
            if timer is not None:
                timer.cancel()
        children += 1
        acked.update(int(x) for x in lines if x.isdigit())
        next_id = max(next_id, max(acked) + 1 if acked else 0)
        if child.returncode == -signal.SIGKILL:
            done_kills += 1
            if progress and done_kills % 50 == 0:
                print(f"  {done_kills} kills, {len(acked)} jobs acknowledged", flush=True)
        integrity_failures += _integrity(path) != "ok"
        if draining:
            if "drained" not in lines:
                raise RuntimeError(f"the last child did not drain {path}")
            break
        if children > 10 * kills + 50:
            raise RuntimeError("the kills keep missing: the child runs too fast")
    runs: Counter[int] = Counter()
    for line in ledger.read_text().splitlines():
        job_id, _ = line.split()
        runs[int(job_id)] += 1
    completed = _completed(path)
    expected = sum(2 if i % 10 == 0 else 1 for i in runs)
    total = sum(runs.values())
    return Tally(
        kills=done_kills,
        children=children,
        acknowledged=len(acked),
        completed=len(acked & completed),
        lost=len(acked - completed),
        unknown=len(set(runs) - set(range(next_id + batch))),
        runs=total,
        expected_runs=expected,
        duplicates=total - expected,
        duplicate_bound=done_kills * per_kill_bound(),
        integrity_failures=integrity_failures,
        seconds=time.monotonic() - begun,
    )


# -- helpers ------------------------------------------------------------------------------


def _child(command: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m benchmarks.crash_child command args...``, its stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crash_child", command, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the flaky failures' tracebacks
        text=True,
    )


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _integrity(path: str) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def _completed(path: str) -> set[int]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id FROM jobs WHERE status = 'completed'").fetchall()
    finally:
        db.close()
    return {int(row[0]) for row in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--json", type=Path, help="also write the tally here")
    args = parser.parse_args(argv)
    print("kill -9 once, mid-run, per tier (200 jobs, 2 workers):")
    with tempfile.TemporaryDirectory() as tmp:
        for tier in TIERS:
            outcome = kill_mid_run(tier, Path(tmp) / "mid-run")
            print(
                f"  {tier:<9} acknowledged {outcome.acknowledged}, lost {outcome.lost}, "
                f"ran again {outcome.duplicates}"
            )
        print(f"\nfinal on disk, kill -9 at random moments, {args.kills} times:")
        tally = kill_repeatedly(Path(tmp) / "hammer", args.kills, args.seed, progress=True)
    for name, value in asdict(tally).items():
        print(
            f"  {name:<19} {value:,.1f}" if isinstance(value, float) else f"  {name:<19} {value:,}"
        )
    print("  verdict             " + ("ok" if tally.ok else "FAILED"))
    if args.json:
        args.json.write_text(json.dumps(asdict(tally), indent=2) + "\n")
    sys.exit(0 if tally.ok else 1)


if __name__ == "__main__":
    main()
