"""Where the default fit's time to sweep 1 goes at 10M ratings (issue 10, item 4).

    python -m benchmarks.sweep_phases [--fits 2] [--sweeps 3] [--alt] [--busy] [--peers]
                                      [--nothp] [--src DIR]

Fits ``MatrixFactorization(seed=0, patience=None)`` on ``datasets.movielens_like(10_000_000)``
(9M train, the 1M test part as validation; cached in ``benchmarks/.cache``) and stops it after
``--sweeps`` sweeps. For each phase (the validation index, the sweep budget's sample, the
spectral start, each side's draw, the item slabs, the validation RMSE) it prints the seconds
from the start of ``fit``, the phase's wall and CPU seconds, its system CPU (page faults and the
kernel's zeroing of fresh memory: on this VM a GiB of memory freed more than ~2 s earlier costs
1.2-2.5 s to touch again, against 0.1 s), minor page faults and involuntary context switches
(preemption by other processes). Wall minus CPU is time the fit waited: on the shared 2-core
machine that is the others' load, which is what made sweep 1 take 2.5 s in one run and 8 s in
the next.

``--alt``: the fits alternate ``n_threads=1`` and the default (threads by
:func:`autofact.threads.workers_for`); ``--busy``: beside one process spinning in Python;
``--peers``: LIBMF and cmfrec fitted before each fit, as ``benchmarks.run``'s tta10m case does;
``--nothp``: transparent huge pages off for this process, so the faults count 4 KiB pages;
``--src``: the autofact source tree to import (e.g. an exported older commit, for A/B runs).
The phases are found by wrapping private functions of :mod:`autofact.solvers.gibbs` and
:mod:`autofact.model`; a phase the tree does not have is skipped.
"""

from __future__ import annotations

import argparse
import functools
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _data() -> dict[str, Any]:
    from benchmarks import datasets as ds

    cache = HERE / ".cache" / "movielens_like_10m.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {"shape": tuple(int(x) for x in z["shape"]),
                **{part: {k: z[f"{part}_{k}"] for k in ("users", "items", "ratings")}
                   for part in ("train", "test")}}
    data = ds.movielens_like(10_000_000)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, shape=np.array(data["shape"]),
             **{f"{part}_{k}": v for part in ("train", "test") for k, v in data[part].items()})
    return data


def _stamp() -> tuple[float, float, float, int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), time.process_time(), r.ru_stime, r.ru_minflt, r.ru_nivcsw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fits", type=int, default=2)
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--alt", action="store_true")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--nothp", action="store_true")
    ap.add_argument("--src", default=str(HERE.parent / "src"))
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    if args.nothp:
        import ctypes

        ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
    data = _data()
    import autofact.model as M
    import autofact.solvers.budget as B
    import autofact.solvers.gibbs as G
    from autofact import MatrixFactorization, Ratings

    events: list[tuple[str, tuple, tuple]] = []
    t0: list[tuple] = [_stamp()]

    def wrap(owner: Any, name: str) -> None:
        f = getattr(owner, name, None)
        if f is None:
            return
        label = f"{getattr(owner, '__name__', '').split('.')[-1]}.{name}"

        @functools.wraps(f)
        def timed(*a: Any, **k: Any) -> Any:
            s = _stamp()
            try:
                return f(*a, **k)
            finally:
                events.append((label, s, _stamp()))

        setattr(owner, name, timed)

    for owner, name in [(M._Validation, "__init__"), (M._Validation, "rmse"),
                        (B.SweepBudget, "__init__"), (G, "_spectral_start"),
                        (G, "_sample_rows"), (getattr(G, "_Columns", None), "_slab"),
                        (G._Side, "transpose")]:
        if owner is not None:
            wrap(owner, name)
    original = G.gibbs_mf

    def gibbs_mf(*a: Any, callback: Any = None, **k: Any) -> Any:
        def cb(sweep: int, rmse: float, means: Any) -> bool:
            s = _stamp()
            stop = callback(sweep, rmse, means)
            events.append((f"sweep {sweep} drawn; its callback", s, _stamp()))
            return bool(stop) or sweep >= args.sweeps

        return original(*a, callback=cb, **k)

    G.gibbs_mf = gibbs_mf
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy
            else None)
    try:
        for fit in range(args.fits):
            if args.peers:
                from benchmarks import baselines as bl

                bl.libmf_cli(data["train"], data["test"])
                bl.cmfrec_als(data["train"], data["test"])
            train, test = (Ratings.from_coo(data[p]["users"], data[p]["items"],
                                            data[p]["ratings"], shape=data["shape"])
                           for p in ("train", "test"))
            n_threads = (1 if fit % 2 == 0 else None) if args.alt else None
            model = MatrixFactorization(seed=0, patience=None, n_threads=n_threads)
            events.clear()
            load = open("/proc/loadavg").read().split()[0]
            t0[0] = s = _stamp()
            model.fit(train, validation=test)
            e = _stamp()
            print(f"fit {fit} (n_threads={n_threads}, busy={args.busy}, load {load}): wall "
                  f"{e[0] - s[0]:.2f} s, cpu {e[1] - s[1]:.2f} s, sys {e[2] - s[2]:.2f} s, "
                  f"minor faults {e[3] - s[3]}")
            for label, a, b in sorted(events, key=lambda ev: ev[1][0]):
                print(f"  at {a[0] - s[0]:6.2f} s  {label:40s} wall {b[0] - a[0]:5.2f} cpu "
                      f"{b[1] - a[1]:5.2f} sys {b[2] - a[2]:4.2f} faults {b[3] - a[3]:6d} "
                      f"preempted {b[4] - a[4]:5d}  (cpu since fit {b[1] - s[1]:5.2f})")
            sys.stdout.flush()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


if __name__ == "__main__":
    main()
