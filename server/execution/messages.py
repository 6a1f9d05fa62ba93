"""The worker protocol: every message between the server and a worker, in both directions.

One module, so the local executor (`workers`), the Ray executor (`ray_executor`), the worker
process (`worker`) and the study runner agree on what a message holds; each side dispatches with
`match`. Messages cross a multiprocessing pipe (pickle) and Ray (cloudpickle), so they hold plain
data only. A task's key is its trial id, "test" for the best trial's test evaluation, or a fused
group's id ("g5": `TrainGroup`, issue 17).

To a worker: `Train` or `Evaluate` (a task), `Stop` (end task `key` at its next batch boundary),
`Shutdown`. From a worker: `Ready` once torch is imported, `Beat` at most every `worker.HEARTBEAT_S`
while a task makes progress, `Epoch` per finished epoch, and one final message per task: `Done`,
`Error` (the training code raised), `Infeasible` (the configuration cannot run). The executor adds
`Crashed` when the process running a task died or was killed, and the stderr tail to an `Error`.
The runner's own inbox also carries `Wake` (look again at the loop's conditions). The ranks of a
data-parallel trial are folded into one task's messages by the executor (`gang.Gang`).

A fused group (`TrainGroup`) is one task in one worker: its `Epoch`s name their member
(`Epoch.member`), its one `Done` holds every member's result ({"members": {trial_id: result}}, a
diverged member's result being {"error": ...}) or why the worker refused to fuse them
({"refused": reason}: the runner then runs them solo). `Stop(MemberKey(group, trial_id))` stops one
member; `Stop(group)` all of them. Executors route a `MemberKey` by its group (`task_key`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneyard.plugins.api import Objective

if TYPE_CHECKING:  # the protocol carries settings; it does not need the module that makes them
    from tuneyard.server.study.settings import Settings, TrialSettings

# ---- to the worker ----


@dataclass(frozen=True, slots=True)
class WorkerStart:
    """What a worker process is started with: whom to die with, its device, where it logs."""

    server_pid: int
    device: str  # torch's name for it: "cpu", "cuda:0"
    cuda_visible: str  # CUDA_VISIBLE_DEVICES for the process
    threads: int
    data_root: str = ""
    log_path: str = ""  # the process's stderr goes here; "" keeps the server's
    plugins_dir: str = ""  # `serve --plugins-dir`: the worker loads the same plugin files as the server


@dataclass(frozen=True, slots=True)
class Placement:
    """What a worker may use of its share of a device: CPU threads (0: leave as is) and a cap on the
    fraction of GPU memory (0: none)."""

    threads: int = 0
    memory_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class Rank:
    """This process's place in a data-parallel trial: rank 0 of 1 for an ordinary one."""

    rank: int = 0
    world_size: int = 1
    dist_port: int = 0  # the loopback rendezvous port when world_size > 1


@dataclass(frozen=True, slots=True)
class TrainTask:
    """One trial to train: its resolved settings, where its checkpoint lives, what it optimises."""

    trial_id: int
    settings: Settings  # the trial's resolved settings (`study.settings.resolve`): which trainer runs it
    checkpoint: str  # the built-in trainer's file; a trainable keeps its own files in its folder
    objective: Objective
    placement: Placement = Placement()
    rank: Rank = Rank()
    resume: bool = False  # go on from the checkpoint, if there is one
    study_id: str = ""
    # PBT (`study.population`): after every epoch that is a multiple of this (0: none), but the last,
    # the run keeps its folder's files of that epoch (`execution.snapshots`) and ends, to be judged;
    # the epoch of the trial's last exploit (0: none), whose checkpoint, when it resumes from it, is
    # another trial's: the settings' optimizer and schedule options go over its state.
    decide_every: int = 0
    stored_epochs: int = (
        0  # what the study holds of it when the run starts: a run ends at no decision epoch up to there
    )
    explored_at: int = 0


@dataclass(frozen=True, slots=True)
class EvaluateTask:
    """A trained checkpoint to score on the test split (the built-in trainer's trials only)."""

    settings: TrialSettings
    checkpoint: str
    placement: Placement = Placement()


@dataclass(frozen=True, slots=True)
class TrainGroupTask:
    """Trials trained as one fused model (`resources.fuse`): every member's own task, in stack order."""

    tasks: tuple[TrainTask, ...]


@dataclass(frozen=True, slots=True)
class MemberKey:
    """One member of the fused group task `group`, as a stop request names it."""

    group: Any
    trial_id: int


def task_key(key: Any) -> Any:
    """The key of the task a message or stop request of `key` belongs to: a member's is its group's."""
    return key.group if isinstance(key, MemberKey) else key


@dataclass(frozen=True, slots=True)
class Train:
    """Train (or resume) a trial."""

    key: Any
    task: TrainTask


@dataclass(frozen=True, slots=True)
class TrainGroup:
    """Train (or resume) a fused group of trials as one task; `key` is the group's id."""

    key: Any
    task: TrainGroupTask


@dataclass(frozen=True, slots=True)
class Evaluate:
    """Score a trained checkpoint on the test split."""

    key: Any
    task: EvaluateTask


@dataclass(frozen=True, slots=True)
class Stop:
    """End task `key` at its next batch boundary (a `MemberKey`: that member of a fused group); ignored
    when that task already ended."""

    key: Any


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Exit the worker process."""


# ---- from the worker ----


@dataclass(frozen=True, slots=True)
class Ready:
    """The process has imported torch and loaded the plugins: from now on a quiet task is its own fault."""

    pid: int


@dataclass(frozen=True, slots=True)
class Beat:
    """Task `key` is making progress (the executor's heartbeat clock)."""

    key: Any


@dataclass(frozen=True, slots=True)
class Epoch:
    """Task `key` finished `epoch` with these validation metrics (of trial `member` of a fused group)."""

    key: Any
    epoch: int
    metrics: dict[str, float]
    member: int | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """Task `key` ended normally: a training result (final_metrics, stopped, ...) or test metrics."""

    key: Any
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Error:
    """The training code raised; `stderr_tail` is what the process wrote to stderr during the task
    (added by the local executor, which owns the log)."""

    key: Any
    traceback: str
    stderr_tail: str = ""


@dataclass(frozen=True, slots=True)
class Infeasible:
    """The configuration cannot run (a plugin raised `Infeasible`); not a failure."""

    key: Any
    reason: str


@dataclass(frozen=True, slots=True)
class Crashed:
    """The process running task `key` died or was killed; sent by the executor, never the worker.

    `reason` is "crash" (it died), "timeout" (killed: no heartbeat in time), "stopped" (killed: it
    ignored a stop) or "oom" (Ray's memory monitor); `exit_code` and `exit_signal` are a local
    process's, `stderr_tail` its last stderr lines (Ray: the actor's death explanation)."""

    key: Any
    why: str
    reason: str = "crash"
    exit_code: int | None = None
    exit_signal: str = ""
    stderr_tail: str = ""


# ---- the runner's inbox ----


@dataclass(frozen=True, slots=True)
class Wake:
    """Nothing happened to a trial; the runner should look at its loop's conditions again."""


ToWorker = Train | TrainGroup | Evaluate | Stop | Shutdown
Request = Train | TrainGroup | Evaluate
Final = Done | Error | Infeasible | Crashed  # the one message that ends a task
TaskMessage = Epoch | Final  # what a task's sink receives
FromWorker = Ready | Beat | Epoch | Done | Error | Infeasible
Inbox = TaskMessage | Wake  # what the study runner reads
Sink = Callable[[TaskMessage], None]
FINAL = (Done, Error, Infeasible, Crashed)  # for isinstance
