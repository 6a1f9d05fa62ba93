"""External studies from the client's side: ask for trials, report their steps, tell how they ended.

A study with ``spec.external`` has no trainer on the server: clients evaluate its trials through
SuggestTrials, ReportTrial and CompleteTrial. :class:`ExternalStudies` wraps those three calls
for :class:`~tuneyard.client.Client` (``ask`` / ``report`` / ``tell``) and adds ``optimize``,
which drives a study to its end with worker threads in this process while the study's watch
stream feeds the same progress display as ``tuneyard run``. Thin like the rest of the client:
grpc, protobuf, rich and the standard library.
"""

from __future__ import annotations

import numbers
import os
import socket
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from tuneyard.client.errors import Infeasible, Pruned, TuneyardError
from tuneyard.client.optimize_run import OptimizeRun
from tuneyard.client.specfile import SpecSource, config_to_dict, load_spec
from tuneyard.v1 import service_pb2, spec_pb2

if TYPE_CHECKING:
    from tuneyard.client.progress import Display

__all__ = ["ExternalStudies", "ExternalTrial", "Metrics", "StudyRpc", "TrialBatch", "default_client_id"]

# A step's (or a trial's) result: the objective's value alone, or named metrics.
Metrics = float | Mapping[str, float]
EventSink = Callable[[service_pb2.StudyEvent], None]

_END_STATES = {
    "COMPLETED": service_pb2.TRIAL_COMPLETED,
    "FAILED": service_pb2.TRIAL_FAILED,
    "INFEASIBLE": service_pb2.TRIAL_INFEASIBLE,
}


class StudyRpc(Protocol):
    """What the external-study code needs of a client (``Client`` is one): calls and a watch."""

    def _call(self, method: str, request: Any) -> Any: ...
    def get_study(self, study_id: str) -> service_pb2.Study: ...
    def create_study(self, spec: SpecSource, request_id: str | None = None) -> service_pb2.Study: ...
    def watch(self, study_id: str, after_sequence: int = 0) -> Iterator[service_pb2.StudyEvent]: ...


def default_client_id() -> str:
    """``<hostname>-<pid>``: who holds a trial shows on the server as its device, ``client:<id>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ExternalTrial:
    """One trial handed to this client: evaluate ``config``, ``report`` each step, then tell its end."""

    study_id: str
    trial_id: int
    config: dict[str, Any]
    _studies: ExternalStudies = field(repr=False, compare=False)
    client_id: str = ""  # whom it was handed to: the server refuses this client's calls once it lost the lease

    def report(self, step: int, value_or_metrics: Metrics) -> None:
        """Store step ``step``'s metrics (and renew the lease); raise :class:`Pruned` on STOP."""
        if not self._studies.report(self.study_id, self.trial_id, step, value_or_metrics, client_id=self.client_id):
            raise Pruned(f"trial {self.trial_id} of study {self.study_id} stopped at step {step}")


class TrialBatch(list[ExternalTrial]):
    """The trials one ``ask`` got (maybe none) and ``study_done``: the study has no more to give."""

    def __init__(self, trials: Iterable[ExternalTrial], study_done: bool) -> None:
        super().__init__(trials)
        self.study_done = study_done


def _end_state(state: str | int) -> service_pb2.TrialState:
    """``COMPLETED`` / ``TRIAL_COMPLETED`` / the enum number (or FAILED, INFEASIBLE) as the enum."""
    if isinstance(state, int) and state in service_pb2.TrialState.values():
        state = service_pb2.TrialState.Name(state)
    name = str(state).strip().upper().removeprefix("TRIAL_")
    if name not in _END_STATES:
        raise TuneyardError(
            grpc.StatusCode.INVALID_ARGUMENT, f"a trial ends COMPLETED, FAILED or INFEASIBLE, not {state!r}"
        )
    return _END_STATES[name]


def objective_metric(spec: spec_pb2.StudySpec) -> str:
    """The one objective's metric, which a bare number reported for a trial stands for."""
    objectives = list(spec.objectives) or ([spec.objective] if spec.HasField("objective") else [])
    if len(objectives) != 1 or not objectives[0].metric:
        raise ValueError(f"the study has {len(objectives)} objectives: report a dict of metrics, not a single number")
    return objectives[0].metric


