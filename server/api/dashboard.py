"""The read-only web dashboard: studies, and per study the report's plots, updated live.

`tuneyard serve --dashboard-port 8080` serves it beside the gRPC API, on the same host (loopback by
default), with the same TLS certificate and the same bearer tokens: a browser sends the token once as
`/?token=...`, which sets an HttpOnly cookie. Pages are the offline report (`common.report_html`) rendered
from the store; a study page follows the study's event stream (`/studies/ID/events`, server-sent
events replayed from the store like `WatchStudy`) and redraws itself after each event.
"""

from __future__ import annotations

import html
import logging
import ssl
import threading
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tuneyard.common.report_data import ReportData, objectives_of, trials_done
from tuneyard.common.report_html import build_html
from tuneyard.common.report_style import CSS
from tuneyard.common.trials import number
from tuneyard.server.api import convert
from tuneyard.server.api.security import Authenticator, TlsFiles
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import DomainError, NotFound, Unavailable
from tuneyard.server.study.events import EventHub
from tuneyard.v1 import service_pb2

log = logging.getLogger(__name__)
COOKIE = "tuneyard_token"
LIVE_SCRIPT = """<script>
(() => {
  const after = document.getElementById("live").dataset.after;  // the page shows events up to here
  const source = new EventSource(location.pathname.replace(/\\/$/, "") + "/events?after=" + after);
  let pending = null;
  const redraw = async () => {
    pending = null;
    const reply = await fetch(location.pathname, {cache: "no-store"});
    const page = new DOMParser().parseFromString(await reply.text(), "text/html");
    document.getElementById("live").replaceWith(page.getElementById("live"));
    document.body.dataset.updates = (+document.body.dataset.updates || 0) + 1;
    document.dispatchEvent(new Event("report:redrawn"));  // the report's script keeps sort and filter
  };
  source.onmessage = () => { if (!pending) pending = setTimeout(redraw, 300); };
  source.addEventListener("end", () => source.close());  // the terminal event came as a message
})();
</script>"""


