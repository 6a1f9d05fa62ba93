"""The ``tuneyard`` command: a thin shell over the SDK, plus ``serve`` and ``demo``.

Server-side code is imported lazily (only by ``serve`` and ``demo``) so that
the base install -- grpcio, protobuf, pyyaml, rich -- runs every other command.
Every client command takes --server, --tls-ca, --tls-cert, --tls-key and --token, each
falling back to an environment variable (TUNEYARD_SERVER, TUNEYARD_TLS_CA, ..., TUNEYARD_TOKEN).
Exit codes: 0 success, 1 the study failed or was cancelled, 2 usage, server or
connection errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from importlib.resources import as_file, files
from pathlib import Path

import grpc
from rich.console import Console

from tuneyard.client import export, lifecycle, render, report
from tuneyard.client.connection import InsecureTokenWarning
from tuneyard.client.errors import TuneyardError
from tuneyard.client.extras import SERVER_EXTRA, SERVER_MODULES, missing_server_modules
from tuneyard.client.plugin_table import plugins_table
from tuneyard.client.progress import PlainProgress, make_display
from tuneyard.client.sdk import Client, RunResult, default_address
from tuneyard.client.specfile import load_spec
from tuneyard.v1 import service_pb2, spec_pb2

# Options every client command takes, before or after its name: (flag, environment variable, metavar, help).
CONNECTION_OPTIONS = (
    ("--server", "TUNEYARD_SERVER", "HOST:PORT", "server address (default: $TUNEYARD_SERVER, else 127.0.0.1:50051)"),
    ("--tls-ca", "TUNEYARD_TLS_CA", "PEM", "use TLS; trust the server's certificate if this CA signed it"),
    ("--tls-cert", "TUNEYARD_TLS_CERT", "PEM", "client certificate for mutual TLS (with --tls-key)"),
    ("--tls-key", "TUNEYARD_TLS_KEY", "PEM", "private key of --tls-cert"),
    ("--token", "TUNEYARD_TOKEN", "TOKEN", "bearer token; prefer the variable, arguments show in `ps`"),
)


def _add_connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    for flag, env, metavar, help_text in CONNECTION_OPTIONS:
        if flag != "--server":  # its help already names the variable and the fallback
            help_text = f"{help_text} (default: ${env})"  # never the value: it may be a secret
        parser.add_argument(flag, metavar=metavar, default=default, help=help_text)
    parser.add_argument(
        "--tls",
        action="store_true",
        default=False if default is None else default,
        help="use TLS trusting the system's CAs (implied by --tls-ca and --tls-cert)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (without ``serve``'s own options: those belong to the server)."""
    server = argparse.ArgumentParser(add_help=False)
    _add_connection_options(server, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="tuneyard",
        description="Submit and follow training searches on a tuneyard server.",
    )
    _add_connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[server])

    sub.add_parser("serve", help="run the training server (see `tuneyard serve --help`)", add_help=False)
    p = add("run", "submit a study spec (YAML/JSON), follow it live, print the best configuration")
    p.add_argument("spec", metavar="SPEC", help="study spec file, .yaml or .json")
    p.add_argument("--request-id", metavar="ID", help="idempotency key: resubmitting returns the same study")
    p.add_argument("--no-progress", action="store_true", help="one plain line per finished trial")
    p.add_argument("--local", action="store_true", help="on an in-process server for one user (needs [server])")
    p.add_argument("--plugins-dir", type=Path, help="with --local: load every *.py in this folder as a plugin")
    p.add_argument("--data-dir", type=Path, help="with --local: where the server stores data (default: a temp dir)")
    p.add_argument("--cpu-slots", type=int, metavar="N", help="with --local: trials run at once on CPU")
    p = add("watch", "stream a study's events, then print its result")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("--after", metavar="N", type=int, default=0, help="only events after sequence N")
    p = add("studies", "list studies")
    p.add_argument(
        "--state",
        metavar="STATE",
        help="only studies in this state: pending, running, completed, failed, cancelled",
    )
    p = add("trials", "list a study's trials (or write them as CSV / JSON)")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("--format", choices=export.FORMATS, default="table", help="table (default), csv or json, to stdout")
    p = add("trial", "show one trial in full: config, metrics and, when it failed, why (traceback, stderr)")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("trial_id", metavar="TRIAL_ID", type=int)
    add("best", "print a study's best configuration and metrics").add_argument("study_id", metavar="ID")
    add("cancel", "cancel a study (finished trials are kept)").add_argument("study_id", metavar="ID")
    add("plugins", "list the server's plugins").add_argument(
        "kind", nargs="?", default="", help="optimizer, lr_scheduler, augmentation, model, dataset, ..."
    )
    add("info", "server version, executor and devices")
    p = add("report", "write a study's self-contained HTML report: trial table and plots (works offline)")
    p.add_argument("study_id", metavar="ID")
    p.add_argument("--out", metavar="FILE", type=Path, default=Path("report.html"), help="default: report.html")
    p.add_argument("--png", metavar="DIR", type=Path, help="also write each plot as DIR/<plot>.png (needs matplotlib)")
    lifecycle.add_commands(add)
    p = sub.add_parser("demo", help="run the digits example on an in-process server (needs [server])")
    p.add_argument("--data-dir", type=Path, help="where the demo server stores data (default: a temp dir)")
    p.add_argument("--cpu-slots", type=int, metavar="N", help="trials run at once on CPU (server default)")
    return parser


