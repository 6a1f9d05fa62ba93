"""Fused trial arrays (issue 17): K members trained as one vmapped model match their solo runs.

Each member is built by the model plugin and seeded as its solo trial would be; the fused model's
outputs, gradients, SGD steps and batch norm statistics must equal the solo modules' to float
rounding, its state dicts must load into the solo modules, and `fusable` must refuse what it
cannot run. The timing test prints fused-vs-sequential forward+backward time (run with -s).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuneyard.plugins.builtin.models import convnet, mlp, simple_cnn
from tuneyard.plugins.builtin.tasks.heads import Classification, Regression
from tuneyard.server.worker.batches import Batches
from tuneyard.server.worker.fused import epoch
from tuneyard.server.worker.fused.epoch import FusedTotals, MemberLosses, evaluate_members
from tuneyard.server.worker.fused.stack import FusedModel, fusable, fused_step, member_losses
from tuneyard.server.worker.measure import evaluate_split
from tuneyard.server.worker.trainer import EVAL_BATCH

SHAPE = (1, 8, 8)  # the digits dataset's input
CLASSES = 10
SEEDS = (0, 1, 2)

MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, object]]] = {
    "simple_cnn": (simple_cnn, {}),
    "convnet_bn": (convnet, {"depth": 2, "width": 8, "block": "residual", "batch_norm": True}),
    "convnet_plain": (convnet, {"depth": 2, "width": 8, "batch_norm": False, "connection": "parallel"}),
    "convnet_inception": (convnet, {"depth": 2, "width": 8, "block": "inception", "pooling": "avg"}),
    "mlp": (mlp, {"depth": 2, "width": 32, "activation": "gelu"}),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(name: str, seed: int, **changes: object) -> nn.Module:
    """The member as its solo trial builds it: seeded, then made by the factory."""
    factory, options = MODELS[name]
    torch.manual_seed(seed)
    return factory(input_shape=SHAPE, num_classes=CLASSES, **{**options, **changes})


def members(name: str, **changes: object) -> list[nn.Module]:
    return [build(name, seed, **changes) for seed in SEEDS]


def batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(n, *SHAPE, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().max().item() <= tol


def sgd_steps_both(fused: FusedModel, solos: list[nn.Module], lrs: torch.Tensor, steps: int) -> None:
    """Plain SGD steps (member k at lrs[k]) on the fused model and on each solo module, same batches."""
    for i in range(steps):
        x, y = batch(i)
        fused.zero_grad()
        fused_step(fused, x, y, F.cross_entropy)
        with torch.no_grad():
            for p in fused.parameters():
                assert p.grad is not None
                p -= lrs.view(-1, *([1] * (p.dim() - 1))) * p.grad
        for k, solo in enumerate(solos):
            solo.zero_grad()
            F.cross_entropy(solo(x), y).backward()
            with torch.no_grad():
                for p in solo.parameters():
                    assert p.grad is not None
                    p -= lrs[k] * p.grad


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_gradients_equal_solo(name: str) -> None:
    solos = members(name)
    assert fusable(solos, batch(9)[0][:2]) is None
    fused = FusedModel(solos)
    x, y = batch(0)
    step = fused_step(fused, x, y, F.cross_entropy)
    assert step.outputs.shape == (len(SEEDS), len(x), CLASSES)
    for k, solo in enumerate(solos):
        out = solo(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        close(step.outputs[k], out.detach(), 1e-5)
        close(step.losses[k], loss.detach(), 1e-5)
        for pname, param in solo.named_parameters():
            grad = fused.params[pname].grad
            assert grad is not None and param.grad is not None
            close(grad[k], param.grad, 1e-5)
    # the members are different networks, so the test would notice a member mixed up with another
    assert (step.outputs[0] - step.outputs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_steps_and_batch_norm_statistics_match_solo(name: str) -> None:
    solos = members(name)
    fused = FusedModel(solos)
    lrs = torch.tensor([0.05, 0.1, 0.2])  # each member its own learning rate
    sgd_steps_both(fused, solos, lrs, steps=5)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in solos[0].modules())
    assert has_bn == (name in ("simple_cnn", "convnet_bn", "convnet_inception"))
    for k, solo in enumerate(solos):
        state = fused.member_state_dict(k)
        assert list(state) == list(solo.state_dict())
        for key, value in solo.state_dict().items():
            close(state[key], value, 1e-4)  # running_mean/var and num_batches_tracked included
    x, _ = batch(7)
    fused.eval()
    out = fused(x)
    for k, solo in enumerate(solos):
        close(out[k], solo.eval()(x).detach(), 1e-4)  # eval mode: the running statistics


def test_state_dicts_round_trip_with_solo_modules() -> None:
    solos = members("convnet_bn")
    fused = FusedModel(solos)
    x, y = batch(0)
    fused_step(fused, x, y, F.cross_entropy)  # moves the running statistics away from the solo ones
    fresh = build("convnet_bn", 42)
    fresh.load_state_dict(fused.member_state_dict(1))  # strict: the very keys and shapes
    unstacked = fused.unstack(1)
    assert type(unstacked) is type(fresh) and unstacked.training
    fused.eval()
    fresh.eval(), unstacked.eval()
    close(fresh(x).detach(), fused(x)[1], 1e-5)
    close(unstacked(x).detach(), fused(x)[1], 1e-5)
    saved = fused.member_state_dict(1)
    assert all(t.untyped_storage().size() == t.numel() * t.element_size() for t in saved.values())
    fused.load_member_state_dict(2, solos[0].state_dict())  # a solo checkpoint into another slot
    close(fused(x)[2], solos[0].eval()(x).detach(), 1e-5)
    with pytest.raises(KeyError):
        fused.load_member_state_dict(0, {"nope": torch.zeros(1)})
    with pytest.raises(IndexError):
        fused.member_state_dict(3)


def test_unstacked_module_trains_apart_from_the_fused_model() -> None:
    fused = FusedModel(members("simple_cnn"))
    module = fused.unstack(0)
    before = fused.member_state_dict(0)
    x, y = batch(3)
    F.cross_entropy(module(x), y).backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= 0.5 * p.grad
    for key, value in fused.member_state_dict(0).items():
        assert torch.equal(value, before[key])


def test_the_probe_module_is_kept_and_holds_the_members_current_weights() -> None:
    """`probe` (timing each epoch) builds its module once; each call copies the member's weights in."""
    fused = FusedModel(members("convnet_bn"))
    first = fused.probe(0)
    x, y = batch(4)
    fused_step(fused, x, y, F.cross_entropy)  # the weights and running statistics move on
    again = fused.probe(1)
    assert again is first
    for key, value in fused.member_state_dict(1).items():
        assert torch.equal(again.state_dict()[key], value), key
    fused.eval()
    assert not fused.probe(1).training
    close(again(x).detach(), fused(x)[1], 1e-5)


