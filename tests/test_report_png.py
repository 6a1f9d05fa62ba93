"""`tuneyard report --png`'s axes on the 24-trial study of test_report_html: whole epochs and trial ids
on the x axes, the parallel coordinates labelled with each parameter's real values (the inactive tick
included) instead of a 0-1 scale, and a legend per trial."""

from __future__ import annotations

import importlib.util

import pytest
from test_report_html import N, _study, _trial

from tuneyard.client import report

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")


@pytest.fixture(scope="module")
def plt():
    return report._pyplot()


@pytest.fixture
def ax(plt):
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


@pytest.fixture(scope="module")
def data():
    return _study([_trial(i) for i in range(1, N + 1)])


def _shown(ticks, lo, hi):
    return [t for t in ticks if lo <= t <= hi]


def test_learning_curves_tick_whole_epochs_and_name_every_trial(data, ax):
    report._png_curves(data, ax)
    ax.figure.canvas.draw()
    ticks = _shown(ax.get_xticks(), 1, 4)
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"trial {i}" for i in range(1, N + 1)]
    colours = {line.get_color() for line in ax.get_lines()}
    assert len(colours) == N


def test_history_ticks_whole_trial_ids(data, ax):
    report._png_history(data, ax)
    ax.figure.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert "best so far" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_parallel_axes_show_real_values_not_a_unit_scale(data, ax):
    report._png_parallel(data, ax)
    labels = {t.get_text() for t in ax.texts}
    assert {"inactive", "adam", "sgd", "0.001212", "0.1", "0.9"} <= labels  # lr from its smallest, best objective
    assert list(ax.get_yticks()) == [] and ax.get_ylabel() == ""
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "val_accuracy"
