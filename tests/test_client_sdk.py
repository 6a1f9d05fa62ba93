"""The SDK and CLI against a real in-process gRPC server with a scripted servicer.

The servicer is fake (no training) but the transport is real loopback gRPC, so
stream aborts, reconnects, status codes and pagination behave as in production.
"""

from __future__ import annotations

import io
import sys
import threading
import types
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from tuneyard.client import Client, TuneyardError, load_spec
from tuneyard.client.cli import main
from tuneyard.client.progress import LiveProgress, PlainProgress, make_display
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

SPEC = load_spec(Path(__file__).resolve().parent.parent / "examples" / "digits.yaml")
CONFIG = {
    "model.num_conv_layers": 2,
    "model.num_filters": 64,
    "model.filter_size": 3,
    "optimizer.name": "adam",
    "optimizer.lr": 0.004,
}


def _trial(trial_id: int, state: int = pb.TRIAL_COMPLETED, value: float = 0.9) -> pb.Trial:
    trial = pb.Trial(study_id="s1", trial_id=trial_id, state=state, device="cpu:0", epochs_completed=6)
    trial.config.update(CONFIG)
    if state == pb.TRIAL_COMPLETED:
        trial.objective_value = value
        trial.final_metrics.update({"val_accuracy": value, "train_loss": 0.1})
    else:
        trial.error = "RuntimeError: worker died"
        trial.failure_reason, trial.exit_code, trial.exit_signal = "crash", -9, "SIGKILL"
        trial.stderr_tail = "loading data\nKilled"
    return trial


def _events(final_state: int) -> list[pb.StudyEvent]:
    bodies = [
        {"study_state": pb.StudyStateChanged(state=pb.STUDY_RUNNING)},
        {"trial_started": pb.TrialStarted(trial=pb.Trial(trial_id=1, device="cpu:0"))},
        {"trial_progress": pb.TrialProgress(trial_id=1, epoch=1, metrics={"val_accuracy": 0.5})},
        {"trial_progress": pb.TrialProgress(trial_id=1, epoch=2, metrics={"val_accuracy": 0.8})},
        {"trial_finished": pb.TrialFinished(trial=_trial(1, value=0.8))},
        {"best_trial_changed": pb.BestTrialChanged(trial=_trial(1, value=0.8))},
        {"trial_started": pb.TrialStarted(trial=pb.Trial(trial_id=2, device="cpu:1"))},
        {"trial_finished": pb.TrialFinished(trial=_trial(2, pb.TRIAL_FAILED))},
        {"study_state": pb.StudyStateChanged(state=final_state, test_metrics={"test_accuracy": 0.97})},
    ]
    return [pb.StudyEvent(sequence=i, study_id="s1", **body) for i, body in enumerate(bodies, start=1)]


def _page(items: list, token: str, size: int) -> tuple[list, str]:
    start = int(token or 0)
    return items[start : start + size], str(start + size) if start + size < len(items) else ""