def test_fusable_refuses_with_a_reason() -> None:
    wider = [build("simple_cnn", 0), build("simple_cnn", 1, num_filters=16)]
    reason = fusable(wider)
    assert reason is not None and "0.weight" in reason and "member 1" in reason
    with pytest.raises(ValueError, match="cannot fuse"):
        FusedModel(wider)
    no_bn = [build("simple_cnn", 0), build("simple_cnn", 1, batch_norm=False)]
    assert "differs" in (fusable(no_bn) or "")
    # same shapes, another architecture: what the base copy runs would be wrong for member 1
    activation = [build("mlp", 0), build("mlp", 1, activation="tanh")]
    assert "GELU" in (fusable(activation) or "")
    pooling = [build("convnet_bn", 0), build("convnet_bn", 1, pooling="avg")]
    assert "MaxPool2d" in (fusable(pooling) or "")
    rates = [build("simple_cnn", 0, dropout=0.1), build("simple_cnn", 1, dropout=0.3)]
    assert fusable(rates) is None  # channel-stacked: each member its own dropout
    vmapped_rates = [build("convnet_plain", 0, dropout=0.1), build("convnet_plain", 1, dropout=0.3)]
    assert "dropout differs" in (fusable(vmapped_rates) or "")  # under vmap the base copy's p is all members'
    cumulative = members("simple_cnn")
    for module in cumulative:
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.momentum = None
    assert "momentum=None" in (fusable(cumulative) or "")
    assert fusable([]) == "no members"


