"""Process-wide settings for a node that hosts experts: the uvloop event loop and glibc's allocator.

An expert server allocates and frees large, short-lived tensors all the time (activations of every batch,
gradients, decoded requests of a few MB each). With glibc's defaults each compute thread gets its own
arena of small 64 MB heaps, blocks above a moving threshold are `mmap`ed, and freed memory goes back to
the kernel, so the next batch faults its pages in again, zero-filled: `benchmarks/bench_experts.py` saw
~340,000 page faults (~1.3 GB of fresh pages) and ~1.7 s of kernel time in a 6 s run. One arena, a fixed
32 MiB mmap threshold and no trimming keep those blocks in the heap for reuse: about half the faults and
~5-10% more samples per second on a 2-core machine. The heap stays at its high-water mark instead.

Both steps are best-effort: without uvloop or glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 2**20  # glibc's upper bound for this setting on 64-bit
TRIM_THRESHOLD = 2**30


def tune_server_process() -> None:
    """Call first thing in a process that will host experts (before its compute threads start)."""
    tune_allocator()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def tune_allocator() -> bool:
    """glibc only: one malloc arena, a fixed mmap threshold, no trimming. False where not applicable."""
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    try:
        libc = ctypes.CDLL(path)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; AttributeError elsewhere
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    if not done:
        logger.info("glibc refused part of the allocator tuning")
    return done
