"""Assembles the server: storage, plugins, workers, runners, servicer, health and reflection."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from tuneyard.plugins.builtin.mlflow_logger import MLFLOW_URI_ENV
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.api import wire
from tuneyard.server.api.dashboard import Dashboard
from tuneyard.server.api.metrics import MetricsServer, ServerCollector, check_metrics_bind
from tuneyard.server.api.rpc_metrics import RpcMetrics
from tuneyard.server.api.security import Authenticator, AuthInterceptor, TlsFiles, Token, check_bind
from tuneyard.server.api.servicer import TrainingServicer
from tuneyard.server.execution.devices import plan_devices
from tuneyard.server.execution.local_pool import WorkerPool
from tuneyard.server.execution.ray_pool import RayPool
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.server.limits import DEFAULT_MAX_ACTIVE_STUDIES, MAX_MESSAGE_BYTES
from tuneyard.server.storage.sqlite import Storage
from tuneyard.server.storage.store import Store
from tuneyard.server.study.domain import StoreError
from tuneyard.server.study.events import EventHub
from tuneyard.server.study.manager import StudyManager
from tuneyard.v1 import service_pb2

log = logging.getLogger(__name__)
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
DEFAULT_HEARTBEAT_TIMEOUT_S = 600.0  # a trial silent this long (no batch, no epoch) is killed as hung
RPC_THREADS = 256  # WatchStudy streams hold one each; servicer.MAX_WATCHERS stays below


def add_maintenance_services(server: grpc.Server, service_names: list[str]) -> health.HealthServicer:
    """Health (NOT_SERVING until `set_serving`) and reflection v1alpha and v1 for every service."""
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    reflection_servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    # v1 has the same messages as v1alpha on the wire; serve it from the same servicer.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        reflection_servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    return health_servicer


def set_serving(health_servicer: health.HealthServicer, service_names: list[str]) -> None:
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


@dataclass
class ServerHandle:
    """A running server; `stop()` ends streams, runners, workers and the store, in that order."""

    address: str
    port: int
    grpc_server: grpc.Server
    storage: Store
    hub: EventHub
    studies: StudyManager
    pool: WorkerPool | RayPool
    health: health.HealthServicer
    dashboard: Dashboard | None = None
    metrics: MetricsServer | None = None

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.hub.close()
        for web in (self.dashboard, self.metrics):
            if web is not None:
                web.stop()
        self.grpc_server.stop(grace).wait()
        self.studies.shutdown()
        self.pool.close()
        self.storage.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def _executor(
    kind: str,
    ray_address: str,
    devices: str | None,
    cpu_slots: int | None,
    data_root: str,
    max_trials_per_worker: int,
    *,
    log_dir: Path,
    plugins_dir: str,
    mps: bool = False,
) -> WorkerPool | RayPool:
    """The Ray cluster's actors, or worker processes on this machine (one slot per planned device;
    with `mps`, under an MPS control daemon whose folders lie beside the logs)."""
    if kind == "ray":
        return RayPool(ray_address, data_root=data_root, cpu_slots=cpu_slots, plugins_dir=plugins_dir)
    return WorkerPool(
        plan_devices(devices, cpu_slots),
        data_root=data_root,
        max_trials_per_worker=max_trials_per_worker,
        log_dir=log_dir,
        plugins_dir=plugins_dir,
        mps_folder=log_dir.parent / "mps" if mps else None,
    )


def _plugins_folder(plugins_dir: Path | None) -> str:
    """`--plugins-dir` as an absolute path the workers can load from too; "" without one."""
    if plugins_dir is None:
        return ""
    folder = Path(plugins_dir).resolve()
    if not folder.is_dir():
        raise ValueError(f"--plugins-dir {plugins_dir}: not a directory")
    return str(folder)


def _point_tensorboard_at(tensorboard_dir: Path | None) -> None:
    """The built-in tensorboard_logger plugin reads this when a trial starts (in the worker process)."""
    if tensorboard_dir is not None:
        os.environ["TUNEYARD_TENSORBOARD_DIR"] = str(Path(tensorboard_dir).resolve())


def _point_mlflow_at(tracking_uri: str) -> None:
    """The built-in mlflow_logger plugin logs to this tracking URI (read when a trial starts); it needs
    the `mlflow` extra, checked here so a server without it refuses to start rather than log nothing."""
    if not tracking_uri:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("--mlflow-tracking-uri needs MLflow: pip install 'tuneyard[mlflow]'")
    os.environ[MLFLOW_URI_ENV] = tracking_uri


def _study_manager(
    storage: Storage,
    pool: WorkerPool | RayPool,
    heartbeat_timeout: float,
    data_root: str,
    max_active_studies: int,
    plugins_dir: str,
) -> StudyManager:
    """The study side: the plugins (one that fails to load is logged and left out), events and device slots."""
    registry = PluginRegistry.load(plugins_dir=plugins_dir)
    for error in registry.errors:
        log.warning("plugin not loaded: %s: %s", error.source, error.message)
    return StudyManager(
        storage=storage,
        hub=EventHub(storage),
        scheduler=DeviceScheduler(pool.devices, pool),
        registry=registry,
        heartbeat_timeout=heartbeat_timeout,
        data_root=data_root,
        max_active_studies=max_active_studies,
    )


def _grpc_server(
    studies: StudyManager,
    pool: WorkerPool | RayPool,
    authenticator: Authenticator | None,
    registry: CollectorRegistry | None = None,
) -> tuple[grpc.Server, health.HealthServicer]:
    """The gRPC server with the training and maintenance services, not yet bound or started; with a
    metrics `registry`, every call is counted there (before the token check, so refusals count too)."""
    interceptors: list[grpc.ServerInterceptor] = [RpcMetrics(registry)] if registry is not None else []
    if authenticator is not None:
        interceptors.append(AuthInterceptor(authenticator))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="rpc"),
        interceptors=interceptors or None,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES * 4),
        ],
    )
    servicer = TrainingServicer(
        storage=studies.storage,
        studies=studies,
        hub=studies.hub,
        registry=studies.registry,
        scheduler=studies.scheduler,
        executor=pool,
        authenticator=authenticator,
    )
    wire.add_training_service(servicer, server)
    return server, add_maintenance_services(server, [SERVICE_NAME])


def _listen(server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    """Binds host:port (TLS with `credentials`) and returns the port bound; OSError when it cannot."""
    target = f"{host}:{port}"
    bound = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return bound


def _dashboard(
    studies: StudyManager, host: str, port: int | None, authenticator: Authenticator | None, tls: TlsFiles | None
) -> Dashboard | None:
    """The read-only web dashboard on host:port, or None when no port is asked for."""
    if port is None:
        return None
    try:
        return Dashboard(studies.storage, studies.hub, host, port, authenticator, tls)
    except OSError as exc:
        raise OSError(f"dashboard cannot listen on {host}:{port}: {exc.strerror}") from None


def _metrics_registry(studies: StudyManager, pool: WorkerPool | RayPool, port: int | None) -> CollectorRegistry | None:
    """The registry `/metrics` serves (the store, scheduler and pool read at scrape time), or None without a port."""
    if port is None:
        return None
    registry = CollectorRegistry()
    registry.register(ServerCollector(studies.storage, studies.scheduler, pool))
    return registry


def _metrics(
    registry: CollectorRegistry | None, host: str, port: int | None, authenticator: Authenticator | None
) -> MetricsServer | None:
    if registry is None or port is None:
        return None
    try:
        return MetricsServer(registry, host, port, authenticator)
    except OSError as exc:
        raise OSError(f"metrics cannot listen on {host}:{port}: {exc.strerror}") from None


def _address(host: str, port: int) -> str:
    """host:port as clients write it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resume_unfinished(handle: ServerHandle) -> None:
    """Runs on the studies a previous server left unfinished; damaged rows stop what started, and say so."""
    try:
        for study_id in handle.studies.resume_unfinished():
            log.info("resuming study %s", study_id)
    except StoreError:
        handle.stop(grace=0)
        raise


