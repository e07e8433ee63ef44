"""How many threads autofact's operations get (issue 10).

torch parallelizes each operation over its OpenMP threads and waits for all of them at the end of
the operation. On a machine where another process competes for the cores, one of those threads is
often not running, and every operation waits for it: measured on a 2-core machine at load 4-6, an
elementwise product of 1M floats took 20 ms with one thread and 60 ms with two, and the default
ALS fit of 1M ratings 3.2 s with one thread and 20-26 s with two. An operation gains from a second
thread only when its work per thread outweighs that wait (hundreds of millions of multiply-adds).
So autofact decides the number of threads from things that do not change while a program runs:

1. the cap: ``n_threads=`` when given, else the first of ``AUTOFACT_NUM_THREADS``,
   ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` that is set, else the usable cores: the CPUs in
   :func:`os.sched_getaffinity` and the cgroup CPU quota (v2 ``cpu.max``, v1
   ``cpu.cfs_quota_us / cpu.cfs_period_us``), whichever is smaller;
2. the size of the operation: one thread per :data:`MIN_WORK_PER_THREAD` multiply-adds, at least
   one and at most the cap. At autofact's default sizes that is one thread per operation;
3. coarse parallelism instead, where the work splits into independent blocks (the ALS solver's
   row blocks): :func:`workers_for` gives one worker per :data:`MIN_WORK_PER_WORKER`, at most
   the cap, each worker running whole blocks on one thread, so a descheduled worker delays only
   the end of its own block. The cut into blocks depends on the sizes only, so the factors are
   the same whatever the number of workers. Workers that run many short operations each (the
   full-batch gradient's blocks) leave one core to the rest of the machine where the cap is the
   machine's own (``workers_for(..., spare_core=True)``): on 2 cores, beside one busy process,
   two of them were slower than one.

Never the momentary load: a seeded fit gives the same factors every time on the same machine (the
thread count changes the order of floating-point sums, so 1 and 2 threads differ in the last
digits).

Nothing process-wide is changed behind the user's back: :func:`limit_threads` sets torch's thread
count (and, through threadpoolctl, the BLAS libraries' count) for the duration of autofact's
calls and puts back what it found. ``torch.set_num_threads`` is process-wide, so limits active at
once in several Python threads are coordinated under one lock: the smallest of the threads'
innermost requests is in effect,
and the counts found before the first come back when the last ends (never a count another call
saw in passing).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VARS",
    "MIN_WORK_PER_THREAD",
    "MIN_WORK_PER_WORKER",
    "check_n_threads",
    "cgroup_cpu_limit",
    "env_threads",
    "inside_limit",
    "limit_threads",
    "max_threads",
    "threads_for",
    "usable_cores",
    "workers_for",
    "use_threads",
]

#: Read in this order; the first one set is the cap when ``n_threads`` is not given.
ENV_VARS = ("AUTOFACT_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Multiply-adds one more thread must have before an operation gets it (2**27, about 0.1 s of
#: one core's work): below that the wait for a descheduled thread on a shared machine costs more
#: than the thread saves.
MIN_WORK_PER_THREAD = 2**27
#: Multiply-adds a worker of a coarse split (whole row blocks, see :func:`workers_for`) must have:
#: a descheduled worker delays only the end of its own block, so much less than an operation.
MIN_WORK_PER_WORKER = 2**24


def check_n_threads(n_threads: object, name: str = "n_threads") -> int | None:
    """``n_threads`` as an int, or ``None``; ``ValueError`` for anything but a positive int."""
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) \
            or n_threads < 1:
        raise ValueError(f"{name} must be a positive int or None (the thread policy decides), "
                         f"got {n_threads!r}")
    return int(n_threads)


def _affinity_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


_OWN_LIMIT: dict[int, float | None] = {}  # process id -> its cgroup's quota, read once


def cgroup_cpu_limit(root: str | Path | None = None,
                     proc_cgroup: str | Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores (``1.5`` = 150 ms per 100 ms), or
    ``None`` when there is none (or no cgroup file system). The smallest quota from the
    process's cgroup up to the root of the mount counts, for cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``).

    ``root`` (default ``/sys/fs/cgroup``) and ``proc_cgroup`` (default ``/proc/self/cgroup``)
    name other files (tests). With both left out, the files are read once per process (issue
    10: a fit asked several times, a dozen files each time; the quota is the machine's setting,
    not the momentary load) and the answer is kept; a forked child reads its own."""
    if root is None and proc_cgroup is None:
        pid = os.getpid()
        if pid not in _OWN_LIMIT:
            _OWN_LIMIT.clear()  # a forked child: its parent's answer goes
            _OWN_LIMIT[pid] = cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup")
        return _OWN_LIMIT[pid]
    root = Path("/sys/fs/cgroup" if root is None else root)
    proc_cgroup = "/proc/self/cgroup" if proc_cgroup is None else proc_cgroup
    limits: list[float] = []
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        # v2: "0::/path"; v1: "4:cpu,cpuacct:/path"
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], parts[2].strip("/")
        if controllers == "":
            mounts, name = [root], "cpu.max"
        elif "cpu" in controllers.split(","):
            mounts, name = [root / "cpu", root / controllers], "cpu.cfs_quota_us"
        else:
            continue
        for mount in mounts:
            # the process's cgroup and its ancestors; inside a container the path is often
            # absent under the container's own mount, whose root is then the cgroup
            node = mount / rel if rel else mount
            for d in [node, *node.parents]:
                limit = _quota(d, name)
                if limit is not None:
                    limits.append(limit)
                if d == mount:
                    break
    return min(limits) if limits else None


