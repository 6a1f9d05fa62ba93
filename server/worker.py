"""The worker process: imports torch once, then runs trials sent over its pipe, one after another.

Messages from the server: ("train", key, task), ("evaluate", key, task), ("stop", key), ("shutdown",).
Messages to the server: ("ready", pid), ("epoch", key, epoch, metrics), ("done", key, result),
("error", key, traceback_text).
"""

from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Connection
from typing import Any


def worker_main(conn: Connection, slot: dict[str, Any]) -> None:
    """Entry point of a spawned worker; `slot` holds device, CUDA_VISIBLE_DEVICES and thread count."""
    os.environ["CUDA_VISIBLE_DEVICES"] = slot["cuda_visible"]
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # lets deterministic trials run on CUDA
    if slot.get("data_root"):
        os.environ["TUNEYARD_DATA_ROOT"] = slot["data_root"]  # where model plugins may read weight files
    import torch

    torch.set_num_threads(int(slot["threads"]))
    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.trainer import Trainer

    trainer = Trainer(PluginRegistry.load(), slot["device"], slot.get("data_root", ""))
    conn.send(("ready", os.getpid()))
    pending_stop: set[Any] = set()

    def drain() -> None:
        while conn.poll():
            msg = conn.recv()
            if msg[0] == "stop":
                pending_stop.add(msg[1])
            elif msg[0] == "shutdown":
                raise SystemExit(0)

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "shutdown":
            return
        if msg[0] == "stop":
            continue  # the trial already ended
        op, key, task = msg
        pending_stop.discard(key)

        def should_stop(key: Any = key) -> bool:
            drain()
            return key in pending_stop

        def report(epoch: int, metrics: dict[str, float], key: Any = key) -> None:
            conn.send(("epoch", key, epoch, metrics))

        try:
            if op == "train":
                result: Any = trainer.train(task, report, should_stop)
            else:
                result = trainer.evaluate(task)
            conn.send(("done", key, result))
        except SystemExit:
            raise
        except BaseException:  # noqa: BLE001 - the trial fails, the worker lives on
            conn.send(("error", key, traceback.format_exc(limit=20)))
