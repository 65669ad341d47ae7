"""qjobctl: the command-line client of qjobd.

    qjobctl [--socket PATH] [--json] COMMAND [ARGS...]

Commands:
  submit FILE... --backend NAME  submit a batch; prints its id (--wait: waits, prints results)
  list [--state S] [--all]       batches, newest first
  show ID                        a batch and its jobs
  wait ID... [--timeout S]       block until the batches are terminal
  results ID [--format F]        counts of a terminal batch (json or csv)
  cancel ID...                   cancel batches
  health                         daemon version, uptime, counts, backends
  events [--since N] [--follow]  state changes as they are recorded

The socket is --socket, else $QJOBD_SOCKET, else the one in the daemon's config
($QJOBD_CONFIG or /etc/qjobd/qjobd.toml), else the daemon's built-in default.

--json (before or after the command) prints the daemon's JSON answers unchanged: one
indented document, or for commands taking several ids (wait, cancel) one compact
document per line; `submit --wait --json` prints {"batch": ..., "results": ...}.
Errors go to stderr as `qjobctl: error: ...`. With --json, a failure that leaves
nothing else to print also puts one JSON line on stdout: the daemon's error answer as
it is, {"error": {"code", "message", "details"}}, or one of that shape for what failed
on this side (code usage_error, invalid_input, config_error, daemon_unreachable,
daemon_timeout, interrupted, stream_closed); `cancel` adds the batch's "id" to it.

exit status:
  0    success (for wait and submit --wait: every batch ended `completed`)
  1    the daemon answered with an error, or a batch ended failed, canceled or
       timed_out (this wins over 124 when both apply; results of such a batch are
       still printed)
  2    usage error, bad local input (unreadable file, duplicate circuit label), or
       a config file named by $QJOBD_CONFIG (or /etc/qjobd/qjobd.toml) that is
       missing or invalid, so the socket is unknown
  3    qjobd is unreachable (no socket, connection refused, no answer)
  4    events --follow: qjobd closed the stream (it stopped or restarted); rerun with
       --since and the last seq shown to go on
  124  wait: --timeout passed before every batch was terminal
  130  interrupted (Ctrl-C); an interrupted wait leaves the batches running
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Protocol, TextIO

import httpx

from qjobd.daemon.client import plot
from qjobd.daemon.client.connection import (
    TERMINAL_STATES,
    ApiError,
    Client,
    ClientError,
    DaemonTimeout,
    DaemonUnreachable,
    SocketConfigError,
)

EXIT_OK = 0
EXIT_FAILED = 1  # the daemon said no, or a batch did not end completed
EXIT_USAGE = 2  # argparse's own code, reused for bad local input
EXIT_UNREACHABLE = 3
EXIT_STREAM_CLOSED = 4  # events --follow: the daemon ended the stream
EXIT_WAIT_TIMEOUT = 124  # what timeout(1) returns, so scripts can treat both alike
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# The --help epilog and the module docstring share one text.
EXIT_STATUS_HELP = __doc__[__doc__.index("exit status:"):]

#: long-poll length when nothing has to be redrawn in between
LONG_POLL = 60.0
#: long-poll length when a progress bar or other batches need refreshing
TICK = 1.0
#: a long-poll answered sooner than this without news is not repeated at once,
#: so a daemon that ignores ?timeout= is not hammered
MIN_ROUND = 0.05
#: how long `wait` keeps retrying while the daemon restarts under it
RECONNECT_GRACE = 60.0
RECONNECT_DELAY = 1.0


class UsageError(ClientError):
    """Bad local input: exit 2, nothing sent."""


class ArgumentsRejected(UsageError):
    """argparse refused the command line (raised instead of argparse's own exit)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    # Subparsers are built with the same class, so every parse error comes here.
    def error(self, message: str) -> NoReturn:
        raise ArgumentsRejected(self, message)


# -- argument parsing ------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The qjobctl argument parser."""
    # Repeated on every subcommand so `qjobctl list --json` works as well as
    # `qjobctl --json list`; SUPPRESS keeps an absent sub-option from resetting the
    # global one.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's JSON answer")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="qjobd's Unix socket")

    parser = _Parser(
        prog="qjobctl",
        description="Submit and follow batches of quantum circuits run by qjobd.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", metavar="PATH",
                        help="qjobd's Unix socket (default: $QJOBD_SOCKET, else the "
                             "daemon's config)")
    parser.add_argument("--json", action="store_true",
                        help="machine output: the daemon's JSON answers")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                              epilog=EXIT_STATUS_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("submit", "submit a batch of OpenQASM circuits")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a .qasm file (label: its stem), a .json {label: source} map, "
                        "or - for stdin (a JSON map if it starts with '{', else one "
                        "circuit labelled 'stdin')")
    p.add_argument("--backend", required=True, metavar="NAME")
    p.add_argument("--shots", type=_positive_int, metavar="N",
                   help="shots per circuit (default: the backend's)")
    p.add_argument("--name", metavar="S")
    p.add_argument("--tag", type=_key_value, action="append", default=[], metavar="K=V",
                   help="a tag (repeatable)")
    p.add_argument("--timeout", type=_positive_seconds, metavar="S",
                   help="give up on the batch's jobs after S seconds (daemon-side)")
    p.add_argument("--idempotency-key", metavar="K",
                   help="resubmitting with the same key and body returns the same batch")
    p.add_argument("--option", type=_key_value, action="append", default=[], metavar="K=V",
                   help="a backend option (repeatable); V is JSON if it parses, else text")
    p.add_argument("--wait", action="store_true",
                   help="wait until the batch is terminal, then print its results")

    p = add("list", "list batches, newest first")
    p.add_argument("--state", metavar="S")
    p.add_argument("--backend", metavar="B")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="page size")
    p.add_argument("--cursor", metavar="C", help="start at this page (from next_cursor)")
    p.add_argument("--all", action="store_true", help="follow next_cursor to the end")

    p = add("show", "show a batch and its jobs")
    p.add_argument("id", metavar="ID")

    p = add("wait", "wait until batches are terminal")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=_seconds, metavar="S",
                   help="give up after S seconds (exit 124)")

    p = add("results", "print the results of a terminal batch")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=["json", "csv"],
                   help="json: the API's answer; csv: label,bitstring,count rows")
    p.add_argument("--plot", nargs="?", const="-", metavar="FILE",
                   help="draw each circuit's histogram: in the terminal (--plot), or into "
                        "one image file (--plot FILE.png; needs the qjobd[plot] extra)")

    p = add("cancel", "cancel batches")
    p.add_argument("ids", nargs="+", metavar="ID")

    add("health", "show the daemon's health")

    p = add("events", "print state changes")
    p.add_argument("--since", type=int, metavar="SEQ", help="only events after SEQ")
    p.add_argument("--follow", action="store_true", help="keep printing new events")
    return parser


