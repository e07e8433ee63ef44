"""Accuracy benchmark: autofact's Gibbs sampler against myFM on three real datasets.

    .venv/bin/python -m benchmarks.accuracy [--datasets ml-100k ml-latest-small filmtrust]
        [--folds 1 2 3 4 5] [--no-myfm] [--api model|sampler]
        [--rank K --sweeps N --burn-in B --noise both|user|item|global --implicit]

autofact is ``MatrixFactorization()`` at its defaults (the Gibbs sampler ``auto`` picks; with
``--implicit`` alone, ``MatrixFactorization(implicit=True)``), or with ``--api sampler`` or any
other sampler option :func:`autofact.solvers.gibbs.gibbs_mf` itself.

Splits (as issue 9 fixes them): ml-100k is the canonical ``u1..u5`` 5-fold split; ml-latest-small
and filmtrust are 90/10 splits of the rating rows by ``numpy.random.default_rng(0).permutation``
(first 90% train; filmtrust's duplicate (user, item) pairs keep the last). Prints RMSE, MAE and fit
seconds for each; myFM (rank 10, 200 sweeps, ``pip install myfm``) runs interleaved in the same
process, so the time ratio is fair on a shared machine. Predictions of both are clipped to the
training ratings' range.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import types
from typing import Any

import numpy as np

from benchmarks.datasets import datasets_dir


def _index(u: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    uid, uix = np.unique(u, return_inverse=True)
    iid, iix = np.unique(i, return_inverse=True)
    return uix.astype(np.int64), iix.astype(np.int64), (len(uid), len(iid))


def _split(u: np.ndarray, i: np.ndarray, r: np.ndarray, name: str) -> dict[str, Any]:
    uix, iix, shape = _index(u, i)
    perm = np.random.default_rng(0).permutation(len(r))
    cut = int(0.9 * len(r))
    tr, te = perm[:cut], perm[cut:]
    return {"name": name, "shape": shape,
            "train": (uix[tr], iix[tr], r[tr]), "test": (uix[te], iix[te], r[te])}


def load(name: str, fold: int = 1) -> dict[str, Any]:
    """One train/test split as ``{"name", "shape", "train": (u, i, r), "test": (u, i, r)}``."""
    root = datasets_dir()
    if name == "ml-100k":
        base = np.loadtxt(root / "ml-100k" / f"u{fold}.base", dtype=np.int64, usecols=(0, 1, 2))
        test = np.loadtxt(root / "ml-100k" / f"u{fold}.test", dtype=np.int64, usecols=(0, 1, 2))
        both = np.concatenate([base, test])
        uix, iix, shape = _index(both[:, 0], both[:, 1])
        nb = len(base)
        r = both[:, 2].astype(np.float64)
        return {"name": f"ml-100k u{fold}", "shape": shape,
                "train": (uix[:nb], iix[:nb], r[:nb]), "test": (uix[nb:], iix[nb:], r[nb:])}
    if name == "ml-latest-small":
        a = np.loadtxt(root / "ml-latest-small" / "ratings.csv", delimiter=",", skiprows=1,
                       usecols=(0, 1, 2))
        return _split(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2], name)
    if name == "filmtrust":
        a = np.loadtxt(root / "filmtrust" / "ratings.txt", usecols=(0, 1, 2))
        u, i = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)
        # duplicate pairs: keep the last occurrence
        key = u * (i.max() + 1) + i
        _, last = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last)
        return _split(u[keep], i[keep], a[keep, 2], name)
    raise ValueError(f"unknown dataset {name!r}")


def metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    err = pred - truth
    return float(np.sqrt(np.mean(err * err))), float(np.mean(np.abs(err)))


def run_gibbs(d: dict[str, Any], api: str = "model", **kw: Any) -> dict[str, float]:
    """autofact: ``MatrixFactorization()`` at its defaults (``api='model'``: what a user gets,
    the id index and the model's unknown-id rule included), or the sampler's own function."""
    u, i, r = d["train"]
    tu, ti, tr = d["test"]
    if api == "model" and set(kw) <= {"implicit"}:  # a model option: through the model
        import warnings

        from autofact import MatrixFactorization, Ratings

        train = Ratings.from_coo(u, i, r, shape=d["shape"])
        t0 = time.perf_counter()
        model = MatrixFactorization(**kw).fit(train)
        seconds = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # test ids absent from training: the fallback
            pred = model.predict(tu, ti)
        rmse, mae = metrics(pred, tr)
        return {"rmse": rmse, "mae": mae, "seconds": seconds}
    if os.environ.get("GIBBS_COPY"):
        from gibbs_copy import gibbs_mf  # a development copy (see --help)
    else:
        from autofact.solvers.gibbs import gibbs_mf
    t0 = time.perf_counter()
    res = gibbs_mf(u, i, r, d["shape"], **kw)
    seconds = time.perf_counter() - t0
    pred = np.clip(res.predict(tu, ti), r.min(), r.max())
    rmse, mae = metrics(pred, tr)
    return {"rmse": rmse, "mae": mae, "seconds": seconds}


def _import_myfm() -> Any:
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # myfm imports it for nothing; setuptools >= 81 dropped it
        shim = types.ModuleType("pkg_resources")
        shim.DistributionNotFound = Exception  # type: ignore[attr-defined]
        shim.get_distribution = lambda name: None  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import myfm

    return myfm


def run_myfm(d: dict[str, Any], rank: int = 10, sweeps: int = 200, seed: int = 0
             ) -> dict[str, float]:
    import scipy.sparse as sp

    myfm = _import_myfm()
    m, n = d["shape"]

    def onehot(u: np.ndarray, i: np.ndarray) -> Any:
        rows = np.arange(len(u))
        data = np.ones(2 * len(u))
        return sp.csr_matrix((data, (np.concatenate([rows, rows]), np.concatenate([u, m + i]))),
                             shape=(len(u), m + n))

    u, i, r = d["train"]
    t0 = time.perf_counter()
    fm = myfm.MyFMRegressor(rank=rank, random_seed=seed)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its progress bar
        fm.fit(onehot(u, i), r, n_iter=sweeps, n_kept_samples=sweeps)
    seconds = time.perf_counter() - t0
    tu, ti, tr = d["test"]
    pred = np.clip(fm.predict(onehot(tu, ti)), r.min(), r.max())
    rmse, mae = metrics(pred, tr)
    return {"rmse": rmse, "mae": mae, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+",
                    default=["ml-100k", "ml-latest-small", "filmtrust"])
    ap.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--no-myfm", action="store_true")
    ap.add_argument("--rank", type=int)
    ap.add_argument("--sweeps", type=int)
    ap.add_argument("--burn-in", type=int)
    ap.add_argument("--noise", choices=["both", "user", "item", "global"])
    ap.add_argument("--implicit", action=argparse.BooleanOptionalAction)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (myFM uses one)")
    ap.add_argument("--api", choices=["model", "sampler"], default="model",
                    help="MatrixFactorization() at its defaults (when no sampler option is "
                         "given), or autofact.solvers.gibbs.gibbs_mf")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    kw = {key: getattr(args, key) for key in ("rank", "sweeps", "burn_in", "noise", "implicit")
          if getattr(args, key) is not None}
    model_path = args.api == "model" and set(kw) <= {"implicit"}
    what = (f"MatrixFactorization({', '.join(f'{k}={v!r}' for k, v in kw.items())})"
            if model_path else f"gibbs_mf(**{kw})")
    print(f"autofact: {what}; torch threads {torch.get_num_threads()}")
    rows = []
    for name in args.datasets:
        folds = args.folds if name == "ml-100k" else [0]
        acc: dict[str, list[dict[str, float]]] = {"autofact": [], "myfm": []}
        for f in folds:
            d = load(name, f)
            acc["autofact"].append(run_gibbs(d, api=args.api, **kw))
            if not args.no_myfm:
                acc["myfm"].append(run_myfm(d))
            line = f"{d['name']:18s}"
            for who, res in acc.items():
                if res:
                    x = res[-1]
                    line += f"  {who}: {x['rmse']:.4f} / {x['mae']:.4f} {x['seconds']:6.2f}s"
            print(line, flush=True)
        for who, res in acc.items():
            if res:
                rows.append((name, who, *(float(np.mean([x[key] for x in res]))
                                          for key in ("rmse", "mae", "seconds"))))
    print("\n| data | model | RMSE | MAE | fit s |\n|---|---|---|---|---|")
    for name, who, rmse, mae, secs in rows:
        print(f"| {name} | {who} | {rmse:.4f} | {mae:.4f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
