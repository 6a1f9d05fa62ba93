"""A resume state saved as one flat buffer per dtype, not one archive record per tensor.

`torch.save` writes every tensor as its own record in a zip archive and pickles it through its
own per-object hook, about 0.07 ms a tensor on CPU, plus a fixed cost for the archive. A resume
state holds one tensor per weight and per optimizer moment (26 for a three-layer MLP under Adam),
so that was most of its 1.9 ms save, paid by every trial every epoch and by each of a fused
group's K members. Here the plain tensors are copied into one CPU buffer per dtype, the rest of
the state is pickled by Python's C pickler with each tensor standing as a persistent id, and the
file is one pickle of the buffers' bytes (protocol 5) and that rest. `loads` gives every tensor
back as its own contiguous CPU tensor, as `torch.load(map_location="cpu")` of the plain state
would, and still reads a resume state `torch.save` wrote. Tensors that are not plain dense ones (a
subclass, sparse, quantized) are kept aside and saved by `torch.save` as they are.

The file is trusted as `torch.load(weights_only=False)` trusts one: it is the server's own.

Imported only in worker processes (it imports torch).
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT = "tuneyard.packed_state/1"  # the value of a packed file's "format" key


@dataclass
class _Packer:
    """Collects the state's tensors while its rest is pickled; then copies them into the buffers.

    A plain tensor's persistent id is `(dtype name, first element, shape)` in its dtype's buffer;
    any other tensor's is its index among the loose ones."""

    ids: dict[int, Any] = field(default_factory=dict)  # id(tensor) -> its persistent id
    grouped: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # dtype name -> its tensors, in order
    sizes: dict[str, int] = field(default_factory=dict)
    loose: list[torch.Tensor] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)  # alive while pickling, so that ids stay unique

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        known = self.ids.get(id(obj))
        if known is not None:
            return known
        self.kept.append(obj)
        if _plain(obj):
            dtype = str(obj.dtype)
            offset = self.sizes.get(dtype, 0)
            self.sizes[dtype] = offset + obj.numel()
            self.grouped.setdefault(dtype, []).append(obj)
            pid: Any = (dtype, offset, tuple(obj.shape))
        else:
            self.loose.append(obj)
            pid = len(self.loose) - 1
        self.ids[id(obj)] = pid
        return pid

    def buffers(self) -> dict[str, torch.Tensor]:
        """Per dtype, its tensors' elements one after the other, on the CPU (where a resume loads)."""
        return {
            dtype: torch.cat([t.detach().reshape(-1).cpu() for t in tensors]) for dtype, tensors in self.grouped.items()
        }


def _plain(tensor: torch.Tensor) -> bool:
    return type(tensor) is torch.Tensor and tensor.layout == torch.strided and not tensor.is_quantized


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, packer: _Packer) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.persistent_id = packer.persistent_id  # type: ignore[method-assign]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: dict[str, torch.Tensor], loose: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.flat, self.loose = buffers, loose
        self.seen: dict[Any, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if isinstance(pid, int):
            return self.loose[pid]
        if pid not in self.seen:  # one tensor saved twice comes back as one tensor
            dtype, offset, shape = pid
            numel = math.prod(shape)
            self.seen[pid] = self.flat[dtype][offset : offset + numel].view(shape).clone()
        return self.seen[pid]


def _bytes_tensor(raw: bytearray) -> torch.Tensor:
    return torch.frombuffer(raw, dtype=torch.uint8) if len(raw) else torch.empty(0, dtype=torch.uint8)


def _raw(flat: torch.Tensor) -> pickle.PickleBuffer:
    """A buffer's bytes for pickle to copy straight into the file (a writable one loads as a bytearray)."""
    return pickle.PickleBuffer(flat.view(torch.uint8).numpy().data)


def dumps(state: Any) -> bytes:
    """The packed file's bytes for `state`: its tensors in one buffer per dtype, the rest pickled."""
    packer = _Packer()
    out = io.BytesIO()
    _Pickler(out, packer).dump(state)
    loose = io.BytesIO()
    if packer.loose:
        torch.save(packer.loose, loose)
    buffers = {dtype: _raw(flat) for dtype, flat in packer.buffers().items()}
    packed = {"format": FORMAT, "buffers": buffers, "loose": loose.getvalue(), "rest": out.getvalue()}
    return pickle.dumps(packed, protocol=5)


def loads(data: bytes) -> Any:
    """The state in a packed file's bytes, or in a `torch.save` file's (a resume state from before)."""
    if data[:2] == b"PK":  # torch.save's zip archive
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    packed = pickle.loads(data)
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        raise ValueError("not a packed state")
    buffers = {
        name: _bytes_tensor(raw).view(getattr(torch, name.removeprefix("torch.")))
        for name, raw in packed["buffers"].items()
    }
    loose = torch.load(io.BytesIO(packed["loose"]), map_location="cpu", weights_only=False) if packed["loose"] else []
    return _Unpickler(io.BytesIO(packed["rest"]), buffers, loose).load()