class _Scalar(nn.Module):
    """A model vmap cannot trace: it reads a value out of a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(self.linear.weight.abs().max().item())
        return self.linear(x.flatten(1)) / scale


def test_fusable_runs_a_sample_to_find_what_vmap_cannot_trace() -> None:
    torch.manual_seed(0)
    modules = [_Scalar(), _Scalar()]
    assert fusable(modules) is None  # the structure fits ...
    reason = fusable(modules, batch(0)[0][:2])
    assert reason is not None and "vmap" in reason and ".item()" in reason  # ... the trace does not
    solos = members("simple_cnn")
    before = [solo.state_dict() for solo in solos]
    before = [{key: value.clone() for key, value in state.items()} for state in before]
    assert fusable(solos, batch(0)[0][:4]) is None  # a training forward and backward, on copies
    for solo, state in zip(solos, before, strict=True):
        assert solo.training
        for key, value in solo.state_dict().items():
            assert torch.equal(value, state[key]) and solo.get_parameter("0.weight").grad is None


def test_dropout_members_draw_their_own_masks() -> None:
    """With dropout, each member gets its own masks: not its solo run's (see the module docstring)."""
    same = [
        build("simple_cnn", 5, dropout=0.5, batch_norm=False) for _ in SEEDS
    ]  # identical weights: only masks differ
    fused = FusedModel(same)
    x, y = batch(0)
    train_out = fused(x)
    assert (train_out[0] - train_out[1]).abs().max() > 1e-3
    assert (train_out[1] - train_out[2]).abs().max() > 1e-3
    fused.eval()
    eval_out = fused(x)
    solo = same[0].eval()(x).detach()
    for k in range(len(same)):
        close(eval_out[k], solo, 1e-5)  # without dropout active, every member is its solo module
    losses = member_losses(eval_out, y, [F.cross_entropy, F.cross_entropy, F.cross_entropy])
    assert losses.shape == (3,)


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def test_fused_forward_backward_time_k8_simple_cnn() -> None:
    """Fused vs sequential forward+backward of 8 simple_cnn members on batches of 64 (printed)."""
    solos = [build("simple_cnn", seed) for seed in range(8)]
    fused = FusedModel(solos)
    x, y = batch(0, n=64)

    def sequential() -> None:
        for solo in solos:
            F.cross_entropy(solo(x), y).backward()

    def together() -> None:
        fused_step(fused, x, y, F.cross_entropy)

    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            together()
        slow = [str(w.message) for w in caught if "performance drop" in str(w.message)]
        assert not slow, slow  # no per-member loop inside vmap (simple_cnn runs channel-stacked, without it)
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    seq, fus = _time(sequential, 5), _time(together, 5)
    print(
        f"\nK=8 simple_cnn, batch 64, 1 thread: sequential {seq * 1e3:.1f} ms, fused {fus * 1e3:.1f} ms, "
        f"speed-up {seq / fus:.2f}x"
    )


