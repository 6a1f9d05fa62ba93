"""`tuneyard report`: a self-contained HTML report of real studies run on the session server."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import grpc
import pytest
from support import REPORT_SECTIONS as SECTIONS
from support import tiny_spec, to_proto, watch_all

from tuneyard.client import report
from tuneyard.client.cli import main
from tuneyard.common import report_data, report_html
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

SVGS = {"best": 0, "trials": 0, "pareto": 0, "slice": 2}  # single objective, two parameters; others 1
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run(server, spec) -> pb.Study:
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
        watch_all(stub, study.study_id)
        return stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))


@pytest.fixture(scope="module")
def single(server) -> pb.Study:
    """4 trials, 2 epochs: a log-scaled float and a categorical parameter; a name a browser would run."""
    spec = tiny_spec(
        name="<script>alert(1)</script> & co",
        search_space=[
            {"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.1, "log": True}},
            {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
        ],
        budget={"max_trials": 4, "max_concurrent_trials": 2},
    )
    return _run(server, spec)


@pytest.fixture(scope="module")
def multi(server) -> pb.Study:
    spec = tiny_spec(
        objectives=[{"metric": "val_accuracy", "mode": "MAXIMIZE"}, {"metric": "params", "mode": "MINIMIZE"}],
        search_space=[{"name": "model.num_filters", "int_range": {"low": 2, "high": 32, "log": True}}],
        budget={"max_trials": 4, "max_concurrent_trials": 2},
    )
    del spec["objective"]
    return _run(server, spec)


def _report(server, study: pb.Study, tmp_path: Path, *extra: str) -> str:
    out = tmp_path / "report.html"
    code = main(["--server", server.address, "report", study.study_id, "--out", str(out), *extra])
    assert code == 0
    return out.read_text()


def _section(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {sid}"
    return match.group(1)


def test_report_has_every_section_with_one_svg_per_plot_and_every_trial(server, single, stub, tmp_path):
    assert single.state == pb.STUDY_COMPLETED
    page = _report(server, single, tmp_path)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=single.study_id)).trials
    assert len(trials) == 4
    for sid in SECTIONS:
        body = _section(page, sid)
        assert body.count("<svg") == SVGS.get(sid, 1), sid
    assert "single objective: no Pareto front" in _section(page, "pareto")
    table = _section(page, "trials")
    for trial in trials:
        assert f'<tr id="trial-{trial.trial_id}" data-trial="{trial.trial_id}">' in table
        assert f'data-trial="{trial.trial_id}"' in _section(page, "learning-curves")
        assert f'data-trial="{trial.trial_id}"' in _section(page, "occupancy")
    assert 'id="best-so-far"' in _section(page, "history")
    assert "optimizer.lr (log)" in _section(page, "parallel-coordinates")
    for name in {t.config["optimizer.name"] for t in trials}:  # categorical axis: one tick per category
        assert f">{name}<" in _section(page, "parallel-coordinates")


def test_report_is_offline_and_escapes_user_strings(server, single, tmp_path):
    page = _report(server, single, tmp_path)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|img|iframe)\b|<script [^>]*src", page)
    assert page.count("<script>") == 1 and "<script>alert" not in page  # the page's own script only
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_report_of_a_multi_objective_study_highlights_its_pareto_front(server, multi, stub, tmp_path):
    assert multi.state == pb.STUDY_COMPLETED
    page = _report(server, multi, tmp_path)
    pareto = _section(page, "pareto")
    assert pareto.count("<svg") == 1
    front = {t.trial_id for t in multi.pareto_front}
    assert front
    for trial in stub.ListTrials(pb.ListTrialsRequest(study_id=multi.study_id)).trials:
        cls = "pareto-point" if trial.trial_id in front else "dominated-point"
        assert f'class="{cls}" data-trial="{trial.trial_id}"' in pareto
    assert "params" in _section(page, "trials")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_png_option_writes_one_png_per_plot(server, multi, tmp_path):
    _report(server, multi, tmp_path, "--png", str(tmp_path / "png"))
    written = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert written == sorted(f"{name}.png" for name in report.PLOTS)
    for name in written:
        assert (tmp_path / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_option_without_matplotlib_says_how_to_get_it(server, single, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "r.html"
    code = main(["--server", server.address, "report", single.study_id, "--out", str(out), "--png", str(tmp_path)])
    assert code == 2 and not out.exists()
    assert "pip install 'tuneyard[report]'" in capsys.readouterr().err


def test_importance_is_the_normalised_share_of_variance_between_groups():
    # the objective follows `a` exactly and ignores `b`: all importance goes to `a`
    assert report_data.variance_share(["x", "x", "y", "y"], [1.0, 1.0, 3.0, 3.0]) == 1.0
    assert report_data.variance_share(["x", "y", "x", "y"], [1.0, 1.0, 3.0, 3.0]) == 0.0
    assert report_data.variance_share([1, 2, 3], [2.0, 2.0, 2.0]) == 0.0  # no variance: nothing to explain


def test_best_so_far_honours_the_direction():
    points = [(1, 0.5), (2, 0.3), (3, 0.7), (4, 0.6)]
    assert report_data.best_so_far(points, maximize=True) == [(1, 0.5), (2, 0.5), (3, 0.7), (4, 0.7)]
    assert report_data.best_so_far(points, maximize=False) == [(1, 0.5), (2, 0.3), (3, 0.3), (4, 0.3)]


def test_a_study_without_results_still_renders_every_section():
    spec = to_proto(
        tiny_spec(
            search_space=[
                {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
                {
                    "name": "optimizer.momentum",
                    "float_range": {"low": 0.5, "high": 0.99},
                    "condition": {"parent": "optimizer.name", "values": ["sgd"]},
                },
            ]
        )
    )
    failed = pb.Trial(trial_id=1, state=pb.TRIAL_FAILED, failure_reason="oom", error="Trace\nOOM <b>", device="gpu")
    failed.config.update({"optimizer.name": "adam"})
    failed.start_time.FromSeconds(100)
    running = pb.Trial(trial_id=2, state=pb.TRIAL_RUNNING, device="gpu")
    running.config.update({"optimizer.name": "sgd", "optimizer.momentum": 0.9})
    running.start_time.FromSeconds(101)
    for trials in ([], [failed, running]):
        data = report_data.ReportData(pb.Study(study_id="st-x", spec=spec), trials, report_data.objectives_of(spec))
        page = report_html.build_html(data)
        assert all(f'<section id="{sid}">' in page for sid in SECTIONS)
        assert "<b>" not in page
    assert "FAILED (oom): OOM &lt;b&gt;" in page