class ExternalStudies:
    """The client side of external studies; caches each study's spec (its objective, its ints)."""

    poll_min = 0.05  # seconds an optimize worker waits when no trial is free, doubled up to poll_max
    poll_max = 0.2

    def __init__(self, rpc: StudyRpc) -> None:
        self._rpc = rpc
        self._specs: dict[str, spec_pb2.StudySpec] = {}
        self._lock = threading.Lock()

    def spec(self, study_id: str) -> spec_pb2.StudySpec:
        """The study's spec, fetched once."""
        with self._lock:
            cached = self._specs.get(study_id)
        if cached is None:
            cached = self._rpc.get_study(study_id).spec
            with self._lock:
                cached = self._specs.setdefault(study_id, cached)
        return cached

    def metrics(self, study_id: str, value_or_metrics: Metrics) -> dict[str, float]:
        """Named metrics from a dict, or ``{objective metric: value}`` from a bare number."""
        if isinstance(value_or_metrics, Mapping):
            return {str(name): float(value) for name, value in value_or_metrics.items()}
        if isinstance(value_or_metrics, bool) or not isinstance(value_or_metrics, numbers.Real):
            raise TypeError(f"expected a number or a dict of metrics, got {type(value_or_metrics).__name__}")
        return {objective_metric(self.spec(study_id)): float(value_or_metrics)}

    def ask(
        self,
        study_id: str,
        count: int = 1,
        client_id: str | None = None,
        completions: Iterable[service_pb2.CompleteTrialRequest] = (),
    ) -> TrialBatch:
        """Up to ``count`` trials; ``completions`` (see :meth:`completion`) are told first, in the
        same round trip."""
        holder = client_id or default_client_id()
        request = service_pb2.SuggestTrialsRequest(
            study_id=study_id, count=count, client_id=holder, completions=completions
        )
        response = self._rpc._call("SuggestTrials", request)
        if not response.trials:
            return TrialBatch((), response.study_done)
        spec = self.spec(study_id)  # which parameters are ints
        trials = (
            ExternalTrial(study_id, trial.trial_id, config_to_dict(trial.config, spec), self, holder)
            for trial in response.trials
        )
        return TrialBatch(trials, response.study_done)

    def report(
        self, study_id: str, trial_id: int, step: int, value_or_metrics: Metrics, *, client_id: str = ""
    ) -> bool:
        metrics = self.metrics(study_id, value_or_metrics)
        request = service_pb2.ReportTrialRequest(
            study_id=study_id, trial_id=trial_id, step=step, metrics=metrics, client_id=client_id
        )
        return bool(self._rpc._call("ReportTrial", request).decision != service_pb2.STOP)

    def tell(
        self,
        study_id: str,
        trial_id: int,
        value_or_metrics: Metrics | None = None,
        *,
        state: str | int = "COMPLETED",
        error: str = "",
        client_id: str = "",
    ) -> service_pb2.Trial:
        request = self.completion(trial_id, value_or_metrics, study_id, state=state, error=error, client_id=client_id)
        return self._rpc._call("CompleteTrial", request)

    def completion(
        self,
        trial_id: int,
        value_or_metrics: Metrics | None,
        study_id: str,
        *,
        state: str | int = "COMPLETED",
        error: str = "",
        client_id: str = "",
    ) -> service_pb2.CompleteTrialRequest:
        """A trial's end as CompleteTrial takes it, or as one of SuggestTrials' ``completions``."""
        metrics = {} if value_or_metrics is None else self.metrics(study_id, value_or_metrics)
        return service_pb2.CompleteTrialRequest(
            study_id=study_id,
            trial_id=trial_id,
            state=_end_state(state),
            metrics=metrics,
            error=error,
            client_id=client_id,
        )

    def evaluate(self, trial: ExternalTrial, fn: Callable[[ExternalTrial], Any]) -> service_pb2.CompleteTrialRequest:
        """Run ``fn`` on one trial: how it ended, to tell the server (an exception is a FAILED end)."""
        state, metrics, error = self._outcome(trial, fn)
        return self.completion(
            trial.trial_id, metrics, trial.study_id, state=state, error=error, client_id=trial.client_id
        )

    def _outcome(self, trial: ExternalTrial, fn: Callable[[ExternalTrial], Any]) -> tuple[str, Metrics | None, str]:
        try:
            result = fn(trial)
            metrics = None if result is None else self.metrics(trial.study_id, result)
        except Pruned:
            return "COMPLETED", None, ""  # the last reported step's metrics stand
        except Infeasible as exc:
            return "INFEASIBLE", None, str(exc) or "infeasible"
        except Exception:
            return "FAILED", None, traceback.format_exc()
        return "COMPLETED", metrics, ""

    def optimize(
        self,
        spec: SpecSource,
        fn: Callable[[ExternalTrial], Any],
        n_workers: int = 1,
        *,
        request_id: str | None = None,
        progress: bool | EventSink | None = True,
        client_id: str | None = None,
    ) -> service_pb2.Study:
        """Create the study, evaluate its trials on ``n_workers`` threads, return the ended study."""
        parsed = load_spec(spec)
        if not parsed.HasField("external"):
            raise ValueError("optimize evaluates an external study: the spec needs an `external` section")
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, not {n_workers}")
        study = self._rpc.create_study(parsed, request_id=request_id)
        with self._lock:
            self._specs[study.study_id] = study.spec
        run = OptimizeRun(self, self._rpc, study.study_id, fn)
        with _display(parsed, progress) as display:
            # No display, no watch stream: the workers alone decide when the study is done.
            run.start(display if progress else None, client_id or default_client_id(), n_workers)
            run.join()
        return run.ended_study()


class _Callback:
    """A plain event callback (or none) as a :class:`Display`."""

    def __init__(self, sink: EventSink | None) -> None:
        self._sink = sink

    def __enter__(self) -> _Callback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __call__(self, event: service_pb2.StudyEvent) -> None:
        if self._sink is not None:
            self._sink(event)


def _display(spec: spec_pb2.StudySpec, progress: bool | EventSink | None) -> Display:
    """``True``: the CLI's display on stderr (live bars on a terminal); a callable: called per event."""
    if progress is True:
        # Imported here: progress -> render -> sdk -> this module.
        from rich.console import Console

        from tuneyard.client.progress import make_display

        return make_display(spec, Console(stderr=True), live=True)
    return _Callback(progress or None)