def test_member_losses_are_each_members_cross_entropy_with_its_label_smoothing() -> None:
    """One op for every member's built-in classification loss: the solo gradients bitwise, the losses to rounding."""
    smoothing = (0.0, 0.1, 0.0, 0.25)
    tasks = [Classification(num_classes=CLASSES, label_smoothing=s) for s in smoothing]
    outputs = torch.randn(len(tasks), 32, CLASSES, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = batch(1, n=32)[1]
    fused = MemberLosses(tasks)(outputs, y)
    alone = torch.stack([F.cross_entropy(outputs[k], y, label_smoothing=s) for k, s in enumerate(smoothing)])
    close(fused.detach(), alone.detach(), 1e-6)
    (fused_grad,) = torch.autograd.grad(fused.sum(), outputs)
    (alone_grad,) = torch.autograd.grad(alone.sum(), outputs)
    assert torch.equal(fused_grad, alone_grad)
    # any other task is called once per member
    plain = MemberLosses([Regression(), Regression(loss="l1")])(outputs[:2, :, :1], y.float())
    assert torch.equal(
        plain, torch.stack([F.mse_loss(outputs[0, :, 0], y.float()), F.l1_loss(outputs[1, :, 0], y.float())])
    )


def test_fused_totals_and_validation_equal_each_members_solo_measurement() -> None:
    """`evaluate_members` (one vmapped pass) gives every member what `evaluate_split` gives its module."""
    solos = members("convnet_bn")
    fused = FusedModel(solos)
    fused_step(fused, *batch(2), F.cross_entropy)  # batch norm statistics that differ per member
    data = [(x, y) for x, y in zip(torch.randn(100, *SHAPE), torch.randint(0, CLASSES, (100,)), strict=True)]
    batches = Batches(data, 32, device=torch.device("cpu"), shuffle=False, seed=0)
    task = Classification(num_classes=CLASSES)
    got = evaluate_members(fused, batches, task, "fp32", torch.device("cpu"), lambda: None)
    for k in range(len(solos)):
        alone = evaluate_split(fused.unstack(k), batches, task, "fp32", torch.device("cpu"), lambda: None)
        assert got[k]["accuracy"] == alone["accuracy"]
        assert got[k]["loss"] == pytest.approx(alone["loss"], abs=1e-6)
    totals = FusedTotals(task, 3, torch.device("cpu"))
    x, y = batch(4)
    out = fused(x).detach()
    totals.add(MemberLosses([task] * 3)(out, y), out, y)
    totals.keep([0, 2])  # member 1 left the group mid-pass
    assert [r["accuracy"] for r in totals.read()] == [float((out[k].argmax(1) == y).float().mean()) for k in (0, 2)]


def test_a_cpu_eval_batch_goes_through_channel_stacked_members_in_parts_with_the_same_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`eval_rows` splits an eval batch for samplewise layers on CPU; every member's metrics stay its solo ones."""
    monkeypatch.setattr(epoch, "EVAL_MEMBER_ROWS", 96)  # 32 rows a part for 3 members
    solos = members("simple_cnn")
    fused = FusedModel(solos)
    fused_step(fused, *batch(2), F.cross_entropy)  # batch norm statistics that differ per member
    cpu = torch.device("cpu")
    assert epoch.eval_rows(fused, cpu) == 32
    data = [(x, y) for x, y in zip(torch.randn(100, *SHAPE), torch.randint(0, CLASSES, (100,)), strict=True)]
    batches = Batches(data, 100, device=cpu, shuffle=False, seed=0)
    calls: list[int] = []
    forward = FusedModel.forward
    monkeypatch.setattr(FusedModel, "__call__", lambda self, x: calls.append(len(x)) or forward(self, x))
    task = Classification(num_classes=CLASSES)
    got = evaluate_members(fused, batches, task, "fp32", cpu, lambda: None)
    assert calls == [32, 32, 32, 4]
    for k in range(len(solos)):
        alone = evaluate_split(fused.unstack(k), batches, task, "fp32", cpu, lambda: None)
        assert got[k]["accuracy"] == alone["accuracy"]
        assert got[k]["loss"] == pytest.approx(alone["loss"], abs=1e-6)


def test_an_eval_batch_stays_whole_where_a_sample_may_depend_on_the_others() -> None:
    cpu = torch.device("cpu")
    assert epoch.eval_rows(FusedModel(members("convnet_bn")), cpu) == EVAL_BATCH  # vmap: unknown layers
    torch.manual_seed(0)
    batch_stats = [
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(), nn.Linear(144, 3))
        for _ in range(3)
    ]
    assert epoch.eval_rows(FusedModel(batch_stats), cpu) == EVAL_BATCH  # normalises over the batch in eval too
    assert epoch.eval_rows(FusedModel(members("simple_cnn")), torch.device("cuda")) == EVAL_BATCH


