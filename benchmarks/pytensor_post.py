"""The 2016 post's Theano batch-gradient-descent code, translated name for name to PyTensor.

Run as a subprocess, because PyTensor reads its cache location when it is first imported::

    python -m benchmarks.pytensor_post --cold   # fresh, empty cache (temp dir, deleted after)
    python -m benchmarks.pytensor_post --warm   # persistent cache in benchmarks/.cache/pytensor

Prints one JSON object: import, build (graph + T.grad), compile and step seconds; ``seconds`` =
build + compile + steps (the import of pytensor itself is reported separately as ``import_s``).
``--input x.npz`` (R, P, Q) and ``--output y.npz`` exchange arrays with the caller; without
``--input`` it runs the quuxlabs 5 x 4 example with a seeded rank-2 init.

``--mode`` picks the PyTensor backend: ``default`` (PyTensor 3's default, the Numba linker) or ``c``
(the C/CVM backend, closest to what Theano did in 2016).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

CACHE_ROOT = Path(__file__).resolve().parent / ".cache"


def _configure_cache(cold: bool) -> str:
    """Point PyTensor's (and Numba's) caches somewhere; must run before ``import pytensor``."""
    if cold:
        base = tempfile.mkdtemp(prefix="pytensor_cold_")
    else:
        base = str(CACHE_ROOT / "pytensor")
        os.makedirs(base, exist_ok=True)
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    flags = ",".join(
        f for f in flags.split(",") if f and not f.startswith(("base_compiledir", "compiledir"))
    )
    os.environ["PYTENSOR_FLAGS"] = ",".join(filter(None, [flags, f"base_compiledir={base}"]))
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "numba")
    return base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--cold", action="store_true", help="compile from an empty cache (default)")
    g.add_argument("--warm", action="store_true", help="reuse benchmarks/.cache/pytensor")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--alpha", type=float, default=0.0002)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["default", "c"], default="default")
    ap.add_argument("--input", help="npz with R, P, Q (R: 0 = missing)")
    ap.add_argument("--output", help="write final P, Q here (npz)")
    args = ap.parse_args(argv)
    cold = not args.warm
    base = _configure_cache(cold)
    if cold:
        # registered before pytensor is imported, so it runs after pytensor's own exit handlers
        atexit.register(shutil.rmtree, base, True)

    t0 = time.perf_counter()
    import numpy as np
    import pytensor
    import pytensor.tensor as T
    from pytensor import function, shared

    import_s = time.perf_counter() - t0

    if args.input:
        z = np.load(args.input)
        R, P0, Q0 = z["R"], z["P"], z["Q"]
    else:
        from benchmarks.datasets import quuxlabs_example

        R = quuxlabs_example()
        rng = np.random.default_rng(args.seed)
        P0 = rng.random((R.shape[0], args.rank))
        Q0 = rng.random((args.rank, R.shape[1]))
    R = np.asarray(R, dtype=pytensor.config.floatX)
    P0 = np.asarray(P0, dtype=pytensor.config.floatX)
    Q0 = np.asarray(Q0, dtype=pytensor.config.floatX)
    steps, alpha, beta = args.steps, args.alpha, args.beta

    # ---- the post's code, Theano -> PyTensor -------------------------------------------------
    t_build = time.perf_counter()
    P = shared(P0, name="P")
    Q = shared(Q0, name="Q")
    D = T.matrix("D")  # the data matrix, 0 = missing
    mask = T.neq(D, 0)
    E = (D - T.dot(P, Q)) * mask  # residuals on observed cells only
    cost = T.sum(E**2) + (beta / 2) * (T.sum(P**2) + T.sum(Q**2))
    gP, gQ = T.grad(cost, [P, Q])
    t_compile = time.perf_counter()
    mode = None if args.mode == "default" else "FAST_RUN"
    if args.mode == "c":
        from pytensor.compile.mode import Mode

        mode = Mode(linker="cvm", optimizer="fast_run")
    train = function([D], cost, updates=[(P, P - alpha * gP), (Q, Q - alpha * gQ)], mode=mode)
    t_steps = time.perf_counter()
    for _ in range(steps):
        c = train(R)
    t_end = time.perf_counter()
    # -------------------------------------------------------------------------------------------

    out = {
        "cold": cold,
        "mode": args.mode,
        "linker": type(train.maker.linker).__name__,
        "pytensor": pytensor.__version__,
        "steps": steps,
        "shape": list(R.shape),
        "import_s": import_s,
        "build_s": t_compile - t_build,
        "compile_s": t_steps - t_compile,
        "steps_s": t_end - t_steps,
        "seconds": t_end - t_build,
        "final_cost": float(c),
    }
    if args.output:
        np.savez(args.output, P=P.get_value(), Q=Q.get_value())
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
