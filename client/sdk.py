"""The Python SDK: a thin, typed wrapper over the ``TrainingService`` stubs.

Thin on purpose: it imports no torch and no server code, so a laptop with only
the base install can drive a GPU box. It adds what raw stubs lack: errors as
:class:`TuneyardError`, safe retries of ``CreateStudy`` (one request id per
call), pagination hidden behind iterators, a ``watch`` that survives a
broken stream without losing or repeating an event, and TLS / mutual TLS /
bearer tokens on every call (:mod:`tuneyard.client.connection`). External studies
(the client evaluates the trials: ``ask`` / ``report`` / ``tell`` / ``optimize``) live in
:mod:`tuneyard.client.external`; the methods here delegate to it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc

from tuneyard.client import lifecycle
from tuneyard.client.connection import PemSource, channel_credentials, open_channel, resolve_token
from tuneyard.client.errors import TuneyardError, from_rpc_error
from tuneyard.client.external import EventSink, ExternalStudies, ExternalTrial, Metrics, TrialBatch
from tuneyard.client.results import RunResult, Study, Trial, trials_dataframe
from tuneyard.client.specfile import SpecSource, load_spec
from tuneyard.v1 import service_pb2, service_pb2_grpc, spec_pb2

__all__ = ["Client", "RunResult", "DEFAULT_ADDRESS", "TERMINAL_STATES", "is_terminal", "parse_state"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
TERMINAL_STATES = frozenset({service_pb2.STUDY_COMPLETED, service_pb2.STUDY_FAILED, service_pb2.STUDY_CANCELLED})
# Codes after which a watch stream is re-opened from the last seen sequence.
_RETRYABLE_WATCH = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL})


def default_address() -> str:
    """``$TUNEYARD_SERVER`` if set, else the loopback default the server binds."""
    return os.environ.get("TUNEYARD_SERVER") or DEFAULT_ADDRESS


def _handshake_failed(err: TuneyardError) -> bool:
    """A TLS handshake that failed for a certificate or protocol reason: retrying will not help."""
    return err.code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in err.details.lower()


def is_terminal(event: service_pb2.StudyEvent) -> bool:
    """True for the event that ends a study's stream (a terminal ``study_state``)."""
    return event.WhichOneof("event") == "study_state" and event.study_state.state in TERMINAL_STATES


def parse_state(state: str | int | None) -> service_pb2.StudyState:
    """A ``StudyState`` from ``None``, an enum number, or a name (``completed``, ``STUDY_COMPLETED``)."""
    if state is None or state == "":
        return service_pb2.STUDY_STATE_UNSPECIFIED
    if isinstance(state, int):
        # Protobuf enums are plain ints at runtime; the generated stubs type them as the enum class.
        return cast(service_pb2.StudyState, state)
    name = state.strip().upper()
    for candidate in (name, f"STUDY_{name}"):
        if candidate in service_pb2.StudyState.keys():
            return service_pb2.StudyState.Value(candidate)
    choices = ", ".join(k.removeprefix("STUDY_").lower() for k in service_pb2.StudyState.keys()[1:])
    raise TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown study state {state!r} (one of: {choices})")