class FakeService(service_pb2_grpc.TrainingServiceServicer):
    """Stores one study; can break the first watch stream and fail the first CreateStudy."""

    def __init__(self, final_state: int = pb.STUDY_COMPLETED) -> None:
        self.events = _events(final_state)
        self.study = pb.Study(
            study_id="s1",
            spec=SPEC,
            state=final_state,
            best_trial=_trial(1, value=0.8),
            test_metrics={"test_accuracy": 0.97},
        )
        self.study.trial_counts.completed, self.study.trial_counts.failed = 1, 1
        if final_state == pb.STUDY_FAILED:
            self.study.error = "too many failed trials"
        self.watch_requests: list[int] = []
        self.create_request_ids: list[str] = []
        self.break_first_watch_after: int | None = None  # abort with UNAVAILABLE after N events
        self.end_first_watch_after: int | None = None  # end cleanly (no terminal) after N events
        self.ignore_after_sequence = False  # replay from the start on every watch
        self.fail_creates = 0
        self.always_unavailable = False

    def CreateStudy(self, request, context):
        self.create_request_ids.append(request.request_id)
        if request.spec.budget.max_trials <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "spec.budget.max_trials: must be > 0")
        if self.fail_creates:
            self.fail_creates -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
        return pb.Study(study_id="s1", spec=request.spec, state=pb.STUDY_PENDING, request_id=request.request_id)

    def GetStudy(self, request, context):
        if request.study_id != "s1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"study {request.study_id} not found")
        return self.study

    def ListStudies(self, request, context):
        studies = [pb.Study(study_id=f"s{i}", spec=SPEC, state=pb.STUDY_COMPLETED) for i in range(1, 6)]
        page, token = _page(studies, request.page_token, request.page_size)
        return pb.ListStudiesResponse(studies=page, next_page_token=token)

    def CancelStudy(self, request, context):
        return pb.Study(study_id=request.study_id, state=pb.STUDY_CANCELLED)

    def ListTrials(self, request, context):
        trials = [_trial(1, value=0.8), _trial(2, pb.TRIAL_FAILED), _trial(3, value=0.7)]
        page, token = _page(trials, request.page_token, 2)
        return pb.ListTrialsResponse(trials=page, next_page_token=token)

    def GetTrial(self, request, context):
        if request.study_id != "s1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"study {request.study_id} not found")
        return _trial(request.trial_id, pb.TRIAL_FAILED if request.trial_id == 2 else pb.TRIAL_COMPLETED)

    def ListPlugins(self, request, context):
        param = pb.PluginParameter(name="lr", type="float")
        param.default.number_value = 0.001
        return pb.ListPluginsResponse(
            plugins=[
                pb.Plugin(
                    kind="optimizer",
                    name="adam",
                    distribution="tuneyard",
                    version="0.1.0",
                    description="Adam [Kingma & Ba]",
                    parameters=[param],
                )
            ],
            load_errors=[pb.PluginLoadError(source="broken-plugin", message="ImportError: boom")],
        )

    def GetServerInfo(self, request, context):
        return pb.ServerInfo(
            version="0.1.0", executor="local", devices=[pb.Device(name="cpu", kind="cpu", slots_total=2, slots_busy=1)]
        )

    def WatchStudy(self, request, context):
        self.watch_requests.append(request.after_sequence)
        if self.always_unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        if request.study_id != "s1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"study {request.study_id} not found")
        first = len(self.watch_requests) == 1
        after = 0 if self.ignore_after_sequence else request.after_sequence
        for sent, event in enumerate((e for e in self.events if e.sequence > after), start=1):
            yield event
            if first and sent == self.break_first_watch_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            if first and sent == self.end_first_watch_after:
                return


@pytest.fixture
def service() -> Iterator[FakeService]:
    yield FakeService()


@pytest.fixture
def address(service: FakeService) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_TrainingServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address, timeout=10) as c:
        c.watch_backoff = 0.01
        yield c


def test_watch_reconnects_after_unavailable_without_loss_or_repeat(client: Client, service: FakeService) -> None:
    service.break_first_watch_after = 3
    sequences = [event.sequence for event in client.watch("s1")]
    assert sequences == list(range(1, 10))
    assert service.watch_requests == [0, 3]


def test_watch_drops_replayed_events_and_resumes_after_a_clean_early_end(client: Client, service: FakeService) -> None:
    service.end_first_watch_after = 4
    service.ignore_after_sequence = True  # a server replaying too much must not cause repeats
    sequences = [event.sequence for event in client.watch("s1", after_sequence=2)]
    assert sequences == list(range(3, 10))
    assert service.watch_requests == [2, 4]


def test_watch_gives_up_after_bounded_retries(client: Client, service: FakeService) -> None:
    service.always_unavailable = True
    client.watch_retries = 2
    with pytest.raises(TuneyardError) as info:
        list(client.watch("s1"))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert service.watch_requests == [0, 0, 0]


def test_watch_of_unknown_study_is_not_found_at_once(client: Client, service: FakeService) -> None:
    with pytest.raises(TuneyardError, match="^NOT_FOUND: study nope not found$"):
        list(client.watch("nope"))
    assert service.watch_requests == [0]


def test_create_study_retries_unavailable_once_with_the_same_request_id(client: Client, service: FakeService) -> None:
    service.fail_creates = 1
    study = client.create_study(SPEC)
    assert study.study_id == "s1"
    first, second = service.create_request_ids
    assert first == second and len(first) == 36
    client.create_study(SPEC, request_id="mine")
    assert service.create_request_ids[-1] == "mine"


def test_server_errors_become_tuneyard_errors(client: Client) -> None:
    bad = load_spec({"name": "x", "budget": {"max_trials": 0}})
    with pytest.raises(TuneyardError) as info:
        client.create_study(bad)
    assert str(info.value) == "INVALID_ARGUMENT: spec.budget.max_trials: must be > 0"


def test_pagination_is_followed(client: Client) -> None:
    assert [s.study_id for s in client.list_studies(page_size=2)] == ["s1", "s2", "s3", "s4", "s5"]
    assert [t.trial_id for t in client.list_trials("s1")] == [1, 2, 3]
    assert client.get_trial("s1", 3).trial_id == 3
    assert client.plugins().plugins[0].name == "adam"
    assert client.info().executor == "local"
    assert client.cancel_study("s1").state == pb.STUDY_CANCELLED


