"""The choices and limits of `convnet`'s options, apart from the network so the catalogue needs no torch.

The server registers `convnet` with bounds taken from here; `convnet_model.py` (which imports torch, in
workers only) checks the same values when it builds a network.
"""

from __future__ import annotations

BLOCKS = ("plain", "residual", "inception")
CONNECTIONS = ("serial", "parallel")
POOLINGS = ("max", "avg", "none")
KERNEL_SIZES = (3, 5, 7)
MAX_DEPTH = 4
