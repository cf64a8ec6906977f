"""The process's memory allocator, set for training: freed memory kept for reuse.

Each training step allocates every activation and gradient afresh (tens of MB at batch 32) and frees
them by the end of the step. glibc's malloc hands blocks above its mmap threshold (128 KB, rising as
blocks are freed) straight to and from the kernel, and trims the heap's free top, so the same memory
is faulted in again page by page every step, which costs a fifth to a third of the step on some
virtual machines (benchmarks/allocator.py). With blocks below 32 MB (glibc's largest mmap threshold)
taken from the heap and no trimming, the faults go and the memory is reused. The cost: the process keeps its peak heap until it exits,
which a training process reaches anyway. Other allocators (jemalloc, tcmalloc: what PyTorch's CPU
tuning guides preload) do this by themselves; without glibc's `mallopt` nothing is changed.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest (64-bit): blocks below it come from the heap
TRIM_THRESHOLD = 2**31 - 1  # (an int) the heap's free top is never given back


def keep_freed_memory() -> bool:
    """Set glibc's malloc, for the rest of this process, to serve blocks below 32 MB from the heap and
    never trim it. Returns whether it could (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_freed_memory"]
