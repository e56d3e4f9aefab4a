"""glibc's heap settings (neuroage_utils.data.heap): blocks stay mapped once streaming starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from neuroage_utils.data.heap import glibc

# In fresh processes (the setting is process-wide): a freed 20 MiB array raises glibc's dynamic mmap
# threshold, so the 16 MiB arrays of later blocks come from the heap; with mmap_large_blocks() called
# first (as load_streamed does) they stay mapped.
SCRIPT = """
import ctypes, numpy as np
from neuroage_utils.data.heap import glibc, mmap_large_blocks
libc = glibc()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
def mapped(nbytes):
    a = np.ones(nbytes, dtype=np.uint8)
    n = libc.mallinfo2().hblks
    del a
    return n
import sys
if sys.argv[1] == "fixed":
    assert mmap_large_blocks()
base = libc.mallinfo2().hblks
big = np.ones(20 * 2**20, dtype=np.uint8); del big
print(mapped(16 * 2**20) - base)
"""


def test_blocks_are_mapped_after_mmap_large_blocks():
    libc = glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc with mallinfo2")
    out = [subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, check=True).stdout.strip()
           for how in ("dynamic", "fixed")]
    assert out == ["0", "1"]  # from the heap under the dynamic threshold; mapped once it is fixed
