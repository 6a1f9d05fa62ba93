"""`worker.allocator.keep_freed_memory`: freed memory is kept, so a training step does not fault it back in."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Ten training steps of a fused group of 16 small CNNs (megabytes of activations a step, freed at
# its end), after warm-up; prints whether the setting took and the page faults the steps took.
STEPS = """
import resource, sys, torch
from tuneyard.plugins.builtin.models import simple_cnn
from tuneyard.server.worker.allocator import keep_freed_memory
from tuneyard.server.worker.fused.stack import FusedModel
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.set_num_threads(1)
fused = FusedModel([simple_cnn(input_shape=(1, 8, 8), num_classes=10, num_filters=16) for _ in range(16)])
x = torch.randn(64, 8, 8, 1).permute(0, 3, 1, 2)
def step():
    for part in (slice(0, 8), slice(8, 16)):
        fused(x, part).square().sum().backward()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_fused_groups_steps_reuse_freed_memory_without_page_faults() -> None:
    kept, with_keep = _faults("keep")
    _, without = _faults("plain")
    assert kept == "True"
    if without < 1000:  # e.g. transparent huge pages for every mapping: a few faults a block
        pytest.skip(f"this machine faulted {without} pages in ten steps without the setting: nothing to save")
    assert with_keep < without / 10  # glibc had handed the activations back and faulted them in again