@pytest.mark.parametrize("name", ["simple_cnn", "mlp"])
def test_sequential_models_run_channel_stacked_and_equal_solo_sgd_runs(name: str) -> None:
    """simple_cnn and mlp take the channel-stacked forward (no vmap) and their SGD runs follow their solo runs.

    simple_cnn's first convolution and batch norm run as one product (`fused.conv_norm`), which
    rounds otherwise than the solo kernels (closer to float64: tests/test_fused_conv_norm.py); four
    steps at lr 0.3 grow that to about 5e-5 in its outputs, which are about 10. mlp's head is a
    `baddbmm` against the solo `addmm` (an ulp on some CPUs)."""
    solos = members(name)
    fused = FusedModel(solos)
    assert not fused.uses_vmap
    lrs = torch.tensor([0.3, 0.1, 0.05])
    sgd_steps_both(fused, solos, lrs, steps=4)
    tolerance = 1e-4 if name == "simple_cnn" else 1e-6
    for k, solo in enumerate(solos):
        for key, value in solo.state_dict().items():
            close(fused.member_state_dict(k)[key], value, tolerance)
    fused.eval()
    x, _ = batch(5)
    out = fused(x)
    for k, solo in enumerate(solos):
        close(out[k], solo.eval()(x).detach(), tolerance)


def test_other_architectures_and_a_shared_dropout_run_under_vmap() -> None:
    assert FusedModel(members("convnet_bn")).uses_vmap  # residual blocks: not a flat Sequential
    with_dropout_first = [nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(64, CLASSES)) for _ in SEEDS]
    assert FusedModel(with_dropout_first).uses_vmap  # one mask on the shared batch would serve every member
    no_dropout = [nn.Sequential(nn.Dropout(0.0), nn.Flatten(), nn.Linear(64, CLASSES)) for _ in SEEDS]
    assert not FusedModel(no_dropout).uses_vmap
    indices = [nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.Flatten(), nn.Linear(16, 3)) for _ in SEEDS]
    assert FusedModel(indices).uses_vmap  # a pool that returns its indices is not a plain layer


def test_a_grouped_convolution_on_the_shared_batch_equals_solo() -> None:
    torch.manual_seed(3)
    solos = [nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)) for _ in SEEDS]
    fused = FusedModel(solos)
    assert not fused.uses_vmap
    x = torch.randn(5, 2, 8, 8)
    out = fused(x)
    for k, solo in enumerate(solos):
        close(out[k], solo(x).detach(), 1e-6)


