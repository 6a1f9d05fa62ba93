"""Writes the pre-trained weights that examples/finetune.yaml fine-tunes, so that example runs offline.

It pre-trains a small-input ResNet-18 on the `synthetic` dataset (1x8x8 images, 4 classes) for a
few epochs and saves its state dict under the server's data root, where the `finetune` model's
`weights_file` option finds it:

    python examples/finetune_pretrain.py --data-root tuneyard-data/datasets
    tuneyard run examples/finetune.yaml

(`tuneyard serve --data-dir tuneyard-data` reads datasets and weight files from
`tuneyard-data/datasets` unless `--data-root` says otherwise.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from tuneyard.plugins.manager import PluginRegistry

WEIGHTS = Path("pretrained") / "resnet18-synthetic.pt"


def pretrain(data_root: Path, epochs: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    registry = PluginRegistry.load()
    splits = registry.create("dataset", "synthetic", {"num_samples": 1024, "size": 8}, root=str(data_root))
    model = registry.create(
        "model",
        "resnet18",
        {"small_input": True},
        input_shape=tuple(splits.input_shape),
        num_classes=splits.num_classes,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = splits.train.tensors
    mean, std = torch.tensor(splits.mean).view(1, -1, 1, 1), torch.tensor(splits.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"pre-training epoch {epoch}: loss {loss.item():.3f}")
    target = data_root / WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("tuneyard-data/datasets"))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"wrote {pretrain(args.data_root, args.epochs)}")


if __name__ == "__main__":
    main()