class Client:
    """A connection to one tuneyard server.

    ``timeout`` bounds each unary call (``None``: no deadline); streams have none.
    Use as a context manager, or call :meth:`close`.

    Security (see :mod:`tuneyard.client.connection`): TLS is used when ``tls_ca`` (the CA that
    signed the server's certificate), ``tls_cert`` or ``tls`` is given; ``tls=True`` alone trusts
    the system's CAs. ``tls_cert`` + ``tls_key`` are the client's certificate and key for mutual
    TLS. Each is a path to a PEM file or the PEM contents as ``bytes``. ``token`` is sent as
    ``authorization: Bearer <token>`` on every call, the watch stream included; it defaults to
    ``$TUNEYARD_TOKEN`` (pass ``token=""`` to send none) and never shows in ``repr`` or errors.
    """

    watch_retries = 10  # reconnect attempts per outage before watch() gives up
    watch_backoff = 0.2  # first reconnect delay in seconds, doubled up to watch_backoff_max
    watch_backoff_max = 5.0

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        credentials = channel_credentials(tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        resolved = resolve_token(token)
        self.tls = credentials is not None
        self.client_certificate = bool(tls_cert)
        self.has_token = resolved is not None
        self._channel = open_channel(self.address, credentials, resolved)
        self._stub = service_pb2_grpc.TrainingServiceStub(self._channel)
        self._external = ExternalStudies(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; the client is unusable afterwards."""
        self._channel.close()

    def __repr__(self) -> str:
        mode = ("mutual TLS" if self.client_certificate else "TLS") if self.tls else "plaintext"
        return f"Client({self.address!r}, {mode}{', token' if self.has_token else ''})"

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # -- studies -------------------------------------------------------------------------------

    def create_study(self, spec: SpecSource, request_id: str | None = None) -> service_pb2.Study:
        """Validate, persist and schedule a study.

        The request id makes retries safe (the server returns the first study
        for a repeated id), so one UNAVAILABLE is retried with the same id.
        """
        request = service_pb2.CreateStudyRequest(spec=load_spec(spec), request_id=request_id or str(uuid.uuid4()))
        try:
            return self._call("CreateStudy", request)
        except TuneyardError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(self.watch_backoff)
            return self._call("CreateStudy", request)

    def get_study(self, study_id: str) -> service_pb2.Study:
        return self._call("GetStudy", service_pb2.GetStudyRequest(study_id=study_id))

    def list_studies(self, state: str | int | None = None, page_size: int = 50) -> Iterator[service_pb2.Study]:
        """All studies (optionally only those in ``state``), fetched page by page."""
        request = service_pb2.ListStudiesRequest(page_size=page_size, state=parse_state(state))
        while True:
            response = self._call("ListStudies", request)
            yield from response.studies
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def cancel_study(self, study_id: str) -> service_pb2.Study:
        return self._call("CancelStudy", service_pb2.CancelStudyRequest(study_id=study_id))

    # -- trials, plugins, server ---------------------------------------------------------------

    def list_trials(self, study_id: str, page_size: int = 100) -> Iterator[service_pb2.Trial]:
        request = service_pb2.ListTrialsRequest(study_id=study_id, page_size=page_size)
        while True:
            response = self._call("ListTrials", request)
            yield from response.trials
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def get_trial(self, study_id: str, trial_id: int) -> service_pb2.Trial:
        return self._call("GetTrial", service_pb2.GetTrialRequest(study_id=study_id, trial_id=trial_id))

    # -- typed results (plain dataclasses; the methods above return the raw messages) ------------

    def study(self, study_id: str) -> Study:
        """The study as a :class:`~tuneyard.client.results.Study`: state names, ints, datetimes."""
        return Study.from_proto(self.get_study(study_id))

    def studies(self, state: str | int | None = None) -> list[Study]:
        return [Study.from_proto(s) for s in self.list_studies(state=state)]

    def trials(self, study_id: str) -> list[Trial]:
        """Every trial of the study as a :class:`~tuneyard.client.results.Trial`, by trial id."""
        spec = self.get_study(study_id).spec
        return [Trial.from_proto(t, spec) for t in self.list_trials(study_id)]

    def trial(self, study_id: str, trial_id: int) -> Trial:
        return Trial.from_proto(self.get_trial(study_id, trial_id), self.get_study(study_id).spec)

    def trials_dataframe(self, study_id: str) -> Any:
        """The study's trials as a pandas DataFrame, one row per trial, like Optuna's.

        Columns: ``number``, ``state``, ``value`` (``values_<metric>`` with several objectives),
        ``params_<name>``, ``metrics_<name>`` (last epoch), ``datetime_start``,
        ``datetime_complete``, ``duration`` (seconds), ``device``, ``epochs``. Raises ImportError
        when pandas is not installed (``tuneyard.client.results.trial_rows`` gives plain dicts).
        """
        study = self.study(study_id)
        return trials_dataframe(self.trials(study_id), study.objectives)

    def result(self, study_id: str, spec: spec_pb2.StudySpec | None = None) -> RunResult:
        """The study's outcome now, with the best trial's full configuration (plugin defaults included)."""
        return RunResult.from_study(self.get_study(study_id), spec, self._plugins_if_listed())

    def _plugins_if_listed(self) -> service_pb2.ListPluginsResponse | None:
        """The plugin list for a resolved configuration; None if the server will not list them."""
        try:
            return self.plugins()
        except TuneyardError:
            return None  # the configuration then lacks the plugins' defaults, nothing else

    def plugins(self, kind: str = "") -> service_pb2.ListPluginsResponse:
        return self._call("ListPlugins", service_pb2.ListPluginsRequest(kind=kind))

    def info(self) -> service_pb2.ServerInfo:
        return self._call("GetServerInfo", service_pb2.GetServerInfoRequest())

    # -- streaming -----------------------------------------------------------------------------

    def watch(self, study_id: str, after_sequence: int = 0) -> Iterator[service_pb2.StudyEvent]:
        """Yield the study's events after ``after_sequence``, ending after the terminal one.

        A broken stream is re-opened from the last sequence seen, with
        exponential backoff, at most ``watch_retries`` times in a row; events
        at or below that sequence are dropped, so none is lost or repeated.
        """
        last = after_sequence
        failures = 0
        while True:
            call = self._stub.WatchStudy(service_pb2.WatchStudyRequest(study_id=study_id, after_sequence=last))
            cause: TuneyardError | None = None
            received = 0
            try:
                for event in call:
                    if event.sequence <= last:
                        continue
                    last = event.sequence
                    failures = 0
                    received += 1
                    yield event
                    if is_terminal(event):
                        return
            except grpc.RpcError as err:
                cause = from_rpc_error(err)
                if cause.code not in _RETRYABLE_WATCH or _handshake_failed(cause):
                    raise cause from err
            finally:
                call.cancel()
            if cause is None and received == 0 and self._finished(study_id):
                # A clean, empty stream of a finished study: we were already past its terminal event.
                return
            failures += 1
            if failures > self.watch_retries:
                reason = str(cause) if cause else "stream ended before the study finished"
                raise TuneyardError(
                    cause.code if cause else grpc.StatusCode.UNAVAILABLE,
                    f"watching study {study_id} failed after {self.watch_retries} reconnects: {reason}",
                )
            time.sleep(min(self.watch_backoff * 2 ** (failures - 1), self.watch_backoff_max))

    def _finished(self, study_id: str) -> bool:
        try:
            return self.get_study(study_id).state in TERMINAL_STATES
        except TuneyardError as err:
            if err.code == grpc.StatusCode.UNAVAILABLE:
                return False
            raise

    def wait(
        self,
        study_id: str,
        *,
        after_sequence: int = 0,
        on_event: Callable[[service_pb2.StudyEvent], None] | None = None,
    ) -> RunResult:
        """Watch a study to its end (calling ``on_event`` per event), then fetch its result."""
        for event in self.watch(study_id, after_sequence=after_sequence):
            if on_event is not None:
                on_event(event)
        return self.result(study_id)

    def run(
        self,
        spec: SpecSource,
        *,
        on_event: Callable[[service_pb2.StudyEvent], None] | None = None,
        request_id: str | None = None,
    ) -> RunResult:
        """Create a study, follow it to the end and return the best configuration.

        Does not raise when the study fails or is cancelled: check
        ``result.succeeded`` / ``result.study.state`` and ``result.study.error``.
        """
        spec = load_spec(spec)
        study = self.create_study(spec, request_id=request_id)
        for event in self.watch(study.study_id):
            if on_event is not None:
                on_event(event)
        return self.result(study.study_id, spec)

    # -- after a study's run: its checkpoints out, more budget, deletion -----------------------

    def download_checkpoint(
        self, study_id: str, trial_id: int = 0, out: str | os.PathLike[str] | None = None
    ) -> lifecycle.Download:
        """Write a trial's checkpoint (0: the best trial's) to ``out`` (default ``<study>-trial-<n>.pt``),
        verified against the server's size and SHA-256 and renamed into place only then."""
        return lifecycle.download(self._stub, study_id, trial_id, out)

    def extend_study(
        self, study_id: str, trials: int = 0, duration: str | float | None = None
    ) -> service_pb2.ExtendStudyResponse:
        """Reopen a COMPLETED or CANCELLED study for exactly ``trials`` more trials and/or ``duration``
        more time (seconds, or ``"10m"``); ``watch(study_id, response.after_sequence)`` follows it."""
        return self._call("ExtendStudy", lifecycle.extend_request(study_id, trials, duration))

    def delete_study(self, study_id: str) -> service_pb2.DeleteStudyResponse:
        """Remove an ended study with its trials, events and checkpoints from the server."""
        return self._call("DeleteStudy", service_pb2.DeleteStudyRequest(study_id=study_id))

    # -- external studies (the client evaluates the trials) ------------------------------------

    def ask(self, study_id: str, count: int = 1, client_id: str | None = None) -> TrialBatch:
        """Up to ``count`` new trials leased to ``client_id`` (default ``<hostname>-<pid>``).

        Fewer, or none, when the study's concurrency slots are taken; ``.study_done`` on the
        returned list says the study has no more trials to give.
        """
        return self._external.ask(study_id, count, client_id)

    def report(
        self, study_id: str, trial_id: int, step: int, value_or_metrics: Metrics, *, client_id: str = ""
    ) -> bool:
        """Store a step's metrics (a bare number is the objective's); False: the trial must stop.

        With ``client_id`` (the one the trial was asked with) the server refuses the call once the
        trial's lease ran out and it went to another client."""
        return self._external.report(study_id, trial_id, step, value_or_metrics, client_id=client_id)

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
        """End a trial COMPLETED, FAILED or INFEASIBLE; no metrics keeps its last report's.

        Safe to repeat: the same call again returns the same trial. ``client_id`` as for ``report``.
        """
        return self._external.tell(study_id, trial_id, value_or_metrics, state=state, error=error, client_id=client_id)

    def optimize(
        self,
        spec: SpecSource,
        fn: Callable[[ExternalTrial], Any],
        n_workers: int = 1,
        *,
        request_id: str | None = None,
        progress: bool | EventSink | None = True,
        client_id: str | None = None,
    ) -> RunResult:
        """Create an external study and evaluate its trials here, ``fn(trial)`` on ``n_workers`` threads.

        ``fn`` returns the objective's value, a dict of metrics, or None (its last report stands);
        ``Pruned`` (from ``trial.report``) ends it with its last report, ``Infeasible`` ends it
        INFEASIBLE, any other exception FAILED with the traceback. ``progress=True`` shows the
        CLI's display on stderr; a callable gets each ``StudyEvent``. Like :meth:`run`, it does not
        raise when the study fails: check ``result.succeeded``. An error of the calls themselves
        (or Ctrl-C) stops every worker from asking for more and is raised; the study stays on the
        server, as after :meth:`run` (:meth:`cancel_study` ends it; a held trial ends at its lease).
        """
        study = self._external.optimize(
            spec, fn, n_workers, request_id=request_id, progress=progress, client_id=client_id
        )
        return RunResult.from_study(study)  # an external study's configuration is its searched values
