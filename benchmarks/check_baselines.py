"""Sanity checks for the baselines (run by hand: ``python -m benchmarks.check_baselines``).

1. ``numpy_gradient`` matches central finite differences (float64, tiny random problem).
2. ``post_numpy`` and ``post_pytensor`` (cold cache, default backend) give the same P, Q on the
   quuxlabs 5 x 4 example with the same random rank-2 init, and the loss went down.
3. ``surprise_svd`` runs and beats the global-mean predictor on ML-100K u1 (if the data is there).
"""

from __future__ import annotations

import numpy as np

from benchmarks.baselines import (
    numpy_gradient,
    post_loss,
    post_numpy,
    post_pytensor,
    prepare_numpy_gradient,
)
from benchmarks.datasets import quuxlabs_example


def check_gradient() -> None:
    rng = np.random.default_rng(1)
    m, n, k, beta = 7, 6, 3, 0.3
    cells = rng.choice(m * n, size=20, replace=False)
    users, items = cells // n, cells % n
    ratings = rng.uniform(1, 5, size=20)
    P = rng.standard_normal((m, k))
    Q = rng.standard_normal((k, n))

    def loss(P, Q):
        r = ratings - np.einsum("ij,ji->i", P[users], Q[:, items])
        return (r**2).sum() + beta / 2 * ((P**2).sum() + (Q**2).sum())

    pat = prepare_numpy_gradient(users, items, ratings, (m, n), dtype=np.float64)
    L, dP, dQ = numpy_gradient(users, items, ratings, P, Q, beta, pattern=pat)
    assert np.isclose(L, loss(P, Q)), (L, loss(P, Q))
    L2, dP2, dQ2 = numpy_gradient(users, items, ratings, P, Q, beta)  # no pattern: same result
    assert np.allclose(dP, dP2) and np.allclose(dQ, dQ2)
    h = 1e-6
    for X, G in ((P, dP), (Q, dQ)):
        num = np.zeros_like(X)
        for idx in np.ndindex(X.shape):
            old = X[idx]
            X[idx] = old + h
            fp = loss(P, Q)
            X[idx] = old - h
            fm = loss(P, Q)
            X[idx] = old
            num[idx] = (fp - fm) / (2 * h)
        err = np.abs(num - G).max() / max(1.0, np.abs(num).max())
        assert err < 1e-6, err
    print("numpy_gradient: matches finite differences")


def check_post() -> None:
    R = quuxlabs_example()
    rng = np.random.default_rng(0)
    P0 = rng.random((R.shape[0], 2))
    Q0 = rng.random((2, R.shape[1]))
    Pn, Qn = post_numpy(R, P0, Q0)
    Pt, Qt, info = post_pytensor(R, P0, Q0, cold=True)
    dp, dq = np.abs(Pn - Pt).max(), np.abs(Qn - Qt).max()
    assert dp < 1e-8 and dq < 1e-8, (dp, dq)
    l0, l1 = post_loss(R, P0, Q0), post_loss(R, Pn, Qn)
    assert l1 < l0, (l0, l1)
    print(
        f"post_numpy == post_pytensor (max |dP|={dp:.1e}, |dQ|={dq:.1e}); loss {l0:.3f} -> {l1:.3f}"
    )
    print("  reconstruction:\n", np.round(Pn @ Qn, 2))
    print(f"  pytensor cold: {info['seconds']:.2f} s ({info['linker']})")


def check_surprise() -> None:
    try:
        from benchmarks.baselines import surprise_svd
        from benchmarks.datasets import movielens_100k

        d = movielens_100k(1)
    except (ImportError, FileNotFoundError) as e:
        print(f"surprise check skipped: {e}")
        return
    res = surprise_svd(d["train"], d["test"])
    base = float(np.sqrt(np.mean((d["test"]["ratings"] - d["train"]["ratings"].mean()) ** 2)))
    assert res["rmse"] < base, (res, base)
    print(
        f"surprise SVD on ML-100K u1: RMSE {res['rmse']:.4f} (global mean {base:.4f}), "
        f"fit {res['fit_s']:.2f} s"
    )


if __name__ == "__main__":
    check_gradient()
    check_post()
    check_surprise()
    print("all baseline checks passed")
