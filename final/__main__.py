"""The final tier on the command line: ``python -m final {serve,demo,inspect} --help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from final.arguments import integer, number
from final.store import StoreError

# The HTTP server needs the optional extra; the rest runs on the standard library.
HTTP_EXTRA = "pip install 'job-queue-course[http]'"
TOKEN_ENV = "JOB_QUEUE_TOKEN"  # where serve looks for the bearer token when --token is not given


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=integer(0, 65535), default=8080, help="0 picks a free port")
    parser.add_argument(
        "--path", default="jobs.db", help="SQLite file of the queue (default: %(default)s)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="keep the queue in memory only, ignoring --path"
    )
    parser.add_argument("--workers", type=integer(1), default=4)
    parser.add_argument(
        "--handler",
        default="final.demo:simulated_work",
        metavar="MODULE:FUNCTION",
        help="the handler, as an import path (default: %(default)s, simulated work and failures)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token every request but /healthz must carry (default: $JOB_QUEUE_TOKEN;"
        " none if unset)",
    )
    parser.add_argument(
        "--grace", type=number(), default=10.0, help="seconds running jobs get at shutdown"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    queue = parser.add_argument_group("queue options (see the JobQueue table in the README)")
    queue.add_argument("--queue-size", type=integer(1), default=1000)
    queue.add_argument("--max-retries", type=integer(0), default=3)
    queue.add_argument("--backoff", type=number(), default=1.0)
    queue.add_argument("--max-backoff", type=number(), default=30.0)
    queue.add_argument("--job-timeout", type=number(positive=True), default=None)
    queue.add_argument("--fairness", type=integer(0), default=10)
    queue.add_argument("--rate-limit", type=number(positive=True), default=None)
    queue.add_argument("--durability", choices=["power", "process"], default="power")
    queue.add_argument("--history", type=integer(1), default=100_000)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from final.serve import load_handler, serve
    except ImportError as exc:
        print(f"serve needs the http extra ({exc.name} is missing): {HTTP_EXTRA}", file=sys.stderr)
        return 2
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    try:
        handler = load_handler(args.handler)
        serve(
            handler,
            host=args.host,
            port=args.port,
            token=token,
            grace=args.grace,
            access_log=args.access_log,
            path=None if args.memory else args.path,
            workers=args.workers,
            queue_size=args.queue_size,
            max_retries=args.max_retries,
            backoff=args.backoff,
            max_backoff=args.max_backoff,
            job_timeout=args.job_timeout,
            fairness=args.fairness,
            rate_limit=args.rate_limit,
            durability=args.durability,
            history=args.history,
        )
    except (ValueError, TypeError, StoreError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from final.inspection import format_snapshot, read

    try:
        snapshot = read(args.path, limit=args.limit)
    except StoreError as exc:
        print(f"inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(snapshot), indent=2))
    else:
        print(format_snapshot(snapshot, now=time.time()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m final", description="The final tier's job queue, served, shown, inspected."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a queue over HTTP (needs the http extra)",
        description="Serve a JobQueue over HTTP until SIGINT or SIGTERM (a second one exits"
        " at once). Endpoints: POST /jobs, GET /jobs/{id}, GET /dlq, POST /dlq/{id}/retry,"
        " GET /metrics, GET /healthz, GET /openapi.json.",
    )
    _serve_arguments(serve)
    serve.set_defaults(run=_serve)

    from final import demo as demo_module

    demo = commands.add_parser(
        "demo",
        help="watch the final tier run, fail, push back and recover",
        description=(demo_module.__doc__ or "").split("\n\n")[1].replace("\n", " "),
    )
    demo_module.add_arguments(demo)
    demo.set_defaults(run=demo_module.run)

    inspect = commands.add_parser(
        "inspect",
        help="counts by status and the dead letters of a queue file, read-only",
        description="Read a queue's SQLite file without locking it: safe while a server runs.",
    )
    inspect.add_argument("--path", type=Path, default=Path("jobs.db"))
    inspect.add_argument("--limit", type=integer(0), default=20, help="dead letters listed at most")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_inspect)

    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
