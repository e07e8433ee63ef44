"""The Gibbs sampler (issue 9): planted recovery, determinism, exact conditionals, real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autofact.data import Ratings
from autofact.solvers import gibbs
from autofact.solvers.gibbs import GibbsResult, gibbs_mf


def planted(m: int = 60, n: int = 50, rank: int = 3, frac: float = 0.6, noise: float = 0.1,
            seed: int = 0) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """A rank-``rank`` matrix plus biases and noise; ``frac`` of cells train, the rest test."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    R = 3.0 + 0.5 * rng.normal(size=(m, 1)) + 0.5 * rng.normal(size=(1, n)) + P @ Q.T
    R += noise * rng.normal(size=R.shape)
    u, i = np.divmod(np.arange(m * n), n)
    train = rng.random(m * n) < frac
    full = R.ravel()
    return (u[train], i[train], full[train]), (u[~train], i[~train], full[~train])


def test_planted_low_rank_is_recovered() -> None:
    (u, i, r), (tu, ti, tr) = planted()
    res = gibbs_mf(u, i, r, (60, 50), rank=3, sweeps=60, seed=0, n_threads=1)
    rmse = np.sqrt(np.mean((res.predict(tu, ti) - tr) ** 2))
    assert rmse < 0.25, rmse  # the ratings' spread is ~2; the noise 0.1
    # the sampled noise level is the planted one (alpha is a precision)
    assert 0.05 < res.alpha**-0.5 < 0.2


@pytest.mark.parametrize("noise", ["global", "user", "item", "both"])
def test_noise_models_and_implicit_recover(noise: str) -> None:
    (u, i, r), (tu, ti, tr) = planted(seed=1)
    res = gibbs_mf(u, i, r, (60, 50), rank=3, sweeps=40, noise=noise, implicit=True, seed=0)
    assert res.Y is not None and res.Y.shape == (50, 3)
    assert np.sqrt(np.mean((res.predict(tu, ti) - tr) ** 2)) < 0.3


def test_same_seed_same_result_other_seed_other() -> None:
    (u, i, r), _ = planted(m=20, n=15)
    a = gibbs_mf(u, i, r, (20, 15), rank=2, sweeps=8, seed=3)
    b = gibbs_mf(u, i, r, (20, 15), rank=2, sweeps=8, seed=3)
    c = gibbs_mf(u, i, r, (20, 15), rank=2, sweeps=8, seed=4)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.bi, b.bi)
    assert not np.allclose(a.P, c.P)


def test_ratings_input_and_row_blocks_give_the_same_chain() -> None:
    (u, i, r), _ = planted(m=20, n=15)
    order = np.random.default_rng(0).permutation(len(r))  # unsorted COO is sorted inside
    a = gibbs_mf(u[order], i[order], r[order], (20, 15), rank=2, sweeps=6, seed=1)
    b = gibbs_mf(Ratings.from_coo(u, i, r, shape=(20, 15)), rank=2, sweeps=6, seed=1)
    c = gibbs_mf(u, i, r, (20, 15), rank=2, sweeps=6, seed=1, max_nnz=7)  # many row blocks
    np.testing.assert_allclose(a.P, b.P, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.P, c.P, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.Q, c.Q, rtol=1e-9, atol=1e-9)


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    m, n, k = 6, 9, 2
    (u, i, r), _ = planted(m=m, n=n, rank=k, frac=0.7, seed=seed)
    mu = float(r.mean())
    side = gibbs._Side(u.astype(np.int32), i.astype(np.int32), (r - mu).astype(np.float32), m, n,
                       max_nnz=1 << 20)
    return {
        "u": u, "i": i, "r": r, "mu": mu, "side": side, "m": m, "n": n, "k": k,
        "Q": rng.normal(size=(n, k)), "c": rng.normal(size=n), "tau_u": rng.gamma(3.0, 1 / 3, m),
        "tau_i": rng.gamma(3.0, 1 / 3, n), "pm": rng.normal(size=(m, k + 1)),
        "lam": rng.gamma(2.0, 1.0, k + 1), "alpha": 1.7,
    }


