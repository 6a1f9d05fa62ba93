"""Device scheduling: packed trials, data-parallel trials, fair share, worker reuse and recycling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import pytest
from support import tiny_spec, to_proto, watch_all

from tuneyard.server.execution.devices import Device
from tuneyard.server.execution.pooled import MAX_WORKERS_PER_DEVICE, PooledWorkers
from tuneyard.server.execution.protocol import WorkerCounts
from tuneyard.server.execution.scheduler import DeviceScheduler
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc


class Dispenser:
    """Stands in for the worker pool in scheduler-only tests: hands out placeholder workers."""

    single_device_only = ""

    def take(self, device, share=1.0):
        return object()

    def give_back(self, worker):
        pass

    def has_room(self, device):
        return True

    def counts(self, device):
        return 1, 0


@dataclass
class StandInWorker:
    share: float
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class StandInPool(PooledWorkers):
    """The pool's real bookkeeping (`PooledWorkers`) over workers that start no process; with
    `same_share_only`, a worker fits only trials of its own share, as a Ray actor does."""

    devices_: list[Device]
    same_share_only: bool = False
    made: list[StandInWorker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._init_pool(self.devices_, start_one=False)

    def _new(self, device: Device, share: float) -> StandInWorker:
        self.made.append(StandInWorker(share))
        return self.made[-1]

    def _fits(self, worker: StandInWorker, share: float) -> bool:
        return not self.same_share_only or worker.share == share


def cpu_devices(n: int) -> list[Device]:
    return [Device(i, f"cpu:{i}", "cpu", "cpu", "", 1) for i in range(n)]


def test_fractional_requests_pack_devices_and_whole_ones_wait():
    scheduler = DeviceScheduler(cpu_devices(2), Dispenser())
    quarter = [scheduler.try_acquire("a", 0.25, lambda: None) for _ in range(4)]
    assert [a.devices[0].name for a in quarter] == ["cpu:0"] * 4  # packed onto one device
    whole = scheduler.try_acquire("b", 1.0, lambda: None)
    assert whole.devices[0].name == "cpu:1"
    assert scheduler.try_acquire("b", 1.0, lambda: None) is None
    assert scheduler.try_acquire("c", 2, lambda: None) is None
    for alloc in quarter:
        scheduler.release(alloc)
    scheduler.release(whole)
    assert scheduler.try_acquire("c", 2, lambda: None) is None  # b waited first: its turn
    scheduler.withdraw("b")
    pair = scheduler.try_acquire("c", 2, lambda: None)
    assert [d.name for d in pair.devices] == ["cpu:0", "cpu:1"] and pair.share == 1.0
    assert scheduler.check(3) == "needs 3 devices; this server has 2"


def test_fair_share_follows_priority_and_never_starves():
    scheduler = DeviceScheduler(cpu_devices(3), Dispenser())
    woken: list[str] = []
    held = {"a": [], "b": []}
    priority = {"a": 2.0, "b": 1.0}
    # Both studies want as much as they can get; capacity frees up one device at a time.
    for _ in range(30):
        for study in ("a", "b"):
            while alloc := scheduler.try_acquire(study, 1.0, lambda s=study: woken.append(s), priority[study]):
                held[study].append(alloc)
        oldest = min((a for allocs in held.values() for a in allocs), key=id)
        for allocs in held.values():
            if oldest in allocs:
                allocs.remove(oldest)
        scheduler.release(oldest)
    for study in ("a", "b"):
        while alloc := scheduler.try_acquire(study, 1.0, lambda: None, priority[study]):
            held[study].append(alloc)
    assert len(held["a"]) == 2 and len(held["b"]) == 1  # 2:1 by priority, b not starved
    assert "b" in woken


def trials_of(stub, study_id):
    return stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials


def test_four_packed_trials_share_two_cpu_devices(stub):
    spec = tiny_spec(
        training={"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam"}},
        budget={"max_trials": 4, "max_concurrent_trials": 4},
        resources={"gpus_per_trial": 0.5},
    )
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    busy = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and max(busy, default=0) < 4:
        info = stub.GetServerInfo(pb.GetServerInfoRequest())
        busy.append(sum(d.slots_busy for d in info.devices))
        time.sleep(0.05)
    watch_all(stub, study.study_id)
    assert max(busy) == 4  # four trials held their share at once
    trials = trials_of(stub, study.study_id)
    assert sorted(t.device for t in trials) == ["cpu:0", "cpu:0", "cpu:1", "cpu:1"]
    assert all(t.state == pb.TRIAL_COMPLETED for t in trials)


def test_data_parallel_trial_matches_a_single_process_run(stub):
    def run(gpus: float) -> pb.Trial:
        spec = tiny_spec(
            # 1280 training images: 20 whole batches of 64, so no rank pads its share with a repeated
            # image (DistributedSampler) and no last batch is split unevenly; the two runs then differ
            # only in the order of floating-point sums.
            dataset={"name": "digits", "options": {"val_fraction": 0.138}},
            model={"name": "simple_cnn", "options": {"num_filters": 8, "batch_norm": False}},
            training={
                "epochs": 2,
                "batch_size": 64,
                "seed": 3,
                "optimizer": {"name": "sgd", "options": {"lr": 0.05, "momentum": 0.9}},
            },
            search_space=[],
            budget={"max_trials": 1},
            resources={"gpus_per_trial": gpus},
        )
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
        events = watch_all(stub, study.study_id)
        assert events[-1].study_state.state == pb.STUDY_COMPLETED, events[-1]
        return trials_of(stub, study.study_id)[0]

    two = run(2)
    one = run(1)
    assert two.device == "cpu:0+cpu:1" and one.device in ("cpu:0", "cpu:1")
    assert two.epochs_completed == one.epochs_completed == 2
    for metric in ("val_loss", "val_accuracy"):
        assert two.final_metrics[metric] == pytest.approx(one.final_metrics[metric], rel=1e-3, abs=1e-3)


def test_two_studies_share_the_devices(stub):
    spec = tiny_spec(
        training={"epochs": 2, "batch_size": 32, "optimizer": {"name": "adam"}},
        budget={"max_trials": 4, "max_concurrent_trials": 2},
    )
    first = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    second = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    watch_all(stub, first.study_id)
    watch_all(stub, second.study_id)
    a, b = trials_of(stub, first.study_id), trials_of(stub, second.study_id)
    assert all(t.state == pb.TRIAL_COMPLETED for t in [*a, *b])
    # The second study did not wait for the first to finish: it started while the first ran.
    first_end = max(t.end_time.ToNanoseconds() for t in a)
    second_start = min(t.start_time.ToNanoseconds() for t in b)
    assert second_start < first_end


def test_workers_are_reused_across_trials(tmp_path):
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1)
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        spec = tiny_spec(training={"epochs": 1, "optimizer": {"name": "adam"}}, budget={"max_trials": 3})
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
        assert watch_all(stub, study.study_id)[-1].study_state.state == pb.STUDY_COMPLETED
        (worker,) = handle.pool.workers
        assert worker.tasks_done == 4  # three trials and the test evaluation...
        assert worker.processes_started == 1  # ...in one process (torch imported once)
    finally:
        handle.stop()


def test_workers_are_recycled_after_max_trials(tmp_path):
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path, devices="cpu", cpu_slots=1, max_trials_per_worker=1)
    try:
        stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(handle.address))
        # One trial: its task and the test evaluation's are two tasks, so one recycle between tasks and
        # one after the last (every fresh process imports torch: the cost of this test).
        spec = tiny_spec(
            training={"epochs": 1, "optimizer": {"name": "adam"}}, search_space=[], budget={"max_trials": 1}
        )
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
        assert watch_all(stub, study.study_id)[-1].study_state.state == pb.STUDY_COMPLETED
        worker = handle.pool.workers[0]
        assert worker.tasks_done == 2  # the trial and the test evaluation
        assert worker.processes_started == 3  # a fresh process after each task
    finally:
        handle.stop()


def test_packed_gpu_trials_are_admitted_only_while_their_memory_fits():
    gpu = Device(0, "cuda:0", "cuda", "cuda:0", "0", 4, memory_bytes=10 * 2**30)
    scheduler = DeviceScheduler([gpu], Dispenser())
    four_gb = 4 * 2**30
    first = scheduler.try_acquire("a", 0.25, lambda: None, memory_bytes=four_gb)
    second = scheduler.try_acquire("a", 0.25, lambda: None, memory_bytes=four_gb)
    assert first and second
    assert scheduler.try_acquire("a", 0.25, lambda: None, memory_bytes=four_gb) is None  # 12 GB > 10 GB
    assert scheduler.try_acquire("b", 0.25, lambda: None, memory_bytes=2**30) is not None  # a small one fits
    scheduler.release(first)
    assert scheduler.try_acquire("a", 0.25, lambda: None, memory_bytes=four_gb) is not None


def test_a_device_never_gets_more_than_max_workers_and_a_trial_waits_for_one():
    """Regression (issue 13): `gpus_per_trial: 2**-20` got one worker process (~0.8 GB) per packed
    trial, bounded only by max_concurrent_trials. Now the 17th waits until a worker is free."""
    (device,) = cpu_devices(1)
    pool = StandInPool([device])
    scheduler = DeviceScheduler([device], pool)
    woken: list[str] = []
    held = [scheduler.try_acquire("a", 2**-20, lambda: woken.append("a")) for _ in range(MAX_WORKERS_PER_DEVICE)]
    assert all(held) and pool.counts(device) == WorkerCounts(MAX_WORKERS_PER_DEVICE, MAX_WORKERS_PER_DEVICE)
    assert scheduler.try_acquire("a", 2**-20, lambda: woken.append("a")) is None
    assert scheduler.try_acquire("b", 2**-20, lambda: woken.append("b")) is None
    scheduler.release(held.pop())
    assert woken == ["a", "b"]
    again = scheduler.try_acquire("b", 2**-20, lambda: None)  # b holds less, so the slot is b's
    assert again is not None and pool.counts(device) == WorkerCounts(MAX_WORKERS_PER_DEVICE, MAX_WORKERS_PER_DEVICE)
    assert len(pool.made) == MAX_WORKERS_PER_DEVICE  # the freed worker was reused, none started


def test_a_full_device_replaces_an_idle_worker_that_does_not_fit():
    """A pool whose workers fit only their own share (Ray) retires an idle one rather than grow."""
    (device,) = cpu_devices(1)
    pool = StandInPool([device], same_share_only=True)
    scheduler = DeviceScheduler([device], pool)
    for alloc in [scheduler.try_acquire("a", 1 / 32, lambda: None) for _ in range(MAX_WORKERS_PER_DEVICE)]:
        scheduler.release(alloc)
    half = scheduler.try_acquire("a", 0.5, lambda: None)
    assert half is not None and half.workers[0].share == 0.5
    assert pool.counts(device) == WorkerCounts(MAX_WORKERS_PER_DEVICE, 1)
    assert sum(w.closed for w in pool.made) == 1
