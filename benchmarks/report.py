"""The headline figures and the targets, from a results file: ``python -m benchmarks.report``.

It prints Markdown (the README's table is pasted from it): throughput at 4 workers
beside ``ThreadPoolExecutor`` (driven as its users drive it: ``submit`` in a loop, then
``shutdown(wait=True)``), p99 latency at the loads the targets name, and each
target with the figure measured and whether it was met. ``make bench`` runs it
after the suite.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import Run, load

BASE = "ThreadPoolExecutor"
# The interleaved persistence figures, as the report's table names them.
ON_DISK = {
    "raw commits": "raw one-row commits (SQLite alone)",
    "1 producer": "final, 1 producer",
    "8 producers": "final, 8 producers",
    "ceiling, 1 producer": "group commit with no queue, 1 producer",
    "ceiling, 8 producers": "group commit with no queue, 8 producers",
}
DURABLE_PEERS = ("persistqueue", "litequeue", "huey-sqlite")


def headline(run: Run, figure: str) -> dict[str, Any] | None:
    """The interleaved measurement of ``figure``, if run: "throughput", "latency"
    or "persistence"."""
    return next((r for r in run.rows("0 headline") if r["figure"] == figure), None)


def throughput_at(run: Run, workers: int = 4) -> dict[str, float]:
    """Jobs/s by system at ``workers``; batched runs are named ``<system> enqueue_many``.

    At the headline's 4 workers, the interleaved rounds win over the back-to-back ones.
    """
    found = {}
    for r in run.rows("1 throughput"):
        if r["workers"] == workers:
            name = r["system"] + (" enqueue_many" if r["batch"] else "")
            found[name] = r["jobs_per_s"]
    top = headline(run, "throughput")
    if top is not None and top["workers"] == workers:
        found.update(top["jobs_per_s"])
    return found


def latency_at(run: Run, rate: int) -> dict[str, dict[str, Any]]:
    """Latency rows by system at an offered ``rate``, the interleaved ones first."""
    found = {r["system"]: r for r in run.rows("2 latency") if r["offered_per_s"] == rate}
    top = headline(run, "latency")
    if top is not None:
        found.update({s: r for s, r in top["latency"].items() if r["offered_per_s"] == rate})
    return found


def persistence_at(run: Run) -> dict[str, float]:
    """Jobs/s of final on disk ("power") beside the raw commit rate and group commit's
    best case, from the interleaved measurement."""
    top = headline(run, "persistence")
    return {} if top is None else dict(top["jobs_per_s"])


@dataclass
class Target:
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(run: Run) -> list[Target]:
    tp = throughput_at(run)
    base = tp.get(BASE)
    found: list[Target] = []

    def ratio(goal: str, system: str, at_least: float, floor: float | None = None) -> None:
        if base is None or system not in tp:
            found.append(Target(goal, "not measured", None))
            return
        x = tp[system] / base
        measured = f"{x:.2f}x ({tp[system]:,.0f} vs {base:,.0f} jobs/s)"
        if floor is not None and x < at_least:
            measured += f"; {'above' if x >= floor else 'below'} the {floor:g}x floor"
        found.append(Target(goal, measured, x >= at_least))

    # Against the pool as its users drive it: a submit loop closed by shutdown(wait=True).
    ratio("improved >= 5x ThreadPoolExecutor's throughput", "improved", 5)
    ratio("final in memory >= 2.5x (2x at the least)", "final", 2.5, floor=2)
    ratio("final with SQLite and enqueue_many >= 1x", "final-sqlite enqueue_many", 1)
    # The interleaved persistence rounds measure all five figures, or none.
    disk = persistence_at(run)
    one_goal = "final with SQLite, one producer >= 80% of the raw one-row commit rate"
    eight_goal = "final with SQLite, 8 producers >= 5x one producer"
    if not disk:
        found += [Target(g, "not measured", None) for g in (one_goal, eight_goal)]
    else:
        raw, one, eight = disk["raw commits"], disk["1 producer"], disk["8 producers"]
        bare, bare_one = disk["ceiling, 8 producers"], disk["ceiling, 1 producer"]
        found.append(
            Target(one_goal, f"{one / raw:.0%} ({one:,.0f} vs {raw:,.0f}/s)", one >= 0.8 * raw)
        )
        measured = (
            f"{eight / one:.2f}x ({eight:,.0f} vs {one:,.0f}/s); group commit with no queue: "
            f"{bare:,.0f}/s, {bare / one:.2f}x final's one producer, "
            f"{bare / bare_one:.2f}x its own one"
        )
        found.append(Target(eight_goal, measured, eight >= 5 * one))
    peers = {p: tp[p] for p in DURABLE_PEERS if p in tp}
    for feed in ("final-sqlite", "final-sqlite enqueue_many"):
        goal = f"{feed} >= 10x each durable peer"
        if feed not in tp or not peers:
            found.append(Target(goal, "not measured", None))
            continue
        best = max(peers, key=peers.__getitem__)
        each = ", ".join(f"{tp[feed] / rate:.1f}x {p}" for p, rate in peers.items())
        found.append(Target(goal, each, tp[feed] >= 10 * peers[best]))

    at5k = latency_at(run, 5000)
    base99 = at5k.get(BASE, {}).get("p99_ms")
    for tier in ("naive", "improved", "final"):
        goal = f"{tier}: p99 <= 1 ms at 5,000 jobs/s, and <= 2x the pool's"
        if tier not in at5k or base99 is None:
            found.append(Target(goal, "not measured", None))
            continue
        p99 = at5k[tier]["p99_ms"]
        found.append(
            Target(goal, f"{p99:.3f} ms (pool {base99:.3f} ms)", p99 <= 1 and p99 <= 2 * base99)
        )
    at2k = latency_at(run, 2000).get("final-sqlite")
    goal = "final with SQLite: p99 <= 5 ms at 2,000 jobs/s"
    if at2k is None:
        found.append(Target(goal, "not measured", None))
    else:
        found.append(Target(goal, f"{at2k['p99_ms']:.2f} ms", at2k["p99_ms"] <= 5))

    floods = run.rows("4 starvation")
    fair = [r for r in floods if r["tier"] == "final"]
    strict = [r for r in floods if r["tier"] == "improved"]
    if fair and strict:
        worst_fair = max(r["low_max_ms"] for r in fair)
        worst_strict = max(r["low_max_ms"] for r in strict)
        found.append(
            Target(
                "final's LOW wait bounded at every flood rate; improved's grows",
                f"final's longest LOW wait {worst_fair:.1f} ms (fairness 1 to 10); "
                f"improved's {worst_strict:,.0f} ms",
                worst_fair < 50 and worst_strict > 10 * worst_fair,
            )
        )
    return (
        found
        + lateness_targets(run)
        + postgres_targets(run)
        + process_targets(run)
        + exactly_once_targets(run)
    )


def lateness_targets(run: Run) -> list[Target]:
    """Scheduled jobs start on time: p99 of (start - run_at) at 1,000 due within 1 s."""
    rows = {r["store"]: r for r in run.rows("9 lateness") if r["spread_s"] == 1.0}
    found = []
    for store, name in (("memory", "in memory"), ("sqlite", "with SQLite")):
        goal = f"final {name}: scheduled jobs start late by p99 <= 20 ms (1,000 due within 1 s)"
        row = rows.get(store)
        if row is None:
            found.append(Target(goal, "not measured", None))
            continue
        measured = f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['early']} early"
        found.append(Target(goal, measured, row["p99_ms"] <= 20 and row["early"] == 0))
    return found


def postgres_figures(run: Run) -> dict[str, dict[str, Any]]:
    """Scenario 8's rows by figure: drain, enqueue_one, enqueue_many, latency, soak."""
    return {r["figure"]: r for r in run.rows("8 postgresql")}


