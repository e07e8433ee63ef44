"""Baselines autofact is measured against. Each is a plain function; nothing here imports autofact.

* :func:`numpy_gradient` - the hand-derived full-batch gradient of the post's loss,
  NumPy + SciPy sparse.
* :func:`post_numpy` - the 2016 post's dense batch gradient descent in NumPy.
* :func:`post_pytensor` - the post's Theano code in PyTensor, run in a subprocess
  (cold or warm cache).
* :func:`surprise_svd` - scikit-surprise's SVD (Funk SGD with biases) with its defaults.
* :func:`libmf_fit` - LIBMF via the ``libmf`` PyPI package (0.9.2). NOT used by run.py: that wrapper
  installs but its models are wrong here (ML-100K u1 *train* RMSE 1.43, worse than the global mean),
  so it is kept only for manual experiments.

Loss convention everywhere (P is m x k, Q is k x n, E = mask * (R - P Q))::

    L = sum_obs (r - p_u . q_i)^2 + beta/2 (||P||^2 + ||Q||^2)
    dL/dP = -2 E Q^T + beta P        dL/dQ = -2 P^T E + beta Q

and a gradient step is ``P -= alpha * dL/dP`` (i.e. the post's ``P += alpha * (2 E Q^T - beta P)``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# hand-derived gradient, NumPy + SciPy sparse
# --------------------------------------------------------------------------------------------------
@dataclass
class SparsePattern:
    """Observations sorted into CSR order, plus a reusable CSR matrix whose ``data`` gets residuals.

    Built once outside the timed region (like any real code would)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    E: sp.csr_matrix  # residual matrix, m x n; its data is replaced per call


def prepare_numpy_gradient(users, items, ratings, shape, dtype=np.float32) -> SparsePattern:
    m, n = shape
    users = np.asarray(users)
    items = np.asarray(items)
    order = np.lexsort((items, users))
    u = users[order].astype(np.int32)
    i = items[order].astype(np.int32)
    r = np.asarray(ratings)[order].astype(dtype)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=m), out=indptr[1:])
    E = sp.csr_matrix((np.zeros_like(r), i, indptr), shape=(m, n))
    return SparsePattern(u, i, r, E)


_CHUNK = 1 << 14  # rows gathered at a time for the predictions: keeps the gathered blocks in cache


def numpy_gradient(users, items, ratings, P, Q, beta, pattern: SparsePattern | None = None):
    """Loss and gradient of the post's objective; returns ``(loss, dP, dQ)``.

    ``P`` is m x k, ``Q`` is k x n. Pass ``pattern=prepare_numpy_gradient(...)`` to keep the CSR
    construction out of the timed region; ``users``/``items``/``ratings`` are then ignored in favour
    of the pattern's sorted copies (same set of observations).

    Predictions are a chunked gather + ``einsum`` row-dot; then ``dP = -2 E Q^T + beta P`` is a
    CSR x dense product and ``dQ^T = -2 E^T P + beta Q^T`` a CSC (free transpose view) x dense
    product.
    """
    if pattern is None:
        pattern = prepare_numpy_gradient(users, items, ratings, (P.shape[0], Q.shape[1]), P.dtype)
    QT = np.ascontiguousarray(Q.T)  # n x k, rows gatherable
    u, i = pattern.users, pattern.items
    nnz = u.shape[0]
    pred = np.empty(nnz, dtype=np.result_type(P, Q))
    for s in range(0, nnz, _CHUNK):
        e = s + _CHUNK
        np.einsum("ij,ij->i", P[u[s:e]], QT[i[s:e]], out=pred[s:e])
    resid = np.subtract(pattern.ratings, pred, out=pred)  # E on the observed cells
    E = pattern.E
    E.data = resid
    loss = float(resid @ resid) + 0.5 * beta * (float(np.vdot(P, P)) + float(np.vdot(Q, Q)))
    dP = E @ QT  # m x k   (CSR x dense)
    dP *= -2.0
    dP += beta * P
    dQT = E.T @ P  # n x k = (P^T E)^T   (CSC x dense)
    dQT *= -2.0
    dQT += beta * QT
    return loss, dP, np.ascontiguousarray(dQT.T)


