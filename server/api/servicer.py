"""The gRPC servicer: each handler validates, converts, delegates. Collaborators are injected."""

from __future__ import annotations

import dataclasses
import os
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from tuneyard import __version__
from tuneyard.plugins.api import KINDS
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.api import convert
from tuneyard.server.api.errors import streaming, unary
from tuneyard.server.api.security import Authenticator
from tuneyard.server.execution.protocol import Executor
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.server.limits import (
    CHECKPOINT_CHUNK_BYTES,
    MAX_DOWNLOADS,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_METRICS,
    MAX_NAME_CHARS,
    MAX_RESPONSE_BYTES,
    MAX_SPEC_BYTES,
    MAX_SUGGEST,
    MAX_WATCHERS,
    MAX_WATCHERS_PER_CLIENT,
)
from tuneyard.server.storage.files import open_checkpoint
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import InvalidArgument, NotFound, ResourceExhausted, under
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.external import Completion
from tuneyard.server.study.manager import StudyManager
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_ID_LENGTH = MAX_ID_CHARS
_TRIAL_EVENTS = ("trial_started", "trial_finished", "best_trial_changed")
Shown = TypeVar("Shown", pb.Trial, pb.Study, pb.StudyEvent)


def shown_path(data_dir: str, path: str) -> str:
    """A checkpoint's path as users see it: relative to the server's data directory when it lies in
    it (`studies/st-.../trial-1/checkpoint.pt`), else as it is (a --checkpoint-dir elsewhere). The
    store and the runner keep the full path: a resumed trial opens it."""
    absolute, base = os.path.abspath(path), os.path.abspath(data_dir)
    if path and absolute.startswith(base + os.sep):
        return os.path.relpath(absolute, base)
    return path


def _trials_in(msg: pb.Trial | pb.Study | pb.StudyEvent) -> Iterator[pb.Trial]:
    if isinstance(msg, pb.Trial):
        yield msg
    elif isinstance(msg, pb.Study):
        if msg.HasField("best_trial"):
            yield msg.best_trial
        yield from msg.pareto_front
    elif (kind := msg.WhichOneof("event")) in _TRIAL_EVENTS:
        yield getattr(msg, kind).trial


def _duration_s(request: pb.ExtendStudyRequest) -> float:
    value = request.add_duration
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument("add_duration", f"must not be negative, got {value.ToJsonString()}")
    return value.seconds + value.nanos / 1e9


def client_identity(context: grpc.ServicerContext, authenticator: Authenticator | None = None) -> str:
    """Who a request comes from, for per-client caps: the name of its token when the server
    checks tokens, else the peer's host without its port.

    "ipv4:127.0.0.1:54321" -> "127.0.0.1", "ipv6:[::1]:54321" -> "::1"; other peers (a unix
    socket) as grpc names them.
    """
    if authenticator is not None:
        name = authenticator.identify(context.invocation_metadata())
        if name is not None:
            return f"token {name}"
    peer = context.peer() or ""
    scheme, _, address = peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        host = urllib.parse.unquote(address).rpartition(":")[0]
        return host.strip("[]") or peer
    return peer


def _page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size", f"must not be negative, got {value}")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fitting(messages: Sequence[Message]) -> int:
    """How many of the leading messages fit in one response that any client can receive (gRPC's default
    limit is 4 MiB), at least one: a page of large studies or trials is shorter, not refused."""
    total = 0
    for count, msg in enumerate(messages):
        total += msg.ByteSize() + 16  # the field's tag and length
        if total > MAX_RESPONSE_BYTES and count:
            return count
    return len(messages)


