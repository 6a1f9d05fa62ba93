"""The web dashboard over real HTTP on loopback: the studies page, a study's plots, its live event
stream (server-sent events), and the same tokens as the API; in headless Chromium, every section
screenshotted and checked, the trial table sorted and filtered by its script."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import REPORT_SECTIONS as SECTIONS
from support import tiny_spec, to_proto, watch_all

from tuneyard.server.api.security import Token
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

TOKEN = "dash-" + "5e1c0a9f3b7d2e6a4c8b"


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


def _chromium() -> str:
    found = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if found is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


def test_dashboard_live_in_headless_chromium(dashboard_server, tmp_path):
    """A real browser opens a running study's page and keeps it open: the page redraws itself from
    the event stream (`data-updates` counts the redraws) until the trial table holds every finished
    trial and the learning curves are drawn; the user's filter and sort order outlive the redraws. A
    screenshot is saved."""
    browser = Browser(_chromium())
    rows = "[...document.querySelectorAll('#trial-table tbody tr')]"
    try:
        with grpc.insecure_channel(dashboard_server.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(slow_spec())))
            browser.open(f"{dashboard_server.dashboard.address}studies/{study.study_id}")
            browser.eval(
                "const f = document.getElementById('trial-filter'); f.value = 'COMPLETED';"
                "f.dispatchEvent(new Event('input', {bubbles: true}));"
                "const th = document.querySelector('#trial-table th[data-col=trial]'); th.click(); th.click();"
            )
            events = watch_all(stub, study.study_id)
        trials = [e.trial_finished.trial for e in events if e.WhichOneof("event") == "trial_finished"]
        deadline = time.monotonic() + 30  # the last redraw follows the last event by ~0.3 s
        while browser.eval(f"{rows}.filter(r => !r.hidden).length") < len(trials) and time.monotonic() < deadline:
            time.sleep(0.1)
        # The page asks only for events after those it was rendered with, so each redraw is a live one.
        assert int(browser.eval("document.body.dataset.updates || 0")) >= 1
        assert browser.eval("document.querySelectorAll('#trials .badge.COMPLETED').length") == len(trials) == 2
        assert browser.eval(f"{rows}.map(r => +r.dataset.trial)") == sorted((t.trial_id for t in trials), reverse=True)
        assert browser.eval("document.getElementById('trial-filter').value") == "COMPLETED"
        assert browser.eval("document.querySelectorAll('#curves-svg polyline').length") == 2
        shot = tmp_path / "dashboard.png"  # kept by pytest with the run's other temporary files
        assert _painted(browser.screenshot(shot)) > 40
    finally:
        browser.close()
    print(f"dashboard screenshot: {shot}")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
    messages ended by NUL on fds 3 and 4), so one browser loads pages, runs scripts in them and
    screenshots any part of them, without a websocket client or a driver."""

    def __init__(self, chromium: str, width: int = 1400, height: int = 1000) -> None:
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()
        # The protocol's fds 3 (commands) and 4 (replies), set up by bash (dash takes no fd above 9): no
        # preexec_fn in a process whose gRPC threads may be forking too.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        redirect = f'exec "$0" "$@" 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-'
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe"]
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", redirect, chromium, *flags, "about:blank"],
            pass_fds=high,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in high:
            os.close(fd)
        self._id, self._buffer = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if getattr(self, "session", None):
            message["sessionId"] = self.session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._out, 1 << 20)
                assert chunk, f"chromium closed the pipe during {method}"
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def eval(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.eval("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)

    def boxes(self, selector: str) -> dict[str, list[float]]:
        """``id -> [x, y, width, height]`` (page coordinates) of the elements matching ``selector``."""
        return self.eval(
            f"Object.fromEntries([...document.querySelectorAll({json.dumps(selector)})].map(e => {{"
            "const r = e.getBoundingClientRect(); return [e.id, [r.x, r.y + scrollY, r.width, r.height]]}))"
        )

    def screenshot(self, path: Path, box: list[float] | None = None) -> bytes:
        clip = {} if box is None else {"clip": dict(zip(("x", "y", "width", "height"), box, strict=True), scale=1)}
        data = base64.b64decode(
            self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip)["data"]
        )
        path.write_bytes(data)
        return data

    def close(self) -> None:
        self.call("Browser.close")
        self.proc.wait(timeout=30)


def _painted(png: bytes) -> int:
    """Distinct byte values in a PNG's decompressed pixel rows: a blank image has a handful."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    idat, at = b"", 8
    while at < len(png):
        size, kind = int.from_bytes(png[at : at + 4], "big"), png[at + 4 : at + 8]
        if kind == b"IDAT":
            idat += png[at + 8 : at + 8 + size]
        at += 12 + size
    return len(set(zlib.decompress(idat)))


def conditional_multi_spec() -> dict[str, Any]:
    """3 grid trials of one epoch (adam; sgd with momentum 0.5, 0.9): momentum inactive for adam, two objectives."""
    spec = tiny_spec(
        training={"epochs": 1, "batch_size": 128, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
        search_space=[
            {"name": "optimizer.name", "choice": {"values": ["sgd", "adam"]}},
            {
                "name": "optimizer.momentum",
                "float_range": {"low": 0.5, "high": 0.9},
                "condition": {"parent": "optimizer.name", "values": ["sgd"]},
            },
        ],
        searcher={"name": "grid", "options": {"num_points": 2}},
        objectives=[{"metric": "val_accuracy", "mode": "MAXIMIZE"}, {"metric": "params", "mode": "MINIMIZE"}],
        budget={"max_trials": 3, "max_concurrent_trials": 1},
    )
    del spec["objective"]
    return spec


def test_every_section_in_headless_chromium(dashboard_server, tmp_path):
    """The index and each section of a finished multi-objective study with a conditional parameter,
    screenshotted one by one (each must be painted) and checked in the live DOM."""
    chromium = _chromium()
    base = dashboard_server.dashboard.address
    with grpc.insecure_channel(dashboard_server.address) as channel:
        stub = service_pb2_grpc.TrainingServiceStub(channel)
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(conditional_multi_spec())))
        watch_all(stub, study.study_id)
        trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    shots = tmp_path / "sections"
    shots.mkdir()
    browser = Browser(chromium)
    try:
        browser.open(base)
        row = browser.eval(f"document.querySelector('a[href=\"/studies/{study.study_id}\"]').closest('tr').innerText")
        assert "3/3" in row and "COMPLETED" in row and "Pareto front:" in row, row
        assert _painted(browser.screenshot(shots / "index.png")) > 40
        browser.open(f"{base}studies/{study.study_id}")
        boxes = browser.boxes("section")
        assert list(boxes) == list(SECTIONS)
        for sid, box in boxes.items():
            assert box[2] > 1000 and box[3] > 80, (sid, box)
            assert _painted(browser.screenshot(shots / f"{sid}.png", box)) > 40, sid
        plots = browser.boxes("svg.plot")
        for plot in ("curves-svg", "history-svg", "parallel-svg", "contour-svg", "pareto-svg"):
            assert plots[plot][2] > 0.9 * boxes["best"][2] - 40, plot  # the plots use the page's width
        assert browser.eval("document.querySelectorAll('#curves-legend [data-trial]').length") == len(trials)
        assert browser.eval("[...document.querySelectorAll('#parallel-svg .inactive-tick')].length") == 1
        assert browser.eval("document.querySelectorAll('#parallel-svg .pc-line[data-points=\"3\"]').length") == 3
        assert browser.eval("document.querySelectorAll('.pareto-point').length") >= 1
        header = "document.querySelector('#trial-table th[data-col=\"val_accuracy\"]')"
        browser.eval(f"{header}.click(); {header}.click()")  # descending
        order = browser.eval("[...document.querySelectorAll('#trial-table tbody tr')].map(r => +r.dataset.trial)")
        by_value = sorted(trials, key=lambda t: -t.objective_values[0])
        assert [t.objective_values[0] for t in by_value][0] == max(t.objective_values[0] for t in trials)
        assert order[0] == by_value[0].trial_id and len(order) == 3
        shown = browser.eval(
            "const f = document.getElementById('trial-filter'); f.value = 'adam';"
            "f.dispatchEvent(new Event('input', {bubbles: true}));"
            "[...document.querySelectorAll('#trial-table tbody tr')].filter(r => !r.hidden).length"
        )
        assert shown == sum(1 for t in trials if t.config["optimizer.name"] == "adam") == 1
    finally:
        browser.close()
    print(f"dashboard section screenshots: {shots}")