# --------------------------------------------------------------------------------------------------
# the 2016 post: dense batch gradient descent
# --------------------------------------------------------------------------------------------------
def post_numpy(R, P, Q, steps: int = 5000, alpha: float = 0.0002, beta: float = 0.02):
    """The post's batch gradient descent in dense NumPy; ``R`` dense with 0 = missing.

    Both gradients are computed from the same (old) P, Q - a simultaneous update, exactly what the
    Theano/PyTensor ``updates=`` list does. Returns new arrays ``(P, Q)``; inputs are not modified.
    """
    R = np.asarray(R, dtype=np.result_type(P, np.float32))
    mask = R != 0
    P = np.array(P, dtype=R.dtype, copy=True)
    Q = np.array(Q, dtype=R.dtype, copy=True)
    for _ in range(steps):
        E = mask * (R - P @ Q)
        dP = 2 * E @ Q.T - beta * P  # = -dL/dP
        dQ = 2 * P.T @ E - beta * Q  # = -dL/dQ
        P += alpha * dP
        Q += alpha * dQ
    return P, Q


def post_loss(R, P, Q, beta: float = 0.02) -> float:
    R = np.asarray(R, dtype=float)
    E = (R != 0) * (R - P @ Q)
    return float((E**2).sum() + beta / 2 * ((P**2).sum() + (Q**2).sum()))


