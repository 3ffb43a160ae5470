"""Where the time goes: a scenario under py-spy, summed up by thread and by place.

``python -m benchmarks.profile final-sqlite`` runs that case in a child process under
``py-spy record --idle`` (every thread sampled, waiting ones included) and prints, for
each kind of thread (the producer, the workers, the scheduler, the store's writer),
its share of the samples and the places in the repository's code it was sampled in,
with the library call it was in at that moment. ``--out`` also writes it to a file.

py-spy is not a dependency of the project: ``pip install -e '.[profile]'``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import scenarios


@dataclass(frozen=True)
class Case:
    """A call of a function of ``benchmarks/scenarios.py``, to profile."""

    scenario: Callable[..., object]
    args: tuple[object, ...]
    batch: bool = False  # throughput's keyword: one enqueue_many per thousand jobs

    def __str__(self) -> str:
        args = ", ".join([repr(a) for a in self.args] + (["batch=True"] if self.batch else []))
        return f"scenarios.{self.scenario.__name__}({args})"

    def run(self) -> object:
        call = self.scenario
        return call(*self.args, batch=True) if self.batch else call(*self.args)


CASES = {
    "improved": Case(scenarios.throughput, ("improved", 100_000)),
    "final": Case(scenarios.throughput, ("final", 100_000)),
    "final-sqlite": Case(scenarios.throughput, ("final-sqlite", 4_000)),
    "final-sqlite-enqueue_many": Case(scenarios.throughput, ("final-sqlite", 60_000), batch=True),
    "final-sqlite-latency": Case(scenarios.latency, ("final-sqlite", 2_000, 2.0)),
    "ThreadPoolExecutor": Case(scenarios.throughput, ("ThreadPoolExecutor", 100_000)),
}
OURS = re.compile(r"\((final|improved|naive|benchmarks)/")
FRAME = re.compile(r"^(.*) \((.*)\)$")


def record(case: str, rate: int = 250) -> Path:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[profile]'")
    out = Path(tempfile.mkdtemp(prefix="jobq-profile-")) / "raw.txt"
    options = ["--idle", "--rate", str(rate), "--format", "raw", "-o", str(out)]
    child = [sys.executable, "-m", "benchmarks.profile", case, "--here"]
    subprocess.run(
        [spy, "record", *options, "--", *child],
        check=True,
        capture_output=True,
    )
    return out


def role(frames: list[str]) -> str:
    """Which thread a stack belongs to: the function its thread was started with."""
    if frames[0].startswith("Thread._bootstrap"):
        for f in frames:
            if OURS.search(f):
                return FRAME.sub(r"\1", f) + " thread"
        return "other thread"
    return "main thread (the producer)"


def place(frames: list[str]) -> str:
    """The deepest frame in our code, and the call it was in when sampled."""
    ours = [i for i, f in enumerate(frames) if OURS.search(f)]
    if not ours:
        return frames[-1]
    i = ours[-1]
    here = frames[i]
    if i == len(frames) - 1:
        return here
    call = FRAME.sub(r"\1", frames[-1])
    return f"{here} -> {call}"


def summarize(raw: Path, top: int = 6) -> str:
    by_role: Counter[str] = Counter()
    places: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        r = role(frames)
        by_role[r] += n
        places[r][place(frames)] += n
    total = sum(by_role.values())
    lines = [f"{total} samples over all threads (waiting included)"]
    for r, n in by_role.most_common():
        lines.append(f"\n{r}: {n / total:.0%} of the samples")
        for where, k in places[r].most_common(top):
            lines.append(f"  {k / n:5.0%}  {where}")
    return "\n".join(lines)


def _commit() -> str:
    """The code the profile is of: its line numbers only hold for that commit."""
    found = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return f"at commit {found.stdout.strip() or 'unknown'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("--out", type=Path, help="also write the summary here")
    parser.add_argument(
        "--here",
        action="store_true",
        help="run the case in this process, unprofiled: py-spy's child",
    )
    args = parser.parse_args(argv)
    if args.here:
        print(CASES[args.case].run())
        return
    text = f"$ python -m benchmarks.profile {args.case}\n{CASES[args.case]}\n{_commit()}\n\n"
    text += summarize(record(args.case))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
