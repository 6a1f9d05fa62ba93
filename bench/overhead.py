"""Per-trial overhead: tuneyard's server against Ray Tune and Optuna, in one run, on this machine.

    .venv/bin/python bench/overhead.py            # 100 trials per workload, plus the bookkeeping shape
    .venv/bin/python bench/overhead.py --quick    # 30 trials per workload (Ray Tune default: 10), a
                                                  # 20-trial bookkeeping shape for tuneyard only

Every system runs the same trials, 2 at a time (2 slots, one torch thread each), one after another
(never two systems at once):

- ``trivial``: a trial whose own work is next to nothing. tuneyard: 1 epoch of a 16-sample 4x4
  ``synthetic`` dataset on a one-filter ``simple_cnn`` (it cannot run less than an epoch); Ray Tune
  and Optuna: a function that computes and reports one number.
- ``trivial_trainable`` (tuneyard only): the trivial trial as a trainable (``bench_trivial`` from
  ``bench/trainables/``, loaded with ``plugins_dir``): it computes the peers' one number and reports
  it once, timing that as its ``epoch_seconds``. It runs in the same server, after the same warm-up,
  right after ``trivial``, so the table shows the built-in trainer's trivial overhead and the
  trainable path's side by side. The peers' trivial trials are function trainables too: this row,
  not tuneyard's ``trivial``, is the like-for-like comparison with them.
- ``tiny_torch``: 1 epoch over 512 synthetic 8x8 images (batch 64) of a 2-layer, 16-filter CNN,
  then its validation pass: about 50 ms. The peers run a hand-written copy of tuneyard's trial (the
  same data generator, split sizes, normalisation, model, optimizer, batch size, evaluation).
- ``bookkeeping`` (Ray Tune's published bookkeeping benchmark shape, scaled down: many 1-second
  trials): tuneyard trains ~1 s epochs (a 14,628-sample synthetic set); Ray Tune sleeps 1 s, as its
  own release test does, with actor reuse, as that test does.

Systems: ``tuneyard`` (an in-process ``start_server(devices="cpu", cpu_slots=2)``, timed from
CreateStudy to the study's terminal event over gRPC; one warm-up study first, as the peers' worker
processes are also started before their clocks start); ``ray_tune`` (``tune.Tuner`` with its
defaults: one actor process per trial), ``ray_tune_reuse`` (``reuse_actors=True``), both timed
around ``Tuner.fit()`` after ``ray.init``; ``optuna`` (the two-worker journal recipe: 2 processes
sharing a ``JournalFileBackend`` file, each running ``study.optimize``; the clock starts when both
have imported everything and ends when both exit); ``optuna_inproc`` (reference only: one process,
``n_jobs=2`` threads, in-memory storage, no process isolation). Searchers: random everywhere
(tuneyard's ``random``, Ray's default BasicVariantGenerator, Optuna's RandomSampler) over one
parameter, the learning rate.

Figures, per system and workload:
- wall: the study's wall time.
- overhead per trial = (wall x slots - sum of the trials' own work) / trials: the slot-seconds the
  system made available, minus the slot-seconds spent on the trials' own work, per trial. Own work
  is tuneyard's ``epoch_seconds`` metric (measured inside the worker around the epoch and its
  validation pass); for the peers the same span, timed with perf_counter inside the trial.
- trials/s = trials / wall.
- slot utilisation = sum of the trials' busy time / (wall x slots). Busy time: for tuneyard a
  trial's server-side start to end timestamps (ListTrials); for the peers the trial function's own
  wall time, measured inside it. ``work util`` is the stricter sum of own work / (wall x slots).

The peers are installed into ``bench/.venv-peers`` (its own venv; see bench/README.md, "Overhead")
on the first run; when that fails the script prints how to install them and runs tuneyard alone,
judging the targets against issue 5's reference figures. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from time import perf_counter
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS_VENV = BENCH_DIR / ".venv-peers"
PEERS_REQUIREMENTS = BENCH_DIR / "peers_requirements.txt"
PTH_NAME = "_tuneyard_main_venv.pth"
SLOTS = 2
LR_RANGE = (1e-3, 1e-1)
SEED = 0

# One entry per workload: the synthetic dataset's options, the simple_cnn's and the batch size.
WORKLOADS: dict[str, dict[str, int]] = {
    "trivial": {
        "num_samples": 16,
        "num_classes": 4,
        "size": 4,
        "num_conv_layers": 1,
        "num_filters": 1,
        "batch_size": 16,
    },
    # 732 samples split 15%/15% leave exactly 512 training images
    "tiny_torch": {
        "num_samples": 732,
        "num_classes": 4,
        "size": 8,
        "num_conv_layers": 2,
        "num_filters": 16,
        "batch_size": 64,
    },
    # 10,240 training images: one epoch of the tiny_torch model takes about a second
    "bookkeeping": {
        "num_samples": 14628,
        "num_classes": 4,
        "size": 8,
        "num_conv_layers": 2,
        "num_filters": 16,
        "batch_size": 64,
    },
}
MAIN_WORKLOADS = ("trivial", "tiny_torch")  # every system runs these
# tuneyard's trainable workloads (name -> the trainable in bench/trainables), each compared with the
# peers' workload of the same work (their trivial trials are function trainables: like for like).
TRAINABLE_WORKLOADS = {"trivial_trainable": "bench_trivial"}
PEER_WORKLOAD = {"trivial": "trivial", "trivial_trainable": "trivial", "tiny_torch": "tiny_torch"}
TABLE_WORKLOADS = ("trivial", "trivial_trainable", "tiny_torch")  # tuneyard runs them in this order
TRAINABLES_DIR = BENCH_DIR / "trainables"
SYSTEMS = ("tuneyard", "ray_tune", "ray_tune_reuse", "optuna", "optuna_inproc")
LABELS = {
    "tuneyard": "tuneyard",
    "ray_tune": "Ray Tune (default)",
    "ray_tune_reuse": "Ray Tune reuse_actors",
    "optuna": "Optuna journal, 2 procs",
    "optuna_inproc": "Optuna 1 proc (ref.)",
}
# Issue 5's figures, measured on this machine with Ray 2.60: used when the peers cannot run here.
REFERENCE = {
    "ray_tune_overhead_s": {"trivial": 2.0, "tiny_torch": 1.55},
    "ray_tune_reuse_trials_per_s": {"tiny_torch": 20.0},
    "optuna_trials_per_s": {"tiny_torch": 28.0},
}
TARGETS = {
    "overhead_max_fraction_of_ray_tune_default": 0.2,
    "tiny_torch_utilisation_min": 0.95,
    "bookkeeping_over_minimum_max": 0.03,
}


def log(message: str) -> None:
    print(f"[overhead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The peers' copy of tuneyard's trial (torch only; runs in the peers' venv)
# ---------------------------------------------------------------------------------------------

_DATA: dict[tuple[int, ...], Any] = {}


def _synthetic(num_samples: int, num_classes: int, size: int, seed: int = SEED, noise: float = 0.3) -> Any:
    """tuneyard's ``synthetic`` dataset, rewritten: the same generator calls, split sizes and statistics.

    Cached per process, as tuneyard's workers cache datasets. Returns train/val tensors and the
    training split's per-channel mean and std.
    """
    key = (num_samples, num_classes, size, seed)
    if key not in _DATA:
        import torch

        generator = torch.Generator().manual_seed(seed)
        coarse = max(2, (size + 1) // 2)
        patterns = torch.rand(num_classes, 1, coarse, coarse, generator=generator)
        patterns = torch.nn.functional.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)
        labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=generator)]
        images = patterns[labels] + noise * torch.randn(num_samples, 1, size, size, generator=generator)
        images = images.clamp_(0.0, 1.0).contiguous()
        held_out = max(1, round(num_samples * 0.15))
        order = torch.randperm(num_samples, generator=generator)
        val, train = order[:held_out].sort().values, order[2 * held_out :].sort().values
        x_train = images[train]
        mean = x_train.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = x_train.std(dim=(0, 2, 3), unbiased=False).view(1, -1, 1, 1)
        _DATA[key] = (x_train, labels[train], images[val], labels[val], mean, std)
    return _DATA[key]


def _simple_cnn(num_conv_layers: int, num_filters: int, size: int, num_classes: int) -> Any:
    """tuneyard's ``simple_cnn`` (conv, batch norm, ReLU, 2x2 max-pool per layer, linear head), by hand."""
    from torch import nn

    layers: list[Any] = []
    channels, side = 1, size
    for _ in range(num_conv_layers):
        layers.append(nn.Conv2d(channels, num_filters, 3, padding="same"))
        if side * side > 1:
            layers.append(nn.BatchNorm2d(num_filters))
        layers.append(nn.ReLU())
        channels = num_filters
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side //= 2
    head = min(side, 4)
    if head != side:
        layers.append(nn.AdaptiveAvgPool2d((head, head)))
    layers += [nn.Flatten(), nn.Dropout(0.0), nn.Linear(channels * head * head, num_classes)]
    return nn.Sequential(*layers)