# -- entry point -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run qjobctl; returns the exit status."""
    try:
        return _run(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # `qjobctl list | head`: the reader left; don't let the interpreter's final
        # flush of stdout raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE


def _run(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentsRejected as exc:
        # What argparse prints itself, plus the JSON line when --json was asked for.
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        if _json_requested(argv):
            _print_json_error("usage_error", exc.message)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    as_json = bool(args.json)
    try:
        with Client(args.socket) as client:
            return COMMANDS[args.command](client, args)
    except UsageError as exc:
        _fail(as_json, str(exc), "invalid_input")
        return EXIT_USAGE
    except SocketConfigError as exc:
        _fail(as_json, str(exc), "config_error",
              {"file": str(exc.path), "variable": exc.variable, "reason": exc.reason})
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        _fail_unreachable(as_json, exc)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        _fail_api(as_json, exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _interrupted(as_json, "interrupted")
        return EXIT_INTERRUPTED


def _json_requested(argv: list[str]) -> bool:
    """Whether --json is on a command line argparse could not parse."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def _print_json_error(code: str, message: str, details: Any = None, **extra: Any) -> None:
    _print_json_line({**extra, "error": {"code": code, "message": message,
                                         "details": details}})


def _fail(as_json: bool, message: str, code: str, details: Any = None) -> None:
    """A failure found on this side: the message on stderr (and a JSON line on stdout)."""
    _error(message)
    if as_json:
        _print_json_error(code, message, details)


def _interrupted(as_json: bool, message: str, details: Any = None) -> None:
    """Ctrl-C: not an error of anyone's, but said, on a line of its own."""
    print(f"\nqjobctl: {message}", file=sys.stderr)  # \n: off the ^C the terminal echoed
    if as_json:
        _print_json_error("interrupted", message, details)


def _fail_unreachable(as_json: bool, exc: DaemonUnreachable) -> None:
    code = "daemon_timeout" if isinstance(exc, DaemonTimeout) else "daemon_unreachable"
    _fail(as_json, str(exc), code, {"socket": str(exc.socket_path), "reason": exc.reason})


def _fail_api(as_json: bool, exc: ApiError, origins: Mapping[str, str] | None = None,
              batch_id: str | None = None) -> None:
    """The daemon said no: its error on stderr (and its answer as is on stdout)."""
    text = _api_error_text(exc, origins)
    _error(f"{batch_id}: {text}" if batch_id is not None else text)
    if as_json:
        extra = {"id": batch_id} if batch_id is not None else {}
        _print_json_error(exc.code, exc.message, exc.details, **extra)


def _error(message: str) -> None:
    print(f"qjobctl: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"qjobctl: warning: {message}", file=sys.stderr)


def _api_error_text(exc: ApiError, origins: Mapping[str, str] | None = None) -> str:
    return exc.describe(origins)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _print_json_line(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")), flush=True)


def _utf8_stdout() -> bool:
    return (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") == "utf8"


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# -- submit ----------------------------------------------------------------------------


def load_circuits(files: Iterable[str], stdin: TextIO | None = None
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """Read circuit files: ``(circuits {label: source}, origins {label: file name})``.

    Raises UsageError for unreadable files, bad JSON maps and duplicate labels.
    """
    files = list(files)
    if files.count("-") > 1:
        raise UsageError("'-' (stdin) given more than once")
    circuits: dict[str, str] = {}
    origins: dict[str, str] = {}
    for name in files:
        if name == "-":
            text = (stdin or sys.stdin).read()
            origin = "<stdin>"
            if text.lstrip().startswith("{"):
                found = _json_circuit_map(text, origin)
            else:
                found = {"stdin": text}
        else:
            path = Path(name)
            origin = name
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"cannot read {name}: not UTF-8 text") from None
            except OSError as exc:
                raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
            if path.suffix.lower() == ".json":
                found = _json_circuit_map(text, origin)
            else:
                found = {path.stem: text}
        for label, source in found.items():
            if label in origins:
                raise UsageError(f"duplicate circuit label {label!r}: from {origins[label]} "
                                 f"and from {origin}; rename one (labels must be unique "
                                 "within a batch)")
            circuits[label] = source
            origins[label] = origin
    if not circuits:
        raise UsageError("no circuits to submit")
    return circuits, origins


def _json_circuit_map(text: str, origin: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{origin}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{origin}: expected a JSON object mapping labels to OpenQASM "
                         "source")
    for label, source in value.items():
        if not label:
            raise UsageError(f"{origin}: empty circuit label")
        if not isinstance(source, str):
            raise UsageError(f"{origin}: circuit {label!r}: the source must be a string, "
                             f"got {type(source).__name__}")
    return value


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _json_number(value: float) -> int | float:
    # 86400, not 86400.0: what a person would have typed in the body.
    return int(value) if value.is_integer() else value


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    circuits, origins = load_circuits(args.files)
    try:
        batch = client.submit(
            circuits,
            backend=args.backend,
            shots=args.shots,
            name=args.name,
            tags=dict(args.tag) or None,
            timeout=_json_number(args.timeout) if args.timeout is not None else None,
            options={k: _option_value(v) for k, v in args.option} or None,
            idempotency_key=args.idempotency_key,
        )
    except ApiError as exc:
        _fail_api(args.json, exc, origins)
        return EXIT_FAILED
    if not args.wait:
        if args.json:
            _print_json(batch)
        else:
            print(batch["id"])
        return EXIT_OK
    if not args.json:
        print(batch["id"], flush=True)
    outcome = wait_for_batches(client, [batch["id"]], timeout=None,
                               reporter=_reporter(args.json))
    if outcome.interrupted:
        return _report_interrupted(args.json, outcome)
    final = outcome.batches[batch["id"]]
    results = client.results(batch["id"])
    if args.json:
        _print_json({"batch": final, "results": results})
    else:
        _print_results_human(results)
    return EXIT_OK if final["state"] == "completed" else EXIT_FAILED


# -- list / show -----------------------------------------------------------------------


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _text(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code")
        if message:
            return f"{message} ({code})" if code else str(message)
    return _text(error)


def _job_progress(batch: Mapping[str, Any]) -> tuple[int, int] | None:
    jobs = batch.get("jobs")
    if not isinstance(jobs, list):
        return None
    done = sum(1 for job in jobs if job.get("state") in TERMINAL_STATES)
    return done, len(jobs)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    page = client.list(state=args.state, backend=args.backend, limit=args.limit,
                       cursor=args.cursor)
    batches = list(page.get("batches") or [])
    cursor = page.get("next_cursor")
    seen = {args.cursor}
    while args.all and cursor and cursor not in seen:
        seen.add(cursor)  # a daemon handing back a cursor twice would loop forever
        page = client.list(state=args.state, backend=args.backend, limit=args.limit,
                           cursor=cursor)
        batches += page.get("batches") or []
        cursor = page.get("next_cursor")
    if args.json:
        _print_json({"batches": batches, "next_cursor": cursor} if args.all else page)
        return EXIT_OK
    rows = [["ID", "STATE", "BACKEND", "JOBS", "NAME", "CREATED"]]
    for b in batches:
        progress = _job_progress(b)
        rows.append([
            _text(b.get("id")), _text(b.get("state")), _text(b.get("backend")),
            f"{progress[0]}/{progress[1]}" if progress else "-",
            _text(b.get("name")), _text(b.get("created_at")),
        ])
    print(_table(rows))
    if cursor and not args.all:
        print(f"(more batches: --all, or --cursor {cursor})", file=sys.stderr)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    batch = client.get(args.id)
    if args.json:
        _print_json(batch)
        return EXIT_OK
    tags = batch.get("tags") or {}
    fields = [
        ("ID", batch.get("id")),
        ("State", batch.get("state")),
        ("Backend", batch.get("backend")),
        ("Shots", batch.get("shots")),
        ("Name", batch.get("name")),
        ("Tags", ", ".join(f"{k}={v}" for k, v in tags.items()) if isinstance(tags, Mapping)
         else tags),
        ("Timeout", f"{batch['timeout']} s" if batch.get("timeout") is not None else None),
        ("Options", batch.get("options")),
        ("Owner", batch.get("owner")),
        ("Created", batch.get("created_at")),
        ("Updated", batch.get("updated_at")),
        ("Finished", batch.get("finished_at")),
        ("Error", _error_text(batch.get("error"))),
    ]
    if batch.get("cancel_requested") and batch.get("state") not in TERMINAL_STATES:
        fields.insert(2, ("Cancel", "requested"))
    for key, value in fields:
        print(f"{key + ':':<10} {_text(value)}")
    progress = _job_progress(batch)
    if progress is None:
        return EXIT_OK
    print(f"\nJobs ({progress[0]}/{progress[1]} done):")
    rows = [["JOB ID", "STATE", "REMOTE ID", "REMOTE STATUS", "LABELS", "ERROR"]]
    for job in batch["jobs"]:
        labels = job.get("labels")
        rows.append([
            _text(job.get("id")), _text(job.get("state")), _text(job.get("remote_id")),
            _text(job.get("remote_status")),
            ",".join(map(str, labels)) if isinstance(labels, list) and labels
            else _text(labels),
            _error_text(job.get("error")),
        ])
    print(_table(rows))
    return EXIT_OK


# -- wait ------------------------------------------------------------------------------


class Reporter(Protocol):
    """How `wait` shows its progress."""

    #: whether the reporter wants fresh batches every TICK (e.g. to redraw a bar)
    wants_ticks: bool

    def __enter__(self) -> Reporter: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def update(self, batch: Mapping[str, Any]) -> None: ...

    def finished(self, batch: Mapping[str, Any]) -> None: ...


class _SilentReporter:
    wants_ticks = False

    def __enter__(self) -> _SilentReporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def update(self, batch: Mapping[str, Any]) -> None:
        return None

    def finished(self, batch: Mapping[str, Any]) -> None:
        return None


class _LineReporter(_SilentReporter):
    """One `<id> <state>` line per batch as it ends: easy to read from a script."""

    def finished(self, batch: Mapping[str, Any]) -> None:
        print(f"{batch['id']} {batch['state']}", flush=True)


_STATE_STYLE = {"completed": "green", "failed": "red", "canceled": "yellow",
                "timed_out": "red"}


class _ProgressReporter:
    """A rich progress bar per batch: terminal jobs out of all jobs."""

    wants_ticks = True

    def __init__(self) -> None:
        from rich.console import Console  # imported here: only a terminal needs rich
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("jobs"),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stdout),
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _ProgressReporter:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, batch: Mapping[str, Any]) -> None:
        state = str(batch.get("state"))
        style = _STATE_STYLE.get(state)
        shown = f"[{style}]{state}[/]" if style else state
        done, total = _job_progress(batch) or (0, 0)
        task = self._tasks.get(batch["id"])
        if task is None:
            task = self._progress.add_task(str(batch["id"]), total=total or None,
                                           state=shown)
            self._tasks[batch["id"]] = task
        self._progress.update(task, completed=done, total=total or None, state=shown)

    def finished(self, batch: Mapping[str, Any]) -> None:
        task = self._tasks.get(batch["id"])
        if task is not None:
            self._progress.stop_task(task)


def _reporter(json_mode: bool) -> Reporter:
    if json_mode:
        return _SilentReporter()
    return _ProgressReporter() if _stdout_is_tty() else _LineReporter()


@dataclass
class WaitOutcome:
    #: the last answer seen for each batch, in the order asked for
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ids still not terminal when the timeout passed (or the wait was interrupted)
    unfinished: list[str] = field(default_factory=list)
    #: Ctrl-C stopped the wait (the batches go on in the daemon)
    interrupted: bool = False


def wait_for_batches(client: Client, ids: Iterable[str], timeout: float | None,
                     reporter: Reporter) -> WaitOutcome:
    """Long-poll the batches until all are terminal or ``timeout`` seconds pass.

    One long-poll at a time, on the oldest unfinished batch; the others are refreshed
    with a plain GET after each poll, so a batch that ends early is reported within
    about TICK seconds whichever order the ids came in. Ctrl-C (KeyboardInterrupt)
    ends the wait early: the outcome says ``interrupted``.
    """
    order = list(dict.fromkeys(ids))
    pending = list(order)
    outcome = WaitOutcome()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        _wait_loop(client, pending, outcome, deadline, reporter)
    except KeyboardInterrupt:
        outcome.interrupted = True
    outcome.unfinished = pending
    # Keep the caller's order, not the order of completion.
    outcome.batches = {i: outcome.batches[i] for i in order if i in outcome.batches}
    return outcome


def _wait_loop(client: Client, pending: list[str], outcome: WaitOutcome,
               deadline: float | None, reporter: Reporter) -> None:
    """wait_for_batches' rounds; removes each batch from ``pending`` as it ends."""
    clock = time.monotonic
    contact = False
    outage_since: float | None = None
    with reporter:
        while pending:
            head = pending[0]
            started = clock()
            remaining = None if deadline is None else max(0.0, deadline - started)
            tick = TICK if reporter.wants_ticks or len(pending) > 1 else LONG_POLL
            poll = tick if remaining is None else min(tick, remaining)
            try:
                fresh = {head: client.wait(head, poll)}
                for batch_id in pending[1:]:
                    fresh[batch_id] = client.get(batch_id)
            except DaemonUnreachable:
                # A restart of the daemon must not kill a long wait: it resumes every
                # job. A daemon that was never there is reported at once.
                now = clock()
                if not contact or (outage_since is not None
                                   and now - outage_since > RECONNECT_GRACE):
                    raise
                if outage_since is None:
                    outage_since = now
                    _warn("lost contact with qjobd; retrying for up to "
                          f"{RECONNECT_GRACE:g} s")
                if deadline is not None and now >= deadline:
                    break
                time.sleep(RECONNECT_DELAY)
                continue
            contact, outage_since = True, None
            outcome.batches.update(fresh)
            for batch_id, batch in fresh.items():
                reporter.update(batch)
                if batch.get("state") in TERMINAL_STATES:
                    pending.remove(batch_id)
                    reporter.finished(batch)
            if not pending or (deadline is not None and clock() >= deadline):
                break
            if head in pending and clock() - started < MIN_ROUND:
                time.sleep(MIN_ROUND)


def _report_interrupted(as_json: bool, outcome: WaitOutcome) -> int:
    """Ctrl-C during a wait: only the waiting stopped; say so, and how to wait again."""
    running = outcome.unfinished
    shown = ", ".join(
        f"{i} ({outcome.batches[i].get('state')})" if i in outcome.batches else i
        for i in running)
    if running:
        message = (f"wait interrupted; the batches keep running in qjobd: {shown}; "
                   f"`qjobctl wait {' '.join(running)}` waits again")
    else:
        message = "wait interrupted (every batch had already ended)"
    _interrupted(as_json, message, {"unfinished": running})
    return EXIT_INTERRUPTED


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    outcome = wait_for_batches(client, args.ids, args.timeout, _reporter(args.json))
    if outcome.interrupted:
        return _report_interrupted(args.json, outcome)
    if args.json:
        for batch in outcome.batches.values():
            _print_json_line(batch)
    failed = [b for b in outcome.batches.values()
              if b.get("state") in TERMINAL_STATES and b.get("state") != "completed"]
    if outcome.unfinished:
        states = ", ".join(
            f"{i} ({outcome.batches[i].get('state')})" if i in outcome.batches else i
            for i in outcome.unfinished
        )
        _error(f"timed out after {args.timeout:g} s; unfinished: {states}")
    if failed:
        return EXIT_FAILED
    return EXIT_WAIT_TIMEOUT if outcome.unfinished else EXIT_OK


# -- results ---------------------------------------------------------------------------


def _result_rows(answer: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    rows = []
    for label, result in (answer.get("results") or {}).items():
        for bitstring, count in ((result or {}).get("counts") or {}).items():
            rows.append((label, bitstring, count))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def _print_results_human(answer: Mapping[str, Any]) -> None:
    results = answer.get("results") or {}
    if not results:
        print("(no results)")
    for label in sorted(results):
        result = results[label] or {}
        about = [f"{result['shots']} shots"] if result.get("shots") is not None else []
        if result.get("job_id") is not None:
            about.append(f"job {result['job_id']}")
        print(f"{label}" + (f" ({', '.join(about)})" if about else "") + ":")
        counts = result.get("counts") or {}
        width = max((len(bits) for bits in counts), default=0)
        for bits, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {bits:<{width}}  {count}")


def cmd_results(client: Client, args: argparse.Namespace) -> int:
    try:
        answer = client.results(args.id)
    except ApiError as exc:
        if exc.status != 409:
            raise
        state = exc.details.get("state") if isinstance(exc.details, Mapping) else None
        _error(f"batch {args.id} is not finished yet"
               + (f" (state: {state})" if state else "")
               + f"; `qjobctl wait {args.id}` waits for it")
        if args.json:
            _print_json_error(exc.code, exc.message, exc.details)
        return EXIT_FAILED
    fmt = args.format or ("json" if args.json else None)
    if args.plot is not None and args.plot != "-":
        try:
            path = plot.write_figure(answer, args.plot)
        except (plot.PlotUnavailable, OSError, ValueError) as exc:
            _error(f"cannot write the figure {args.plot}: {exc}")
            if args.json:
                _print_json_error("plot_failed", str(exc), {"file": args.plot})
            return EXIT_USAGE
        print(f"wrote {path}", file=sys.stderr)
    if args.plot == "-" and fmt is None:
        print(plot.terminal_histograms(answer, unicode=_utf8_stdout()))
    elif fmt == "json":
        _print_json(answer)
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["label", "bitstring", "count"])
        writer.writerows(_result_rows(answer))
    else:
        _print_results_human(answer)
    state = answer.get("state")
    if state != "completed":
        _warn(f"batch {args.id} ended {state}; these results are partial")
        return EXIT_FAILED
    return EXIT_OK


# -- cancel / health / events ----------------------------------------------------------


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    status = EXIT_OK
    for batch_id in dict.fromkeys(args.ids):
        try:
            batch = client.cancel(batch_id)
        except ApiError as exc:
            _fail_api(args.json, exc, batch_id=batch_id)
            status = EXIT_FAILED
            continue
        if args.json:
            _print_json_line(batch)
        else:
            print(f"{batch.get('id', batch_id)} {batch.get('state')}", flush=True)
    return status


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"


def _counts_text(counts: Mapping[str, Any]) -> str:
    # The daemon lists every state, most of them 0: show only what is there.
    return ", ".join(f"{state} {n}" for state, n in counts.items() if n) or "none"


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    health = client.health()
    if args.json:
        _print_json(health)
        return EXIT_OK
    head = f"qjobd {health.get('version', '?')}"
    if health.get("status") is not None:
        head += f" ({health['status']})"
    uptime = health.get("uptime_seconds", health.get("uptime"))
    if isinstance(uptime, int | float):
        head += f", up {_duration(uptime)}"
    print(head)
    counts = health.get("counts")
    if not isinstance(counts, Mapping):
        counts = {k: health[k] for k in ("batches", "jobs") if isinstance(health.get(k), Mapping)}
    if counts and all(isinstance(v, Mapping) for v in counts.values()):
        for kind, by_state in counts.items():
            print(f"{kind}: {_counts_text(by_state)}")
    elif counts:
        print(f"batches: {_counts_text(counts)}")
    backends = health.get("backends")
    if isinstance(backends, list):
        backends = {str(b.get("name", i)): b for i, b in enumerate(backends)
                    if isinstance(b, Mapping)}
    if isinstance(backends, Mapping) and backends:
        print("backends:")
        rows = []
        for name, info in backends.items():
            if not isinstance(info, Mapping):
                rows.append([str(name), _text(info)])
                continue
            rows.append([str(name), " ".join(f"{k}={_text(v)}" for k, v in info.items()
                                             if k != "name" and v is not None)])
        print("\n".join(f"  {line}" for line in _table(rows).splitlines()))
    return EXIT_OK


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    last_seq = args.since
    try:
        for event in client.events(since=args.since, follow=args.follow):
            if isinstance(event.get("seq"), int):
                last_seq = event["seq"]
            _print_event(event, args.json)
    except DaemonUnreachable as exc:
        # Refused or absent before the stream began: unreachable (exit 3). A followed
        # stream whose connection broke afterwards ended because the daemon went away.
        if (not args.follow or isinstance(exc, DaemonTimeout)
                or isinstance(exc.__cause__, httpx.ConnectError)):
            raise
        how = f"the connection broke ({exc.reason})"
    else:
        if not args.follow:
            return EXIT_OK
        # The daemon ends a followed stream only when it stops (or restarts).
        how = "qjobd closed it (it stopped or is restarting)"
    again = "qjobctl events --follow" + (f" --since {last_seq}" if last_seq is not None
                                          else "")
    _fail(args.json, f"the event stream ended: {how}; `{again}` goes on "
                     "after the last event shown", "stream_closed",
          {"last_seq": last_seq})
    return EXIT_STREAM_CLOSED


def _print_event(event: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json_line(event)
        return
    if "state" not in event:
        print(_text(event), flush=True)
        return
    subject = str(event.get("batch_id", "-"))
    if event.get("job_id") is not None:
        subject += f"/{event['job_id']}"
    fields = [event.get("seq"), event.get("ts", event.get("time")), subject,
              event.get("kind"), event.get("state")]
    print(" ".join(_text(f) for f in fields if f is not None), flush=True)


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "list": cmd_list,
    "show": cmd_show,
    "wait": cmd_wait,
    "results": cmd_results,
    "cancel": cmd_cancel,
    "health": cmd_health,
    "events": cmd_events,
}


if __name__ == "__main__":
    sys.exit(main())
