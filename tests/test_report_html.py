"""The report's HTML, section by section, on a study of 24 trials built in memory (no server): legends,
the parallel coordinates' inactive tick, colours, the trial table, slice and contour plots, the best
trial's summary, the running trial's value, the Pareto front's colour and the dashboard's index row.
Fast: pure Python, about a second."""

from __future__ import annotations

import math
import re

import pytest
from support import tiny_spec, to_proto

from tuneyard.common import report_data, report_html, report_style
from tuneyard.common.report_data import ReportData, objectives_of, trials_done
from tuneyard.common.report_slice import ranked_parameters
from tuneyard.v1 import service_pb2 as pb

N = 24
CONDITIONAL = [
    {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
    {
        "name": "optimizer.momentum",
        "float_range": {"low": 0.5, "high": 0.99},
        "condition": {"parent": "optimizer.name", "values": ["sgd"]},
    },
    {"name": "optimizer.lr", "float_range": {"low": 1e-3, "high": 1e-1, "log": True}},
    {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}},
]


def _trial(i: int, state: pb.TrialState.ValueType = pb.TRIAL_COMPLETED, epochs: int = 4) -> pb.Trial:
    """Trial ``i``: adam (momentum inactive) on even ids; val_accuracy rises with lr, best at i = 24."""
    lr = 10 ** (-3 + 2 * i / N)
    config = {"optimizer.name": "adam" if i % 2 == 0 else "sgd", "optimizer.lr": lr, "model.num_conv_layers": 1 + i % 2}
    if i % 2:
        config["optimizer.momentum"] = 0.5 + 0.02 * i
    trial = pb.Trial(trial_id=i, state=state, device=f"cpu:{i % 2}", epochs_completed=epochs)
    trial.config.update(config)
    final = 0.5 + 0.4 * i / N
    for epoch in range(1, epochs + 1):
        trial.metrics.add(epoch=epoch, values={"val_accuracy": final * epoch / epochs, "val_loss": 1 / epoch})
    if state == pb.TRIAL_COMPLETED:
        trial.objective_value = final
        trial.end_time.FromSeconds(1000 + 2 * i + 2)
    trial.start_time.FromSeconds(1000 + 2 * i)
    return trial


def _study(trials: list[pb.Trial], **spec_overrides) -> ReportData:
    spec = to_proto(tiny_spec(search_space=CONDITIONAL, budget={"max_trials": N + 1}, **spec_overrides))
    study = pb.Study(study_id="st-test", spec=spec, state=pb.STUDY_RUNNING)
    done = [t for t in trials if t.state == pb.TRIAL_COMPLETED]
    study.trial_counts.completed = len(done)
    study.trial_counts.running = len(trials) - len(done)
    study.best_trial.CopyFrom(max(done, key=lambda t: t.objective_value))
    study.test_metrics.update({"test_accuracy": 0.91, "test_loss": 0.3})
    return ReportData(study, trials, objectives_of(spec))


@pytest.fixture(scope="module")
def data() -> ReportData:
    return _study([_trial(i) for i in range(1, N + 1)] + [_trial(N + 1, pb.TRIAL_RUNNING, epochs=2)])


@pytest.fixture(scope="module")
def page(data) -> str:
    return report_html.build_html(data)