def mirror_trial(workload: dict[str, int], lr: float, seed: int = SEED) -> dict[str, float]:
    """One tuneyard trial of ``workload`` (1 epoch, then validation), written as a plain torch loop.

    ``work_s`` spans what tuneyard's ``epoch_seconds`` spans: the training epoch, the validation
    pass and the one-sample latency probe.
    """
    import random

    import torch
    from torch import nn

    torch.set_num_threads(1)  # tuneyard's CPU slots run one torch thread each
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False, warn_only=True)
    x_train, y_train, x_val, y_val, mean, std = _synthetic(
        workload["num_samples"], workload["num_classes"], workload["size"], seed
    )
    model = _simple_cnn(workload["num_conv_layers"], workload["num_filters"], workload["size"], workload["num_classes"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.0)
    generator = torch.Generator().manual_seed(seed)
    batch_size = workload["batch_size"]
    started = perf_counter()
    params = float(sum(p.numel() for p in model.parameters()))
    model.train()
    seen, correct, total_loss = 0, 0, 0.0
    order = torch.randperm(len(x_train), generator=generator)
    for start in range(0, len(x_train), batch_size):
        idx = order[start : start + batch_size]
        x, y = (x_train[idx] - mean) / std, y_train[idx]
        logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    model.eval()
    val_correct, val_loss = 0, 0.0
    with torch.no_grad():
        sum_loss = nn.CrossEntropyLoss(reduction="sum")
        for start in range(0, len(x_val), 512):
            x, y = (x_val[start : start + 512] - mean) / std, y_val[start : start + 512]
            logits = model(x)
            val_loss += sum_loss(logits.float(), y).item()
            val_correct += (logits.argmax(1) == y).sum().item()
        for _ in range(6):  # tuneyard's inference_latency_ms probe
            model(x[:1])
    work = perf_counter() - started
    return {
        "val_accuracy": val_correct / len(y_val),
        "val_loss": val_loss / len(y_val),
        "train_loss": total_loss / max(seen, 1),
        "params": params,
        "work_s": work,
    }


def warm_up() -> None:
    """One untimed trivial-size trial: imports torch and its lazily loaded parts (optimizer, conv, batch
    norm) before a clock starts, as tuneyard's warm-up study does for its workers."""
    mirror_trial(WORKLOADS["trivial"], 1e-2)


def trivial_value(lr: float) -> float:
    """The trivial trial's whole work: one number."""
    return (math.log10(lr) + 2.0) ** 2


# ---------------------------------------------------------------------------------------------
# Ray Tune (runs in the peers' venv)
# ---------------------------------------------------------------------------------------------


def ray_trivial(config: dict[str, Any]) -> None:
    from ray import tune

    entered = perf_counter()
    value = trivial_value(config["lr"])
    work = perf_counter() - entered
    tune.report({"score": value, "work_s": work, "busy_s": perf_counter() - entered})


def ray_tiny_torch(config: dict[str, Any]) -> None:
    from ray import tune

    entered = perf_counter()
    result = mirror_trial(WORKLOADS["tiny_torch"], config["lr"])
    tune.report({"score": result["val_accuracy"], "work_s": result["work_s"], "busy_s": perf_counter() - entered})


def ray_bookkeeping(config: dict[str, Any]) -> None:
    """Ray's own bookkeeping benchmark trial: report, then 1 s of sleep (ray.tune.utils.release_test_util)."""
    from ray import tune

    entered = perf_counter()
    time.sleep(1.0)
    work = perf_counter() - entered
    tune.report({"score": config["lr"], "work_s": work, "busy_s": perf_counter() - entered})


def _ray_fit(tune: Any, trainable: Any, trials: int, reuse: bool, storage: Path, name: str) -> dict[str, Any]:
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.loguniform(*LR_RANGE)},
        tune_config=tune.TuneConfig(
            num_samples=trials, max_concurrent_trials=SLOTS, reuse_actors=reuse, metric="score", mode="max"
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    started = perf_counter()
    grid = tuner.fit()
    wall = perf_counter() - started
    done = [grid[i].metrics for i in range(len(grid)) if grid[i].error is None and grid[i].metrics]
    return {
        "wall_s": wall,
        "trials": trials,
        "completed": len(done),
        "work_s": sum(m["work_s"] for m in done),
        "busy_s": sum(m["busy_s"] for m in done),
    }


def peer_ray(trials: int, default_trials: int, bookkeeping_trials: int) -> dict[str, dict[str, Any]]:
    import ray
    from ray import tune

    tmp = Path(tempfile.mkdtemp(prefix="rayovh-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    try:
        # address="local": always a fresh single-node instance, never someone else's running cluster.
        ray.init(
            address="local",
            num_cpus=SLOTS,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(tmp / "r"),
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        out: dict[str, dict[str, Any]] = {"ray_tune": {}, "ray_tune_reuse": {}}
        trainables = {"trivial": ray_trivial, "tiny_torch": ray_tiny_torch}
        for system, reuse, count in (("ray_tune_reuse", True, trials), ("ray_tune", False, default_trials)):
            for workload in MAIN_WORKLOADS:
                log(f"{system}: {count} {workload} trials")
                out[system][workload] = _ray_fit(
                    tune, trainables[workload], count, reuse, tmp / "results", f"{system}-{workload}"
                )
                log(f"{system}: {workload}: {out[system][workload]['wall_s']:.1f} s")
        if bookkeeping_trials:
            log(f"ray_tune_reuse: bookkeeping, {bookkeeping_trials} trials of 1 s")
            out["ray_tune_reuse"]["bookkeeping"] = _ray_fit(
                tune, ray_bookkeeping, bookkeeping_trials, True, tmp / "results", "ray_tune_reuse-bookkeeping"
            )
        ray.shutdown()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Optuna (runs in the peers' venv)
# ---------------------------------------------------------------------------------------------


def _optuna_objective(workload: str, record: list[tuple[float, float]]) -> Any:
    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        entered = perf_counter()
        if workload == "trivial":
            value = trivial_value(lr)
            work = perf_counter() - entered
        else:
            result = mirror_trial(WORKLOADS[workload], lr)
            value, work = result["val_accuracy"], result["work_s"]
        record.append((work, perf_counter() - entered))
        return value

    return objective


def optuna_worker(
    journal: str, study_name: str, workload: str, n_trials: int, seed: int, ready: Any, go: Any, result_path: str
) -> None:
    """One process of the journal recipe: load the shared study, wait for the start, optimize."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if workload != "trivial":
        warm_up()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(journal))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(seed))
    record: list[tuple[float, float]] = []
    ready.set()
    go.wait()
    study.optimize(_optuna_objective(workload, record), n_trials=n_trials)
    Path(result_path).write_text(json.dumps(record))


def _optuna_journal(workload: str, trials: int, tmp: Path) -> dict[str, Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp / f"journal-{workload}.log")
    name = f"overhead-{workload}"
    optuna.create_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(journal)),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(SEED),
    )
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    shares = [trials // SLOTS + (1 if i < trials % SLOTS else 0) for i in range(SLOTS)]
    workers = []
    launched = perf_counter()
    for i, share in enumerate(shares):
        ready = ctx.Event()
        result = str(tmp / f"worker-{workload}-{i}.json")
        proc = ctx.Process(target=optuna_worker, args=(journal, name, workload, share, SEED + i, ready, go, result))
        proc.start()
        workers.append((proc, ready, result))
    for _proc, ready, _ in workers:
        if not ready.wait(300):
            raise RuntimeError("an Optuna worker did not start within 300 s")
    startup = perf_counter() - launched
    started = perf_counter()
    go.set()
    for proc, _, _ in workers:
        proc.join()
    wall = perf_counter() - started
    records = [row for _, _, path in workers for row in json.loads(Path(path).read_text())]
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(journal)))
    completed = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    return {
        "wall_s": wall,
        "trials": trials,
        "completed": completed,
        "work_s": sum(r[0] for r in records),
        "busy_s": sum(r[1] for r in records),
        "startup_s": startup,
    }


def _optuna_inproc(workload: str, trials: int) -> dict[str, Any]:
    import optuna

    record: list[tuple[float, float]] = []
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(SEED))
    started = perf_counter()
    study.optimize(_optuna_objective(workload, record), n_trials=trials, n_jobs=SLOTS)
    wall = perf_counter() - started
    return {
        "wall_s": wall,
        "trials": trials,
        "completed": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
        "work_s": sum(r[0] for r in record),
        "busy_s": sum(r[1] for r in record),
    }


def peer_optuna(trials: int) -> dict[str, dict[str, Any]]:
    import optuna

    warm_up()  # the in-process reference warms torch up before its clock starts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="optuna-overhead-"))
    out: dict[str, dict[str, Any]] = {"optuna": {}, "optuna_inproc": {}}
    try:
        for workload in MAIN_WORKLOADS:
            log(f"optuna: {trials} {workload} trials (journal, 2 processes)")
            out["optuna"][workload] = _optuna_journal(workload, trials, tmp)
            log(f"optuna_inproc: {trials} {workload} trials (1 process, 2 threads)")
            out["optuna_inproc"][workload] = _optuna_inproc(workload, trials)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The peers' venv
# ---------------------------------------------------------------------------------------------


def _main_site_packages() -> str:
    """The folder holding the main venv's torch (the .pth file points the peers' venv at it)."""
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        return str(Path(spec.origin).resolve().parent.parent)
    return sysconfig.get_paths()["purelib"]


def _peers_check(python: Path) -> bool:
    probe = "import optuna, ray, ray.tune, torch; print(ray.__version__, optuna.__version__, torch.__version__)"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        ray_v, optuna_v, torch_v = result.stdout.split()[-3:]
        log(f"peers: ray {ray_v}, optuna {optuna_v}, torch {torch_v} (from {python})")
    return result.returncode == 0


def install_hint() -> str:
    site = _main_site_packages()
    peers_site = f"{PEERS_VENV}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    return "\n".join(
        [
            "To install the peers by hand (then rerun this script):",
            f"  {sys.executable} -m venv {PEERS_VENV}",
            f"  {PEERS_VENV}/bin/pip install -r {PEERS_REQUIREMENTS}",
            f"  echo {site} > {peers_site}/{PTH_NAME}",
            "  (or, instead of the .pth line: "
            f"{PEERS_VENV}/bin/pip install torch=={_torch_version() or '<the main .venv torch version>'})",
        ]
    )


def _torch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torch").split("+")[0]
    except Exception:  # noqa: BLE001
        return None


def ensure_peers(allow_install: bool) -> Path | None:
    """The peers' python: bench/.venv-peers with ray[tune] and optuna, reusing the main venv's torch.

    The venv has no system site-packages. pip installs the peers (and their dependencies) into it
    first; only then a .pth file appends the main .venv's site-packages to its sys.path, so its own
    packages win and torch (a CUDA build of several GB here) is the very same as tuneyard's, not a
    second copy. A stamp records what was installed, so later runs skip pip.
    """
    python = PEERS_VENV / "bin" / "python"
    site = _main_site_packages()
    want = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes() + site.encode()).hexdigest()
    stamp = PEERS_VENV / ".tuneyard-peers"
    try:
        if python.exists() and stamp.exists() and stamp.read_text() == want and _peers_check(python):
            return python
        if not allow_install:
            raise RuntimeError("the peers are not installed and --no-install was given")
        log(f"installing the peers into {PEERS_VENV} (ray[tune], optuna; about a minute)")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
        (PEERS_VENV / ".gitignore").write_text("*\n")  # as Python 3.13's venv does: git ignores the venv
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        pth = Path(purelib) / PTH_NAME
        pth.unlink(missing_ok=True)  # pip must not see the main venv's packages while resolving
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run([*pip, "-r", str(PEERS_REQUIREMENTS)], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError("pip failed:\n" + "\n".join((done.stdout + done.stderr).splitlines()[-15:]))
        pth.write_text(site + "\n")
        if not _peers_check(python):
            raise RuntimeError(f"{python} cannot import ray, optuna and torch")
        stamp.write_text(want)
        return python
    except Exception as err:  # noqa: BLE001 - no peers: tuneyard still runs
        log(f"peers unavailable: {err}")
        print(install_hint(), file=sys.stderr, flush=True)
        return None


def run_peer(
    python: Path, peer: str, trials: int, ray_default_trials: int, bookkeeping_trials: int, workdir: Path
) -> dict[str, Any]:
    """Runs one peer in the peers' venv (a child process); returns its figures, or {} when it failed."""
    out = workdir / f"{peer}.json"
    logfile = workdir / f"{peer}.log"
    cmd = [str(python), str(Path(__file__).resolve()), "--peer", peer, "--trials", str(trials)]
    cmd += ["--ray-default-trials", str(ray_default_trials), "--bookkeeping-trials", str(bookkeeping_trials)]
    cmd += ["--peer-out", str(out)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps Ray's listeners on 127.0.0.1 here
        RAY_USAGE_STATS_ENABLED="0",  # no usage reports: nothing leaves this machine
        PYTHONUNBUFFERED="1",
    )
    with open(logfile, "w") as fh:
        try:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=3600).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0 or not out.exists():
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        log(f"{peer} failed (exit {code}); last lines of {logfile}:\n" + "\n".join(tail))
        return {}
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# tuneyard (runs in the main venv)
# ---------------------------------------------------------------------------------------------


def tuneyard_trainable_spec(workload: str, trials: int) -> dict[str, Any]:
    """A study of ``trials`` trials of the bench trainable behind ``workload``, the lr searched."""
    return {
        "name": f"overhead-{workload}",
        "trainable": {"name": TRAINABLE_WORKLOADS[workload], "options": {}},
        "training": {"epochs": 1, "seed": SEED},
        "search_space": [
            {"name": "trainable.lr", "float_range": {"low": LR_RANGE[0], "high": LR_RANGE[1], "log": True}}
        ],
        "searcher": {"name": "random"},
        "objective": {"metric": "score", "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials, "max_concurrent_trials": SLOTS},
    }


def tuneyard_spec(workload: str, trials: int) -> dict[str, Any]:
    if workload in TRAINABLE_WORKLOADS:
        return tuneyard_trainable_spec(workload, trials)
    w = WORKLOADS[workload]
    return {
        "name": f"overhead-{workload}",
        "dataset": {
            "name": "synthetic",
            "options": {"num_samples": w["num_samples"], "num_classes": w["num_classes"], "size": w["size"]},
        },
        "model": {
            "name": "simple_cnn",
            "options": {"num_conv_layers": w["num_conv_layers"], "num_filters": w["num_filters"]},
        },
        "training": {
            "epochs": 1,
            "batch_size": w["batch_size"],
            "optimizer": {"name": "adam", "options": {"lr": 0.003}},
            "seed": SEED,
        },
        "search_space": [
            {"name": "optimizer.lr", "float_range": {"low": LR_RANGE[0], "high": LR_RANGE[1], "log": True}}
        ],
        "searcher": {"name": "random"},
        "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
        "budget": {"max_trials": trials, "max_concurrent_trials": SLOTS},
    }


def _ts(stamp: Any) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _profile(trials: list[Any], created: float, terminal: float, announced: dict[int, float]) -> dict[str, float]:
    """Where tuneyard's slot time goes, from the server's own timestamps (ms), as overhead per trial.

    Each slot's timeline from CreateStudy to the terminal event splits into: head (CreateStudy to
    the slot's first trial start), per trial: setup (trial start, stored by the runner, to its
    epoch report being stored, minus the epoch's own work: dispatch over the pipe, dataset build on
    a worker's first trial, model and optimizer build, checkpoint save, the report's trip back),
    work (``epoch_seconds``) and finish (report stored to trial end stored); gaps (one trial's end
    to the next start on the slot); tail (the slot's last trial end to the terminal event: waiting
    for the other slot's last trial, then the best checkpoint's test evaluation). The ``*_share_ms``
    figures add up to the per-trial overhead: (2 x wall - sum of work) / trials. Setup splits at
    the trial_started event's stored time (``announced``) into dispatch (the runner's bookkeeping
    before it hands the trial to a worker) and in-worker (the rest of setup).
    """
    setup, dispatch, finish, gaps = [], [], [], []
    by_slot: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for trial in trials:
        start, end = _ts(trial.start_time), _ts(trial.end_time)
        work = sum(m.values.get("epoch_seconds", 0.0) for m in trial.metrics)
        reported = _ts(trial.metrics[-1].time) if trial.metrics else end
        setup.append(reported - start - work)
        dispatch.append(announced.get(trial.trial_id, start) - start)
        finish.append(end - reported)
        by_slot[trial.device].append((start, end))
    for runs in by_slot.values():
        runs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(runs, runs[1:], strict=False)]
    idle_slots = max(0, SLOTS - len(by_slot))  # a slot that ran no trial idles for the whole study
    head = sum(runs[0][0] - created for runs in by_slot.values()) + idle_slots * (terminal - created)
    tail = sum(terminal - runs[-1][1] for runs in by_slot.values())
    last_end = max(runs[-1][1] for runs in by_slot.values())
    n, ms = len(trials), 1000.0
    return {
        "setup_share_ms": sum(setup) / n * ms,
        "setup_dispatch_ms": sum(dispatch) / n * ms,
        "setup_in_worker_ms": (sum(setup) - sum(dispatch)) / n * ms,
        "finish_share_ms": sum(finish) / n * ms,
        "gap_share_ms": sum(gaps) / n * ms,
        "head_share_ms": head / n * ms,
        "tail_share_ms": tail / n * ms,
        "setup_p90_ms": _quantile(setup, 0.9) * ms,
        "setup_max_ms": max(setup) * ms,
        "slot_gap_mean_ms": statistics.mean(gaps) * ms if gaps else 0.0,
        "slot_gap_max_ms": max(gaps) * ms if gaps else 0.0,
        "study_head_ms": (min(runs[0][0] for runs in by_slot.values()) - created) * ms,
        "study_tail_ms": (terminal - last_end) * ms,
        "end_imbalance_ms": sum(last_end - runs[-1][1] for runs in by_slot.values()) * ms,
    }


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads: here, the in-process server and the SDK."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_tuneyard_study(client: Any, workload: str, trials: int) -> dict[str, Any]:
    from tuneyard.client.sdk import is_terminal
    from tuneyard.v1 import service_pb2

    spec = tuneyard_spec(workload, trials)
    cpu_before = _cpu_seconds()
    created = time.time()
    started = perf_counter()
    study = client.create_study(spec)
    wall, terminal, final = None, None, None
    announced: dict[int, float] = {}
    for event in client.watch(study.study_id):
        if event.WhichOneof("event") == "trial_started":
            announced[event.trial_started.trial.trial_id] = _ts(event.time)
        if is_terminal(event):
            wall, terminal, final = perf_counter() - started, time.time(), event.study_state
    if wall is None or terminal is None or final is None or final.state != service_pb2.STUDY_COMPLETED:
        raise RuntimeError(f"study {study.study_id} ended as {final}")
    cpu = _cpu_seconds() - cpu_before  # this process: the server and the watching client
    listed = list(client.list_trials(study.study_id))
    done = [t for t in listed if t.state == service_pb2.TRIAL_COMPLETED]
    if workload in TRAINABLE_WORKLOADS:
        _check_trainable_scores(done)
    return {
        "wall_s": wall,
        "trials": trials,
        "completed": len(done),
        "work_s": sum(m.values.get("epoch_seconds", 0.0) for t in done for m in t.metrics),
        "busy_s": sum(_ts(t.end_time) - _ts(t.start_time) for t in done),
        "profile": {**_profile(done, created, terminal, announced), "server_cpu_ms": cpu / trials * 1000},
        "study_id": study.study_id,
    }


def _check_trainable_scores(done: list[Any]) -> None:
    """The trainable did the trials' work: each stored score is ``trivial_value`` of its searched lr."""
    from google.protobuf import json_format

    for trial in done:
        lr = json_format.MessageToDict(trial.config)["trainable.lr"]
        if not math.isclose(trial.final_metrics["score"], trivial_value(lr), rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"trial {trial.trial_id}: score {trial.final_metrics['score']} for lr {lr}")


def run_tuneyard(workloads: dict[str, int]) -> dict[str, Any]:
    """Runs one study per workload (name -> trials) on a fresh in-process server, after a warm-up study."""
    from tuneyard.client import Client
    from tuneyard.server.app import start_server

    data_dir = Path(tempfile.mkdtemp(prefix="tuneyard-overhead-"))
    out: dict[str, Any] = {}
    handle = start_server(data_dir=data_dir, devices="cpu", cpu_slots=SLOTS, plugins_dir=TRAINABLES_DIR)
    try:
        with Client(handle.address, timeout=120) as client:
            log("tuneyard: warm-up studies (the workers import torch; each trial path runs once)")
            run_tuneyard_study(client, "trivial", 4)
            run_tuneyard_study(client, "trivial_trainable", 4)
            for workload, trials in workloads.items():
                log(f"tuneyard: {trials} {workload} trials")
                out[workload] = run_tuneyard_study(client, workload, trials)
                log(f"tuneyard: {workload}: {out[workload]['wall_s']:.2f} s")
    finally:
        handle.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Figures, targets, output
# ---------------------------------------------------------------------------------------------


def figures(run: dict[str, Any]) -> dict[str, float]:
    slot_seconds = run["wall_s"] * SLOTS
    return {
        "wall_s": run["wall_s"],
        "trials_per_s": run["trials"] / run["wall_s"],
        "overhead_s": (slot_seconds - run["work_s"]) / run["trials"],
        "utilisation": run["busy_s"] / slot_seconds,
        "work_utilisation": run["work_s"] / slot_seconds,
        "work_ms_per_trial": run["work_s"] / run["trials"] * 1000,
    }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarise(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    figs = {s: {w: figures(r) for w, r in runs.items() if w in TABLE_WORKLOADS} for s, runs in results.items()}
    lines = [
        f"{'system':<24} {'workload':<17} {'trials':>6} {'wall s':>8} {'trials/s':>9} {'overhead s/trial':>17} "
        f"{'utilisation':>11} {'work util':>9} {'work ms/trial':>13}"
    ]
    for workload in TABLE_WORKLOADS:
        for system in SYSTEMS:
            if workload in TRAINABLE_WORKLOADS and system != "tuneyard":
                continue  # tuneyard only: the peers' row of the same work is PEER_WORKLOAD's
            f = figs.get(system, {}).get(workload)
            if f is None:
                lines.append(f"{LABELS[system]:<24} {workload:<17} {'-':>6} {'(not run)':>8}")
                continue
            run = results[system][workload]
            flag = "" if run["completed"] == run["trials"] else f"  ({run['completed']} completed)"
            lines.append(
                f"{LABELS[system]:<24} {workload:<17} {run['trials']:>6} {f['wall_s']:>8.2f} {f['trials_per_s']:>9.2f} "
                f"{f['overhead_s']:>17.4f} {f['utilisation']:>10.1%} {f['work_utilisation']:>9.1%} "
                f"{f['work_ms_per_trial']:>13.1f}{flag}"
            )
    table_end = len(lines)
    bookkeeping: dict[str, Any] = {}
    for system, runs in results.items():
        run = runs.get("bookkeeping")
        if run:
            minimum = run["work_s"] / SLOTS
            bookkeeping[system] = {
                "trials": run["trials"],
                "wall_s": _r(run["wall_s"], 3),
                "minimum_s": _r(minimum, 3),
                "over_minimum": _r(run["wall_s"] / minimum - 1),
                "work_s_per_trial": _r(run["work_s"] / run["trials"], 3),
            }
    if bookkeeping:
        lines += ["", "bookkeeping shape (many ~1 s trials, 2 at a time; minimum = sum of the trials' own work / 2):"]
        lines.append(
            f"{'system':<24} {'trials':>6} {'work s/trial':>12} {'minimum s':>10} {'wall s':>8} {'over min':>9}"
        )
        for system, b in bookkeeping.items():
            lines.append(
                f"{LABELS[system]:<24} {b['trials']:>6} {b['work_s_per_trial']:>12.3f} {b['minimum_s']:>10.2f} "
                f"{b['wall_s']:>8.2f} {b['over_minimum']:>9.1%}"
            )

    def measured(system: str, key: str, workload: str) -> float | None:
        return figs.get(system, {}).get(workload, {}).get(key)

    ty = figs.get("tuneyard", {})
    targets: dict[str, Any] = {**TARGETS}
    met: dict[str, Any] = {}
    basis: dict[str, str] = {}
    for workload in TABLE_WORKLOADS:
        peer_workload = PEER_WORKLOAD[workload]
        ray_default = measured("ray_tune", "overhead_s", peer_workload)
        basis[f"overhead_{workload}"] = "measured" if ray_default is not None else "issue 5 reference"
        if ray_default is None:
            ray_default = REFERENCE["ray_tune_overhead_s"][peer_workload]
        limit = ray_default * TARGETS["overhead_max_fraction_of_ray_tune_default"]
        targets[f"tuneyard_overhead_s_max_{workload}"] = _r(limit)
        mine = ty.get(workload, {}).get("overhead_s")
        met[f"overhead_{workload}"] = None if mine is None else mine <= limit
    for system, key in (("ray_tune_reuse", "ray_tune_reuse_trials_per_s"), ("optuna", "optuna_trials_per_s")):
        theirs = measured(system, "trials_per_s", "tiny_torch")
        basis[f"tiny_torch_trials_per_s_vs_{system}"] = "measured" if theirs is not None else "issue 5 reference"
        if theirs is None:
            theirs = REFERENCE[key]["tiny_torch"]
        targets[f"tiny_torch_trials_per_s_min_vs_{system}"] = _r(theirs)
        mine = ty.get("tiny_torch", {}).get("trials_per_s")
        met[f"tiny_torch_trials_per_s_vs_{system}"] = None if mine is None else mine >= theirs
    util = ty.get("tiny_torch", {}).get("utilisation")
    met["tiny_torch_utilisation"] = None if util is None else util >= TARGETS["tiny_torch_utilisation_min"]
    over = bookkeeping.get("tuneyard", {}).get("over_minimum")
    met["bookkeeping"] = None if over is None else over <= TARGETS["bookkeeping_over_minimum_max"]
    targets["basis"] = basis

    # The trial's own work swings with the machine's load, and the systems run one after another:
    # trials/s at one common work time (the median of the systems' mean tiny-torch work) compares
    # the overheads alone: slots / (work + overhead per trial).
    works = [f["tiny_torch"]["work_ms_per_trial"] / 1000 for f in figs.values() if "tiny_torch" in f]
    equal: dict[str, Any] = {}
    if works:
        common = statistics.median(works)
        equal = {"work_ms": _r(common * 1000, 1)}
        for system, system_figs in figs.items():
            if "tiny_torch" in system_figs:
                equal[system] = _r(SLOTS / (common + system_figs["tiny_torch"]["overhead_s"]), 2)
        lines.insert(
            table_end,
            f"tiny_torch trials/s at equal work ({common * 1000:.1f} ms/trial, the median of the systems'): "
            + ", ".join(f"{system} {value}" for system, value in equal.items() if system in figs),
        )
        if "tuneyard" in equal:
            for system in ("ray_tune_reuse", "optuna"):
                if system in equal:
                    equal[f"tuneyard_at_least_{system}"] = equal["tuneyard"] >= equal[system]

    summary: dict[str, Any] = {}
    for system in SYSTEMS:
        for key, name in (
            ("overhead_s", "overhead_s"),
            ("trials_per_s", "trials_per_s"),
            ("wall_s", "wall_s"),
            ("utilisation", "slot_utilisation"),
            ("work_utilisation", "work_utilisation"),
        ):
            if system in figs:
                summary[f"{system}_{name}"] = {w: _r(f[key]) for w, f in figs[system].items()}
    summary["bookkeeping"] = bookkeeping
    summary["tuneyard_trainable_vs_builtin"] = _trainable_vs_builtin(ty)
    if "tuneyard" in results:
        summary["tuneyard_profile_ms"] = {
            w: {k: _r(v, 2) for k, v in r["profile"].items()} for w, r in results["tuneyard"].items()
        }
    if "optuna" in results:
        summary["optuna_worker_startup_s"] = {w: _r(r.get("startup_s"), 2) for w, r in results["optuna"].items()}
    summary["tiny_torch_trials_per_s_at_equal_work"] = equal
    summary["targets"] = targets
    summary["targets_met"] = met
    summary["meta"] = meta
    return lines, summary


def _trainable_vs_builtin(ty: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """tuneyard's per-trial overhead (ms) of the trivial trial on the built-in trainer and as a
    trainable, and the trainable's over the built-in's."""
    builtin = ty.get("trivial", {}).get("overhead_s")
    trainable = ty.get("trivial_trainable", {}).get("overhead_s")
    if builtin is None or trainable is None:
        return {}
    return {
        "trivial_overhead_ms": _r(builtin * 1000, 2),
        "trivial_trainable_overhead_ms": _r(trainable * 1000, 2),
        "ratio": _r(trainable / builtin, 3) if builtin > 0 else None,
    }


def profile_lines(results: dict[str, Any]) -> list[str]:
    runs = results.get("tuneyard", {})
    if not runs:
        return []
    lines = [
        "",
        "tuneyard: where the per-trial overhead goes (ms per trial, from ListTrials timestamps; see _profile):",
        f"{'workload':<17} {'work':>8} {'overhead':>9} {'= setup':>8} {'+ finish':>8} {'+ gaps':>7} {'+ head':>7} "
        f"{'+ tail':>7} | {'dispatch':>8} {'in worker':>9} {'setup p90':>9} {'setup max':>9} {'gap max':>7} "
        f"{'study tail':>10} {'end imbal.':>10} {'server CPU':>10}",
    ]
    for workload, run in runs.items():
        p = run["profile"]
        work = run["work_s"] / run["trials"] * 1000
        overhead = figures(run)["overhead_s"] * 1000
        lines.append(
            f"{workload:<17} {work:>8.1f} {overhead:>9.1f} {p['setup_share_ms']:>8.1f} {p['finish_share_ms']:>8.1f} "
            f"{p['gap_share_ms']:>7.1f} {p['head_share_ms']:>7.1f} {p['tail_share_ms']:>7.1f} | "
            f"{p['setup_dispatch_ms']:>8.1f} {p['setup_in_worker_ms']:>9.1f} "
            f"{p['setup_p90_ms']:>9.1f} {p['setup_max_ms']:>9.1f} {p['slot_gap_max_ms']:>7.1f} "
            f"{p['study_tail_ms']:>10.1f} {p['end_imbalance_ms']:>10.1f} {p['server_cpu_ms']:>10.1f}"
        )
    return lines


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "server", "plugins"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty(server/plugins)" if dirty else "")
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def peer_main(args: argparse.Namespace) -> None:
    if args.peer == "ray":
        out = peer_ray(args.trials, args.ray_default_trials or args.trials, args.bookkeeping_trials)
    elif args.peer == "optuna":
        out = peer_optuna(args.trials)
    else:
        raise SystemExit(f"unknown peer {args.peer!r}")
    Path(args.peer_out).write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 trials per workload and a short bookkeeping shape")
    parser.add_argument("--trials", type=int, default=0, help="trials per workload (default 100, --quick 30)")
    parser.add_argument(
        "--bookkeeping-trials",
        type=int,
        default=-1,
        help="1-second trials of the bookkeeping shape (default 100; --quick: 20, tuneyard only); 0 skips it",
    )
    parser.add_argument(
        "--systems", default="tuneyard,optuna,ray", help="comma-separated subset of tuneyard, optuna, ray"
    )
    parser.add_argument(
        "--ray-default-trials",
        type=int,
        default=0,
        help="trials per workload for Ray Tune's default mode (default: --trials; --quick: 10, as it runs "
        "one process per trial)",
    )
    parser.add_argument("--no-install", action="store_true", help="do not install the peers; skip them if absent")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--peer-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        peer_main(args)
        return

    trials = args.trials or (30 if args.quick else 100)
    bookkeeping = args.bookkeeping_trials if args.bookkeeping_trials >= 0 else (20 if args.quick else 100)
    ray_bookkeeping_trials = 0 if args.quick else bookkeeping
    ray_default_trials = args.ray_default_trials or (min(10, trials) if args.quick else trials)
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    load_before = os.getloadavg()[0]
    if load_before > 1.0:
        log(f"load average {load_before:.2f} on {os.cpu_count()} cores: other processes compete; figures are noisy")
    started = perf_counter()
    peers_python = None
    if systems & {"optuna", "ray"}:
        peers_python = ensure_peers(not args.no_install)

    # Order: the three systems the trials/s target compares run back to back (tuneyard, Optuna, then
    # Ray Tune with actor reuse first); the two bookkeeping runs (Ray's, then tuneyard's) come last.
    results: dict[str, dict[str, Any]] = {}
    if "tuneyard" in systems:
        results["tuneyard"] = run_tuneyard({w: trials for w in TABLE_WORKLOADS})
    workdir = Path(tempfile.mkdtemp(prefix="overhead-peers-"))
    try:
        if peers_python is not None:
            for peer in ("optuna", "ray"):
                if peer in systems:
                    results.update(
                        run_peer(peers_python, peer, trials, ray_default_trials, ray_bookkeeping_trials, workdir)
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "tuneyard" in systems and bookkeeping:
        results["tuneyard"].update(run_tuneyard({"bookkeeping": bookkeeping}))

    meta = {
        "quick": args.quick,
        "trials": trials,
        "ray_default_trials": ray_default_trials if "ray" in systems else 0,
        "bookkeeping_trials": bookkeeping,
        "slots": SLOTS,
        "cores": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds": round(perf_counter() - started, 1),
        "tuneyard": _git_state(),
        "peers": "measured" if peers_python is not None and len(results) > 1 else "not run",
    }
    lines, summary = summarise(results, meta)
    print("\n".join(lines + profile_lines(results)))
    print()
    print("targets (tuneyard):")
    for key, ok in summary["targets_met"].items():
        verdict = "n/a" if ok is None else ("MET" if ok else "MISSED")
        print(f"  {key:<44} {verdict}")
    print(f"  (limits: {json.dumps({k: v for k, v in summary['targets'].items() if k != 'basis'})})")
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