def _quota(d: Path, name: str) -> float | None:
    text = _read(d / name)
    if text is None:
        return None
    try:
        if name == "cpu.max":
            quota, _, period = text.partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        quota_us = int(text)
        period_us = _read(d / "cpu.cfs_period_us")
        if quota_us <= 0 or not period_us:
            return None
        return quota_us / int(period_us)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up:
    a quota of 1.5 cores gives 2 threads)."""
    cores = _affinity_cores()
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def env_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count the environment asks for: the first of :data:`ENV_VARS` that is set
    (OpenMP's ``OMP_NUM_THREADS=4,2`` gives 4), or ``None``. A malformed ``AUTOFACT_NUM_THREADS``
    is an error; the other two belong to other libraries and are skipped when malformed."""
    env = os.environ if environ is None else environ
    for var in ENV_VARS:
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = int(raw.split(",")[0])
        except ValueError:
            value = 0
        if value >= 1:
            return value
        if var == "AUTOFACT_NUM_THREADS":
            raise ValueError(f"AUTOFACT_NUM_THREADS must be a positive int, got {raw!r}; set it "
                             "to e.g. 1 or unset it (the cores available decide)")
    return None


def max_threads(n_threads: int | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """The cap: ``n_threads`` if given, else the environment (:func:`env_threads`), else
    :func:`usable_cores`."""
    n = check_n_threads(n_threads)
    if n is not None:
        return n
    n = env_threads(environ)
    return n if n is not None else usable_cores()


def threads_for(work: float, cap: int) -> int:
    """Threads for an operation of ``work`` multiply-adds under the cap ``cap``: one per
    :data:`MIN_WORK_PER_THREAD`, at least 1, at most ``cap``."""
    return max(1, min(int(cap), int(work // MIN_WORK_PER_THREAD)))


_ACTIVE = threading.local()  # .depth: how many limit_threads blocks this thread is inside


def inside_limit() -> bool:
    """Whether this thread runs inside :func:`limit_threads` (a fit has already decided)."""
    return getattr(_ACTIVE, "depth", 0) > 0


# Every active limit in any thread, and what torch and the BLAS had before the first of them:
# the counts in effect are the smallest active request, and the original counts come back when
# the last active limit ends, whichever thread ends it (issue 8, item 11: no racy save/restore).
_LOCK = threading.Lock()
_REQUESTS: dict[int, tuple[int, int]] = {}  # token -> (thread id, threads asked for)
_ORIGINAL: dict[str, Any] = {}
_TOKENS = itertools.count()


@contextmanager
def limit_threads(n: int) -> Iterator[int]:
    """Run the block with at most ``n`` torch intra-op threads (and BLAS threads, through
    threadpoolctl); when no other autofact call is active any more, put back the counts found
    before the first one.

    torch's and the BLAS thread counts are process-wide. Limits active at once in several Python
    threads share one setting, the smallest of their requests, and the counts found before the
    first of them come back when the last one ends, so concurrent fits never leave the process
    with another count than it had (each fit may then run some operations with fewer threads
    than it asked for). Within one thread the innermost limit decides."""
    token = next(_TOKENS)
    with _LOCK:
        if not _REQUESTS:
            import torch

            _ORIGINAL["torch"] = torch.get_num_threads()
            _ORIGINAL["blas"] = None
        _REQUESTS[token] = (threading.get_ident(), n)
        _apply()
    _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    try:
        yield n
    finally:
        _ACTIVE.depth -= 1
        with _LOCK:
            del _REQUESTS[token]
            if _REQUESTS:
                _apply()
            else:
                _restore()


def _apply() -> None:
    """Set torch and the BLAS to the smallest of the threads' innermost requests (the lock is
    held): within one thread the innermost limit decides; across threads the smallest wins."""
    import torch

    innermost: dict[int, int] = {}
    for token in sorted(_REQUESTS):
        thread, asked = _REQUESTS[token]
        innermost[thread] = asked
    target = min(innermost.values())
    if torch.get_num_threads() != target:
        torch.set_num_threads(target)
    limiter = _limit_blas(target)
    if limiter is not None and _ORIGINAL.get("blas") is None:
        _ORIGINAL["blas"] = limiter  # remembers the counts before autofact's first limit


def _restore() -> None:
    """Put back the counts found before the first active limit (the lock is held)."""
    import torch

    before = _ORIGINAL.pop("torch")
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
    blas = _ORIGINAL.pop("blas", None)
    if blas is not None:
        blas.restore_original_limits()


_BLAS: dict[str, Any] = {}  # threadpoolctl's BLAS controller, and len(sys.modules) then


def _limit_blas(n: int) -> Any:
    """threadpoolctl's limit on the BLAS libraries loaded now (numpy's, scipy's), or ``None``
    when none has more than ``n`` threads (nothing to change).

    threadpoolctl finds the libraries by reading ``/proc/self/maps`` (0.6 ms, 2-3 ms on a busy
    machine: a tenth of a 1M-rating gradient, issue 10), so the controller is kept and made
    again only once a module was imported since (a BLAS library arrives with an import: numpy,
    scipy, ...). Called with ``_LOCK`` held."""
    import sys

    from threadpoolctl import ThreadpoolController

    if _BLAS.get("modules") != len(sys.modules):
        _BLAS["blas"] = ThreadpoolController().select(user_api="blas")
        _BLAS["modules"] = len(sys.modules)
    blas = _BLAS["blas"]
    if all(lib.num_threads <= n for lib in blas.lib_controllers):
        return None
    return blas.limit(limits=n)


@contextmanager
def use_threads(work: float, n_threads: int | None = None, *,
                unless_decided: bool = False) -> Iterator[int]:
    """The policy as a context: ``with use_threads(work, n_threads) as n:`` runs the block with
    ``threads_for(work, max_threads(n_threads))`` threads (see :func:`limit_threads`).

    ``unless_decided=True`` changes nothing inside another autofact thread limit (an entry point
    such as ``Objective.value_and_grad`` that a fit also calls: the fit has decided, and the
    nested call costs nothing)."""
    if unless_decided and inside_limit():
        import torch

        yield torch.get_num_threads()
        return
    cap = max_threads(n_threads)
    explicit = check_n_threads(n_threads) is not None or env_threads() is not None
    caps = getattr(_ACTIVE, "caps", [])
    _ACTIVE.caps = [*caps, (cap, explicit)]
    try:
        with limit_threads(threads_for(work, cap)) as n:
            yield n
    finally:
        _ACTIVE.caps = caps


def workers_for(work: float, *, spare_core: bool = False) -> int:
    """Workers for a coarse split of ``work`` multiply-adds into independent blocks, each block
    run on one thread: one per :data:`MIN_WORK_PER_WORKER`, at most the cap of the enclosing
    :func:`use_threads` (else :func:`max_threads`). Sizes and settings only, never the load.

    ``spare_core``: for workers that run many short operations each, with Python between them
    (the full-batch gradient's blocks): where the cap is the machine's cores (neither
    ``n_threads`` nor an environment variable set it), they leave one core to the rest of the
    machine. Issue 10, item 2: on 2 cores, the gradient's two workers took 0.72x one worker's
    time quiet but 1.22-1.27x beside one busy process (1M ratings, rank 32, full-batch Adam):
    beside it each worker's CPU per run rose by 30% and each ran 57% of the time, not the 67%
    a fair share gives; ALS's few long operations a block gain from their second worker
    there (0.80x), so they do not spare one."""
    caps = getattr(_ACTIVE, "caps", [])
    cap, explicit = caps[-1] if caps else (max_threads(), env_threads() is not None)
    if spare_core and not explicit:
        cap = max(1, cap - 1)
    return max(1, min(cap, int(work // MIN_WORK_PER_WORKER)))
