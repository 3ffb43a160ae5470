"""The final tier on the command line: ``python -m final {serve,worker,demo,inspect} --help``."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from final.arguments import add_queue_options, integer, queue_options, seconds
from final.store import StoreError

# The HTTP server needs the optional extra; the rest runs on the standard library.
HTTP_EXTRA = "pip install 'job-queue-course[http]'"
TOKEN_ENV = "JOB_QUEUE_TOKEN"  # where serve looks for the bearer token when --token is not given


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``: also for an option given no help text (the
    standard formatter shows none there), and once only for one whose help names it."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=integer(0, 65535), default=8080, help="0 picks a free port")
    parser.add_argument("--path", default="jobs.db", help="SQLite file of the queue")
    parser.add_argument(
        "--memory", action="store_true", help="keep the queue in memory only, ignoring --path"
    )
    parser.add_argument(
        "--handler",
        default="final.demo:simulated_work",
        metavar="MODULE:FUNCTION",
        help="the handler, as an import path; the default simulates work and failures",
    )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,  # the help says what it is: never shown
        help=f"bearer token every request but /healthz must carry (default: ${TOKEN_ENV};"
        " none if unset)",
    )
    parser.add_argument(
        "--grace", type=seconds("grace"), default=10.0, help="seconds running jobs get at shutdown"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    _logging_and_queue_options(parser)


def _logging_and_queue_options(parser: argparse.ArgumentParser) -> None:
    """What ``serve`` and ``worker`` both take: ``--log-level`` and the queue's options."""
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"], help="what to log"
    )
    add_queue_options(
        parser.add_argument_group("queue options (see the JobQueue table in the README)")
    )


def _start_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _serve(args: argparse.Namespace) -> int:
    _start_logging(args)
    try:
        from final.serve import load_handler, serve
    except ImportError as exc:
        print(f"serve needs the http extra ({exc.name} is missing): {HTTP_EXTRA}", file=sys.stderr)
        return 2
    token = getattr(args, "token", None)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    try:
        handler = load_handler(args.handler)
        path = None if args.memory or args.dsn else args.path
        serve(
            handler,
            host=args.host,
            port=args.port,
            token=token,
            grace=args.grace,
            access_log=args.access_log,
            path=path,
            **queue_options(args),
        )
    except (ValueError, TypeError, StoreError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--handler",
        required=True,
        metavar="MODULE:FUNCTION",
        help="the handler, as an import path (required)",
    )
    _logging_and_queue_options(parser)


def _worker(args: argparse.Namespace) -> int:
    from final.arguments import load_handler
    from final.worker import run

    _start_logging(args)
    try:
        run(load_handler(args.handler), **queue_options(args))
    except (ValueError, TypeError, StoreError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from final.inspection import format_snapshot, read, read_pg

    try:
        if args.dsn:
            snapshot = read_pg(args.dsn, args.queue, limit=args.limit)
        else:
            snapshot = read(args.path, limit=args.limit)
    except StoreError as exc:
        print(f"inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(snapshot), indent=2))
    else:
        print(format_snapshot(snapshot, now=time.time()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``serve``, ``demo`` and ``inspect``, each option's default in
    its ``--help``."""
    shown = _DefaultsShown
    parser = argparse.ArgumentParser(
        prog="python -m final",
        description="The final tier's job queue, served, shown, inspected.",
        formatter_class=shown,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a queue over HTTP (needs the http extra)",
        description="Serve a JobQueue over HTTP until SIGINT or SIGTERM (a second one exits"
        " at once). Endpoints: POST /jobs, GET /jobs/{id}, DELETE /jobs/{id}, GET /dlq,"
        " POST /dlq/{id}/retry, GET /metrics, GET /healthz, GET /openapi.json.",
        formatter_class=shown,
    )
    _serve_arguments(serve)
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker",
        help="run the jobs of a queue in PostgreSQL until SIGTERM (needs --dsn)",
        description="Run workers on a queue in PostgreSQL (--dsn) until SIGTERM or SIGINT,"
        " then finish the attempts in flight and exit 0. Start as many as you like.",
        formatter_class=shown,
    )
    _worker_arguments(worker)
    worker.set_defaults(run=_worker)

    from final import demo as demo_module

    demo = commands.add_parser(
        "demo",
        help="watch the final tier run, fail, push back and recover",
        description=(demo_module.__doc__ or "").split("\n\n")[1].replace("\n", " "),
        formatter_class=shown,
    )
    demo_module.add_arguments(demo)
    demo.set_defaults(run=demo_module.run)

    inspect = commands.add_parser(
        "inspect",
        help="counts by status and the dead letters of a queue file, read-only",
        description="Read a queue's SQLite file without locking it: safe while a server runs.",
        formatter_class=shown,
    )
    inspect.add_argument("--path", type=Path, default=Path("jobs.db"), help="the queue's file")
    inspect.add_argument(
        "--dsn", default=None, help="a queue in PostgreSQL instead of a file (ignores --path)"
    )
    inspect.add_argument("--queue", default="default", help="the queue's name (with --dsn)")
    inspect.add_argument("--limit", type=integer(0), default=20, help="dead letters listed at most")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (``sys.argv[1:]`` by default); its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # within the try: a reader gone shows here at the latest
    except BrokenPipeError:
        # Whoever read our output has stopped (`| head`): there is no one left to tell.
        # Python flushes stdout once more at exit, and that flush would fail with a
        # traceback; on /dev/null it cannot. (The signal module's docs, "Note on SIGPIPE".)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