def _refuse_unusable(
    executor: str,
    host: str,
    tls: TlsFiles | None,
    insecure: bool,
    metrics_port: int | None,
    mlflow_uri: str,
    mps: bool = False,
) -> None:
    """Settings the server cannot or must not run with, refused before anything is opened or bound."""
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}: local or ray")
    if mps and executor != "local":
        raise ValueError("--mps shares this machine's GPUs between its worker processes: not with --executor ray")
    check_bind(host, tls, insecure)
    if metrics_port is not None:
        check_metrics_bind(host, insecure)
    _point_mlflow_at(mlflow_uri)


@dataclass(frozen=True)
class _Ports:
    """Where the server listens: gRPC on host:grpc, and the web dashboard and metrics when asked for."""

    host: str
    grpc: int
    dashboard: int | None
    metrics: int | None


def _open(
    ports: _Ports,
    server: grpc.Server,
    checks: health.HealthServicer,
    studies: StudyManager,
    pool: WorkerPool | RayPool,
    credentials: grpc.ServerCredentials | None,
    authenticator: Authenticator | None,
    tls: TlsFiles | None,
    registry: CollectorRegistry | None,
) -> ServerHandle:
    """Binds every port and starts the gRPC server; a port that cannot be bound closes all, and raises."""
    dashboard = None
    try:
        bound = _listen(server, ports.host, ports.grpc, credentials)
        dashboard = _dashboard(studies, ports.host, ports.dashboard, authenticator, tls)
        metrics = _metrics(registry, ports.host, ports.metrics, authenticator)
    except OSError:
        if dashboard is not None:
            dashboard.stop()
        server.stop(0)
        pool.close()
        studies.storage.close()
        raise
    server.start()
    address = _address(ports.host, bound)
    return ServerHandle(address, bound, server, studies.storage, studies.hub, studies, pool, checks, dashboard, metrics)


