"""Giving freed memory back to the system after a phase that allocates and frees a lot.

glibc keeps freed blocks of up to 32 MiB on its heaps (its mmap threshold rises to the largest
block freed so far) and pyarrow's memory pool keeps what a Parquet read freed; both then count
in the process's RSS. Issue 11 (memory per process) measured ~60 MiB kept after the objective's
best-constant search and ~50 MiB after reading Parquet parts, whatever the number of ratings.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

__all__ = ["bincount_sliced", "release_freed_memory"]


def bincount_sliced(codes: np.ndarray, n: int, chunk: int = 1 << 16) -> np.ndarray:
    """``np.bincount(codes, minlength=n)`` (int64), ``chunk`` entries at a time: numpy counts
    from an int64 copy of its input, 8 bytes a rating for int32 codes (issue 11, item 3: ~200 MB
    of a 25M-rating fit's peak for each count made at once)."""
    out = np.zeros(n, dtype=np.int64)
    for s in range(0, len(codes), chunk):
        out += np.bincount(codes[s : s + chunk], minlength=n)
    return out


def release_freed_memory() -> None:
    """Return the heap's freed pages (glibc's ``malloc_trim``) and pyarrow's pooled memory (if
    pyarrow is loaded) to the system. Cheap (a walk over the heap's free blocks); a no-op where
    neither applies."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        try:
            arrow.default_memory_pool().release_unused()
        except AttributeError:  # an old pyarrow: nothing to release
            pass
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to do
        pass
