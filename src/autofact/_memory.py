"""Giving freed memory back to the system after a phase that allocates and frees a lot.

glibc keeps freed blocks of up to 32 MiB on its heaps (its mmap threshold rises to the largest
block freed so far) and pyarrow's memory pool keeps what a Parquet read freed; both then count
in the process's RSS. Issue 11 (memory per process) measured ~60 MiB kept after the objective's
best-constant search and ~50 MiB after reading Parquet parts, whatever the number of ratings.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["bincount_sliced", "pin_heap_thresholds", "randn_sliced", "release_freed_memory"]

#: Entries :func:`randn_sliced` draws at a time (a multiple of 16: see there).
RANDN_SLICE = 1 << 16


def bincount_sliced(codes: np.ndarray, n: int, chunk: int = 1 << 16) -> np.ndarray:
    """``np.bincount(codes, minlength=n)`` (int64), ``chunk`` entries at a time: numpy counts
    from an int64 copy of its input, 8 bytes a rating for int32 codes (issue 11, item 3: ~200 MB
    of a 25M-rating fit's peak for each count made at once)."""
    out = np.zeros(n, dtype=np.int64)
    for s in range(0, len(codes), chunk):
        out += np.bincount(codes[s : s + chunk], minlength=n)
    return out


def randn_sliced(shape: tuple[int, ...], generator: torch.Generator | None, std: float,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 chunk: int = RANDN_SLICE) -> torch.Tensor:
    """``(torch.randn(shape, generator=generator, dtype=torch.float64) * std).to(device,
    dtype)``, the same numbers bit for bit, drawn ``chunk`` entries at a time into the result:
    no float64 table beside it (issue 11, item 3: the initial factors' draw took 12 bytes an
    entry at once, 84 MiB above a 4-process share of 25M ratings). Torch's CPU normal draws
    every entry's uniform in order and pairs them in blocks of 16 (a tail under 16 redrawn
    as the last 16), so slices whose sizes are multiples of 16, the tail joined to the last,
    consume the generator exactly as one draw does (tests/test_memory.py checks it)."""
    import torch

    if chunk % 16:
        raise ValueError(f"chunk must be a multiple of 16, got {chunk!r}")
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    n, s = flat.numel(), 0
    while s < n:
        e = min(n, s + chunk)
        if n - e < 16:  # the tail joins this slice, as one draw treats it
            e = n
        flat[s:e] = torch.randn(e - s, generator=generator, dtype=torch.float64).mul_(std)
        s = e
    return out


#: glibc's mallopt parameters and the values its dynamic rule raises them to at most on 64-bit
#: Linux (``DEFAULT_MMAP_THRESHOLD_MAX``, and twice that for the trim threshold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def pin_heap_thresholds() -> None:
    """Fix glibc's mmap threshold at 32 MiB and its trim threshold at 64 MiB: the values its
    dynamic rule reaches once a block of ~32 MiB allocated by mmap is freed, set from the start
    instead of by whichever block happens to be freed first. Issue 11, item 3: a sharded ALS fit
    whose set-up freed no such block kept its thresholds low, so each range's and block's
    temporaries (1-8 MiB) were mapped and faulted in afresh every time: 3.4M page faults and
    7 s of system time instead of 1.0M and 2.4 s (5M ratings, 2 processes), from one run of
    the same code to the next. Freed blocks then stay on the heap until
    :func:`release_freed_memory` (called between phases) or the next allocation reuses them,
    as they do once the dynamic rule has raised the thresholds. Process-wide, so the library
    never calls it (issue 10, item 2: nothing process-global changed behind the user's back):
    the ``autofact`` program does, at its start, and a user's own script may (or set
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=67108864``); a no-op where the C
    library is not glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
    except (OSError, AttributeError):  # not glibc (musl): nothing to do
        pass


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