class Dashboard:
    """An HTTP(S) server in a daemon thread; `address` is where it listens, `stop()` ends it."""

    def __init__(
        self,
        storage: Store,
        hub: EventHub,
        host: str,
        port: int,
        authenticator: Authenticator | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        handler = type("Handler", (_Handler,), {"storage": storage, "hub": hub, "auth": authenticator})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.address = f"{'https' if tls else 'http'}://{host}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    storage: Store
    hub: EventHub
    auth: Authenticator | None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Logs the method and path only: a query string may carry the token."""
        log.debug("dashboard: %s %s", self.command, urlsplit(self.path).path)

    # ---- auth ----

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        """A bearer header, the cookie, or `?token=` (which then sets the cookie)."""
        if self.auth is None:
            return True
        jar = cookies.SimpleCookie(self.headers.get("Cookie", ""))
        candidates = [self.headers.get("Authorization", "")]
        if COOKIE in jar:
            candidates.append(f"Bearer {jar[COOKIE].value}")
        candidates += [f"Bearer {t}" for t in query.get("token", [])]
        return any(self.auth.identify([("authorization", c)]) for c in candidates if c)

    # ---- routes ----

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorised(query):
            self._send(401, "<h1>401</h1><p>missing or invalid token: open /?token=YOUR_TOKEN</p>")
            return
        extra = []
        if query.get("token"):
            extra.append(("Set-Cookie", f"{COOKIE}={query['token'][0]}; HttpOnly; SameSite=Strict; Path=/"))
        parts = [p for p in url.path.split("/") if p]
        try:
            if not parts:
                self._send(200, self._studies_page(), extra)
            elif len(parts) == 2 and parts[0] == "studies":
                self._send(200, self._study_page(parts[1]), extra)
            elif len(parts) == 3 and parts[0] == "studies" and parts[2] == "events":
                resume = self.headers.get("Last-Event-ID") or (query.get("after") or ["0"])[0]
                self._events(parts[1], int(resume) if resume.isdigit() else 0)
            else:
                self._send(404, "<h1>404</h1><p>no such page</p>")
        except NotFound as exc:
            self._send(404, f"<h1>404</h1><p>{html.escape(str(exc))}</p>")
        except DomainError as exc:
            self._send(400, f"<h1>400</h1><p>{html.escape(str(exc))}</p>")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away

    def _send(self, status: int, body: str, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _studies_page(self) -> str:
        studies, _ = self.storage.list_studies(1000, "")
        rows = "".join(_study_row(convert.study_to_proto(s)) for s in reversed(studies))
        empty = '<tr><td colspan="6" class="note">no studies yet</td></tr>'
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>tuneyard</title>'
            f'<style>{CSS}</style></head><body><header class="top"><h1>tuneyard studies</h1>'
            f'<span class="meta">{len(studies)} studies &middot; refreshes every 5 s</span></header><main><section>'
            '<table id="studies"><thead><tr><th>study</th><th>name</th><th>state</th><th class="num">trials done</th>'
            f'<th class="num">running</th><th class="num">best value</th></tr></thead><tbody>{rows or empty}</tbody>'
            "</table></section></main></body></html>"
        )

    def _study_page(self, study_id: str) -> str:
        after, _ = self.storage.last_sequence(study_id)  # read first: the page shows at least this much
        study = convert.study_to_proto(self.storage.get_study(study_id))
        trials, _ = self.storage.list_trials(study_id, 100_000, "")
        data = ReportData(study, [convert.trial_to_proto(t) for t in trials], objectives_of(study.spec))
        page = build_html(data)
        head, _, rest = page.partition("<body>")
        body, _, _ = rest.rpartition("</body>")
        live = f'<div id="live" data-after="{after}">{body}</div>'
        nav = '<nav class="crumbs"><a href="/">&larr; all studies</a></nav>'
        return f"{head}<body>{nav}{live}{LIVE_SCRIPT}</body></html>"

    def _events(self, study_id: str, after: int) -> None:
        """Server-sent events: each stored event after `after`, then live ones, then "end"."""
        self.storage.last_sequence(study_id)  # NotFound before any byte is sent
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            for event in self.hub.follow(study_id, after):
                self.wfile.write(f"id: {event.sequence}\ndata: {event.kind}\n\n".encode())
                self.wfile.flush()
        except Unavailable:
            return  # the server is stopping; the browser reconnects with Last-Event-ID
        self.wfile.write(b"event: end\ndata: end\n\n")
        self.wfile.flush()


def _best_text(study: service_pb2.Study) -> str:
    """``val_accuracy 0.9741``: the best value, rounded as the CLI rounds it, with its metric's name."""
    metrics = [o.metric for o in study.spec.objectives] or [study.spec.objective.metric]
    best = study.best_trial
    if len(metrics) > 1:
        front = len(study.pareto_front)
        return f"Pareto front: {front} trial{'s' if front != 1 else ''}" if front else ""
    if study.HasField("best_trial") and best.HasField("objective_value"):
        return f"{metrics[0]} {best.objective_value:.4f} (trial {best.trial_id})"
    return ""


def _study_row(study: service_pb2.Study) -> str:
    """One study of the index: the same counts as the CLI's `studies` table."""
    sid, state = html.escape(study.study_id), study.state
    name = service_pb2.StudyState.Name(state).removeprefix("STUDY_")
    return (
        f'<tr><td><a href="/studies/{sid}"><code>{sid}</code></a></td><td>{html.escape(study.spec.name or "")}</td>'
        f'<td><span class="badge {name}">{name}</span></td><td class="num">{html.escape(trials_done(study))}</td>'
        f'<td class="num">{number(study.trial_counts.running)}</td>'
        f'<td class="num">{html.escape(_best_text(study))}</td></tr>'
    )
