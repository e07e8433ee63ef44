"""15 ALS epochs (``MatrixFactorization(solver='als', epochs=15)``, defaults otherwise) under two
versions of ``autofact/solvers/als.py``, interleaved in one process, with LIBMF beside them
(issue 10, items 3 and 5: on a shared machine only runs side by side compare).

    git show REV:src/autofact/solvers/als.py > /tmp/als_before.py
    python -m benchmarks.als_speed --against /tmp/als_before.py --case sparse --repeats 7

``--case sparse`` is the review site's shape (:func:`benchmarks.datasets.sparse_reviews`),
``--case 1m`` 1M ratings of :func:`benchmarks.datasets.synthetic_lowrank` (6,040 x 3,706).
Prints, for each version, the median wall and CPU seconds of the fit (the process's CPU time: all
threads) and the test RMSE; LIBMF's ``mf-train -k 32 -t 20 -s 2`` (sparse only) and the ratio;
the largest relative difference between the two versions' factors; and ``uptime``. ``--busy``
starts a busy process beside it (stopped at the end). ``--against`` is loaded as a module of
:mod:`autofact.solvers` (its relative imports resolve against the installed autofact), so it
must be compatible with the rest of the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

import autofact.solvers as solvers
from autofact import MatrixFactorization, Ratings

from . import baselines as bl
from . import datasets as ds


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("autofact.solvers._als_against", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against: cannot load {path!r} as a module; give a .py file, e.g. "
                         "from git show REV:src/autofact/solvers/als.py > /tmp/als_before.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fit(make: Any, train: Ratings, test: dict) -> tuple[float, float, float, Any]:
    solvers.make_als = make  # (fit_params looks the name up on each fit)
    model = MatrixFactorization(solver="als", epochs=15)
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(train)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown users or items in the test part
        pred = np.asarray(model.predict(test["users"], test["items"]), dtype=np.float64)
    rmse = float(np.sqrt(np.mean((pred - test["ratings"]) ** 2)))
    return wall, cpu, rmse, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="another als.py to compare with")
    parser.add_argument("--case", choices=["sparse", "1m"], default="sparse")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="beside one busy process")
    args = parser.parse_args()
    if args.repeats < 1:  # (the factors' comparison needs a timed fit of each version)
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    other = _load(args.against)
    current = solvers.make_als
    data = ds.sparse_reviews() if args.case == "sparse" else ds.synthetic_lowrank(
        n_train=1_000_000, n_test=1000)
    tr = data["train"]
    train = Ratings.from_coo(tr["users"], tr["items"], tr["ratings"], shape=tuple(data["shape"]))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        runs: dict[str, list[tuple[float, float, float]]] = {"against": [], "current": [],
                                                              "libmf": []}
        models: dict[str, Any] = {}
        for make in (other.make_als, current):  # one untimed fit each
            _fit(make, train, data["test"])
        for _ in range(args.repeats):
            for name, make in (("against", other.make_als), ("current", current)):
                wall, cpu, rmse, models[name] = _fit(make, train, data["test"])
                runs[name].append((wall, cpu, rmse))
            if args.case == "sparse":
                lib = bl.libmf_cli(tr, data["test"])
                if lib is not None:
                    runs["libmf"].append((lib["fit_s"], float("nan"), lib["rmse"]))
    finally:
        solvers.make_als = current
        if busy is not None:
            busy.kill()
            busy.wait()
    for name, rs in runs.items():
        if rs:
            walls = [r[0] for r in rs]
            print(f"{args.case} {name}: wall median {statistics.median(walls):.3f} s "
                  f"[{min(walls):.3f}-{max(walls):.3f}], CPU median "
                  f"{statistics.median(r[1] for r in rs):.3f} s, RMSE {rs[-1][2]:.6f}")
    if runs["libmf"]:
        for name in ("against", "current"):
            ratio = (statistics.median(r[0] for r in runs[name])
                     / statistics.median(r[0] for r in runs["libmf"]))
            print(f"{name} / LIBMF (wall medians): {ratio:.2f}")
    diff = {}
    for attr in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        a = np.asarray(getattr(models["against"], attr), np.float64)
        b = np.asarray(getattr(models["current"], attr), np.float64)
        diff[attr] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    print("largest relative difference of the factors:", diff)
    print("busy process beside it" if args.busy else "no busy process of its own",
          "|", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