def _lam_h(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Lam, h)`` per row, (rows, K, K) and (rows, K), from the augmented upper triangle."""
    K = M.shape[0] - 1
    U = np.triu(np.moveaxis(M[:K, :K], 2, 0))
    return U + np.triu(U, 1).transpose(0, 2, 1), M[:K, K].T.copy()


def test_row_conditional_matches_hand_derived_normal_equations() -> None:
    # each user's block [p_u, b_u] given the items: precision diag(lam) + alpha tau_u
    # sum_i kappa_i z_i z_i^T and linear term lam * m + alpha tau_u sum_i kappa_i t_ui z_i,
    # z_i = [q_i, 1], t_ui = r_ui - mu - c_i; written out row by row in NumPy
    s = _state()
    side, k = s["side"], s["k"]
    terms = gibbs._Terms(s["Q"], s["c"])
    Lam, h = _lam_h(gibbs._block_conditional(side, side.blocks[0], terms, s["pm"], s["lam"],
                                             s["alpha"], s["tau_u"], s["tau_i"])[0])
    for row in range(s["m"]):
        mask = s["u"] == row
        z = np.hstack([s["Q"][s["i"][mask]], np.ones((mask.sum(), 1))])
        kap = s["tau_i"][s["i"][mask]]
        t = s["r"][mask] - s["mu"] - s["c"][s["i"][mask]]
        lam_ref = np.diag(s["lam"]) + s["alpha"] * s["tau_u"][row] * (z.T * kap) @ z
        h_ref = s["lam"] * s["pm"][row] + s["alpha"] * s["tau_u"][row] * (z.T * kap) @ t
        np.testing.assert_allclose(Lam[row], lam_ref, rtol=1e-5)  # G is summed in float32
        np.testing.assert_allclose(h[row], h_ref, rtol=1e-5, atol=1e-6)
    assert Lam.shape == (s["m"], k + 1, k + 1)


def test_row_draws_have_the_conditional_mean_and_covariance() -> None:
    # 3000 users with the same ratings, prior and noise share one conditional: one call draws
    # 3000 independent samples of it, compared with the hand-derived mean and covariance
    s = _state(1)
    k, K, copies = s["k"], s["k"] + 1, 3000
    row = s["u"] == 2
    items, vals = s["i"][row], s["r"][row]
    u = np.repeat(np.arange(copies), len(items)).astype(np.int32)
    i = np.tile(items, copies).astype(np.int32)
    side = gibbs._Side(u, i, np.tile(vals - s["mu"], copies).astype(np.float32), copies, s["n"],
                       max_nnz=1 << 20)
    tau_u = np.full(copies, s["tau_u"][2])
    pm = s["pm"][2]
    rng = np.random.default_rng(0)
    X, mean = np.empty((copies, K)), np.empty((copies, K))
    sse = gibbs._sample_rows(rng, side, s["Q"], s["c"], pm, s["lam"], s["alpha"], tau_u,
                             s["tau_i"], X, mean)
    z = np.hstack([s["Q"][items], np.ones((len(items), 1))])
    kap = s["tau_i"][items]
    t = vals - s["mu"] - s["c"][items]
    prec = np.diag(s["lam"]) + s["alpha"] * tau_u[0] * (z.T * kap) @ z
    cov = np.linalg.inv(prec)
    mean_ref = cov @ (s["lam"] * pm + s["alpha"] * tau_u[0] * (z.T * kap) @ t)
    np.testing.assert_allclose(mean, np.broadcast_to(mean_ref, mean.shape), rtol=1e-5)
    se = np.sqrt(np.diag(cov) / copies)
    assert np.all(np.abs(X.mean(0) - mean_ref) < 5 * se)
    np.testing.assert_allclose(np.cov(X.T), cov, atol=0.1 * np.abs(cov).max())
    # the residual sums returned come from the normal equations: check them directly
    e = t[None, :] - X[:, :k] @ s["Q"][items].T - X[:, k:]
    np.testing.assert_allclose(sse, (kap * e**2).sum(1), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("tau", [True, False])
def test_row_draws_equal_lapack_with_the_same_random_numbers(tau: bool) -> None:
    # issue 9: the draws are K vectorized Cholesky steps over all rows, not batched LAPACK; with
    # the same random numbers they equal x = L^-T (L^-1 h + eps) from LAPACK to rounding, in
    # every row block (max_nnz=40), with an empty row, the mean and the residual sums included
    rng = np.random.default_rng(3)
    m, n, k = 40, 30, 4
    K = k + 1
    keep = rng.random((m, n)) < 0.4
    keep[7] = False  # a user without ratings: its draw is from the prior, its residual sum 0
    u, i = np.nonzero(keep)
    vals = rng.normal(3.0, 1.0, len(u)).astype(np.float32)
    side = gibbs._Side(u.astype(np.int32), i.astype(np.int32), vals, m, n, max_nnz=40,
                       offset=3.0)
    assert len(side.blocks) > 3
    Q, c = rng.normal(size=(n, k)), rng.normal(size=n)
    tau_u = rng.gamma(3.0, 1 / 3, m) if tau else None
    tau_i = rng.gamma(3.0, 1 / 3, n) if tau else None
    pm, lam, alpha = rng.normal(size=(m, K)), rng.gamma(2.0, 1.0, K), 1.3
    X, mean = np.empty((m, K)), np.empty((m, K))
    sse = gibbs._sample_rows(np.random.default_rng(9), side, Q, c, pm, lam, alpha, tau_u, tau_i,
                             X, mean)
    terms = gibbs._Terms(Q, c)
    draws = np.random.default_rng(9)
    for blk in side.blocks:
        r0, r1 = blk[0], blk[1]
        M, _, CZ, g, tt = gibbs._block_conditional(side, blk, terms, pm, lam, alpha, tau_u, tau_i)
        Lam, h = _lam_h(M)
        L = torch.linalg.cholesky(torch.from_numpy(Lam))
        v = torch.linalg.solve_triangular(L, torch.from_numpy(h)[:, :, None], upper=False)
        eps = torch.from_numpy(draws.standard_normal((r1 - r0, K, 1)))
        x = torch.linalg.solve_triangular(L.mT, torch.cat([v + eps, v], 2), upper=True).numpy()
        np.testing.assert_allclose(X[r0:r1], x[:, :, 0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(mean[r0:r1], x[:, :, 1], rtol=1e-10, atol=1e-10)
        G = CZ.astype(np.float64)[:, terms.full]  # (rows, K, K)
        xs = x[:, :, 0]
        ref = np.einsum("ra,rab,rb->r", xs, G, xs) - 2 * (xs * g).sum(1) + tt
        np.testing.assert_allclose(sse[r0:r1], ref, rtol=1e-10, atol=1e-9)
    assert sse[7] == 0.0


def test_implicit_draw_is_the_exact_gaussian() -> None:
    # Y | P is a linear regression per column: precision lamY I + lamP X^T X, linear term
    # lamY mY + lamP X^T resid, with X the user-item indicator scaled by |N(u)|^-1/2
    u = np.array([0, 0, 1, 2, 2, 2], dtype=np.int32)
    i = np.array([0, 1, 1, 0, 1, 2], dtype=np.int32)
    m, n, k = 3, 3, 2000  # the columns are independent draws when their priors are equal
    vals = np.zeros(len(u), dtype=np.float32)
    us = gibbs._Side(u, i, vals, m, n, 1 << 20)
    its = us.transpose(1 << 20)
    design = gibbs._Design(us, its)
    scale = np.bincount(u, minlength=m).astype(float) ** -0.5
    np.testing.assert_allclose(design.diag, np.bincount(i, scale[u] ** 2, minlength=n))
    X = np.zeros((m, n))
    X[u, i] = scale[u]
    resid = np.array([0.5, -1.0, 2.0])
    lamP, lamY, mY = 2.0, 0.7, 0.3
    prec = lamY * np.eye(n) + lamP * X.T @ X
    cov = np.linalg.inv(prec)
    mean = cov @ (lamY * mY + lamP * X.T @ resid)
    rng = np.random.default_rng(0)
    Y = np.zeros((n, k))
    XY = np.zeros((m, k))  # X @ Y, kept up to date by the draw
    its_used = gibbs._draw_implicit(rng, design, np.repeat(resid[:, None], k, 1),
                                    np.full(k, lamP), np.full(k, mY), np.full(k, lamY), Y, XY,
                                    1e-10, 20)
    np.testing.assert_allclose(XY, X @ Y, atol=1e-10)
    assert its_used <= n + 2  # CG on an n x n system
    se = np.sqrt(np.diag(cov) / k)
    assert np.all(np.abs(Y.mean(1) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(Y), cov, atol=0.1 * np.abs(cov).max())


def test_unknown_users_and_items_get_the_prior_mean() -> None:
    (u, i, r), _ = planted(m=20, n=15)
    keep = (u != 19) & (i != 14)  # user 19 and item 14 have no training rating
    res = gibbs_mf(u[keep], i[keep], r[keep], (20, 15), rank=2, sweeps=10, seed=0)
    assert res.n_user_ratings[19] == 0 and res.n_item_ratings[14] == 0
    pred = res.predict([19, -1, 0, 0], [0, 0, 14, 99])
    known = res.predict([0], [0])
    assert np.all(np.isfinite(pred))
    expect_user = res.mu + res.prior_bu + res.bi[0] + res.prior_P @ res.Q[0]
    expect_item = res.mu + res.bu[0] + res.prior_bi + res.P[0] @ res.prior_Q
    np.testing.assert_allclose(pred, [expect_user, expect_user, expect_item, expect_item])
    assert known[0] != pred[0]


def test_callback_sees_each_sweep_and_can_stop() -> None:
    (u, i, r), _ = planted(m=20, n=15)
    seen: list[tuple[int, float]] = []
    snapshots: list[GibbsResult] = []

    def cb(sweep: int, rmse: float, means) -> bool:
        seen.append((sweep, rmse))
        snapshots.append(means())
        return sweep == 3

    res = gibbs_mf(u, i, r, (20, 15), rank=2, sweeps=50, burn_in=10, seed=0, callback=cb)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert isinstance(res, GibbsResult) and len(res.rmse_train) == 3
    assert np.all(np.isfinite(res.P))
    np.testing.assert_array_equal(snapshots[-1].P, res.P)  # stopped in burn-in: the last means
    assert not np.array_equal(snapshots[0].P, snapshots[1].P)


@pytest.mark.parametrize("init", ["spectral", "random"])
def test_burn_in_means_are_provisional_and_the_kept_mean_unchanged(init: str) -> None:
    # issue 10, item 4: during burn-in the callback's means average the sweeps since the last
    # restart (sweeps 1 and 2, from the random start each sweep up to burn_in // 2, a sweep whose
    # training RMSE fell by > 2 %), which is the kept mean of a chain with that burn-in: the
    # chain does not depend on burn_in
    (u, i, r), _ = planted(m=40, n=30, seed=3)
    snaps: list[GibbsResult] = []

    def cb(sweep: int, rmse: float, means) -> None:
        snaps.append(means())

    res = gibbs_mf(u, i, r, (40, 30), rank=2, sweeps=30, burn_in=20, seed=0, callback=cb,
                   init=init)
    train = res.rmse_train
    early = 10 if init == "random" else 2
    restarts = [s for s in range(1, 21) if s <= early or train[s - 1] < 0.98 * train[s - 2]]
    start = restarts[-1]
    assert start < 20  # some sweep of the burn-in is averaged with others
    # from the spectral start, burn-in sweeps before burn_in // 2 are averaged too
    assert (init == "random") == (restarts[:10] == list(range(1, 11)))
    for s in range(1, 21):  # each sweep's means: those of the sweeps since the last restart
        last = max(x for x in restarts if x <= s)
        ref = gibbs_mf(u, i, r, (40, 30), rank=2, sweeps=s, burn_in=last - 1, seed=0, init=init)
        for name in ("P", "Q", "bu", "bi", "prior_P", "prior_Q"):
            np.testing.assert_array_equal(getattr(snaps[s - 1], name), getattr(ref, name))
        assert snaps[s - 1].alpha == ref.alpha
    # the result averages the kept sweeps only, as the chain of the same length and burn-in
    short = gibbs_mf(u, i, r, (40, 30), rank=2, sweeps=30, burn_in=20, seed=0, init=init)
    np.testing.assert_array_equal(res.P, short.P)
    assert not np.allclose(res.P, snaps[19].P)  # not the burn-in's provisional mean
    kept = gibbs_mf(u, i, r, (40, 30), rank=2, sweeps=30, burn_in=start - 1, seed=0, init=init)
    assert not np.allclose(res.P, kept.P)

@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank must be a positive int, got 0"),
        ({"sweeps": 2.5}, "sweeps must be a positive int, got 2.5"),
        ({"sweeps": 5, "burn_in": 5}, r"burn_in must be an int in \[0, sweeps\) = \[0, 5\)"),
        ({"noise": "student"}, "noise must be one of"),
        ({"init": "svd"}, r"init must be one of \('spectral', 'random'\), got 'svd'"),
        ({"noise_shape": -1.0}, "noise_shape must be a positive number, got -1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gibbs_mf([0, 1], [0, 1], [1.0, 2.0], (2, 2), **kwargs)


def test_missing_data_is_refused() -> None:
    with pytest.raises(TypeError, match="needs users, items, values and shape, or one Ratings"):
        gibbs_mf([0, 1], [0, 1])
    with pytest.raises(ValueError, match="needs at least one rating, got none"):
        gibbs_mf([], [], [], (2, 2))


def test_ml100k_u1_accuracy(ml100k) -> None:  # issue 9: the default beats myFM's 0.9098 on u1
    base = np.loadtxt(ml100k / "u1.base", dtype=np.int64, usecols=(0, 1, 2))
    test = np.loadtxt(ml100k / "u1.test", dtype=np.int64, usecols=(0, 1, 2))
    torch.manual_seed(0)
    res = gibbs_mf(base[:, 0] - 1, base[:, 1] - 1, base[:, 2].astype(float), (943, 1682))
    pred = np.clip(res.predict(test[:, 0] - 1, test[:, 1] - 1), 1, 5)
    rmse = float(np.sqrt(np.mean((pred - test[:, 2]) ** 2)))
    assert rmse < 0.908, rmse


# ------------------------------------------------------------------ the model's default (issue 9)
def _planted_ratings(seed: int = 2) -> tuple[Ratings, tuple[np.ndarray, ...]]:
    (u, i, r), test = planted(m=40, n=30, seed=seed)
    return Ratings.from_coo(u, i, r, shape=(40, 30)), test


def test_default_model_is_the_sampler_and_does_everything_a_model_does(tmp_path) -> None:
    from autofact import MatrixFactorization, load

    train, (tu, ti, tr) = _planted_ratings()
    model = MatrixFactorization(rank=3, epochs=40, seed=0).fit(train)
    assert model.solver_ == "gibbs" and model.n_epochs_ == 40
    assert np.sqrt(np.mean((model.predict(tu, ti) - tr) ** 2)) < 0.35
    # the posterior means are the factors: predict is mu + b_u + b_i + p_u . q_i, clipped
    raw = (model.global_mean_ + model.user_bias_[tu] + model.item_bias_[ti]
           + np.einsum("bk,bk->b", model.user_factors_[tu], model.item_factors_[ti]))
    np.testing.assert_allclose(model.predict(tu, ti), np.clip(raw, *model.rating_range_),
                               atol=1e-5)
    assert len(model.recommend(0, n=5).items) == 5
    assert len(model.similar_items(0, n=3).items) == 3
    folded = model.fold_in({0: 5.0, 1: 1.0, 2: 4.0})
    assert np.all(np.isfinite(model.score_items(folded)))
    path = model.save(tmp_path / "gibbs")
    again = load(path)
    assert again.solver_ == "gibbs"
    np.testing.assert_array_equal(again.predict(tu, ti), model.predict(tu, ti))


def test_default_model_validation_history_and_seed() -> None:
    from autofact import MatrixFactorization

    train, (tu, ti, tr) = _planted_ratings()
    val = Ratings.from_coo(tu, ti, tr, shape=(40, 30))
    a = MatrixFactorization(rank=3, epochs=30, seed=1).fit(train, validation=val)
    b = MatrixFactorization(rank=3, epochs=30, seed=1).fit(train)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    assert [h["epoch"] for h in a.history_] == list(range(1, 31))
    assert all("val_rmse" in h for h in a.history_) and a.history_[-1]["kept"]
    assert a.history_[-1]["val_rmse"] < a.history_[0]["val_rmse"]


def test_auto_falls_back_where_the_sampler_does_not_apply() -> None:
    from autofact import MatrixFactorization

    train, _ = _planted_ratings()
    weighted = Ratings.from_coo(train.users, train.items, train.values, shape=train.shape,
                                weights=np.ones(train.nnz))
    kw = dict(rank=2, epochs=3, device="cpu")
    assert MatrixFactorization(**kw).fit(weighted).solver_ == "als"
    assert MatrixFactorization(bias=False, **kw).fit(train).solver_ == "als"
    assert MatrixFactorization(loss="huber", **kw).fit(train).solver_ == "als"
    assert MatrixFactorization(regularization="l1", **kw).fit(train).solver_ == "lbfgs"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # issue 9: huber, logistic, poisson are sampled by Laplace-MH; absolute has no curvature
        ({"loss": "absolute"}, "needs a loss with a non-zero second derivative"),
        ({"regularization": "l1"}, "solver='gibbs' samples"),
        ({"lr": 0.1}, r"lr=0.1 has no meaning for solver='gibbs'"),
        ({"bias": False}, "solver='gibbs' samples a model with biases"),
        ({"batch_size": 64}, "batch_size=64 has no meaning for solver='gibbs'"),
    ],
)
def test_explicit_gibbs_refuses_what_it_cannot_sample(kwargs: dict, match: str) -> None:
    from autofact import MatrixFactorization

    train, _ = _planted_ratings()
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(rank=2, epochs=2, solver="gibbs", **kwargs).fit(train)


def test_explicit_gibbs_refuses_weights() -> None:
    from autofact import MatrixFactorization

    train, _ = _planted_ratings()
    weighted = Ratings.from_coo(train.users, train.items, train.values, shape=train.shape,
                                weights=np.ones(train.nnz))
    with pytest.raises(ValueError, match="solver='gibbs' samples unweighted ratings"):
        MatrixFactorization(rank=2, epochs=2, solver="gibbs").fit(weighted)
    # (it checkpoints since issue 11, item 4: tests/test_checkpoint_gibbs.py)
