"""Keep a worker's freed memory for its next step instead of handing it back to the kernel.

A training step allocates and frees the same tensors every batch. glibc's malloc returns freed
memory at the top of its heap to the kernel once more than its trim threshold is free (a few MB
after it adapts) and maps large blocks afresh, so the next step faults every page back in. A fused
group's step frees megabytes: measured on digits' `simple_cnn` at K=16 (torch 2.14, one thread,
this project's 2-core VM), a loop of fused steps took 2,400-3,600 page faults a step, 5-7 ms of a
16-24 ms step in the kernel, and none with these settings (9 ms a step); in `bench/fused.py`,
where epochs also validate and save between the steps, the digits groups' wall fell by 4%. A solo
step faulted a few pages and keeps its speed. The cost: a worker keeps up to `TRIM_THRESHOLD` of
freed memory.

Only glibc (Linux) has `mallopt`; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 128 << 20  # freed memory kept at the heap's top
MMAP_THRESHOLD = 32 << 20  # blocks under this come from the heap (glibc's own adaptive limit)


def keep_freed_memory() -> bool:
    """Sets glibc's trim and mmap thresholds for this process; whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
