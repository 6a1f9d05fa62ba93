"""A PBT study's schedule (`early_stopping: pbt`): its trials run in turns, from decision epoch to
decision epoch, and each is judged when it is next to run.

A trial's run ends by itself after every decision epoch (`TrainTask.decide_every`: the worker keeps
that epoch's files and returns), so the trial is always exactly at a decision epoch when it waits,
whatever its code. The trials with the least progress run first, new ones before any that waits
paused, so a population larger than the study's slots moves together, as Ray Tune's PBT
time-multiplexes it. A waiting trial is judged as it is about to run again, against the population
that has caught up with it: an exploit sends it on from its source's files (`trial_tasks`). Every
record and verdict is journaled before anything acts on it; a trial a restart finds at a decision
epoch it was not judged on is judged before it runs again.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneyard.server.study.domain import TrialRecord
from tuneyard.server.study.outcomes import Ending
from tuneyard.server.study.stopping import StopperLedger
from tuneyard.server.study.trial_book import TrialBook
from tuneyard.server.study.trial_runs import TaskBoard, TrialRun
from tuneyard.server.study.trial_tasks import TrialTasks


class PopulationSchedule:
    """The runner's PBT decisions; with any other early stopper (or none) every call is a no-op."""

    def __init__(self, board: TaskBoard, tasks: TrialTasks, book: TrialBook | None = None) -> None:
        self.board, self.tasks, self.book = board, tasks, book
        self.stopping = book.stopping if book is not None else StopperLedger(None, tasks.plan.objective)
        population = self.stopping.population
        self.on = population is not None
        tasks.decide_every = population.checkpoint_interval if population is not None else 0

    def skips(self, run: TrialRun) -> bool:
        """Whether the run's epoch reports no longer count: its trial waits to be judged."""
        return run.paused_at > 0

    def at_step(self, run: TrialRun, epoch: int) -> None:
        """After a stored epoch: at a decision epoch the run ends by itself, and the trial waits its turn."""
        if self.on and run.stop_reason is None and self.stopping.decides_at(epoch):
            run.paused_at = epoch

    def ended(self, run: TrialRun, ending: Ending) -> bool:
        """A run that ended at its decision epoch: the trial waits to run again (True). False for any
        other run, which the runner decides on as usual."""
        if not run.paused_at:
            return False
        run.stop_reason = run.stop_time = None
        run.killed = False
        self.board.requeued.append(run.trial_id)
        return True

    def restored(self, run: TrialRun, trial: TrialRecord) -> None:
        """A trial a restart found at a decision epoch it was not judged on is judged before it runs again."""
        epoch, history = trial.epochs_completed, trial.config_history
        if self.on and self.stopping.decides_at(epoch) and not (history and history[-1].epoch == epoch):
            run.paused_at = epoch

    def waiting(self, requeued: Sequence[int], new_trials_left: bool, free: int) -> list[int]:
        """The requeued trials that may run again now, in order: all of them, as queued, without PBT;
        with it, the least epochs first, and the paused ones only once no new trial may start and
        while fewer trials run than `budget.max_concurrent_trials` (`free`: how many fewer)."""
        if not self.on:
            return list(requeued)
        ordered = sorted(requeued, key=lambda t: self.board.trials[t].epochs)
        paused_may_run = not new_trials_left and free > 0
        return [t for t in ordered if paused_may_run or not self.board.trials[t].paused_at]

    def blocks_new_trials(self, requeued: Sequence[int]) -> bool:
        """Whether a requeued trial must run before any new one (a paused one need not)."""
        return any(not self.board.trials[t].paused_at for t in requeued)

    def paused(self) -> int:
        """How many trials wait paused (they count against no concurrency limit)."""
        return sum(1 for t in self.board.requeued if self.board.trials[t].paused_at)

    def resuming(self, run: TrialRun) -> None:
        """A paused trial about to run again is judged now; an exploit sends it on from its source's files."""
        epoch, run.paused_at = run.paused_at, 0
        if epoch and self.book is not None and self.book.decide(run.trial_id, epoch) is not None:
            self.tasks.explore(run)
