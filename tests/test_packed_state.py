"""Resume states packed as one buffer per dtype (`server.worker.packed_state`): what goes in comes back."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tuneyard.server.worker.packed_state import dumps, loads


@dataclass
class Holder:
    """A state part that keeps a tensor inside an object, where no walk over dicts would find it."""

    name: str
    tensor: torch.Tensor


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.layout == b.layout
            and torch.equal(a.to_dense() if a.is_sparse else a, b.to_dense() if b.is_sparse else b)
        )
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))  # type: ignore[arg-type]
    if isinstance(a, Holder):
        return isinstance(b, Holder) and a.name == b.name and _equal(a.tensor, b.tensor)
    return a == b


def _trained_state() -> dict[str, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 1, 8, 8)).sum().backward()
    optimizer.step()
    return {
        "epoch": 3,
        "metrics": {"val_loss": 0.25, "val_accuracy": 0.9},
        "best": 0.25,
        "parts": {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
        "rng": {"torch": torch.get_rng_state(), "python": pickle.dumps((3, (1, 2), None))},
    }


def test_a_trained_state_comes_back_equal_with_its_state_dicts_kinds():
    state = _trained_state()
    back = loads(dumps(state))
    assert _equal(state, back)
    model = back["parts"]["model"]  # type: ignore[index]
    assert isinstance(model, OrderedDict)
    assert model._metadata == state["parts"]["model"]._metadata  # type: ignore[index]  # load_state_dict reads it
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    fresh.load_state_dict(model)
    optimizer = torch.optim.Adam(fresh.parameters())
    optimizer.load_state_dict(back["parts"]["optimizer"])  # type: ignore[index]
    assert optimizer.state_dict()["state"][0]["step"] == torch.tensor(1.0)


def test_every_dtype_and_shape_comes_back_as_its_own_contiguous_tensor():
    base = torch.arange(12, dtype=torch.float32).view(3, 4)
    state = {
        "f16": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "f64": torch.tensor([1e-300, 3.0], dtype=torch.float64),
        "i64": torch.tensor([2**40, -1]),
        "bool": torch.tensor([True, False, True]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "scalar": torch.tensor(7.0),
        "empty": torch.empty(0, 5),
        "transposed": base.t(),
        "slice": base[1:, ::2],
        "nested": [(torch.ones(2), {"deep": torch.zeros(1, 1)})],
    }
    back = loads(dumps(state))
    assert _equal(state, back)
    for key in ("transposed", "slice"):
        assert back[key].is_contiguous()
    back["f64"].add_(1)  # each tensor owns its memory: writing one leaves the others
    assert back["i64"].tolist() == [2**40, -1]
    assert back["f64"][1] == 4.0


def test_one_tensor_twice_comes_back_as_one_tensor():
    shared = torch.randn(3)
    back = loads(dumps({"a": shared, "b": [shared]}))
    assert back["a"] is back["b"][0]
    assert torch.equal(back["a"], shared)


def test_tensors_the_buffers_cannot_hold_come_back_as_they_were():
    parameter = nn.Parameter(torch.randn(2, 2))
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, 3.0], (4,), check_invariants=True)
    inside = Holder("h", torch.arange(4.0))
    state = {"parameter": parameter, "sparse": sparse, "holder": inside, "plain": torch.ones(3)}
    back = loads(dumps(state))
    assert isinstance(back["parameter"], nn.Parameter)
    assert back["sparse"].is_sparse
    assert _equal(state, back)


def test_a_resume_state_torch_save_wrote_still_loads():
    state = _trained_state()
    older = io.BytesIO()
    torch.save(state, older)
    assert _equal(state, loads(older.getvalue()))


def test_a_file_that_is_not_a_packed_state_is_refused():
    with pytest.raises(ValueError, match="not a packed state"):
        loads(pickle.dumps({"format": "something else"}))


def test_the_tensors_of_one_dtype_share_one_buffer():
    """One buffer per dtype, not one record per tensor: what makes the file cheaper to write."""
    state = {f"t{i}": torch.full((3,), float(i)) for i in range(200)}
    packed = pickle.loads(dumps(state))
    assert set(packed["buffers"]) == {"torch.float32"}
    assert len(packed["buffers"]["torch.float32"]) == 200 * 3 * 4
