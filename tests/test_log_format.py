"""`tuneyard serve --log-format json`: every log line one JSON object (time, level, logger, message, exception)."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess

from tuneyard.server.logs import configure_logging

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_a_record_with_an_exception_is_one_json_line(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("tuneyard.test").debug("below the level")
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("tuneyard.test").exception("lookup failed for %s", "missing")
    logging.getLogger("tuneyard.other").warning('näive "quoted"\nsecond line')

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "ERROR" and first["logger"] == "tuneyard.test"
    assert first["message"] == "lookup failed for missing"
    assert first["exception"].startswith("Traceback") and "KeyError: 'missing'" in first["exception"]
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    assert second == {
        "time": second["time"],
        "level": "WARNING",
        "logger": "tuneyard.other",
        "message": 'näive "quoted"\nsecond line',
    }


def test_text_stays_the_default_and_unknown_formats_are_refused(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    logging.getLogger("tuneyard.test").info("plain")
    assert stream.getvalue().rstrip().endswith("INFO tuneyard.test: plain")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")


def test_serve_logs_json_and_prints_where_its_metrics_are(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise RuntimeError('this plugin cannot load')\n")
    server = ServerProcess(
        tmp_path / "data", "--log-format", "json", "--plugins-dir", str(plugins), "--metrics-port", "0"
    )
    try:
        metrics_line = next(_lines_after(server, "metrics: "))
        url = metrics_line.split("metrics: ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as reply:
            names = {family.name for family in text_string_to_metric_families(reply.read().decode())}
        assert {"tuneyard_trials", "tuneyard_studies", "tuneyard_worker_restarts"} <= names
    finally:
        server.kill()  # a graceful stop waits out the worker's torch import (~5 s); the lines are written by now
    logged = [json.loads(line) for line in server.output if line.startswith("{")]
    warning = next(entry for entry in logged if "plugin not loaded" in entry["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "tuneyard.server.app"
    assert "this plugin cannot load" in warning["message"]
    others = [line for line in server.output if not line.startswith("{")]
    assert all(_is_banner(line) for line in others), others  # nothing else went out as text


def _lines_after(server: ServerProcess, prefix: str) -> Iterator[str]:
    """The server's output lines starting with `prefix`, as they come (its banner is printed at once)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(server.output):
            if line.startswith(prefix):
                yield line
                return
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line in: {server.output}")


def _is_banner(line: Any) -> bool:
    return line.startswith(("tuneyard ", "metrics: ")) or not line.strip()
