"""`tuneyard serve`: runs the server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tuneyard import __version__
from tuneyard.common.addresses import is_loopback
from tuneyard.server.api.metrics import check_metrics_bind
from tuneyard.server.api.security import SecurityConfigError, TlsFiles, Token, check_bind, load_tokens
from tuneyard.server.execution.devices import DeviceProbeError
from tuneyard.server.logs import LOG_FORMATS, configure_logging
from tuneyard.server.study.domain import StoreError

if TYPE_CHECKING:
    from tuneyard.server.app import ServerHandle


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneyard serve", description="Run the tuneyard training server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default 50051)")
    p.add_argument("--data-dir", type=Path, default=Path("tuneyard-data"), help="SQLite store and checkpoints")
    p.add_argument("--data-root", default="", help="folder datasets are read from (default DATA_DIR/datasets)")
    p.add_argument("--plugins-dir", type=Path, default=None, help="load every *.py in this folder as a plugin module")
    _add_device_args(p)
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where trials' checkpoints live; with --executor ray, a path every node sees (default DATA_DIR/studies)",
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the read-only web dashboard on this port of --host (default off)",
    )
    p.add_argument(
        "--tensorboard-dir",
        type=Path,
        default=None,
        help="write each trial as a TensorBoard run under DIR/<study>/trial-<n> (default off)",
    )
    p.add_argument(
        "--max-active-studies",
        type=int,
        default=64,
        metavar="N",
        help="refuse new studies while N are unfinished (default 64; 0: no limit)",
    )
    p.add_argument("--max-trials-per-worker", type=int, default=0, help="recycle a worker after N trials (0: never)")
    p.add_argument(
        "--trial-heartbeat-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="kill a trial's worker when the trial shows no progress for this long (default 600; 0: never)",
    )
    _add_security_args(p)
    p.add_argument(
        "--check-store",
        action="store_true",
        help="run SQLite's integrity check on the store first and refuse to serve a damaged one (reads the whole file)",
    )
    _add_operations_args(p)
    return p


def _add_device_args(p: argparse.ArgumentParser) -> None:
    """Where trials run: this machine's devices (shared under MPS, or not), or a Ray cluster."""
    p.add_argument("--devices", default=None, help="cpu, all, or cuda:0,cuda:2 (default: all GPUs, else CPU)")
    p.add_argument("--cpu-slots", type=int, default=None, help="trials at once without CUDA (default cores/2)")
    p.add_argument(
        "--mps",
        action="store_true",
        help="run packed workers (gpus_per_trial < 1) under an NVIDIA MPS control daemon the server starts and stops",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local worker processes, or a Ray cluster (default local)",
    )
    p.add_argument("--ray-address", default="", help="Ray cluster to join, HOST:PORT (default: start one on 127.0.0.1)")


def _add_operations_args(p: argparse.ArgumentParser) -> None:
    """What an operator watches the server with: metrics, MLflow runs, the log's level and format."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, HOST being --host (plain HTTP; default off)",
    )
    p.add_argument(
        "--mlflow-tracking-uri",
        default="",
        metavar="URI",
        help="log each trial as an MLflow run there, one experiment per study (needs tuneyard[mlflow]; default off)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="json: one JSON object per log line (default text)"
    )


def _add_security_args(p: argparse.ArgumentParser) -> None:
    """TLS, mutual TLS, bearer tokens and the plaintext override: checked by `_security` before anything starts."""
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA: clients must present a certificate it signed (mTLS)")
    p.add_argument("--token-file", type=Path, help="bearer tokens, one per line ('TOKEN' or 'NAME TOKEN')")
    p.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address (not advised)")


def _security(args: argparse.Namespace) -> tuple[TlsFiles | None, list[Token]]:
    """TLS files and tokens from the flags; refuses unsafe or half-given settings."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    if tls is not None:
        tls.credentials()  # unreadable files fail here, with their path
    tokens = load_tokens(args.token_file) if args.token_file else []
    check_bind(args.host, tls, args.insecure)
    if args.metrics_port is not None:
        check_metrics_bind(args.host, args.insecure)
    return tls, tokens


def _banner(handle: ServerHandle, args: argparse.Namespace, tls: TlsFiles | None, tokens: list[Token]) -> None:
    """What serves where, on stdout (tests and scripts read the addresses from it)."""
    slots = ", ".join(d.name for d in handle.pool.devices)
    mode = ("mutual TLS" if args.tls_client_ca else "TLS") if tls else "plaintext"
    auth = f", {len(tokens)} tokens" if tokens else ""
    print(
        f"tuneyard {__version__} serving on {handle.address} ({mode}{auth}; slots: {slots}; data: {args.data_dir})",
        flush=True,
    )
    if handle.dashboard is not None:
        print(f"dashboard: {handle.dashboard.address}", flush=True)
    if handle.metrics is not None:
        print(f"metrics: {handle.metrics.address}", flush=True)


def serve_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        tls, tokens = _security(args)  # checked before anything heavy is imported or any socket bound
    except SecurityConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.insecure and tls is None and not is_loopback(args.host):
        print(
            f"WARNING: --insecure: serving PLAINTEXT on {args.host}; anyone on the network can read and forge "
            "every request" + ("" if tokens else ", and no token is required"),
            file=sys.stderr,
        )
    from tuneyard.server.app import start_server

    try:
        handle = start_server(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            devices=args.devices,
            cpu_slots=args.cpu_slots,
            data_root=args.data_root,
            plugins_dir=args.plugins_dir,
            max_trials_per_worker=args.max_trials_per_worker,
            trial_heartbeat_timeout=args.trial_heartbeat_timeout,
            tls=tls,
            tokens=tokens,
            insecure=args.insecure,
            executor=args.executor,
            ray_address=args.ray_address,
            checkpoint_dir=args.checkpoint_dir,
            max_active_studies=args.max_active_studies,
            tensorboard_dir=args.tensorboard_dir,
            dashboard_port=args.dashboard_port,
            check_store=args.check_store,
            metrics_port=args.metrics_port,
            mlflow_tracking_uri=args.mlflow_tracking_uri,
            mps=args.mps,
        )
    except (OSError, ValueError, StoreError, DeviceProbeError) as exc:  # one line, no traceback: it says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _banner(handle, args, tls, tokens)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    print("stopping...", flush=True)
    handle.stop()
    return 0
