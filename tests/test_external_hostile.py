"""Hostile calls to an external study's three RPCs: generated counts, ids, steps, states, metric names and
values (NaN, infinities, huge, empty, odd text) always get OK or a proper refusal, never UNKNOWN or
INTERNAL; the server keeps serving, and what the study stored stays well-formed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
INT32 = st.one_of(st.integers(-3, 8), st.sampled_from([-(2**31), 2**31 - 1, 100, 101]))
TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "\x00", "名", "a" * 201, "value"]))
NUMBER = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]))
METRICS = st.dictionaries(TEXT, NUMBER, max_size=4)
QUICK = settings(deadline=None, database=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("external-hostile"), devices="cpu", cpu_slots=1)
    spec = {
        "external": {},
        "training": {"epochs": 5},
        "search_space": [{"name": "x", "float_range": {"low": 0.0, "high": 1.0}}],
        "objective": {"metric": "value", "mode": "MINIMIZE"},
        "budget": {"max_trials": 40, "max_concurrent_trials": 8},
    }
    with grpc.insecure_channel(handle.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        message = json_format.ParseDict(spec, spec_pb2.StudySpec())
        yield stub, stub.CreateStudy(pb.CreateStudyRequest(spec=message)).study_id
    handle.stop()


def outcome(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.details(), exc.code()
        return exc.code()
    return grpc.StatusCode.OK


COMPLETIONS = st.lists(
    st.builds(
        lambda t, state, m, sid: pb.CompleteTrialRequest(trial_id=t, state=state, metrics=m, study_id=sid),
        INT32,
        st.integers(0, 8),
        METRICS,
        st.sampled_from(["", "st-000000000000"]),
    ),
    max_size=3,
)
CALLS = st.one_of(
    st.builds(lambda c, who: ("suggest", pb.SuggestTrialsRequest(count=c, client_id=who)), INT32, TEXT),
    st.builds(lambda c, told: ("suggest", pb.SuggestTrialsRequest(count=c, completions=told)), INT32, COMPLETIONS),
    st.builds(
        lambda t, s, m: ("report", pb.ReportTrialRequest(trial_id=t, step=s, metrics=m)),
        INT32,
        INT32,
        METRICS,
    ),
    st.builds(
        lambda t, state, m, e: ("complete", pb.CompleteTrialRequest(trial_id=t, state=state, metrics=m, error=e)),
        INT32,
        st.one_of(st.integers(0, 8), st.sampled_from([-1, 2**31 - 1])),
        METRICS,
        TEXT,
    ),
)


def test_generated_calls_get_a_proper_status_and_leave_the_study_well_formed(target: tuple[Any, str]) -> None:
    stub, study_id = target
    methods = {"suggest": stub.SuggestTrials, "report": stub.ReportTrial, "complete": stub.CompleteTrial}
    seen: set[grpc.StatusCode] = set()

    @QUICK
    @given(calls=st.lists(CALLS, min_size=1, max_size=6), other_study=st.booleans())
    def check(calls: list[tuple[str, Any]], other_study: bool) -> None:
        for kind, request in calls:
            request.study_id = "st-000000000000" if other_study and kind != "suggest" else study_id
            code = outcome(lambda kind=kind, request=request: methods[kind](request, timeout=30))
            assert code in ALLOWED, (code, kind, request)
            seen.add(code)

    check()
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.NOT_FOUND in seen
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, page_size=100), timeout=30).trials
    for trial in trials:  # every stored value is finite and every stored step in range
        assert all(math.isfinite(v) for v in trial.final_metrics.values())
        stored = stub.GetTrial(pb.GetTrialRequest(study_id=study_id, trial_id=trial.trial_id), timeout=30)
        steps = [m.epoch for m in stored.metrics]
        assert steps == sorted(set(steps)) and all(1 <= s <= 5 for s in steps)
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).version