def post_pytensor(
    R,
    P,
    Q,
    steps: int = 5000,
    alpha: float = 0.0002,
    beta: float = 0.02,
    cold: bool = True,
    mode: str = "default",
    timeout: float = 600,
):
    """Run the post's Theano code (PyTensor) in a subprocess; returns ``(P, Q, info)``.

    ``info["seconds"]`` is graph build + compile + ``steps`` calls, measured inside the subprocess
    (``info["import_s"]`` holds the pytensor import time, ``info["wall_s"]`` the whole subprocess).
    ``cold=True`` compiles into a fresh, empty cache directory; ``cold=False`` reuses
    ``benchmarks/.cache/pytensor`` (run it once first to populate it). ``mode``: ``default``
    (PyTensor 3: Numba) or ``c`` (C backend, as Theano had).
    """
    tmp = tempfile.mkdtemp(prefix="autofact_bench_")
    try:
        inp = os.path.join(tmp, "in.npz")
        out = os.path.join(tmp, "out.npz")
        np.savez(inp, R=np.asarray(R, float), P=np.asarray(P, float), Q=np.asarray(Q, float))
        cmd = [
            sys.executable, "-m", "benchmarks.pytensor_post", "--cold" if cold else "--warm",
            "--steps", str(steps), "--alpha", repr(alpha), "--beta", repr(beta),
            "--mode", mode, "--input", inp, "--output", out,
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"pytensor_post failed:\n{proc.stderr[-3000:]}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        info["wall_s"] = wall
        z = np.load(out)
        return z["P"], z["Q"], info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# scikit-surprise
# --------------------------------------------------------------------------------------------------
def surprise_svd(train: dict, test: dict, random_state: int = 0, **params: Any) -> dict:
    """Fit ``surprise.SVD(**params)`` (defaults: 100 factors, 20 epochs, biased) on ``train``.

    ``train``/``test`` are ``{"users", "items", "ratings"}`` dicts. Dataset construction is outside
    the timed region. Returns ``{"fit_s", "rmse", "predict_s", "params"}``.
    """
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    df = pd.DataFrame(
        {"user": train["users"].astype(np.int64), "item": train["items"].astype(np.int64),
         "rating": train["ratings"].astype(np.float64)}
    )  # fmt: skip
    scale = (float(train["ratings"].min()), float(train["ratings"].max()))
    trainset = Dataset.load_from_df(df, Reader(rating_scale=scale)).build_full_trainset()
    del df
    algo = SVD(random_state=random_state, **params)
    t0 = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = _surprise_predict(algo, trainset, test["users"], test["items"])
    predict_s = time.perf_counter() - t0
    return {
        "fit_s": fit_s,
        **_errors(pred, test),
        "predict_s": predict_s,
        "params": {"n_factors": algo.n_factors, "n_epochs": algo.n_epochs, "biased": algo.biased,
                   "lr_all": algo.lr_bu, "reg_all": algo.reg_bu},
    }  # fmt: skip


def _surprise_predict(algo, trainset, users, items) -> np.ndarray:
    """Vectorised equivalent of ``algo.test``: mu + b_u + b_i + p_u . q_i, clipped, with Surprise's
    rules for unknown users/items (their terms drop out)."""
    uid = np.full(len(users), -1, dtype=np.int64)
    iid = np.full(len(items), -1, dtype=np.int64)
    umap = trainset._raw2inner_id_users
    imap = trainset._raw2inner_id_items
    for k, u in enumerate(users.tolist()):
        uid[k] = umap.get(u, -1)
    for k, i in enumerate(items.tolist()):
        iid[k] = imap.get(i, -1)
    ku, ki = uid >= 0, iid >= 0
    est = np.full(len(users), trainset.global_mean, dtype=np.float64)
    if algo.biased:
        est[ku] += algo.bu[uid[ku]]
        est[ki] += algo.bi[iid[ki]]
    both = ku & ki
    est[both] += np.einsum("ij,ij->i", algo.pu[uid[both]], algo.qi[iid[both]])
    lo, hi = trainset.rating_scale
    return np.clip(est, lo, hi)


# --------------------------------------------------------------------------------------------------
# LIBMF (optional)
# --------------------------------------------------------------------------------------------------
def libmf_fit(
    train: dict, test: dict, k: int = 100, epochs: int = 20, threads: int | None = None
) -> dict | None:
    """LIBMF (squared loss + L2, parallel SGD) via the ``libmf`` package; ``None`` if absent."""
    try:
        import contextlib
        import io
        import warnings

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            from libmf import mf  # type: ignore
    except Exception:
        return None
    data = np.column_stack([train["users"], train["items"], train["ratings"]]).astype(np.float32)
    engine = mf.MF(k=k, nr_iters=epochs, nr_threads=threads or os.cpu_count() or 1, quiet=True)
    t0 = time.perf_counter()
    engine.fit(data)
    fit_s = time.perf_counter() - t0
    idx = np.column_stack([test["users"], test["items"]]).astype(np.float32)
    pred = np.clip(np.asarray(engine.predict(idx), dtype=np.float64), 1, 5)
    rmse = float(np.sqrt(np.mean((pred - test["ratings"]) ** 2)))
    return {"fit_s": fit_s, "rmse": rmse, "params": {"k": k, "nr_iters": epochs}}


# --------------------------------------------------------------------------------------------------
# the accuracy peers of issue 9: myFM (Bayesian MF), cmfrec (ALS), LIBMF (built from source)
# --------------------------------------------------------------------------------------------------
def _errors(pred: np.ndarray, test: dict) -> dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - test["ratings"].astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def _one_hot(part: dict, shape: tuple[int, int]) -> sp.csr_matrix:
    n = len(part["users"])
    rows = np.repeat(np.arange(n), 2)
    cols = np.column_stack([part["users"], shape[0] + part["items"]]).ravel()
    return sp.csr_matrix((np.ones(2 * n), (rows, cols)), shape=(n, shape[0] + shape[1]))


def myfm_bmf(train: dict, test: dict, shape: tuple[int, int], rank: int = 10,
             sweeps: int = 200, seed: int = 0) -> dict:
    """myFM's Gibbs-sampled Bayesian MF (one-hot user + item, rank 10, 200 sweeps, every sample
    kept), as the baselines README measures it. Returns ``{"fit_s", "rmse", "mae"}``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # myFM imports pkg_resources
        import myfm
    X, Xt = _one_hot(train, shape), _one_hot(test, shape)
    lo, hi = float(train["ratings"].min()), float(train["ratings"].max())
    fm = myfm.MyFMRegressor(rank=rank, random_seed=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        fm.fit(X, train["ratings"].astype(np.float64), n_iter=sweeps, n_kept_samples=sweeps)
    fit_s = time.perf_counter() - t0
    pred = np.clip(fm.predict(Xt), lo, hi)
    return {"fit_s": fit_s, **_errors(pred, test), "params": {"rank": rank, "sweeps": sweeps}}


def cmfrec_als(train: dict, test: dict, k: int = 40, lambda_: float = 10.0) -> dict:
    """cmfrec's CMF (ALS with user and item biases), k=40, lambda=10 as the README measures it."""
    import pandas as pd
    from cmfrec import CMF

    df = pd.DataFrame({"UserId": train["users"], "ItemId": train["items"],
                       "Rating": train["ratings"].astype(np.float64)})
    model = CMF(k=k, lambda_=lambda_, user_bias=True, item_bias=True, verbose=False,
                random_state=0)
    t0 = time.perf_counter()
    model.fit(df)
    fit_s = time.perf_counter() - t0
    pred = np.asarray(model.predict(user=test["users"], item=test["items"]), dtype=np.float64)
    lo, hi = float(train["ratings"].min()), float(train["ratings"].max())
    pred = np.clip(np.where(np.isfinite(pred), pred, float(df["Rating"].mean())), lo, hi)
    return {"fit_s": fit_s, **_errors(pred, test), "params": {"k": k, "lambda": lambda_}}


LIBMF_CACHE = REPO_ROOT / "benchmarks" / ".cache" / "libmf"


def libmf_binaries() -> Path | None:
    """Build ``mf-train``/``mf-predict`` from ``../shared/baselines/libmf`` into a cache folder
    (the shared copy is read-only); ``None`` when the source or a compiler is missing."""
    src = (REPO_ROOT / ".." / "shared" / "baselines" / "libmf").resolve()
    if (LIBMF_CACHE / "mf-train").exists() and (LIBMF_CACHE / "mf-predict").exists():
        return LIBMF_CACHE
    if not src.exists():
        return None
    LIBMF_CACHE.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(LIBMF_CACHE, ignore_errors=True)
    shutil.copytree(src, LIBMF_CACHE)
    proc = subprocess.run(["make", "-C", str(LIBMF_CACHE)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return LIBMF_CACHE


def libmf_cli(train: dict, test: dict, k: int = 32, iters: int = 20,
              threads: int = 2) -> dict | None:
    """LIBMF's own ``mf-train -k K -t ITERS -s THREADS`` on text files (squared loss, its default
    L2), then ``mf-predict``; fit time is the ``mf-train`` process. ``None`` if it cannot build."""
    binaries = libmf_binaries()
    if binaries is None:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="libmf-"))
    try:
        for name, part in (("train.txt", train), ("test.txt", test)):
            np.savetxt(tmp / name, np.column_stack([part["users"], part["items"],
                                                    part["ratings"]]), fmt="%d %d %g")
        t0 = time.perf_counter()
        subprocess.run([str(binaries / "mf-train"), "-s", str(threads), "-k", str(k), "-t",
                        str(iters), "--quiet", str(tmp / "train.txt"), str(tmp / "model")],
                       check=True, capture_output=True)
        fit_s = time.perf_counter() - t0
        subprocess.run([str(binaries / "mf-predict"), str(tmp / "test.txt"), str(tmp / "model"),
                        str(tmp / "out.txt")], check=True, capture_output=True)
        pred = np.loadtxt(tmp / "out.txt")
        lo, hi = float(train["ratings"].min()), float(train["ratings"].max())
        return {"fit_s": fit_s, **_errors(np.clip(pred, lo, hi), test),
                "params": {"k": k, "iters": iters, "threads": threads}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
