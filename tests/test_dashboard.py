"""The web dashboard over real HTTP on loopback: the studies page, a study's plots, its live event
stream (server-sent events), and the same tokens as the API."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.server.api.security import Token
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

TOKEN = "dash-" + "5e1c0a9f3b7d2e6a4c8b"
SECTIONS = ("trials", "learning-curves", "history", "parallel-coordinates", "importance", "pareto", "occupancy")


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("dash"), devices="cpu", cpu_slots=1, dashboard_port=0)
    yield handle
    handle.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read().decode(), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def slow_spec() -> dict[str, Any]:
    return tiny_spec(
        training={"epochs": 3, "batch_size": 128, "optimizer": {"name": "adam"}, "seed": 0},
        search_space=[{"name": "optimizer.lr", "float_range": {"low": 1e-3, "high": 1e-1, "log": True}}],
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )


def test_study_page_shows_every_plot_and_follows_the_event_stream(dashboard_server):
    base = dashboard_server.dashboard.address
    with grpc.insecure_channel(dashboard_server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(slow_spec())))
        with urllib.request.urlopen(f"{base}studies/{study.study_id}/events", timeout=120) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            lines = [line.decode().strip() for line in stream]  # until the terminal event
        events = watch_all(stub, study.study_id)
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    assert ids == [e.sequence for e in events]  # the same events, in order, as WatchStudy
    assert "event: end" in lines
    status, page, _ = get(f"{base}studies/{study.study_id}")
    assert status == 200
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "EventSource" in page and 'id="live"' in page
    assert page.count("<svg") >= 5
    status, listing, _ = get(base)
    assert status == 200 and study.study_id in listing


def test_unknown_study_and_page(dashboard_server):
    base = dashboard_server.dashboard.address
    assert get(f"{base}studies/st-nope")[0] == 404
    assert get(f"{base}studies/st-nope/events")[0] == 404
    assert get(f"{base}nothing/here")[0] == 404


def test_dashboard_needs_the_api_token(tmp_path: Path):
    from tuneyard.server.app import start_server

    handle = start_server(
        data_dir=tmp_path, devices="cpu", cpu_slots=1, dashboard_port=0, tokens=[Token("alice", TOKEN.encode())]
    )
    try:
        base = handle.dashboard.address
        assert get(base)[0] == 401
        assert get(base, {"Authorization": "Bearer wrong-token-0000000000"})[0] == 401
        assert get(base, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, _, headers = get(f"{base}?token={TOKEN}")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(base, {"Cookie": cookie})[0] == 200
    finally:
        handle.stop()


def test_dashboard_live_in_headless_chromium(dashboard_server, tmp_path):
    """A real browser opens a running study's page and keeps it open: the page redraws itself from
    the event stream (`data-updates` counts the redraws) until the trial table holds every finished
    trial and the learning curves are drawn. A screenshot is saved."""
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    base = dashboard_server.dashboard.address
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu"]
    with grpc.insecure_channel(dashboard_server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(slow_spec())))
        page = f"{base}studies/{study.study_id}"
        opened = subprocess.run(
            [*flags, "--virtual-time-budget=60000", "--dump-dom", page], capture_output=True, text=True, timeout=180
        )
        events = watch_all(stub, study.study_id)
    dom = opened.stdout
    # The page asks only for events after those it was rendered with, so each redraw is a live one.
    updates = re.search(r'data-updates="(\d+)"', dom)
    assert updates and int(updates.group(1)) >= 1, dom[:500]
    trials = [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]
    table = dom[dom.index('id="trials"') : dom.index('id="learning-curves"')]
    assert table.count("COMPLETED") == len(trials) == 2
    assert "<polyline" in dom[dom.index('id="learning-curves"') : dom.index('id="history"')]
    shot = tmp_path / "dashboard.png"  # kept by pytest with the run's other temporary files
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard screenshot: {shot}")