def _serve_args(argv: Sequence[str]) -> list[str] | None:
    """Arguments after ``serve`` when it is the command, else None: all of them are the server's."""
    takes_value = {flag for flag, *_ in CONNECTION_OPTIONS}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in takes_value:
            i += 2
        elif arg == "--tls" or arg.split("=", 1)[0] in takes_value:
            i += 1
        else:
            return list(argv[i + 1 :]) if arg == "serve" else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuneyard`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_argv = _serve_args(argv)
    if serve_argv is not None:
        return _serve(serve_argv)
    args = build_parser().parse_args(argv)
    address = args.server or default_address()
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=200)  # piped: don't squeeze tables into 80 columns
    try:
        if args.command == "demo" or (args.command == "run" and args.local):
            return _run_local(args, out)
        if args.command == "run" and (args.plugins_dir or args.data_dir or args.cpu_slots):
            print("error: --plugins-dir, --data-dir and --cpu-slots go with --local", file=sys.stderr)
            return 2
        with _connect(address, args) as client:
            return COMMANDS[args.command](client, args, out)
    except KeyboardInterrupt:
        return 130
    except TuneyardError as exc:
        print(f"error: {_explain(exc, address, args)}", file=sys.stderr)
        return 2


def _option(args: argparse.Namespace, flag: str) -> str | None:
    """A connection option's value: the flag, else its environment variable, else None."""
    env = next(env for name, env, *_ in CONNECTION_OPTIONS if name == flag)
    value = getattr(args, flag[2:].replace("-", "_"), None)
    return value if value is not None else os.environ.get(env) or None


def _connect(address: str, args: argparse.Namespace) -> Client:
    """A client with the command line's TLS and token settings; SDK warnings become ``warning:`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InsecureTokenWarning)
        client = Client(
            address,
            tls=args.tls,
            tls_ca=_option(args, "--tls-ca"),
            tls_cert=_option(args, "--tls-cert"),
            tls_key=_option(args, "--tls-key"),
            token=_option(args, "--token") or "",
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return client


def _explain(exc: TuneyardError, address: str, args: argparse.Namespace) -> str:
    """The error line for ``exc``, with what to do about it when the cause is a common one."""
    if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        if not _option(args, "--token"):
            return f"{exc}; pass --token or set TUNEYARD_TOKEN"
        return f"{exc}; the server refused the token from --token / TUNEYARD_TOKEN"
    if exc.code != grpc.StatusCode.UNAVAILABLE or args.command == "demo":
        return str(exc)
    tls = bool(args.tls or _option(args, "--tls-ca") or _option(args, "--tls-cert"))
    details = exc.details.lower()
    if tls and "wrong_version_number" in details:
        return f"TLS handshake with {address} failed: the server does not speak TLS ({exc.details}); drop --tls-ca"
    if tls and "handshake" in details:
        return (
            f"TLS handshake with {address} failed ({exc.details}); check --tls-ca (the CA that signed the "
            "server's certificate) and that the address is a name in that certificate"
        )
    closed = "socket closed" in details or "connection reset" in details
    if tls and closed:
        need = "want a client certificate (--tls-cert/--tls-key)"
        if _option(args, "--tls-cert"):
            need = "trust the CA that signed --tls-cert"
        return f"TLS handshake with {address} failed: the server closed the connection ({exc.details}); does it {need}?"
    hint = "; if it serves TLS, pass --tls-ca" if closed else ""
    return (
        f"cannot reach a tuneyard server at {address} ({exc.details}); "
        f"is `tuneyard serve` running there? (set --server or TUNEYARD_SERVER{hint})"
    )


def _serve(argv: list[str]) -> int:
    missing = missing_server_modules()
    if missing:
        print(f"{SERVER_EXTRA}\n(not installed: {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        from tuneyard.server.cli import serve_main
    except ImportError as exc:
        print(f"{SERVER_EXTRA}\n({exc})", file=sys.stderr)
        return 2
    try:
        return int(serve_main(argv) or 0)
    except ModuleNotFoundError as exc:  # a server dependency that imports but lacks a part
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(f"{SERVER_EXTRA}\n({exc})", file=sys.stderr)
        return 2


def _follow(
    client: Client, study: service_pb2.Study, spec: spec_pb2.StudySpec, out: Console, *, live: bool
) -> tuple[int, RunResult | None]:
    """Follow a created study to its end with progress, print its result; (exit code, result)."""
    name = spec.name or "unnamed"
    out.print(f"study {study.study_id} ({name}) submitted to {client.address}", markup=False)
    if warning := export.slots_warning(client.info(), study.spec):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        with make_display(spec, out, live=live, state=study.state) as display:
            for event in client.watch(study.study_id):
                display(event)
    except KeyboardInterrupt:
        print(
            f"interrupted: study {study.study_id} keeps running on the server; "
            f"`tuneyard watch {study.study_id}` follows it, `tuneyard cancel {study.study_id}` stops it",
            file=sys.stderr,
        )
        return 130, None
    result = client.result(study.study_id, spec)
    return _report(result), result


def _report(result: RunResult) -> int:
    print(render.result_yaml(result), end="", flush=True)
    study = result.study
    if study.state == service_pb2.STUDY_COMPLETED:
        return 0
    reason = f": {study.error}" if study.error else ""
    print(f"error: study {study.study_id} {render.study_state(study.state)}{reason}", file=sys.stderr)
    return 1


def _run(client: Client, args: argparse.Namespace, out: Console) -> int:
    spec = load_spec(args.spec)
    study = client.create_study(spec, request_id=args.request_id)
    return _follow(client, study, spec, out, live=not args.no_progress)[0]


def _watch(client: Client, args: argparse.Namespace, out: Console) -> int:
    study = client.get_study(args.study_id)
    display = PlainProgress(study.spec, out, every_event=True)
    try:
        result = client.wait(args.study_id, after_sequence=args.after, on_event=display)
    except KeyboardInterrupt:
        return 130
    return _report(result)


def _studies(client: Client, args: argparse.Namespace, out: Console) -> int:
    out.print(render.studies_table(client.list_studies(state=args.state)))
    return 0


def _trials(client: Client, args: argparse.Namespace, out: Console) -> int:
    if args.format == "table":
        spec = client.get_study(args.study_id).spec
        out.print(render.trials_table(client.list_trials(args.study_id), spec))
    elif args.format == "csv":
        study = client.study(args.study_id)
        sys.stdout.write(export.trials_csv(client.trials(args.study_id), study.objectives))
    else:
        sys.stdout.write(export.trials_json(client.trials(args.study_id)))
    return 0


def _trial(client: Client, args: argparse.Namespace, out: Console) -> int:
    spec = client.get_study(args.study_id).spec
    out.print(render.trial_detail(client.get_trial(args.study_id, args.trial_id), spec))
    return 0


def _best(client: Client, args: argparse.Namespace, out: Console) -> int:
    result = client.result(args.study_id)
    print(render.result_yaml(result), end="")
    return 0 if result.study.HasField("best_trial") else 1


def _cancel(client: Client, args: argparse.Namespace, out: Console) -> int:
    study = client.cancel_study(args.study_id)
    out.print(f"study {study.study_id}: {render.study_state(study.state)}", markup=False)
    return 0


def _plugins(client: Client, args: argparse.Namespace, out: Console) -> int:
    response = client.plugins(args.kind)
    out.print(plugins_table(response))
    if response.load_errors:
        out.print("\nload errors:", style="bold red")
        for error in response.load_errors:
            out.print(f"  {error.source}: {error.message}", markup=False)
    return 0


def _info(client: Client, args: argparse.Namespace, out: Console) -> int:
    info = client.info()
    out.print(f"server:   {client.address}", markup=False)
    out.print(f"version:  {info.version}\nexecutor: {info.executor}", markup=False)
    out.print(render.devices_table(info))
    return 0


def _write_report(client: Client, args: argparse.Namespace, out: Console) -> int:
    try:
        written = report.write_report(client, args.study_id, args.out, args.png)
    except report.MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        out.print(f"wrote {path}", markup=False)
    return 0


def _run_local(args: argparse.Namespace, out: Console) -> int:
    """`demo` and `run --local`: the study on a server in this process, on loopback, gone when it ends."""
    try:
        from tuneyard.server.app import start_server
    except ImportError as exc:
        print(f"{SERVER_EXTRA}\n({exc})", file=sys.stderr)
        return 2
    if args.command == "demo":
        with as_file(files("tuneyard.examples") / "digits.yaml") as path:
            spec = load_spec(path)
    else:
        spec = load_spec(args.spec)
    plugins_dir = getattr(args, "plugins_dir", None)
    with tempfile.TemporaryDirectory(prefix=f"tuneyard-{args.command}-", ignore_cleanup_errors=True) as tmp:
        data_dir = args.data_dir or Path(tmp)
        try:
            handle = start_server(
                data_dir=data_dir, host="127.0.0.1", port=0, cpu_slots=args.cpu_slots, plugins_dir=plugins_dir
            )
        except (OSError, ValueError) as exc:  # a folder that is not there, a store that is not ours
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            out.print(f"tuneyard {args.command}: server at {handle.address}, data in {data_dir}", markup=False)
            with Client(handle.address, token="") as client:  # the in-process server wants none
                study = client.create_study(spec, request_id=getattr(args, "request_id", None))
                live = not getattr(args, "no_progress", False)
                code, result = _follow(client, study, spec, out, live=live)
        finally:
            handle.stop()
    if args.command == "demo" and result is not None and "test_accuracy" in result.test_metrics:
        out.print(f"test accuracy of the best configuration: {result.test_metrics['test_accuracy']:.4f}")
    return code


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Console], int]] = {
    "run": _run,
    "watch": _watch,
    "studies": _studies,
    "trials": _trials,
    "trial": _trial,
    "best": _best,
    "cancel": _cancel,
    "plugins": _plugins,
    "info": _info,
    "report": _write_report,
    **lifecycle.COMMANDS,
}


if __name__ == "__main__":
    sys.exit(main())