def test_run_returns_best_config_with_ints_restored(client: Client, service: FakeService) -> None:
    service.break_first_watch_after = 5
    seen: list[int] = []
    result = client.run(SPEC, on_event=lambda e: seen.append(e.sequence))
    assert seen == list(range(1, 10))
    assert result.succeeded
    assert result.best_config == CONFIG and type(result.best_config["model.num_filters"]) is int
    assert result.best_metrics["val_accuracy"] == pytest.approx(0.8)
    assert result.test_metrics == {"test_accuracy": pytest.approx(0.97)}


# -- the CLI over the same server -----------------------------------------------------------------


def test_cli_run_prints_trials_and_best_config(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"
    assert main(["--server", address, "run", str(spec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trial 1 COMPLETED" in out and "trial 2 FAILED (crash)  exit code -9 (SIGKILL)" in out
    assert "error: RuntimeError: worker died" in out and "tuneyard trial s1 TRIAL_ID" in out
    assert "best_config:\n  model.num_conv_layers: 2\n  model.num_filters: 64\n" in out
    assert "test_metrics:\n  test_accuracy: 0.97" in out and "best_metrics:" in out


def test_cli_run_exits_1_when_the_study_fails(capsys: pytest.CaptureFixture[str]) -> None:
    service = FakeService(final_state=pb.STUDY_FAILED)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_TrainingServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert main(["watch", "s1", "--server", f"127.0.0.1:{port}"]) == 1
    finally:
        server.stop(grace=None)
    captured = capsys.readouterr()
    assert "#9 study FAILED" in captured.out
    assert "error: study s1 FAILED: too many failed trials" in captured.err


def test_cli_table_commands(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in [
        (["studies", "--state", "completed"], "s5"),
        (["trials", "s1"], "FAILED (crash)"),
        (["trial", "s1", "1"], "val_accuracy"),
        (["trial", "s1", "2"], "exit code -9 (SIGKILL)"),
        (["best", "s1"], "model.num_filters: 64"),
        (["cancel", "s1"], "study s1: CANCELLED"),
        (["plugins"], "lr:float=0.001"),
        (["info"], "executor: local"),
    ]:
        assert main(["--server", address, *argv]) == 0, argv
        out = capsys.readouterr().out
        assert expected in out, (argv, out)
    main(["--server", address, "plugins"])
    assert "broken-plugin: ImportError: boom" in capsys.readouterr().out


def test_cli_trial_shows_a_failed_trials_reason_traceback_and_stderr(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--server", address, "trial", "s1", "2"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "FAILED (crash)",
        "the worker process died",
        "exit code -9 (SIGKILL)",
        "retries",
        "RuntimeError: worker died",
        "stderr (last 2 lines)",
        "loading data",
        "Killed",
    ):
        assert expected in out, (expected, out)
    assert main(["--server", address, "trial", "nope", "2"]) == 2
    assert "error: NOT_FOUND: study nope not found" in capsys.readouterr().err


def test_cli_server_error_exits_2(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", address, "best", "nope"]) == 2
    assert "error: NOT_FOUND: study nope not found" in capsys.readouterr().err
    assert main(["--server", address, "studies", "--state", "sleepy"]) == 2
    assert "unknown study state" in capsys.readouterr().err


def test_cli_demo_uses_the_packaged_example_and_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: dict[str, object] = {}

    class Handle:
        def __init__(self) -> None:
            self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            service_pb2_grpc.add_TrainingServiceServicer_to_server(FakeService(), self.server)
            self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
            self.server.start()
            self.stopped = threading.Event()

        def stop(self) -> None:
            self.server.stop(grace=None)
            self.stopped.set()

    def start_server(**kwargs: object) -> Handle:
        calls.update(kwargs)
        calls["handle"] = Handle()
        return calls["handle"]  # type: ignore[return-value]

    fake = types.ModuleType("tuneyard.server.app")
    fake.start_server = start_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tuneyard.server.app", fake)
    assert main(["demo", "--data-dir", str(tmp_path), "--cpu-slots", "2"]) == 0
    assert calls["data_dir"] == tmp_path and calls["cpu_slots"] == 2 and calls["port"] == 0
    assert calls["host"] == "127.0.0.1"
    assert calls["handle"].stopped.is_set()  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "digits-cnn-search" in out and "test accuracy of the best configuration: 0.9700" in out


def test_live_progress_on_a_terminal_shows_bars_and_best_so_far() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    display = make_display(SPEC, console, live=True)
    assert isinstance(display, LiveProgress)
    with display:
        for event in _events(pb.STUDY_COMPLETED):
            display(event)
    text = buffer.getvalue()
    assert "trial 1 [cpu:0]" in text and "1/6" in text and "2/8" in text
    assert "best so far: val_accuracy=0.8000 (trial 1)" in text
    assert "trial 2 FAILED" in text
    assert isinstance(make_display(SPEC, Console(file=io.StringIO()), live=True), PlainProgress)