def postgres_targets(run: Run) -> list[Target]:
    """final on PostgreSQL against pgqueuer and procrastinate, measured in the same run."""
    pg = postgres_figures(run)
    found: list[Target] = []

    def beside(figure: str, peer: str, at_least: float, floor: float | None = None) -> None:
        goal = f"final-pg {figure} >= {at_least:g}x {peer}" + (
            f" ({floor:g}x at the least)" if floor is not None else ""
        )
        rates = pg.get(figure, {}).get("jobs_per_s", {})
        if "final-pg" not in rates or peer not in rates:
            found.append(Target(goal, "not measured", None))
            return
        x = rates["final-pg"] / rates[peer]
        measured = f"{x:.2f}x ({rates['final-pg']:,.0f} vs {rates[peer]:,.0f} jobs/s)"
        if floor is not None and x < at_least:
            measured += f"; {'above' if x >= floor else 'below'} the {floor:g}x floor"
        found.append(Target(goal, measured, x >= at_least))

    beside("drain", "pgqueuer", 1.5, floor=1)
    beside("drain", "procrastinate", 10)
    beside("enqueue_one", "pgqueuer", 1)
    beside("enqueue_many", "pgqueuer", 1)
    goal = "final-pg enqueue to start at 200 jobs/s: p50 <= 1.2 ms, p99 <= 2.5 ms"
    lat = pg.get("latency", {}).get("latency", {})
    if "final-pg" not in lat:
        found.append(Target(goal, "not measured", None))
    else:
        mine = lat["final-pg"]
        peers = "; ".join(
            f"{s} {r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms"
            for s, r in lat.items()
            if s != "final-pg"
        )
        found.append(
            Target(
                goal,
                f"{mine['p50_ms']:.2f} / {mine['p99_ms']:.2f} ms ({peers})",
                mine["p50_ms"] <= 1.2 and mine["p99_ms"] <= 2.5,
            )
        )
    found.append(soak_target(pg.get("soak")))
    return found


