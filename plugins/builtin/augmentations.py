"""Built-in augmentations (torchvision.transforms.v2) on float CHW tensors in [0, 1].

Per-sample augmentations return a callable on ONE float CHW tensor; the trainer applies them to
the training split only, sample by sample, before normalising with the dataset's statistics. None
of them changes the shape. They work on 1-channel images (digits, MNIST) as well as on RGB ones:
colour operations (saturation, hue) leave a single channel unchanged.

Batch-level augmentations (`mixup`, `cutmix`, registered with ``batch_level=True``) return a
callable ``(inputs[N, C, H, W], labels[N] or soft labels[N, K]) -> (inputs, soft_labels[N, K])``
with float soft labels whose rows sum to 1, for a CrossEntropyLoss on soft targets.

Every returned object is picklable (data loader workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds

if TYPE_CHECKING:  # the server reads these factories' schemas without importing torch; workers call them
    from collections.abc import Callable

    import torch
    from torchvision.transforms import v2

    Transform = Callable[[torch.Tensor], torch.Tensor]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_range(low_name: str, low: float, high_name: str, high: float, *, minimum: float = 0.0) -> None:
    if not minimum < low <= high:
        raise ValueError(f"need {minimum} < {low_name} <= {high_name}, got {low_name}={low}, {high_name}={high}")


def _size(input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) < 2:
        raise ValueError(f"this augmentation needs an image input shape (C, H, W), got {tuple(input_shape)}")
    return int(input_shape[-2]), int(input_shape[-1])


def _channels(input_shape: tuple[int, ...] | None) -> int | None:
    return int(input_shape[0]) if input_shape is not None and len(input_shape) == 3 else None


# ---- geometric ----


def random_crop(*, input_shape: tuple[int, ...], padding: int = 1) -> Transform:
    """Pad each side with zeros, then crop a random window of the input's own size.

    Args:
        padding: pixels of zero padding added to each side before cropping.
    """
    from torchvision.transforms import v2

    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return v2.RandomCrop(_size(input_shape), padding=padding)


def random_resized_crop(
    *,
    input_shape: tuple[int, ...],
    scale_low: float = 0.5,
    scale_high: float = 1.0,
    ratio_low: float = 0.75,
    ratio_high: float = 4.0 / 3.0,
) -> Transform:
    """Crop a random area and aspect ratio, then resize it back to the input's size.

    Args:
        scale_low: smallest share of the image's area that the crop covers.
        scale_high: largest share of the image's area that the crop covers (at most 1).
        ratio_low: smallest aspect ratio (width / height) of the crop.
        ratio_high: largest aspect ratio (width / height) of the crop.
    """
    from torchvision.transforms import v2

    _check_range("scale_low", scale_low, "scale_high", scale_high)
    if scale_high > 1.0:
        raise ValueError(f"scale_high must be <= 1, got {scale_high}")
    _check_range("ratio_low", ratio_low, "ratio_high", ratio_high)
    return v2.RandomResizedCrop(
        _size(input_shape), scale=(scale_low, scale_high), ratio=(ratio_low, ratio_high), antialias=True
    )


def horizontal_flip(*, p: float = 0.5) -> Transform:
    """Mirror the image left-right with probability p.

    Args:
        p: probability of flipping each sample.
    """
    from torchvision.transforms import v2

    _check_probability("p", p)
    return v2.RandomHorizontalFlip(p=p)


def rotation(*, degrees: float = 15.0) -> Transform:
    """Rotate by a random angle in [-degrees, degrees]; corners are filled with zeros.

    Args:
        degrees: largest rotation angle, in degrees (0 to 180).
    """
    from torchvision.transforms import v2

    if not 0.0 <= degrees <= 180.0:
        raise ValueError(f"degrees must be in [0, 180], got {degrees}")
    return v2.RandomRotation(degrees=degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0.0)


# ---- photometric ----


def color_jitter(
    *,
    input_shape: tuple[int, ...] | None = None,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.0,
) -> Transform:
    """Randomly change brightness, contrast, saturation and hue (in random order).

    Saturation and hue need colour: on 1-channel images they are ignored.

    Args:
        brightness: brightness factor drawn from [1 - brightness, 1 + brightness] (0 disables it).
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast] (0 disables it).
        saturation: saturation factor drawn from [1 - saturation, 1 + saturation] (RGB only; 0 disables it).
        hue: hue shift drawn from [-hue, hue], at most 0.5 (RGB only; 0 disables it).
    """
    from torchvision.transforms import v2

    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    if _channels(input_shape) == 1:
        saturation, hue = 0.0, 0.0
    return v2.ColorJitter(
        brightness=brightness or None, contrast=contrast or None, saturation=saturation or None, hue=hue or None
    )


_POLICIES = {"imagenet": "IMAGENET", "cifar10": "CIFAR10", "svhn": "SVHN"}  # names of v2.AutoAugmentPolicy


def autoaugment(*, policy: str = "cifar10") -> Transform:
    """AutoAugment: sub-policies of two operations learned on a dataset (Cubuk et al., 2019).

    Args:
        policy: which learned policy: imagenet, cifar10 or svhn.
    """
    from torchvision.transforms import v2

    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, got {policy!r}")
    return v2.AutoAugment(policy=v2.AutoAugmentPolicy[_POLICIES[policy]])


def randaugment(*, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> Transform:
    """RandAugment: num_ops random operations, all at one magnitude (Cubuk et al., 2020).

    Args:
        num_ops: how many operations are applied to each sample.
        magnitude: strength of every operation, from 0 to num_magnitude_bins - 1.
        num_magnitude_bins: number of strength levels.
    """
    from torchvision.transforms import v2

    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")
    if num_magnitude_bins < 2:
        raise ValueError(f"num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"magnitude must be in [0, {num_magnitude_bins - 1}], got {magnitude}")
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins)


def trivialaugment(*, num_magnitude_bins: int = 31) -> Transform:
    """TrivialAugment Wide: one random operation at a random magnitude (Müller and Hutter, 2021).

    Args:
        num_magnitude_bins: number of strength levels the magnitude is drawn from.
    """
    from torchvision.transforms import v2

    if num_magnitude_bins < 2:
        raise ValueError(f"num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
    return v2.TrivialAugmentWide(num_magnitude_bins=num_magnitude_bins)


def random_erasing(
    *,
    p: float = 0.5,
    scale_low: float = 0.02,
    scale_high: float = 0.33,
    ratio_low: float = 0.3,
    ratio_high: float = 3.3,
    value: float = 0.0,
) -> Transform:
    """Erase a random rectangle (Zhong et al., 2020), filling it with a constant.

    Args:
        p: probability of erasing a rectangle in each sample.
        scale_low: smallest share of the image's area that is erased.
        scale_high: largest share of the image's area that is erased (at most 1).
        ratio_low: smallest aspect ratio of the rectangle.
        ratio_high: largest aspect ratio of the rectangle.
        value: the fill value, in [0, 1] (before normalisation).
    """
    from torchvision.transforms import v2

    _check_probability("p", p)
    _check_range("scale_low", scale_low, "scale_high", scale_high)
    if scale_high > 1.0:
        raise ValueError(f"scale_high must be <= 1, got {scale_high}")
    _check_range("ratio_low", ratio_low, "ratio_high", ratio_high)
    _check_probability("value", value)
    return v2.RandomErasing(p=p, scale=(scale_low, scale_high), ratio=(ratio_low, ratio_high), value=value)


# ---- batch level ----


class BatchMix:
    """Applies a torchvision MixUp/CutMix to a batch with probability p; always returns soft labels."""

    def __init__(self, transform: v2.Transform, num_classes: int, p: float) -> None:
        self.transform, self.num_classes, self.p = transform, num_classes, p

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if inputs.dim() != 4:
            raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(inputs.shape)}")
        if self.p >= 1.0 or (self.p > 0.0 and float(torch.rand(())) < self.p):
            inputs, labels = self.transform(inputs, labels)
        elif labels.dim() == 1:
            labels = torch.nn.functional.one_hot(labels.long(), self.num_classes)
        return inputs, labels.float()

    def __repr__(self) -> str:
        return f"BatchMix({self.transform!r}, num_classes={self.num_classes}, p={self.p})"


def _check_mix(num_classes: int, alpha: float, p: float) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    _check_probability("p", p)


def mixup(*, num_classes: int, alpha: float = 0.2, p: float = 1.0) -> BatchMix:
    """MixUp (Zhang et al., 2018): blend pairs of images and their labels; gives soft labels.

    Args:
        alpha: Beta(alpha, alpha) concentration of the mixing weight (small: mostly one image).
        p: probability of mixing a batch (otherwise the labels only become one-hot).
    """
    from torchvision.transforms import v2

    _check_mix(num_classes, alpha, p)
    return BatchMix(v2.MixUp(alpha=alpha, num_classes=num_classes), num_classes, p)


def cutmix(*, num_classes: int, alpha: float = 1.0, p: float = 1.0) -> BatchMix:
    """CutMix (Yun et al., 2019): paste a box from another image, labels mixed by area; soft labels.

    Args:
        alpha: Beta(alpha, alpha) concentration of the pasted area's share.
        p: probability of mixing a batch (otherwise the labels only become one-hot).
    """
    from torchvision.transforms import v2

    _check_mix(num_classes, alpha, p)
    return BatchMix(v2.CutMix(alpha=alpha, num_classes=num_classes), num_classes, p)


@hookimpl
def tuneyard_register_augmentations(register: Any) -> None:
    # The limits each factory checks, declared so a spec is refused before a trial fails on them; a
    # pair that must be ordered (scale_low <= scale_high, magnitude < num_magnitude_bins) is still
    # checked by the factory.
    probability, share, ratio = Bounds(ge=0, le=1), Bounds(gt=0, le=1), Bounds(gt=0)
    crop = {"scale_low": share, "scale_high": share, "ratio_low": ratio, "ratio_high": ratio}
    mix = {"alpha": Bounds(gt=0), "p": probability}
    strength = Bounds(ge=0)
    register("random_crop", random_crop, bounds={"padding": Bounds(ge=0)})
    register("random_resized_crop", random_resized_crop, bounds=crop)
    register("horizontal_flip", horizontal_flip, bounds={"p": probability})
    register("rotation", rotation, bounds={"degrees": Bounds(ge=0, le=180)})
    register(
        "color_jitter",
        color_jitter,
        bounds={"brightness": strength, "contrast": strength, "saturation": strength, "hue": Bounds(ge=0, le=0.5)},
    )
    register("autoaugment", autoaugment)
    register(
        "randaugment",
        randaugment,
        bounds={"num_ops": Bounds(ge=0), "magnitude": Bounds(ge=0), "num_magnitude_bins": Bounds(ge=2)},
    )
    register("trivialaugment", trivialaugment, bounds={"num_magnitude_bins": Bounds(ge=2)})
    register("random_erasing", random_erasing, bounds={**crop, "p": probability, "value": probability})
    register("mixup", mixup, batch_level=True, bounds=mix)
    register("cutmix", cutmix, batch_level=True, bounds=mix)
