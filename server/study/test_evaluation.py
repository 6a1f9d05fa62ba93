"""The study's last task: the best trial's checkpoint scored on the test split, run and policed like a
trial (its key is `trial_runs.TEST`). Out of the runner so the runner stays about trials."""

from __future__ import annotations

from collections.abc import Callable

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import Evaluate, EvaluateTask, Final, Sink
from tuneyard.server.execution.scheduler import Allocation
from tuneyard.server.study.domain import TrialRecord
from tuneyard.server.study.outcomes import Ending, ending_of
from tuneyard.server.study.settings import TrialSettings, resolve
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.trial_runs import TEST, EvaluationRun, TaskBoard, placement


class TestEvaluation:
    """Starts the best trial's test evaluation when a slot is free, and reads its end."""

    __test__ = False  # not a pytest class

    def __init__(self, plan: StudyPlan, registry: PluginRegistry, board: TaskBoard, sink: Sink, memory_gb: float):
        self.plan, self.registry, self.board, self.sink, self.memory_gb = plan, registry, board, sink, memory_gb

    def pending(self, best: TrialRecord | None, ended: bool, acquire: Callable[[], Allocation | None]) -> bool:
        """Whether the evaluation is still to run or running (`ended`: the study runs no more tasks);
        starts it when `acquire` gives a slot."""
        board = self.board
        if ended or best is None or not self.plan.has_test_split:
            return board.evaluation is not None and board.evaluation.alloc is not None
        if board.evaluation is None:
            board.evaluation = EvaluationRun(trial_id=best.trial_id)
        evaluation = board.evaluation
        if evaluation.error or evaluation.test_metrics is not None:
            return False
        if evaluation.alloc is None:
            alloc = acquire()
            if alloc is not None:
                board.hold(TEST, evaluation, alloc)
                settings = resolve(self.plan.spec, best.config, self.registry)
                assert isinstance(settings, TrialSettings)
                task = EvaluateTask(settings, best.checkpoint, placement(alloc, self.memory_gb))
                alloc.gang.submit(Evaluate(TEST, task), self.sink)
        return True

    @staticmethod
    def ended(evaluation: EvaluationRun, msg: Final) -> None:
        """The evaluation's final message (its allocation already released): its metrics or its error."""
        match ending_of(msg):
            case Ending(kind="done", result=result):
                evaluation.test_metrics = dict(result)
            case failed:  # an evaluation that cannot run ends the study: waiting would never end
                evaluation.error = f"test evaluation of trial {evaluation.trial_id} failed: {failed.error}"
