"""Built-in models: `simple_cnn`, the searchable `convnet`, torchvision families by name, `finetune`, `mlp`.

This is the one plugin module that registers models; ``convnet_model``, ``torchvision_models``,
``finetune_model`` and ``mlp`` (whose factory is imported here eagerly, so the name stays the
factory's) hold their implementations. The server reads the factories' schemas without
torch: torch is imported inside the factories, and ``convnet_model`` and ``finetune_model`` (which
subclass ``nn.Module``) only when a worker calls them. No submodule may share a factory's name:
importing it lazily would replace the factory with the module in this package's namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, DataPath
from tuneyard.plugins.builtin.models.convnet_space import KERNEL_SIZES, MAX_DEPTH
from tuneyard.plugins.builtin.models.mlp import MAX_DEPTH as MLP_MAX_DEPTH
from tuneyard.plugins.builtin.models.mlp import MAX_WIDTH as MLP_MAX_WIDTH
from tuneyard.plugins.builtin.models.mlp import mlp
from tuneyard.plugins.builtin.models.torchvision_models import FACTORIES as TORCHVISION_FACTORIES
from tuneyard.plugins.builtin.models.torchvision_models import vit_b_16

if TYPE_CHECKING:
    from torch import nn

# The head sees at most this many positions per side, so large inputs keep a small head.
_HEAD_SIDE = 4


def simple_cnn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_conv_layers: int = 2,
    num_filters: int = 32,
    filter_size: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Module:
    """A small CNN: (conv + batch norm + ReLU + 2x2 max-pool) per layer, then a linear head.

    Pooling is skipped once the feature map is smaller than 2x2, so any depth works on
    tiny inputs such as 8x8 digits. Batch norm makes training converge within a few epochs
    across a wide range of learning rates; it is left out on 1x1 maps (it cannot work there
    with a batch of one).

    Args:
        num_conv_layers: number of convolution blocks.
        num_filters: output channels of every convolution.
        filter_size: convolution kernel size (odd sizes keep the map centred).
        dropout: dropout probability before the linear head.
        batch_norm: normalise each convolution's output over the batch.
    """
    from torch import nn

    if num_conv_layers < 1:
        raise ValueError(f"num_conv_layers must be >= 1, got {num_conv_layers}")
    if num_filters < 1 or filter_size < 1:
        raise ValueError("num_filters and filter_size must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    channels, height, width = (int(d) for d in input_shape[-3:])
    layers: list[nn.Module] = []
    for _ in range(num_conv_layers):
        layers.append(nn.Conv2d(channels, num_filters, filter_size, padding="same"))
        if batch_norm and height * width > 1:
            layers.append(nn.BatchNorm2d(num_filters))
        layers.append(nn.ReLU())
        channels = num_filters
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    side_h, side_w = min(height, _HEAD_SIDE), min(width, _HEAD_SIDE)
    if (side_h, side_w) != (height, width):
        layers.append(nn.AdaptiveAvgPool2d((side_h, side_w)))
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side_h * side_w, num_classes)]
    return nn.Sequential(*layers)


def convnet(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    depth: int = 3,
    width: int = 32,
    width_multiplier: float = 2.0,
    blocks_per_stage: int = 1,
    kernel_size: int = 3,
    block: str = "plain",
    connection: str = "serial",
    batch_norm: bool = True,
    dropout: float = 0.0,
    pooling: str = "max",
) -> nn.Module:
    """A searchable CNN: stages of plain, residual or inception blocks, in one tower or two in parallel.

    Stage i has round(width * width_multiplier**i) channels and blocks_per_stage blocks; each
    stage after the first starts by halving the map (pooling), never below 1x1. Each tower ends
    in global average pooling, and a linear head (after dropout) maps the pooled features to
    logits. Every option is searchable, e.g. ``model.block`` as a choice of
    ["plain", "residual", "inception"] and ``model.connection`` of ["serial", "parallel"].
    Batch norm is left out of stages whose map is 1x1 (it cannot work there on a batch of one).

    Args:
        depth: number of stages, 1 to 4.
        width: channels of the first stage.
        width_multiplier: channel growth from one stage to the next (2.0 doubles them).
        blocks_per_stage: blocks in every stage.
        kernel_size: convolution kernel of plain and residual blocks: 3, 5 or 7 (inception
            blocks always use their 1x1, 3x3 and 5x5 branches).
        block: "plain" (conv, batch norm, ReLU), "residual" (two convolutions plus a shortcut) or
            "inception" (1x1, 3x3, 5x5 and pool-projection branches, concatenated; >= 4 channels).
        connection: "serial" (one tower of stages) or "parallel" (two towers side by side on the
            input, their pooled features concatenated before the head).
        batch_norm: normalise each convolution's output over the batch.
        dropout: dropout probability before the linear head.
        pooling: downsampling between stages: "max", "avg" (2x2 pooling) or "none" (every stage
            keeps the input's size).
    """
    from tuneyard.plugins.builtin.models.convnet_model import ConvNet

    return ConvNet(
        tuple(input_shape),
        num_classes,
        depth=depth,
        width=width,
        width_multiplier=width_multiplier,
        blocks_per_stage=blocks_per_stage,
        kernel_size=kernel_size,
        block=block,
        connection=connection,
        batch_norm=batch_norm,
        dropout=dropout,
        pooling=pooling,
    )


def finetune(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    backbone: str = "resnet18",
    weights: str = "",
    weights_file: DataPath = "",
    freeze: int = 0,
    head_layers: int = 0,
    head_width: int = 256,
    unfreeze_at_epoch: int = 0,
    small_input: bool = True,
) -> nn.Module:
    """Fine-tune a torchvision backbone from local weights, optionally frozen in part and with a new head.

    The backbone is built as the model of the same name (small-input stem, input channels), then
    loaded from a state-dict file or torchvision's named weights. Every backbone tensor must fit;
    the first convolution takes the weights' kernel size and is converted to the input's channel
    count (3 -> 1: summed over colours), and ViT position embeddings are resized to the input. The
    classifier loads only when its shape matches (strict=False on the head alone): with another
    class count it stays freshly initialised. Nothing is ever downloaded.

    Args:
        backbone: resnet18, resnet34, resnet50, mobilenet_v2, mobilenet_v3_small,
            mobilenet_v3_large, efficientnet_b0 or vit_b_16 (ViT takes its patch size from the weights).
        weights: torchvision's named weights, e.g. "IMAGENET1K_V1" or "DEFAULT", used only when the
            file is already in torch hub's local cache (TORCH_HOME); otherwise a FileNotFoundError
            says so. "" means none.
        weights_file: a saved state dict (torch.save(model.state_dict())) inside the data root: a
            path relative to it, or an absolute path inside it; ".." is refused. The server sets
            TUNEYARD_DATA_ROOT for trials (without it, paths are taken as given). "" means none.
        freeze: how many leading stages keep requires_grad=False (and eval-mode batch norm):
            ResNet stem, layer1..layer4; MobileNet/EfficientNet feature blocks; ViT patch
            embedding, encoder layers. Larger values freeze the whole backbone, never the head.
        head_layers: hidden layers (Linear + ReLU) added before a new final classifier; the new
            head is freshly initialised.
        head_width: units of each added hidden layer.
        unfreeze_at_epoch: from this epoch (counted from 1) every parameter trains; 0 never.
        small_input: for inputs of at most 32 px, use the small-image stem (stride 1; ResNet
            also drops its max-pool).
    """
    from tuneyard.plugins.builtin.models.finetune_model import build_finetune

    return build_finetune(
        tuple(input_shape),
        num_classes,
        backbone=backbone,
        weights=weights,
        weights_file=weights_file,
        freeze=freeze,
        head_layers=head_layers,
        head_width=head_width,
        unfreeze_at_epoch=unfreeze_at_epoch,
        small_input=small_input,
    )


@hookimpl
def tuneyard_register_models(register: Any) -> None:
    # The limits each factory checks (kernel_size is one of 3, 5, 7: the bounds cover that span).
    at_least_one, dropout = Bounds(ge=1), Bounds(ge=0, lt=1)
    register(
        "simple_cnn",
        simple_cnn,
        bounds={
            "num_conv_layers": at_least_one,
            "num_filters": at_least_one,
            "filter_size": at_least_one,
            "dropout": dropout,
        },
        fusable_options=("dropout",),  # fused members may differ in it (the channel-stacked forward)
    )
    register(
        "convnet",
        convnet,
        bounds={
            "depth": Bounds(ge=1, le=MAX_DEPTH),
            "width": at_least_one,
            "width_multiplier": Bounds(gt=0),
            "blocks_per_stage": at_least_one,
            "kernel_size": Bounds(ge=min(KERNEL_SIZES), le=max(KERNEL_SIZES)),
            "dropout": dropout,
        },
    )
    for factory in TORCHVISION_FACTORIES:  # patch_size 0 picks a default; a negative one cannot work
        register(factory.__name__, factory, bounds={"patch_size": Bounds(ge=0)} if factory is vit_b_16 else None)
    register(
        "finetune",
        finetune,
        bounds={
            "freeze": Bounds(ge=0),
            "head_layers": Bounds(ge=0),
            "head_width": at_least_one,
            "unfreeze_at_epoch": Bounds(ge=0),
        },
    )
    register(
        "mlp",
        mlp,
        bounds={"depth": Bounds(ge=0, le=MLP_MAX_DEPTH), "width": Bounds(ge=1, le=MLP_MAX_WIDTH), "dropout": dropout},
    )  # not fusable_options=("dropout",): at 0 the model has no dropout layers, so its layers differ