def start_server(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    devices: str | None = None,
    cpu_slots: int | None = None,
    data_root: str = "",
    max_trials_per_worker: int = 0,
    trial_heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    tls: TlsFiles | None = None,
    tokens: Sequence[Token] = (),
    insecure: bool = False,
    executor: str = "local",
    ray_address: str = "",
    checkpoint_dir: Path | None = None,
    max_active_studies: int = DEFAULT_MAX_ACTIVE_STUDIES,
    tensorboard_dir: Path | None = None,
    dashboard_port: int | None = None,
    check_store: bool = False,
    plugins_dir: Path | None = None,
    metrics_port: int | None = None,
    mlflow_tracking_uri: str = "",
    mps: bool = False,
) -> ServerHandle:
    """Starts a server on host:port (0 picks a free port) and returns once it is SERVING.

    Plaintext on a non-loopback host is refused (SecurityConfigError, before anything is bound or
    started) unless `tls` is given or `insecure` is set. With `tokens`, every RPC but health checks
    needs one of them as a bearer token. `executor="ray"` runs trials on the Ray cluster at
    `ray_address` (a local one on loopback when empty); `checkpoint_dir` must then be a path every
    node sees. A store that is not a valid tuneyard store (or, with `check_store`, fails SQLite's
    integrity check) raises a `StoreError` before any worker starts. `plugins_dir`: every `*.py` in it
    is loaded as a plugin module, by the server and by every worker. `metrics_port`: Prometheus
    metrics on host:port/metrics (plain HTTP: a non-loopback host needs `insecure`; 0 picks a port).
    `mlflow_tracking_uri`: every trial becomes an MLflow run there (the `mlflow` extra). `mps`: packed
    workers share their GPU under an NVIDIA MPS control daemon the server starts (MpsError when it cannot).
    """
    _refuse_unusable(executor, host, tls, insecure, metrics_port, mlflow_tracking_uri, mps)
    credentials = tls.credentials() if tls is not None else None
    authenticator = Authenticator(tokens) if tokens else None
    data_dir = Path(data_dir)
    data_root = data_root or str(data_dir / "datasets")
    plugins = _plugins_folder(plugins_dir)
    storage = Storage(data_dir, checkpoint_dir, check_integrity=check_store)  # first: a bad store starts nothing
    logs, limit = data_dir / "logs", max_trials_per_worker
    pool = _executor(
        executor, ray_address, devices, cpu_slots, data_root, limit, log_dir=logs, plugins_dir=plugins, mps=mps
    )
    _point_tensorboard_at(tensorboard_dir)
    studies = _study_manager(storage, pool, trial_heartbeat_timeout, data_root, max_active_studies, plugins)
    registry = _metrics_registry(studies, pool, metrics_port)
    server, checks = _grpc_server(studies, pool, authenticator, registry)
    ports = _Ports(host, port, dashboard_port, metrics_port)
    handle = _open(ports, server, checks, studies, pool, credentials, authenticator, tls, registry)
    _resume_unfinished(handle)
    set_serving(checks, [SERVICE_NAME])
    return handle
