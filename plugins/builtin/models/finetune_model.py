"""Fine-tuning a torchvision backbone (private helper of `tuneyard.plugins.builtin.models`).

Weights come from a local state-dict file or from torchvision's named weights already in torch
hub's local cache; nothing here ever touches the network.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import torch
from torch import nn

from tuneyard.plugins.builtin.datasets.files import confine
from tuneyard.plugins.builtin.models.torchvision_models import build, family, replace_stem_conv, set_module, stages

DATA_ROOT_ENV = "TUNEYARD_DATA_ROOT"  # set by the server in trial workers to its --data-root


def resolve_weights_file(path: str) -> Path:
    """The weight file ``path`` names, confined by `resolve_data_path` as CreateStudy confines it.

    In a trial the root is the server's data root (its workers set ``TUNEYARD_DATA_ROOT``), so a trial
    refuses exactly what validation refuses. A direct call from Python (no ``TUNEYARD_DATA_ROOT``) has
    no data root: a relative path is taken from the working directory and an absolute one may lie
    anywhere, under the same rules otherwise (no ``..``). Errors name ``path`` as given, never a
    resolved location.
    """
    root = os.environ.get(DATA_ROOT_ENV, "") or (os.sep if os.path.isabs(path) else os.getcwd())
    resolved = confine(root, path, "weights_file")
    if not resolved.is_file():
        raise FileNotFoundError(f"weights_file {path!r} not found in the data root")
    return resolved


def cached_weights_path(backbone: str, weights: str) -> Path:
    """Where torch hub keeps torchvision's named ``weights`` of ``backbone``; FileNotFoundError if absent.

    Never downloads: a file missing from ``torch.hub.get_dir()/checkpoints`` is an error.
    """
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(backbone)
    except Exception:
        raise ValueError(f"torchvision has no named weights for {backbone!r}") from None
    name = weights.rsplit(".", 1)[-1] if weights.startswith(f"{enum.__name__}.") else weights
    try:
        member = enum[name]
    except KeyError:
        known = ", ".join(["DEFAULT", *sorted(set(enum.__members__) - {"DEFAULT"})])
        raise ValueError(f"unknown weights {weights!r} for {backbone} (known: {known})") from None
    filename = os.path.basename(urllib.parse.urlparse(member.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"torchvision weights {enum.__name__}.{member.name} are not in the local torch hub cache "
            f"(expected {str(path)!r}); no download is attempted. Copy {filename} there from {member.url}, "
            "or save a state dict under the data root and use weights_file"
        )
    return path


def read_state_dict(path: Path, shown: str = "") -> dict[str, torch.Tensor]:
    """A state dict from ``path``: plain, or under a "state_dict" / "model_state_dict" / "model" key.

    Errors call the file ``shown`` (e.g. the option as the user wrote it) rather than its resolved path.
    """
    shown = shown or repr(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights from {shown}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(f"{shown} does not hold a state dict (parameter names mapped to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a first-convolution kernel to ``channels`` inputs (summed for 1, else cycled and rescaled)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def load_backbone_weights(model: nn.Module, backbone: str, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model`` (a torchvision ``backbone``); return the classifier keys skipped.

    Every backbone tensor must load: a missing, unexpected or differently shaped key is a
    ValueError. Two adaptations are made: the first convolution takes the file's kernel size
    (e.g. ImageNet's 7x7 ResNet stem in place of the small-input 3x3, keeping the stride) and is
    converted to the input's channel count; ViT position embeddings are interpolated to the input
    size. The classifier (final linear layer) loads only when its shape matches (strict=False on
    the head alone): with another class count it keeps its fresh initialisation.
    """
    fam = family(backbone)
    state = dict(state)
    own = model.state_dict()
    stem_key = f"{fam.stem}.weight"
    if stem_key in state and stem_key in own and state[stem_key].dim() == own[stem_key].dim() == 4:
        theirs, mine = state[stem_key], own[stem_key]
        if theirs.shape[0] == mine.shape[0]:
            kernel = tuple(theirs.shape[2:])
            if kernel != tuple(mine.shape[2:]) and fam.kind != "vit" and kernel[0] == kernel[1]:
                stride = cast(nn.Conv2d, model.get_submodule(fam.stem)).stride[0]
                replace_stem_conv(model, backbone, mine.shape[1], kernel=kernel[0], stride=stride)
            if theirs.shape[1] != mine.shape[1]:
                state[stem_key] = _adapt_input_channels(theirs, mine.shape[1])
    pos_key = "encoder.pos_embedding"
    if fam.kind == "vit" and pos_key in state and state[pos_key].shape != own[pos_key].shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = dict(interpolate_embeddings(model.image_size, model.patch_size, state))
    own = model.state_dict()
    head_keys = {f"{fam.head}.weight", f"{fam.head}.bias"}
    skipped = sorted(k for k in head_keys if k in state and k in own and state[k].shape != own[k].shape)
    for key in skipped:
        del state[key]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(f"weights do not fit {backbone}: {_few(mismatched)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head_keys and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        problems = [f"missing {_few(missing)}"] if missing else []
        problems += [f"unexpected {_few(unexpected)}"] if unexpected else []
        raise ValueError(f"weights do not fit {backbone}: {'; '.join(problems)}")
    return skipped


def _few(keys: list[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def add_head(model: nn.Module, backbone: str, num_classes: int, head_layers: int, head_width: int) -> None:
    """Replace the classifier with ``head_layers`` x (Linear(head_width) + ReLU) and a final Linear."""
    path = family(backbone).head
    old = cast(nn.Linear, model.get_submodule(path))  # every family's classifier ends in a Linear
    layers: list[nn.Module] = []
    features = old.in_features
    for _ in range(head_layers):
        layers += [nn.Linear(features, head_width), nn.ReLU(inplace=True)]
        features = head_width
    layers.append(nn.Linear(features, num_classes))
    set_module(model, path, nn.Sequential(*layers))


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class FinetuneModel(nn.Module):
    """A backbone whose first ``freeze`` stages are fixed until epoch ``unfreeze_at_epoch``.

    Frozen parameters have ``requires_grad=False``, and frozen stages stay in eval mode (batch
    norm statistics fixed, dropout off) even while the model trains. The trainer calls
    ``on_epoch_start(epoch)`` (epochs from 1) before each epoch.
    """

    def __init__(self, backbone: nn.Module, stages: list[list[str]], freeze: int, unfreeze_at_epoch: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.frozen: list[str] = [prefix for stage in stages[:freeze] for prefix in stage]
        for name, param in backbone.named_parameters():
            if any(_matches(name, prefix) for prefix in self.frozen):
                param.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> Iterator[nn.Module]:
        for prefix in self.frozen:
            try:
                yield self.backbone.get_submodule(prefix)
            except AttributeError:  # a bare parameter such as ViT's class token
                continue

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        for module in self._frozen_modules():
            module.train(False)
        return self

    def on_epoch_start(self, epoch: int) -> None:
        """From epoch ``unfreeze_at_epoch`` on (when > 0), every parameter trains."""
        if self.frozen and 0 < self.unfreeze_at_epoch <= epoch:
            for param in self.parameters():
                param.requires_grad_(True)
            self.frozen = []
            self.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_finetune(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    backbone: str,
    weights: str,
    weights_file: str,
    freeze: int,
    head_layers: int,
    head_width: int,
    unfreeze_at_epoch: int,
    small_input: bool,
) -> FinetuneModel:
    fam = family(backbone)
    for name, value, least in (("freeze", freeze, 0), ("head_layers", head_layers, 0), ("head_width", head_width, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if unfreeze_at_epoch < 0:
        raise ValueError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
    if weights and weights_file:
        raise ValueError("set weights or weights_file, not both")
    state = None
    if weights_file:
        state = read_state_dict(resolve_weights_file(weights_file), f"weights_file {weights_file!r}")
    elif weights:
        state = read_state_dict(cached_weights_path(backbone, weights))
    patch = 0
    if fam.kind == "vit" and state is not None and f"{fam.stem}.weight" in state:
        patch = int(state[f"{fam.stem}.weight"].shape[-1])  # the weights fix the patch size
    model = build(backbone, input_shape, num_classes, small_input=small_input, patch_size=patch)
    if state is not None:
        load_backbone_weights(model, backbone, state)
    if head_layers:
        add_head(model, backbone, num_classes, head_layers, head_width)
    return FinetuneModel(model, stages(model, backbone), freeze, unfreeze_at_epoch)
