"""Where the Gibbs chain starts (issue 10, item 4): the spectral start and what it changes."""

from __future__ import annotations

import numpy as np
import pytest

from autofact.solvers import gibbs
from autofact.solvers.gibbs import gibbs_mf

from .test_gibbs import planted


def _sides(u: np.ndarray, i: np.ndarray, r: np.ndarray, m: int, n: int,
           max_nnz: int = 1 << 19) -> tuple[gibbs._Side, gibbs._Side]:
    o = np.lexsort((i, u))
    u_side = gibbs._Side(u[o].astype(np.int32), i[o].astype(np.int32), r[o].astype(np.float32),
                         m, n, max_nnz, offset=float(r.astype(np.float32).mean(dtype=np.float64)))
    return u_side, u_side.transpose(max_nnz)


def test_spectral_start_is_the_top_singular_subspace_of_what_the_biases_leave() -> None:
    # issue 10, item 4: every cell rated (density 1): the item factors span the top right
    # singular vectors of the centred ratings less the start's biases, each column's squared
    # norm that of A^T Y (Y orthonormal: A's energy in the subspace, the sum of the top squared
    # singular values); the precisions are the balanced factors' inverse mean squares
    m, n, k = 30, 20, 3
    (u, i, r), _ = planted(m=m, n=n, rank=k, frac=1.01, seed=4)
    for max_nnz in (1 << 19, 50):  # one block a side, and many
        u_side, i_side = _sides(u, i, r, m, n, max_nnz)
        Q0, c0, lam_u, lam_i = gibbs._spectral_start(np.random.default_rng(0), u_side, i_side,
                                                     k, len(r), None)
        t = np.zeros((m, n))
        t[u, i] = r.astype(np.float32).astype(np.float64) - u_side.offset
        c = t.sum(0) / (m + 1)  # the biases' conditional means at alpha = lambda = 1
        b = (t - c).sum(1) / (n + 1)
        np.testing.assert_allclose(c0, c, rtol=1e-9, atol=1e-12)
        _, s, vt = np.linalg.svd(t - c - b[:, None])
        cos = np.linalg.svd(vt[:k] @ np.linalg.qr(Q0)[0], compute_uv=False)
        assert cos.min() > 0.999, cos
        norms = np.sum(Q0 * Q0, 0)  # the column norms of A^T Y, A's energy in the subspace
        np.testing.assert_allclose(np.sum(norms**2), np.sum(s[:k] ** 2), rtol=1e-3)
        np.testing.assert_allclose(1 / lam_u, np.sum(Q0 * Q0, 0) / m, rtol=1e-12)
        np.testing.assert_allclose(1 / lam_i, np.sum(Q0 * Q0, 0) / n, rtol=1e-12)


def test_spectral_start_reaches_a_planted_matrix_in_fewer_sweeps() -> None:
    # issue 10, item 4: from the random start the signal grows a few per cent a sweep; from
    # the spectral one the first sweeps already predict held-out cells of a planted matrix
    (u, i, r), (tu, ti, tr) = planted(m=300, n=200, rank=4, frac=0.15, noise=0.3, seed=5)

    def first_sweeps(init: str) -> list[float]:
        out: list[float] = []

        def cb(sweep: int, rmse: float, means) -> bool:
            out.append(float(np.sqrt(np.mean((means().predict(tu, ti) - tr) ** 2))))
            return sweep >= 3

        gibbs_mf(u, i, r, (300, 200), rank=4, seed=0, init=init, callback=cb)
        return out

    spectral, random = first_sweeps("spectral"), first_sweeps("random")
    assert all(a < 0.6 * b for a, b in zip(spectral, random, strict=True)), (spectral, random)


def test_both_starts_sample_the_same_posterior() -> None:
    # issue 10, item 4: only the start changes, every draw is from the same conditional: long
    # chains from either start agree on the posterior mean within the Monte Carlo spread of two
    # chains from the same start
    (u, i, r), (tu, ti, _) = planted(m=40, n=30, rank=2, frac=0.8, noise=0.3, seed=6)

    def predict(init: str, seed: int) -> np.ndarray:
        res = gibbs_mf(u, i, r, (40, 30), rank=2, sweeps=400, burn_in=66, seed=seed,
                       init=init)
        return res.predict(tu, ti)

    a, b = predict("random", 1), predict("random", 2)
    c, d = predict("spectral", 3), predict("spectral", 4)
    # with one target, the difference of the two starts' averages has about half the spread
    # of the two within-start differences together (0.014 against 0.039 here)
    spread = np.sqrt(np.mean((a - b) ** 2) + np.mean((c - d) ** 2))
    across = np.sqrt(np.mean(((a + b) / 2 - (c + d) / 2) ** 2))
    assert across < spread, (across, spread)
    assert spread < 0.1  # the chains are long enough for that to say something


def test_ratings_without_spectrum_keep_the_random_start() -> None:
    # constant ratings leave nothing for the SVD: every direction keeps its random start
    # (no division by a zero singular value) and the chain predicts the constant
    u, i = np.divmod(np.arange(12), 4)
    u_side, i_side = _sides(u, i, np.full(12, 3.0), 3, 4)
    Q0, c0, lam_u, lam_i = gibbs._spectral_start(np.random.default_rng(0), u_side, i_side, 2,
                                                 12, None)
    assert np.isnan(lam_u).all() and np.isnan(lam_i).all()
    np.testing.assert_array_equal(c0, 0.0)
    res = gibbs_mf(u, i, np.full(12, 3.0), (3, 4), rank=2, sweeps=20, seed=0)
    assert np.all(np.isfinite(res.P)) and np.all(np.isfinite(res.Q))
    np.testing.assert_allclose(res.predict(u, i), 3.0, atol=0.2)  # 0.12 (random start: 0.09)


@pytest.mark.parametrize(("init_std", "expected"), [(None, "spectral"), (0.3, "random")])
def test_the_default_model_starts_spectral_unless_init_std_is_set(monkeypatch, init_std,
                                                                   expected) -> None:
    # issue 8 / issue 10: a setting the user gave is honoured, never ignored without a word: an
    # init_std set by hand is the random start it sets, not the SVD start that ignores it
    import autofact
    from autofact.solvers import gibbs

    seen: list[str] = []
    real = gibbs.gibbs_mf

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["init"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gibbs, "gibbs_mf", spy)
    (u, i, y), _ = planted(m=30, n=20)
    kw = {} if init_std is None else {"init_std": init_std}
    m = autofact.MatrixFactorization(rank=2, epochs=3, seed=0, **kw).fit(np.column_stack([u, i]), y)
    assert m.solver_ == "gibbs" and seen == [expected]
