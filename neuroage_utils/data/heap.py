"""glibc's heap settings, for the two allocation patterns of this package that its defaults serve badly.

- Streaming (:mod:`neuroage_utils.data.stream`) allocates a block's arrays (tens of MB) again and again.
  glibc's *dynamic* mmap threshold rises to the size of the largest block freed (up to 32 MiB); after
  that such blocks come from the heap, which they fragment, so the peak grows with the number of
  blocks read, i.e. with the cells of the file: measured on the data path, 0.60 -> 0.73 GB from 0.5 to
  2 million cells x 2,000 genes; with the threshold fixed at 4 MiB, 0.56 -> 0.58 GB.
  :func:`mmap_large_blocks` fixes it.
- Training (``train.device.heap_reuse``) wants the opposite while a fit runs: its batch tensors reused
  from the heap instead of mapped and zeroed afresh each step.

Both are no-ops off Linux/glibc.
"""

from __future__ import annotations

__all__ = ["glibc", "mmap_large_blocks", "MMAP_THRESHOLD"]

#: ``mallopt`` parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: Allocations at least this large are mapped (and unmapped when freed) once streaming starts.
MMAP_THRESHOLD = 4 * 2**20


def glibc():
    """The C library when it is glibc (``mallopt``, ``malloc_trim``), else None."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def mmap_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process (default 4 MiB), so that the blocks a streamed pass
    allocates are mapped and given back whole when freed instead of fragmenting the heap. Process-wide
    and permanent (glibc has no scope for it); True when set."""
    libc = glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