def _study_id(value: str) -> str:
    if not value:
        raise InvalidArgument("study_id", "required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument("study_id", f"longer than {MAX_ID_LENGTH} characters")
    return value


def _trial_id(value: int) -> int:
    if value <= 0:
        raise InvalidArgument("trial_id", f"must be positive, got {value}")
    return value


def _metrics(values: Mapping[str, float]) -> dict[str, float]:
    if len(values) > MAX_METRICS:
        raise InvalidArgument("metrics", f"more than {MAX_METRICS} metrics ({len(values)})")
    for name in values:
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument("metrics", f"a metric name is longer than {MAX_NAME_CHARS} characters")
    return dict(values)


def _holder(value: str) -> str:
    """A request's client_id, checked ("" when none is given)."""
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument("client_id", f"longer than {MAX_NAME_CHARS} characters")
    if any(not c.isprintable() for c in value):
        raise InvalidArgument("client_id", "must be printable text")
    return value


def _client_id(value: str, context: grpc.ServicerContext, authenticator: Authenticator | None) -> str:
    """Whom SuggestTrials leases trials to: the request's client_id, else who sends it."""
    return _holder(value) or client_identity(context, authenticator)


def _completion(request: pb.CompleteTrialRequest, study_id: str, path: str = "") -> Completion:
    """A CompleteTrialRequest's checked fields; `path` prefixes the field of an error (a completion
    inside SuggestTrials), whose own study_id may be empty but not another study's."""
    with under(path):
        if request.study_id and request.study_id != study_id:
            raise InvalidArgument("study_id", f"must be empty or {study_id!r}, got {request.study_id!r}")
        state = convert.trial_state_from_proto(request.state)
        if state is None:
            raise InvalidArgument("state", "required: TRIAL_COMPLETED, TRIAL_FAILED or TRIAL_INFEASIBLE")
        if len(request.error) > MAX_ERROR_CHARS:
            raise InvalidArgument("error", f"longer than {MAX_ERROR_CHARS} characters")
        return Completion(
            _trial_id(request.trial_id), state, _metrics(request.metrics), request.error, _holder(request.client_id)
        )


class TrainingServicer(service_pb2_grpc.TrainingServiceServicer):
    def __init__(
        self,
        *,
        storage: Store,
        studies: StudyManager,
        hub: EventHub,
        registry: PluginRegistry,
        scheduler: DeviceScheduler,
        executor: Executor,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.storage, self.studies, self.hub = storage, studies, hub
        self.registry, self.scheduler, self.executor = registry, scheduler, executor
        self.authenticator = authenticator
        self._max_watchers, self._watchers_per_client = MAX_WATCHERS, MAX_WATCHERS_PER_CLIENT
        self._watchers = threading.BoundedSemaphore(MAX_WATCHERS)
        self._watching: dict[str, int] = {}  # client -> its open streams
        self._watching_lock = threading.Lock()
        self._downloads = threading.BoundedSemaphore(MAX_DOWNLOADS)

    def _shown(self, msg: Shown) -> Shown:
        """`msg` with its trials' checkpoint paths relative to the data directory (see `shown_path`)."""
        for trial in _trials_in(msg):
            trial.checkpoint = shown_path(str(self.storage.data_dir), trial.checkpoint)
        return msg

    def _study(self, study_id: str) -> pb.Study:
        return self._shown(convert.study_to_proto(self.storage.get_study(study_id)))

    @unary
    def CreateStudy(self, request: pb.CreateStudyRequest, context: grpc.ServicerContext) -> pb.Study:
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "required")
        if len(request.request_id) > MAX_ID_LENGTH:
            raise InvalidArgument("request_id", f"longer than {MAX_ID_LENGTH} characters")
        size = request.spec.ByteSize()
        if size > MAX_SPEC_BYTES:
            raise InvalidArgument("spec", f"{size} bytes serialized; at most {MAX_SPEC_BYTES}")
        study = self.studies.create(convert.spec_to_dict(request.spec), request.request_id)
        return self._study(study.study_id)

    @unary
    def GetStudy(self, request: pb.GetStudyRequest, context: grpc.ServicerContext) -> pb.Study:
        return self._study(_study_id(request.study_id))

    @unary
    def ListStudies(self, request: pb.ListStudiesRequest, context: grpc.ServicerContext) -> pb.ListStudiesResponse:
        if request.state not in pb.StudyState.values():
            raise InvalidArgument("state", f"unknown state {request.state}")
        state = convert.study_state_from_proto(request.state)
        studies, token = self.storage.list_studies(_page_size(request.page_size), request.page_token, state)
        messages = [self._shown(convert.study_to_proto(s)) for s in studies]
        fit = _fitting(messages)
        if fit < len(messages):
            token = self.storage.study_page_token(studies[fit - 1].study_id)
        return pb.ListStudiesResponse(studies=messages[:fit], next_page_token=token)

    @unary
    def SuggestTrials(
        self, request: pb.SuggestTrialsRequest, context: grpc.ServicerContext
    ) -> pb.SuggestTrialsResponse:
        study_id = _study_id(request.study_id)
        study = self.studies.external(study_id)
        if not 1 <= request.count <= MAX_SUGGEST:
            raise InvalidArgument("count", f"must be from 1 to {MAX_SUGGEST}, got {request.count}")
        if len(request.completions) > MAX_SUGGEST:
            raise InvalidArgument("completions", f"more than {MAX_SUGGEST} ({len(request.completions)})")
        completions = [_completion(c, study_id, f"completions[{i}].") for i, c in enumerate(request.completions)]
        client = _client_id(request.client_id, context, self.authenticator)
        handout = study.suggest(request.count, client, completions)
        return pb.SuggestTrialsResponse(
            trials=[self._shown(convert.trial_to_proto(t)) for t in handout.trials],
            study_done=handout.done,
            completed=[self._shown(convert.trial_to_proto(t)) for t in handout.completed],
        )

    @unary
    def ReportTrial(self, request: pb.ReportTrialRequest, context: grpc.ServicerContext) -> pb.ReportTrialResponse:
        study = self.studies.external(_study_id(request.study_id))
        trial_id, holder = _trial_id(request.trial_id), _holder(request.client_id)
        stop = study.report(trial_id, request.step, _metrics(request.metrics), holder)
        return pb.ReportTrialResponse(decision=pb.STOP if stop else pb.CONTINUE)

    @unary
    def CompleteTrial(self, request: pb.CompleteTrialRequest, context: grpc.ServicerContext) -> pb.Trial:
        study_id = _study_id(request.study_id)
        study = self.studies.external(study_id)
        return self._shown(convert.trial_to_proto(study.complete(_completion(request, study_id))))

    @unary
    def CancelStudy(self, request: pb.CancelStudyRequest, context: grpc.ServicerContext) -> pb.Study:
        return self._shown(convert.study_to_proto(self.studies.cancel(_study_id(request.study_id))))

    @streaming
    def WatchStudy(self, request: pb.WatchStudyRequest, context: grpc.ServicerContext) -> Iterator[pb.StudyEvent]:
        study_id = _study_id(request.study_id)
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence", f"must not be negative, got {request.after_sequence}")
        after = request.after_sequence
        last, _ = self.storage.last_sequence(study_id)
        if after > last:
            raise InvalidArgument("after_sequence", f"{after} is past the study's last event ({last})")
        with self._watch_slot(client_identity(context, self.authenticator)):
            while True:
                for event in self.hub.follow(study_id, after, context.is_active):
                    after = event.sequence
                    yield self._shown(convert.event_to_proto(event))
                # A terminal event with more after it ended a run of an extended study: go on past it.
                if self.storage.last_sequence(study_id)[0] <= after or not context.is_active():
                    return

    @contextmanager
    def _watch_slot(self, client: str) -> Iterator[None]:
        """Holds one of the server's stream places and one of `client`'s, or raises ResourceExhausted."""
        with self._watching_lock:
            held = self._watching.get(client, 0)
            if held >= self._watchers_per_client:
                raise ResourceExhausted(
                    f"this client has {held} streams open (at most {self._watchers_per_client} per client); "
                    "close one or reconnect later"
                )
            if not self._watchers.acquire(blocking=False):
                raise ResourceExhausted(f"{self._max_watchers} streams are open on this server; reconnect later")
            self._watching[client] = held + 1
        try:
            yield
        finally:
            with self._watching_lock:
                self._watchers.release()
                self._watching[client] -= 1
                if not self._watching[client]:
                    del self._watching[client]

    @unary
    def ListTrials(self, request: pb.ListTrialsRequest, context: grpc.ServicerContext) -> pb.ListTrialsResponse:
        trials, token = self.storage.list_trials(
            _study_id(request.study_id), _page_size(request.page_size), request.page_token
        )
        messages = [self._shown(convert.trial_to_proto(t)) for t in trials]
        fit = _fitting(messages)
        if fit < len(messages):
            token = self.storage.trial_page_token(trials[fit - 1].study_id, trials[fit - 1].trial_id)
        return pb.ListTrialsResponse(trials=messages[:fit], next_page_token=token)

    @unary
    def GetTrial(self, request: pb.GetTrialRequest, context: grpc.ServicerContext) -> pb.Trial:
        trial = self.storage.get_trial(_study_id(request.study_id), _trial_id(request.trial_id))
        return self._shown(convert.trial_to_proto(trial))

    @streaming
    def DownloadCheckpoint(
        self, request: pb.DownloadCheckpointRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CheckpointChunk]:
        study_id = _study_id(request.study_id)
        if request.trial_id < 0:
            raise InvalidArgument("trial_id", f"must not be negative (0: the best trial), got {request.trial_id}")
        trial_id = request.trial_id
        if not trial_id:
            best = self.storage.get_study(study_id).best_trial
            if best is None:
                raise NotFound(f"study {study_id} has no best trial yet: name a trial")
            trial_id = best.trial_id
        trial = self.storage.get_trial(study_id, trial_id)
        fused = f" (in fused group {trial.fused_group}, which writes it when the trial leaves)"
        what = f"trial {trial_id}" + (fused if trial.fused_group and not trial.state.terminal else "")
        if not self._downloads.acquire(blocking=False):
            raise ResourceExhausted(f"{MAX_DOWNLOADS} downloads are running on this server; retry later")
        try:
            checkpoint = open_checkpoint(self.storage.checkpoint_dir, trial.checkpoint, what)
            with checkpoint.handle:
                path = shown_path(str(self.storage.data_dir), trial.checkpoint)
                chunks = checkpoint.chunks(CHECKPOINT_CHUNK_BYTES)
                first = pb.CheckpointChunk(size=checkpoint.size, sha256=checkpoint.sha256, trial_id=trial_id, path=path)
                first.data = next(chunks, b"")
                yield first
                for data in chunks:
                    if not context.is_active():
                        return
                    yield pb.CheckpointChunk(data=data)
        finally:
            self._downloads.release()

    @unary
    def DeleteStudy(self, request: pb.DeleteStudyRequest, context: grpc.ServicerContext) -> pb.DeleteStudyResponse:
        study_id = _study_id(request.study_id)
        trials, removed = self.studies.delete(study_id)
        return pb.DeleteStudyResponse(study_id=study_id, trials=trials, bytes_removed=removed)

    @unary
    def ExtendStudy(self, request: pb.ExtendStudyRequest, context: grpc.ServicerContext) -> pb.ExtendStudyResponse:
        study_id = _study_id(request.study_id)
        if request.add_trials < 0:
            raise InvalidArgument("add_trials", f"must not be negative, got {request.add_trials}")
        add_s = _duration_s(request)
        if not request.add_trials and not add_s:
            raise InvalidArgument("add_trials", "give add_trials or add_duration, or both: at least one positive")
        study, after = self.studies.extend(study_id, request.add_trials, add_s)
        return pb.ExtendStudyResponse(study=self._shown(convert.study_to_proto(study)), after_sequence=after)

    @unary
    def ListPlugins(self, request: pb.ListPluginsRequest, context: grpc.ServicerContext) -> pb.ListPluginsResponse:
        if request.kind and request.kind not in KINDS:
            raise InvalidArgument("kind", f"unknown plugin kind {request.kind!r} (known: {', '.join(KINDS)})")
        return pb.ListPluginsResponse(
            plugins=[convert.plugin_to_proto(e) for e in self.registry.entries(request.kind or None)],
            load_errors=[convert.load_error_to_proto(e) for e in self.registry.errors],
        )

    @unary
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        devices = [
            pb.Device(
                name=row.device.name,
                kind=row.device.kind,
                slots_total=row.workers.workers,
                slots_busy=row.workers.taken,
                memory_bytes=row.device.memory_bytes,
                trials=row.holders,
                description=row.device.description,
                share_in_use=row.share_in_use,
            )
            for row in self.scheduler.occupancy()
        ]
        nodes = [pb.Node(**dataclasses.asdict(node)) for node in self.executor.nodes()]
        return pb.ServerInfo(version=__version__, executor=self.executor.name, devices=devices, nodes=nodes)