def soak_target(soak: dict[str, Any] | None) -> Target:
    """The ten-minute soak at half the peak (``make bench-full``): the completed jobs/s
    of its last sample within 20% of its first, and its dead rows, size and backlog
    bounded: their largest in the soak's second half no more than 1.5x the largest in
    its first (they grew for a while, then stopped)."""
    goal = (
        "final-pg soak, 10 minutes at half the peak: throughput within 20% of its start,"
        " dead rows and table size bounded"
    )
    samples = [] if soak is None else soak["samples"]
    if len(samples) < 4:
        return Target(goal, "not measured (make bench-full)", None)
    first, last = samples[0]["jobs_per_s"], samples[-1]["jobs_per_s"]
    half = len(samples) // 2

    assert soak is not None

    def grew(key: str, floor: float) -> float:
        # Below the floor a figure is noise: a thousand dead rows (the vacuum trigger),
        # a second of jobs waiting, a MiB of table.
        before = max(float(s[key]) for s in samples[:half])
        return max(float(s[key]) for s in samples[half:]) / max(before, floor)

    floors = {"dead": 1000, "bytes": 2**20, "backlog": soak["offered_per_s"]}
    growth = {k: grew(k, floor) for k, floor in floors.items()}
    measured = (
        f"{soak['offered_per_s']:,} jobs/s offered ({soak['peak_jobs_per_s']:,.0f} peak),"
        f" {soak['seconds'] / 60:.0f} min: {first:,.0f} -> {last:,.0f} jobs/s"
        f" ({last / first - 1:+.0%}); second half's largest / first half's: dead rows"
        f" {growth['dead']:.2f}x (at most {max(s['dead'] for s in samples):,.0f}), size"
        f" {growth['bytes']:.2f}x (at most {max(s['bytes'] for s in samples) / 2**20:.1f} MiB),"
        f" backlog {growth['backlog']:.2f}x; autovacuum {'on' if soak['autovacuum'] else 'off'}"
    )
    met = abs(last / first - 1) <= 0.2 and all(g <= 1.5 for g in growth.values())
    return Target(goal, measured, met)