def test_members_with_their_own_dropout_drop_at_their_own_rates() -> None:
    """Dropout is fusable in a channel-stacked model: member k keeps about 1 - p_k of its units."""
    rates = (0.0, 0.25, 0.6)
    torch.manual_seed(4)
    same = [nn.Sequential(nn.Flatten(), nn.Linear(64, 400), nn.ReLU(), nn.Dropout(p)) for p in rates]
    for module in same[1:]:
        module.load_state_dict(same[0].state_dict())  # equal weights: only the masks differ
    fused = FusedModel(same)
    assert not fused.uses_vmap
    x = torch.rand(64, *SHAPE) + 0.1
    solo = same[0].eval()(x).detach()
    out = fused(x).detach()
    close(out[0], solo, 0.0)  # p = 0: untouched
    for k, p in enumerate(rates[1:], start=1):
        alive = solo > 0
        kept = (out[k][alive] != 0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.02, (p, kept)  # 25,600 units: the binomial's sd is 0.003
        close(out[k][out[k] != 0], (solo / (1 - p))[out[k] != 0], 1e-5)  # survivors scaled by 1 / (1 - p)
    fused.eval()
    for k in range(len(rates)):
        close(fused(x)[k], solo, 0.0)  # eval mode: no dropout at all


def test_conv_members_with_their_own_dropout_after_the_convolutions() -> None:
    """In the channels layout a member's probability covers its block of channels."""
    solos = [build("simple_cnn", 0, dropout=p, batch_norm=False) for p in (0.0, 0.5)]
    solos[1].load_state_dict(solos[0].state_dict())
    head = nn.Sequential(*list(solos[0].children())[:-3])  # up to the flatten: conv blocks only
    features = [nn.Sequential(*list(head.children()), nn.Dropout(p)) for p in (0.0, 0.5)]
    fused = FusedModel(features)
    assert not fused.uses_vmap
    x = torch.rand(256, *SHAPE)
    out = fused(x).detach()
    plain = head(x).detach()
    close(out[0], plain, 0.0)
    alive = plain > 0
    kept = (out[1][alive] != 0).float().mean().item()
    assert abs(kept - 0.5) < 0.03, kept


def test_members_run_in_parts_of_the_stack_as_in_the_whole() -> None:
    """A run of members (`FusedModel.forward(x, members)`) gives their outputs and gradients as the
    whole stack does; a dropout member at 0 in a later part keeps its own rate, not the first member's."""
    rates = (0.5, 0.0, 0.0, 0.5)
    solos = [build("simple_cnn", seed, dropout=p) for seed, p in enumerate(rates)]
    fused = FusedModel(solos)
    assert not fused.uses_vmap
    x, y = batch(3)
    whole = fused(x)
    kept = [1, 2]  # the members without dropout: their outputs do not depend on the masks drawn
    F.cross_entropy(whole[kept].flatten(0, 1), y.repeat(len(kept)), reduction="sum").backward()
    grads = {name: p.grad.clone() for name, p in fused.params.items() if p.grad is not None}
    fused.zero_grad()
    for part, member in ((slice(0, 2), 1), (slice(2, 4), 2)):
        out = fused(x, part)
        assert out.shape == (2, len(x), CLASSES)
        close(out[member - part.start], whole[member].detach(), 1e-6)
        F.cross_entropy(out[member - part.start], y, reduction="sum").backward()  # accumulates over the parts
    for name, grad in grads.items():
        got = fused.params[name].grad
        assert got is not None
        close(got[kept], grad[kept], 1e-5)
    with pytest.raises(ValueError, match="run of the stack"):
        fused(x, slice(0, 4, 2))


@pytest.mark.parametrize(("name", "size"), [("simple_cnn", 16), ("convnet_bn", 4)])
def test_a_step_in_two_parts_of_the_stack_is_bitwise_the_whole_step(name: str, size: int) -> None:
    """Outputs, accumulated gradients and batch norm's running statistics, channel-stacked and under vmap."""
    solos = [build(name, seed) for seed in range(size)]
    whole, halves = FusedModel(solos), FusedModel(solos)
    assert whole.uses_vmap == (name == "convnet_bn")
    x, y = batch(0, 64)
    out = whole(x)
    F.cross_entropy(out.flatten(0, 1), y.repeat(size), reduction="sum").backward()
    outs = []
    for part in (slice(0, size // 2), slice(size // 2, size)):
        outs.append(halves(x, part))
        F.cross_entropy(outs[-1].flatten(0, 1), y.repeat(size // 2), reduction="sum").backward()
    close(torch.cat(outs), out, 0.0)
    for key, param in whole.params.items():
        assert param.grad is not None and torch.equal(halves.params[key].grad, param.grad), key
    for key, buffer in whole.buffers.items():
        assert torch.equal(halves.buffers[key], buffer), key  # num_batches_tracked once per member


def test_a_cpu_training_step_takes_the_stack_in_parts_of_about_two_megabytes() -> None:
    cpu = torch.device("cpu")
    cnn = FusedModel([build("simple_cnn", seed, num_filters=16) for seed in range(16)])  # the bench's digits model
    x = torch.randn(64, *SHAPE)
    assert cnn.activation_bytes(x) == 16 * 8 * 8 * 4  # the first convolution's output, per row
    parts = epoch.train_parts(cnn, x, cpu)
    assert parts == [slice(0, 8), slice(8, 16)]  # 64 rows x 4 KB: 8 members a part
    assert epoch.train_parts(cnn, x[:32], cpu) == [slice(0, 16)]  # 16 x 32 rows x 4 KB fit
    ten = FusedModel([build("simple_cnn", seed, num_filters=16) for seed in range(10)])
    assert epoch.train_parts(ten, x, cpu) == [slice(0, 5), slice(5, 10)]  # two parts of up to 8, balanced
    assert epoch.train_parts(cnn, x, torch.device("cuda")) == [slice(0, 16)]  # a GPU wants the large kernels
    vmapped = FusedModel(members("convnet_bn"))
    assert vmapped.uses_vmap and epoch.train_parts(vmapped, x, cpu) == [slice(0, 3)]
    assert epoch.train_parts(FusedModel([build("mlp", s) for s in range(16)]), x, cpu) == [slice(0, 16)]
