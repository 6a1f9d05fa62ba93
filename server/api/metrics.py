"""Prometheus metrics: `tuneyard serve --metrics-port 9464` serves `/metrics` on the server's host.

Everything but the RPC metrics is read when Prometheus scrapes, by `ServerCollector`, from the same
places GetServerInfo and ListStudies read (the store, the device scheduler, the worker pool), so
the core keeps no counters of its own and a restarted server reports what its store holds:

- `tuneyard_studies{state}`, `tuneyard_trials{state}`: studies and trials by state;
- `tuneyard_trials_remaining`: trials the unfinished studies may still start (their max_trials
  less the trials they have); `tuneyard_studies_waiting_for_device`: studies asking for a device
  share the scheduler cannot give yet; together, the queue;
- `tuneyard_device_running_trials{device}`, `tuneyard_device_share_in_use{device}`,
  `tuneyard_device_workers{device}`, `tuneyard_worker_restarts_total{device}` (a worker process
  that died and was replaced), `tuneyard_device_memory_bytes{device}` (a CUDA device's memory;
  CPU slots have none of their own), `tuneyard_node_memory_bytes{node}` and `tuneyard_node_cpus{node}`;
- `tuneyard_events_stored`: study events in the store; `tuneyard_store_readable`: 0 when the
  store failed to answer this scrape (its metrics are then left out);
- `grpc_server_*` from `rpc_metrics.RpcMetrics`.

Plain HTTP (metrics carry no secrets, but say what runs): loopback unless `--insecure` is given;
with a token file, `/metrics` needs `Authorization: Bearer <token>` as every RPC does.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tuneyard.common.addresses import is_loopback
from tuneyard.server.api.security import Authenticator, SecurityConfigError
from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.protocol import Node
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import StoreError, StudyRecord, StudyState, TrialState

log = logging.getLogger(__name__)
PAGE = 500  # studies read per store call while scraping


class Workers(Protocol):
    """What the collector reads of an executor: its workers (each with a device and a restart count)."""

    @property
    def workers(self) -> list[Any]: ...

    def nodes(self) -> list[Node]: ...


def check_metrics_bind(host: str, insecure: bool) -> None:
    """Refuses plain-HTTP metrics on a non-loopback host unless `insecure` (the rule gRPC plaintext has)."""
    if not insecure and not is_loopback(host):
        raise SecurityConfigError(
            f"refusing to serve metrics (plain HTTP) on {host}: bind 127.0.0.1, or pass --insecure to let the "
            "network read them"
        )


class ServerCollector:
    """Reads the store, the scheduler and the pool at each scrape (see the module docstring)."""

    def __init__(self, storage: Store, scheduler: DeviceScheduler, pool: Workers) -> None:
        self._storage, self._scheduler, self._pool = storage, scheduler, pool

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily("tuneyard_store_readable", "1 when the store answered this scrape, else 0.")
        store_metrics: list[Metric] = []
        try:
            store_metrics = list(self._store_metrics())
        except StoreError as exc:  # the rest still says what the devices and workers do
            log.warning("metrics: the store did not answer: %s", exc)
        readable.add_metric([], 1.0 if store_metrics else 0.0)
        yield readable
        yield from store_metrics
        yield from self._device_metrics()
        yield from self._node_metrics()

    def _studies(self) -> Iterator[StudyRecord]:
        token = ""
        while True:
            page, token = self._storage.list_studies(PAGE, token)
            yield from page
            if not token:
                return

    def _store_metrics(self) -> Iterator[Metric]:
        studies: Counter[str] = Counter({s.value: 0 for s in StudyState})
        trials: Counter[str] = Counter({s.value: 0 for s in TrialState})
        remaining = events = 0
        for study in self._studies():
            studies[study.state.value] += 1
            for state in TrialState:
                trials[state.value] += getattr(study.counts, state.value.lower())
            if not study.state.terminal:
                remaining += max(0, _max_trials(study.spec) - _total(study))
            events += self._storage.last_sequence(study.study_id)[0]
        yield _gauge("tuneyard_studies", "Studies by state.", "state", studies)
        yield _gauge("tuneyard_trials", "Trials by state.", "state", trials)
        left = GaugeMetricFamily("tuneyard_trials_remaining", "Trials the unfinished studies may still start.")
        left.add_metric([], float(remaining))
        yield left
        stored = GaugeMetricFamily("tuneyard_events_stored", "Study events held by the store.")
        stored.add_metric([], float(events))
        yield stored

    def _device_metrics(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "tuneyard_device_running_trials", "Trials holding a share of the device.", labels=["device"]
        )
        share = GaugeMetricFamily("tuneyard_device_share_in_use", "Share of the device held (0..1).", labels=["device"])
        workers = GaugeMetricFamily(
            "tuneyard_device_workers", "Worker processes bound to the device.", labels=["device"]
        )
        memory = GaugeMetricFamily("tuneyard_device_memory_bytes", "A CUDA device's total memory.", labels=["device"])
        for place in self._scheduler.occupancy():
            name = place.device.name
            running.add_metric([name], float(len(place.holders)))
            share.add_metric([name], place.share_in_use)
            workers.add_metric([name], float(place.workers.workers))
            if place.device.memory_bytes:
                memory.add_metric([name], float(place.device.memory_bytes))
        yield from (running, share, workers, memory)
        waiting = GaugeMetricFamily(
            "tuneyard_studies_waiting_for_device", "Studies asking for a device share the scheduler cannot give yet."
        )
        waiting.add_metric([], float(self._scheduler.waiting_studies()))
        yield waiting
        yield self._restarts(self._scheduler.devices)

    def _restarts(self, devices: list[Device]) -> Metric:
        restarts = CounterMetricFamily(
            "tuneyard_worker_restarts",
            "Worker processes that died (or were killed) and were replaced.",
            labels=["device"],
        )
        by_device = {d.name: 0 for d in devices}
        for worker in self._pool.workers:
            by_device[worker.device.name] = by_device.get(worker.device.name, 0) + int(worker.restarts)
        for name, count in by_device.items():
            restarts.add_metric([name], float(count))
        return restarts

    def _node_metrics(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily("tuneyard_node_memory_bytes", "A node's physical memory.", labels=["node"])
        cpus = GaugeMetricFamily("tuneyard_node_cpus", "A node's CPU cores.", labels=["node"])
        for node in self._pool.nodes():
            memory.add_metric([node.node_id], float(node.memory_bytes))
            cpus.add_metric([node.node_id], node.cpus)
        yield from (memory, cpus)


def _gauge(name: str, doc: str, label: str, values: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family


def _max_trials(spec: dict[str, Any]) -> int:
    try:
        return int((spec.get("budget") or {}).get("max_trials", 0))
    except (TypeError, ValueError):
        return 0


def _total(study: StudyRecord) -> int:
    return study.counts.pending + study.counts.running + study.counts.finished


class MetricsServer:
    """`/metrics` over plain HTTP in a daemon thread; `address` is its URL, `stop()` ends it."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, authenticator: Authenticator | None = None
    ) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry, "auth": authenticator})
        server_class = _Ipv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.address = f"http://{shown}:{self.port}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    auth: Authenticator | None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
            self._reply(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        if (
            self.auth is not None
            and self.auth.identify([("authorization", self.headers.get("Authorization", ""))]) is None
        ):
            self._reply(401, b"send 'Authorization: Bearer <token>'\n", "text/plain; charset=utf-8", bearer=True)
            return
        self._reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def _reply(self, status: int, body: bytes, content_type: str, bearer: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if bearer:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
        pass