def process_targets(run: Run) -> list[Target]:
    """final's ``executor="process"`` beside its threads, measured in alternating rounds."""
    rows = {(r["figure"], r.get("workers")): r for r in run.rows("3 processes")}
    found: list[Target] = []
    cpu, noop, kill = rows.get(("cpu", 2)), rows.get(("noop", 2)), rows.get(("kill", None))
    goal = "final, 2 workers, ~20 ms CPU-bound jobs: processes >= 1.8x threads"
    if cpu is None:
        found.append(Target(goal, "not measured", None))
    else:
        rates = cpu["jobs_per_s"]
        measured = f"{cpu['ratio']:.2f}x ({rates['process']:,.1f} vs {rates['thread']:,.1f} jobs/s)"
        found.append(Target(goal, measured, cpu["ratio"] >= 1.8))
    goal = "final, 2 workers, no-op jobs: a process costs <= 100 us more per job than a thread"
    if noop is None:
        found.append(Target(goal, "not measured", None))
    else:
        rates = noop["jobs_per_s"]
        measured = (
            f"{noop['overhead_us']:.0f} us ({rates['process']:,.0f} vs "
            f"{rates['thread']:,.0f} jobs/s)"
        )
        found.append(Target(goal, measured, noop["overhead_us"] <= 100))
    goal = "a hung attempt's child ends within job_timeout + 0.5 s"
    if kill is None:
        found.append(Target(goal, "not measured", None))
    else:
        measured = f"+{kill['delay_s']:.3f} s (worst of 5: +{kill['worst_s']:.3f} s)"
        found.append(Target(goal, measured, kill["worst_s"] <= 0.5))
    return found


def exactly_once_targets(run: Run) -> list[Target]:
    """Completing in the handler's transaction against the plain path, same handler."""
    goal = "final-pg complete(conn) >= 80% of the plain path's jobs/s (same effect)"
    rows = run.rows("exactly-once on postgresql")
    rates = rows[0].get("jobs_per_s", {}) if rows else {}
    if "exactly" not in rates or "plain" not in rates:
        return [Target(goal, "not measured", None)]
    x = rates["exactly"] / rates["plain"]
    measured = f"{x:.0%} ({rates['exactly']:,.0f} vs {rates['plain']:,.0f} jobs/s)"
    return [Target(goal, measured, x >= 0.8)]


def markdown(run: Run) -> str:
    top = headline(run, "throughput")
    rounds = f"median of {len(next(iter(top['rounds_jobs_per_s'].values())))} " if top else ""
    lines = [
        f"Measured by `make bench`, {run.describe()}. Throughput and the p99 the targets "
        f"name: {rounds}rounds interleaved across the systems; other p99s: the latency "
        "curves.",
        "",
    ]
    if top is not None:
        if "pool" in top:
            lines[0] += f" ThreadPoolExecutor is driven as its users drive it: {top['pool']}."
        else:
            lines[0] += (
                " **This run measured ThreadPoolExecutor with concurrent.futures.wait() over "
                "every future, slower than its users see it: each ratio to the pool is too "
                "high. Run `make bench` again.**"
            )
    tp = throughput_at(run)
    base = tp.get(BASE)
    at5k = latency_at(run, 5000)
    at2k = latency_at(run, 2000)
    lines += [
        "| system (4 workers, no-op jobs) | jobs/s | x pool | p99 at 2,000/s | p99 at 5,000/s |",
        "|---|--:|--:|--:|--:|",
    ]

    knees = {r["system"] for r in run.rows("2 latency") if r["saturated"]}

    def ms(system: str, row: dict[str, Any] | None) -> str:
        if row is None:
            return "past its knee" if system in knees else "-"
        return f"{row['p99_ms']:.2f} ms" + (" (saturated)" if row["saturated"] else "")

    for name, rate in sorted(tp.items(), key=lambda kv: -kv[1]):
        system = name.split()[0]
        batch = " " in name
        x = f"{rate / base:.2f}" if base else ""
        lines.append(
            f"| {name} | {rate:,.0f} | {x} | "
            f"{'' if batch else ms(system, at2k.get(system))} | "
            f"{'' if batch else ms(system, at5k.get(system))} |"
        )
    disk = persistence_at(run)
    if disk:
        raw = disk.get("raw commits")
        lines += [
            "",
            '| on disk, durability="power" (4 workers, no-op jobs) | jobs/s | x raw commits |',
            "|---|--:|--:|",
        ]
        for name, rate in disk.items():
            x = f"{rate / raw:.2f}" if raw else ""
            lines.append(f"| {ON_DISK.get(name, name)} | {rate:,.0f} | {x} |")
    lines += ["", "| target | measured | met |", "|---|---|:-:|"]
    for t in targets(run):
        mark = {True: "yes", False: "**no**", None: "-"}[t.met]
        lines.append(f"| {t.goal} | {t.measured} | {mark} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, help="a results file; default: the latest")
    args = parser.parse_args(argv)
    print(markdown(load(args.path)))


if __name__ == "__main__":
    main()