def section(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {sid}"
    return match.group(1)


def test_plots_stretch_over_the_width(page):
    for tag in re.findall(r"<svg [^>]*>", page):
        assert "viewBox=" in tag and " width=" not in tag and " height=" not in tag
    assert "svg.plot{width:100%" in page


def test_24_trials_get_24_distinct_colours_the_same_in_every_plot(data, page):
    colours = [report_style.trial_colour(i) for i in range(1, N + 1)]
    assert len(set(colours)) == N
    curves = section(page, "learning-curves")
    strokes = dict(
        re.findall(r'<polyline class="curve" data-trial="(\d+)" fill="none" stroke="(#[0-9a-f]{6})"', curves)
    )
    assert len(strokes) == N + 1 and len(set(strokes.values())) == N + 1
    table = section(page, "trials")
    for trial_id, tone in strokes.items():  # the table's swatch of a trial is its curve's colour
        assert re.search(rf'data-v="{trial_id}"><i class="swatch" style="background:{tone}"', table)


def test_learning_curves_have_a_legend_entry_and_hover_text_per_trial(page):
    curves = section(page, "learning-curves")
    legend = curves[curves.index('id="curves-legend"') :]
    for i in range(1, N + 2):
        assert f'<span data-trial="{i}">' in legend
        assert re.search(rf'<circle data-trial="{i}" [^>]*><title>trial {i}, epoch 1: val_accuracy=', curves)
    assert "trial 25: 0.9167 (running)" in legend  # the running trial's current value
    assert 'stroke-dasharray="6 4"' in curves


def test_parallel_coordinates_keep_inactive_trials_and_colour_by_objective(data, page):
    axes, lines = report_data.parallel_data(data)
    momentum = next(a for a in axes if a.key == "optimizer.momentum")
    assert (0.0, "inactive") in momentum.ticks
    assert all(row[-1] is not None for i, row in lines if i <= N)  # every scored trial reaches the objective
    plot = section(page, "parallel-coordinates")
    assert 'class="inactive-tick"' in plot and ">inactive<" in plot
    best = data.study.best_trial.trial_id
    assert data.config(data.study.best_trial).get("optimizer.momentum") is None  # the best one is inactive there
    line = re.search(
        rf'<polyline class="pc-line" data-trial="{best}" data-points="(\d+)" fill="none" stroke="(#\w+)"', plot
    )
    assert line and int(line.group(1)) == len(axes) == 5
    assert line.group(2) == report_style.scale_colour(1.0)  # the best value: the top of the scale
    assert 'class="colour-bar"' in plot and "<linearGradient" in plot
    names = re.findall(r'<text class="axis-name"[^>]*>([^<]*)<title>([^<]*)</title>', plot)
    assert all(full.startswith(p["name"]) for (_, full), p in zip(names, CONDITIONAL, strict=False))
    assert len(names) == 5
    assert all(len(short) <= 16 for short, _ in names)


def test_slice_plots_and_the_heat_map_of_the_two_most_important_parameters(data, page):
    slices = section(page, "slice")
    assert slices.count("<svg") == len(CONDITIONAL)
    assert slices.count("<circle data-trial=") == N * len(CONDITIONAL)  # inactive values placed too
    top_two = ranked_parameters(data)[:2]
    contour = section(page, "contour")
    assert contour.count("<svg") == 1 and 'class="cell"' in contour
    assert f"over {top_two[0]} and {top_two[1]}" in contour
    assert contour.count("<circle data-trial=") == N


def test_trial_table_has_one_column_per_parameter_and_is_sortable(data, page):
    table = section(page, "trials")
    heads = re.findall(r'<th[^>]*data-col="([^"]*)"', table)
    assert heads == [
        "trial",
        "state",
        *(p["name"] for p in CONDITIONAL),
        "val_accuracy",
        "epochs",
        "device",
        "duration",
    ]
    rows = re.findall(r'<tr id="trial-(\d+)" data-trial="\d+">(.*?)</tr>', table)
    assert len(rows) == N + 1
    for _, row in rows:
        assert row.count("<td") == len(heads)
    adam = dict(rows)["2"]
    assert ">inactive<" in adam and ">adam<" in adam
    assert 'id="trial-filter"' in table
    assert "0.9167 (epoch 2)" in dict(rows)[str(N + 1)]  # the running trial's current value
    assert 'document.getElementById("trial-table")' in page and "<script src" not in page


def test_best_trial_summary_shows_objective_test_metrics_and_full_configuration(data, page):
    best = section(page, "best")
    assert "Best trial 24" in best and '<div class="big">0.9 <small>val_accuracy</small>' in best
    assert "test_accuracy</dt><dd>0.91" in best and "test_loss</dt><dd>0.3" in best
    assert "<td>dataset.name</td><td>digits</td>" in best and "<td>training.batch_size</td><td>128</td>" in best
    assert "<td>optimizer.lr</td><td><strong>0.1</strong></td>" in best  # searched values in bold, in place
    assert "Running now" in best and "trial 25 on cpu:1: val_accuracy 0.9167 at epoch 2 of 2" in best


def test_importance_note_sits_beside_its_plot_and_no_plot_is_an_empty_box(page):
    importance = section(page, "importance")
    assert 'class="side"' in importance and 'id="importance-note"' in importance
    assert page.index("importance-note") > page.index('<section id="importance">')
    empty = report_html.build_html(ReportData(pb.Study(study_id="st-x", spec=to_proto(tiny_spec())), [], []))
    for sid in ("learning-curves", "history", "parallel-coordinates", "slice", "contour", "importance", "occupancy"):
        body = section(empty, sid)
        assert "<svg" not in body and 'class="note empty"' in body, sid


def test_pareto_front_is_not_drawn_in_the_failed_colour():
    objectives = [{"metric": "val_accuracy", "mode": "MAXIMIZE"}, {"metric": "val_loss", "mode": "MINIMIZE"}]
    trials = [_trial(i) for i in range(1, 7)]
    for t in trials:
        t.objective_values.extend([t.objective_value, t.metrics[-1].values["val_loss"] + t.trial_id % 3])
    data = _study(trials, objectives=objectives)
    pareto = section(report_html.build_html(data), "pareto")
    fills = set(re.findall(r'class="pareto-point" data-trial="\d+" [^>]*fill="(#\w+)"', pareto))
    assert fills == {report_style.FRONT} and report_style.FRONT not in report_style.STATE_COLOURS.values()
    assert "on the Pareto front" in pareto and 'class="dominated-point"' in pareto


def test_index_counts_agree_with_the_cli(data):
    from tuneyard.client.render import finished_count
    from tuneyard.server.api.dashboard import _study_row

    study = pb.Study()
    study.CopyFrom(data.study)
    study.trial_counts.failed, study.trial_counts.pending = 1, 3
    assert trials_done(study) == f"{finished_count(study)}/{N + 1} (1 failed)" == "25/25 (1 failed)"
    row = _study_row(study)
    assert ">25/25 (1 failed)<" in row and "val_accuracy 0.9000 (trial 24)" in row
    assert math.isclose(study.best_trial.objective_value, 0.9)
