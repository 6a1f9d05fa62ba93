"""`tuneyard serve`: runs the server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from pathlib import Path

from tuneyard import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneyard serve", description="Run the tuneyard training server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default 50051)")
    p.add_argument("--data-dir", type=Path, default=Path("tuneyard-data"), help="SQLite store and checkpoints")
    p.add_argument("--data-root", default="", help="folder datasets are read from (default DATA_DIR/datasets)")
    p.add_argument("--devices", default=None, help="cpu, all, or cuda:0,cuda:2 (default: all GPUs, else CPU)")
    p.add_argument("--cpu-slots", type=int, default=None, help="trials at once without CUDA (default cores/2)")
    p.add_argument("--max-trials-per-worker", type=int, default=0, help="recycle a worker after N trials (0: never)")
    p.add_argument(
        "--trial-heartbeat-timeout", type=float, default=600.0, metavar="SECONDS",
        help="kill a trial's worker when the trial shows no progress for this long (default 600; 0: never)",
    )  # fmt: skip
    p.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address")
    p.add_argument("--log-level", default="INFO")
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not _is_loopback(args.host) and not args.insecure:
        print(
            f"refusing to serve plaintext on {args.host}: bind 127.0.0.1, or pass --insecure "
            "to accept unencrypted, unauthenticated traffic from the network",
            file=sys.stderr,
        )
        return 2
    from tuneyard.server.app import start_server

    try:
        handle = start_server(
            data_dir=args.data_dir, host=args.host, port=args.port, devices=args.devices,
            cpu_slots=args.cpu_slots, data_root=args.data_root, max_trials_per_worker=args.max_trials_per_worker,
            trial_heartbeat_timeout=args.trial_heartbeat_timeout,
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    slots = ", ".join(d.name for d in handle.pool.devices)
    print(f"tuneyard {__version__} serving on {handle.address} (slots: {slots}; data: {args.data_dir})", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    print("stopping...", flush=True)
    handle.stop()
    return 0
