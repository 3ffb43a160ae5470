"""``POST /jobs`` under load, and the framework's own ceiling: ``python -m benchmarks.http_load``.

Two servers, one after the other, each in a subprocess on loopback, each loaded by
``--clients`` concurrent clients (16) for ``--seconds`` (10) after a one-second
warm-up that is not counted:

- ``final``: ``python -m final serve`` with its defaults (``durability="power"``: every
  201 waits for an fsync'd group commit) and a handler that does nothing;
- ``minimal``: a FastAPI endpoint under the same uvicorn that answers 201 and does
  nothing else: what FastAPI and uvicorn cost on this machine, the ceiling.

The clients are wrk's (Debian's ``wrk`` package), if it is installed: a C client that
takes little CPU, so that on a 2-core machine the client does not set the ceiling it
measures. Without it (or with ``--tool httpx``) they are ``httpx.AsyncClient`` tasks
in this process, one connection each, and on a 2-core machine they, not the server,
are the limit: the client CPU column shows it.
Throughput counts the 201s; 503s are counted apart, and "other" is any other status
or (with wrk) a socket error. Latency is per request, as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BODY = {"payload": "benchmark", "priority": "medium"}


def noop(job: object) -> None:
    """The handler the ``final`` server runs: the work is not what is measured."""


def minimal_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/jobs", status_code=201)
    async def post_job() -> JSONResponse:
        return JSONResponse({"id": "0"}, status_code=201)

    return app


def serve_minimal() -> None:
    """Run the minimal app as ``final serve`` runs its own: our socket, port 0, one line."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    config = uvicorn.Config(minimal_app(), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Result:
    name: str
    seconds: float
    created: int
    unavailable: int
    other: int
    latencies: list[float]  # seconds, one per answered request (httpx only)
    p50: float
    p99: float
    client_cpu: float  # share of one core the client used while loading

    @property
    def throughput(self) -> float:
        return self.created / self.seconds


def start(command: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "listening on " in line:
            url = line.split("listening on ")[1].split()[0]
            # Read the rest of its log, so that it never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, url
    raise RuntimeError(f"{command} exited before listening")


async def _load_httpx(url: str, clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    import httpx

    begin = time.perf_counter()
    counted_from = begin + warmup
    until = counted_from + seconds
    codes: dict[int, int] = {}
    latencies: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as c:
            while True:
                sent = time.perf_counter()
                if sent >= until:
                    return
                answer = await c.post("/jobs", json=BODY)
                if sent >= counted_from:
                    latencies.append(time.perf_counter() - sent)
                    codes[answer.status_code] = codes.get(answer.status_code, 0) + 1

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    cpu = time.process_time() - cpu
    return {"codes": codes, "latencies": latencies, "cpu": cpu / (time.perf_counter() - begin)}


def load_httpx(name: str, url: str, clients: int, warmup: float, seconds: float) -> Result:
    out = asyncio.run(_load_httpx(url, clients, warmup, seconds))
    codes, latencies = out["codes"], sorted(out["latencies"])
    return Result(
        name,
        seconds,
        codes.get(201, 0),
        codes.get(503, 0),
        sum(n for code, n in codes.items() if code not in (201, 503)),
        latencies,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        out["cpu"],
    )


# wrk's own summary counts only "Non-2xx or 3xx responses": each thread counts its
# answers by status in response(), and done() adds the threads' counts up and prints
# one "status CODE COUNT" line each. (Defining response() makes wrk parse every
# answer's headers and body: a little more client CPU, shown in its column.)
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{json.dumps(BODY)}'
wrk.headers["Content-Type"] = "application/json"

local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  codes = {{}}
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("codes")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d %d\\n", status, n))
  end
end
"""


def wrk_codes(text: str) -> dict[int, int]:
    """The answers by status, from the ``status CODE COUNT`` lines WRK_SCRIPT prints,
    plus wrk's socket errors (connect, read, write, timeout) under the code 0."""
    codes = {int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", text, re.M)}
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        codes[0] = sum(int(n) for n in errors.groups())
    return codes


def load_wrk(name: str, url: str, clients: int, warmup: float, seconds: float) -> Result:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--tool wrk needs wrk on the PATH (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        base = [wrk, "-t", "2", "-c", str(clients), "-s", script.name, "--latency"]
        subprocess.run(
            [*base, "-d", f"{max(1, round(warmup))}s", f"{url}/jobs"],
            check=True,
            capture_output=True,
        )  # warm-up, not counted
        cpu = os.times()
        done = subprocess.run(
            [*base, "-d", f"{round(seconds)}s", f"{url}/jobs"],
            check=True,
            capture_output=True,
            text=True,
        )
        after = os.times()
    finally:
        os.unlink(script.name)
    text = done.stdout
    codes = wrk_codes(text)
    used = (after.children_user + after.children_system) - (cpu.children_user + cpu.children_system)
    return Result(
        name,
        seconds,
        codes.get(201, 0),
        codes.get(503, 0),
        sum(n for code, n in codes.items() if code not in (201, 503)),
        [],
        _wrk_latency(text, "50%"),
        _wrk_latency(text, "99%"),
        used / seconds,
    )


def _wrk_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile} line in wrk's output:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--tool",
        choices=["httpx", "wrk"],
        default="wrk" if shutil.which("wrk") else "httpx",
        help="the load generator (default: wrk if installed, else httpx)",
    )
    parser.add_argument(
        "--durability",
        choices=["power", "process", "memory"],
        default="power",
        help="the final server's durability (default: %(default)s, its own default);"
        " memory: no file at all",
    )
    parser.add_argument("--serve-minimal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_minimal:
        serve_minimal()
        return
    load = load_httpx if args.tool == "httpx" else load_wrk
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="http-load-") as tmp:
        servers = {
            "final": [
                sys.executable,
                "-m",
                "final",
                "serve",
                "--port",
                "0",
                "--log-level",
                "info",  # the line with the address is at INFO; there is no access log
                "--path",
                str(Path(tmp) / "jobs.db"),
                "--handler",
                "benchmarks.http_load:noop",
                *(
                    ["--memory"]
                    if args.durability == "memory"
                    else ["--durability", args.durability]
                ),
            ],
            "minimal": [sys.executable, "-m", "benchmarks.http_load", "--serve-minimal"],
        }
        for name, command in servers.items():
            process, url = start(command, ROOT)
            try:
                results.append(load(name, url, args.clients, args.warmup, args.seconds))
            finally:
                process.terminate()
                process.wait(timeout=60)
    print(
        f"POST /jobs, {args.clients} concurrent clients ({args.tool}), {args.seconds:.0f}s after a"
        f" {args.warmup:.0f}s warm-up, loopback, durability={args.durability!r},"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  {'server':<9}{'201/s':>8}{'503s':>7}{'other':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'client CPU':>12}"
    )
    for r in results:
        print(
            f"  {r.name:<9}{r.throughput:8,.0f}{r.unavailable:7d}{r.other:7d}"
            f"{r.p50 * 1000:9.2f}{r.p99 * 1000:9.2f}{r.client_cpu:11.0%}"
        )
    final, minimal = results
    print(
        f"final / minimal: throughput {final.throughput / minimal.throughput:.2f}x,"
        f" p99 {final.p99 / minimal.p99:.1f}x"
    )


if __name__ == "__main__":
    main()
