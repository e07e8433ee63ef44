"""The Laplace-MH sampler (issue 9, items 2 and 5): Bayesian MF for any twice-differentiable loss.

The exact MH ratio on 1-D posteriors with a known density, acceptance 1 and Gibbs's answer for
the squared loss, planted logistic and Poisson data against the MAP solvers, the wiring into
``MatrixFactorization(solver='gibbs')`` and the contract, and the error messages.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from autofact import FitError, MatrixFactorization
from autofact.data import Ratings
from autofact.losses import logistic, poisson
from autofact.solvers.contract import choose_solver
from autofact.solvers.gibbs import gibbs_mf
from autofact.solvers.laplace import (
    LaplaceResult,
    _mh_side,
    _Side,
    best_constant,
    check_sampler_loss,
    laplace_mf,
)
from autofact.threads import use_threads


def cauchy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's robust loss: not convex (negative second derivative beyond |r| = 1)."""
    return torch.log1p((target - pred) ** 2)


def planted_gaussian(m: int = 60, n: int = 50, rank: int = 2, frac: float = 0.6,
                     seed: int = 0) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Low rank plus biases plus N(0, 1/2) noise, the squared loss's own likelihood
    (``exp(-(r - s)^2)``); ``frac`` of cells train, the rest test against the noiseless truth."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    truth = 3.0 + 0.5 * rng.normal(size=(m, 1)) + 0.5 * rng.normal(size=(1, n)) + P @ Q.T
    noisy = truth + 0.5**0.5 * rng.normal(size=truth.shape)
    u, i = np.divmod(np.arange(m * n), n)
    train = rng.random(m * n) < frac
    return ((u[train], i[train], noisy.ravel()[train]),
            (u[~train], i[~train], truth.ravel()[~train]))


def planted_counts(loss: str, seed: int = 0, m: int = 150, n: int = 120, k: int = 3,
                   density: float = 0.25) -> tuple[Ratings, tuple[np.ndarray, ...]]:
    """Planted low-rank scores with biases; 0/1 outcomes (logistic) or counts (Poisson) drawn
    from them; 80% of the observed cells train, the rest test."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, k)), rng.normal(size=(n, k))
    S = P @ Q.T / np.sqrt(k) * 1.5 + 0.5 * rng.normal(size=(m, 1)) + 0.5 * rng.normal(size=(1, n))
    u, i = np.divmod(rng.permutation(m * n)[: int(density * m * n)], n)
    s = S[u, i]
    if loss == "logistic":
        y = (rng.random(len(s)) < 1 / (1 + np.exp(-s))).astype(np.float64)
    else:
        y = rng.poisson(np.exp(0.5 * s)).astype(np.float64)
    cut = int(0.8 * len(y))
    train = Ratings.from_coo(u[:cut], i[:cut], y[:cut], shape=(m, n))
    return train, (u[cut:], i[cut:], y[cut:])


def held_out_nll(loss: str, pred: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of held-out outcomes under predicted means."""
    if loss == "logistic":
        p = np.clip(pred, 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    rate = np.maximum(pred, 1e-12)
    return float(np.mean(rate - y * np.log(rate)))


# ---------------------------------------------------------------- the MH step is exact
@pytest.mark.parametrize(
    ("loss", "targets", "prior_precision"),
    [
        (poisson, [0.0, 0.0, 7.0], 1.0),  # skewed
        (cauchy, [-2.0, 0.5, 4.0], 0.5),  # heavy-tailed, curvature negative in places (clamped)
        (logistic, [1.0, 1.0, 1.0, 0.0], 0.25),  # a flat prior: the likelihood's skew dominates
    ],
)
def test_mh_step_samples_a_known_1d_posterior(loss, targets, prior_precision) -> None:
    """issue 9: one user's bias under a loss and a Gaussian prior is a 1-D posterior whose
    moments quadrature gives. 4000 independent chains (rows with the same ratings) after 60 MH
    steps are 4000 draws from it: their mean and variance match within Monte Carlo error. The
    factor coordinate, which no rating sees (the items' factors are 0), keeps its prior."""
    R, steps = 4000, 60
    nt = len(targets)
    rows, cols = np.repeat(np.arange(R), nt), np.tile(np.arange(nt), R)
    side = _Side(rows, cols, np.tile(targets, R), R, nt, max_nnz=1 << 12)
    X = torch.zeros(R, 2, dtype=torch.float64)
    items = torch.zeros(nt, 2, dtype=torch.float64)
    hyper = (np.array([0.0, 0.3]), np.array([4.0, prior_precision]))
    gen = torch.Generator().manual_seed(0)
    out = torch.zeros_like(X)
    accepted = 0.0
    with use_threads(1, 1):  # tiny tensors: one thread (several contend on a busy machine)
        for step in range(steps):
            a, _, rated = _mh_side(loss, side, X, items, 0.0, hyper, gen, out, step + 1, "user")
            accepted += a / rated
    assert 0.3 < accepted / steps < 1.0  # the proposal is not exact here: MH rejects some
    grid = torch.linspace(-15.0, 15.0, 300001, dtype=torch.float64)
    t = torch.tensor(targets, dtype=torch.float64)
    logp = -loss(grid[:, None].expand(-1, nt), t.expand(len(grid), -1)).sum(1)
    logp -= 0.5 * prior_precision * (grid - 0.3) ** 2
    w = torch.exp(logp - logp.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    var = float((w * (grid - mean) ** 2).sum())
    fourth = float((w * (grid - mean) ** 4).sum())
    b = X[:, 1].numpy()
    assert abs(b.mean() - mean) < 4 * np.sqrt(var / R), (b.mean(), mean)
    assert abs(b.var() - var) < 4 * np.sqrt((fourth - var**2) / R), (b.var(), var)
    f = X[:, 0].numpy()
    assert abs(f.mean()) < 4 * np.sqrt(0.25 / R)
    assert abs(f.var() - 0.25) < 4 * 0.25 * np.sqrt(2 / R)


def test_squared_loss_accepts_every_proposal_and_matches_gibbs() -> None:
    """issue 9: for the squared loss the Laplace proposal is the exact conditional, so every
    proposal is accepted, and the chain samples Gibbs's posterior (noise fixed at the squared
    loss's N(0, 1/2), which Gibbs's sampled noise precision finds on these data): the two
    samplers' posterior means differ no more than two Gibbs chains do."""
    (u, i, r), (tu, ti, truth) = planted_gaussian()
    lap = laplace_mf(u, i, r, (60, 50), loss="squared", rank=2, sweeps=200, seed=0)
    assert len(lap.acceptance) == 200
    assert all(a == (1.0, 1.0) for a in lap.acceptance)
    assert lap.acceptance_rate == 1.0
    g0 = gibbs_mf(u, i, r, (60, 50), rank=2, sweeps=200, noise="global", seed=0)
    g1 = gibbs_mf(u, i, r, (60, 50), rank=2, sweeps=200, noise="global", seed=1)
    assert 1.8 < g0.alpha < 2.2  # Gibbs finds the planted noise precision, the loss's own

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    pl, p0, p1 = lap.predict(tu, ti), g0.predict(tu, ti), g1.predict(tu, ti)
    assert dist(pl, p0) < 2 * dist(p0, p1), (dist(pl, p0), dist(p0, p1))
    assert abs(dist(pl, truth) - dist(p0, truth)) < 0.02


# ---------------------------------------------------------------- recovery on planted data
@pytest.mark.parametrize("loss", ["logistic", "poisson"])
def test_planted_counts_held_out_at_least_as_good_as_map(loss: str) -> None:
    """issue 9: on planted low-rank logistic (0/1) and Poisson (count) data, the sampler's
    held-out log-likelihood is at least as good as that of the MAP solvers at their defaults
    (``lbfgs``, and ``auto``'s choice, ``als``)."""
    train, (tu, ti, ty) = planted_counts(loss)
    scores = {}
    for solver in ("gibbs", "lbfgs", "auto"):
        model = MatrixFactorization(loss=loss, rank=3, solver=solver, seed=0).fit(train)
        pred = model.predict(train.user_ids[tu], train.item_ids[ti])
        scores[model.solver_] = held_out_nll(loss, pred, ty)
    assert set(scores) == {"gibbs", "lbfgs", "als"}
    assert scores["gibbs"] <= min(scores["lbfgs"], scores["als"]), scores


def test_acceptance_is_reported_per_sweep() -> None:
    """issue 9: the result reports each sweep's acceptance for users and items, in (0, 1]; a
    logistic loss's proposals are not exact, so some are rejected."""
    train, _ = planted_counts("logistic", m=40, n=30, density=0.5)
    res = laplace_mf(train, loss="logistic", rank=2, sweeps=12, seed=0)
    assert isinstance(res, LaplaceResult)
    assert len(res.acceptance) == 12 and len(res.loss_train) == 12
    assert all(0.0 < a <= 1.0 and 0.0 < b <= 1.0 for a, b in res.acceptance)
    assert 0.0 < res.acceptance_rate < 1.0
    assert res.mu == pytest.approx(best_constant(logistic, train.values))


def test_best_constant_is_the_loss_minimizer() -> None:
    y = np.array([0.0, 1.0, 1.0, 1.0])
    assert best_constant(logistic, y) == pytest.approx(np.log(3.0), abs=1e-8)  # logit(3/4)
    assert best_constant(poisson, np.array([1.0, 2.0, 6.0])) == pytest.approx(np.log(3.0))
    assert best_constant("squared", y) == pytest.approx(0.75)


def test_best_constant_of_read_only_values_does_not_warn() -> None:
    # issue 9: a Ratings built by from_frame holds read-only float64 arrays; torch.as_tensor on
    # them warned "The given NumPy array is not writable" in the middle of a logistic Laplace-MH fit
    y = np.array([0.0, 1.0, 1.0, 1.0])
    y.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert best_constant(logistic, y) == pytest.approx(np.log(3.0), abs=1e-8)


def test_same_seed_same_chain_whatever_the_row_blocks() -> None:
    train, _ = planted_counts("poisson", m=30, n=20, density=0.5)
    a = laplace_mf(train, loss="poisson", rank=2, sweeps=5, seed=3)
    b = laplace_mf(train, loss="poisson", rank=2, sweeps=5, seed=3, max_nnz=7)  # many blocks
    c = laplace_mf(train, loss="poisson", rank=2, sweeps=5, seed=4)
    np.testing.assert_allclose(a.P, b.P, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.bi, b.bi, rtol=1e-10, atol=1e-12)
    assert a.acceptance == b.acceptance
    assert not np.allclose(a.P, c.P)


def test_callback_sees_running_means_and_can_stop() -> None:
    train, _ = planted_counts("logistic", m=30, n=20, density=0.5)
    seen: list[tuple[int, float]] = []

    def callback(sweep: int, mean_loss: float, means) -> bool:
        seen.append((sweep, mean_loss))
        assert means().P.shape == (30, 2)
        return sweep == 3

    res = laplace_mf(train, loss="logistic", rank=2, sweeps=10, burn_in=1, callback=callback)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert res.loss_train == [v for _, v in seen]


# ---------------------------------------------------------------- through the model
def test_model_gibbs_samples_logistic_and_keeps_a_usable_model(tmp_path) -> None:
    """issue 9: ``solver='gibbs'`` with a non-squared loss runs the Laplace-MH sampler; the
    posterior means are the model's factors: probabilities in (0, 1), validation history,
    save/load gives the same predictions."""
    import autofact

    train, (tu, ti, ty) = planted_counts("logistic", m=40, n=30, density=0.5)
    val = Ratings.from_coo(tu, ti, ty, shape=train.shape)
    model = MatrixFactorization(loss="logistic", rank=2, solver="gibbs", epochs=15, seed=0)
    model.fit(train, validation=val)
    assert model.solver_ == "gibbs"
    assert model.global_mean_ == pytest.approx(best_constant(logistic, train.values))
    assert len(model.history_) == 15 and "val_rmse" in model.history_[-1]
    pred = model.predict(train.user_ids[tu], train.item_ids[ti])
    assert ((pred > 0) & (pred < 1)).all()
    path = tmp_path / "model"
    model.save(path)
    loaded = autofact.load(path)
    np.testing.assert_allclose(loaded.predict(train.user_ids[tu], train.item_ids[ti]), pred)
    # recommend, similar items and fold-in work as for any fitted model
    assert len(model.recommend(train.user_ids[0], n=3)) == 3
    assert len(model.similar_items(train.item_ids[0], n=3)) == 3
    liked = {train.item_ids[j]: 1.0 for j in range(5)} | {train.item_ids[j]: 0.0 for j in (5, 6)}
    scores = model.score_items(model.fold_in(liked, user="new"))
    assert scores.shape == (train.shape[1],) and ((scores > 0) & (scores < 1)).all()


def test_model_laplace_default_sweeps_are_the_samplers_own() -> None:
    """issue 9: the squared loss's default chain is longer (DEFAULT_EPOCHS['gibbs']) than the
    Laplace sampler's, whose defaults were validated at DEFAULT_SWEEPS; epochs=None keeps them."""
    from autofact.solvers import DEFAULT_EPOCHS
    from autofact.solvers.laplace import DEFAULT_SWEEPS

    assert DEFAULT_SWEEPS != DEFAULT_EPOCHS["gibbs"]
    train, _ = planted_counts("logistic", m=12, n=10, density=0.6)
    model = MatrixFactorization(loss="logistic", rank=2, solver="gibbs", seed=0).fit(train)
    assert model.n_epochs_ == len(model.history_) == DEFAULT_SWEEPS


def test_contract_routes_gibbs_to_the_sampler_for_curved_losses_with_l2() -> None:
    for loss in ("huber", "logistic", "poisson", cauchy):
        assert choose_solver("gibbs", loss, "l2", beta=1.0) == "gibbs"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "absolute"}, r"needs a loss with a non-zero second derivative; loss absolute"),
        ({"loss": "huber", "regularization": "l1"},
         r"solver='gibbs' samples the squared loss with 'l2' regularization .* and other "
         r"twice-differentiable losses with 'l2' by Laplace-MH; got loss huber"),
    ],
)
def test_explicit_gibbs_refuses_what_the_sampler_cannot_sample(kwargs: dict, match: str) -> None:
    train, _ = planted_counts("poisson", m=20, n=15, density=0.5)
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(rank=2, epochs=2, solver="gibbs", **kwargs).fit(train)


# ---------------------------------------------------------------- bad inputs
def _tiny() -> tuple[list[int], list[int], list[float], tuple[int, int]]:
    return [0, 0, 1, 2], [0, 1, 1, 0], [1.0, 0.0, 1.0, 1.0], (3, 2)


def _power_15(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (target - pred).abs() ** 1.5  # second derivative infinite where pred == target


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, r"rank must be a positive int, got 0"),
        ({"sweeps": 0}, ValueError, r"sweeps must be a positive int, got 0"),
        ({"sweeps": 5, "burn_in": 5}, ValueError, r"burn_in must be an int in \[0, sweeps\) = "
                                                   r"\[0, 5\), got 5"),
        ({"warm_start": -1}, ValueError, r"warm_start must be an int >= 0 \(0: none\), got -1"),
        ({"implicit": True}, ValueError, r"implicit=True .* is sampled for the squared loss only"),
        ({"loss": "absolute"}, ValueError, r"needs a loss with a non-zero second derivative"),
        ({"loss": _power_15}, ValueError, r"needs finite second derivatives; loss _power_15"),
        ({"loss": "nope"}, ValueError, r"loss must be one of"),
        ({"loss": lambda p, t: (t - p).mean()}, ValueError, r"must be elementwise"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type, match: str) -> None:
    u, i, r, shape = _tiny()
    with pytest.raises(error, match=match):
        laplace_mf(u, i, r, shape, **{"loss": "logistic", **kwargs})


def test_bad_data_is_named() -> None:
    u, i, r, shape = _tiny()
    with pytest.raises(TypeError, match="laplace_mf needs users, items, values and shape"):
        laplace_mf(u, i, r)
    with pytest.raises(ValueError, match=r"1-D arrays of one length, got shapes \(4,\), \(3,\)"):
        laplace_mf(u, i[:3], r, shape)
    with pytest.raises(ValueError, match="needs at least one rating, got none"):
        laplace_mf([], [], [], shape)
    with pytest.raises(ValueError, match=r"items must be 0-based indices below shape = \(3, 2\), "
                                         r"got values in \[0, 5\]"):
        laplace_mf(u, [0, 1, 5, 0], r, shape)
    with pytest.raises(ValueError, match="values must be finite"):
        laplace_mf(u, i, [1.0, np.nan, 0.0, 1.0], shape)
    with pytest.raises(ValueError, match=r"loss='logistic' models 0/1"):
        laplace_mf(u, i, [1.0, 2.0, 3.0, 4.0], shape, loss="logistic")


@pytest.mark.parametrize(("warm_start", "where"), [(0, "sweep 1"), (2, "the warm start")])
def test_a_loss_that_turns_non_finite_raises_fit_error(warm_start: int, where: str) -> None:
    """issue 9: a loss that is NaN on some ratings stops the sampler with FitError naming the
    sweep and the row, instead of averaging NaN into the posterior means."""

    def nan_above_4(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.where(target > 4, torch.nan, (target - pred) ** 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FitError, match=where + r": the loss or its derivatives are not "
                                           r"finite at the current state of user 1"):
            laplace_mf([0, 1, 2], [0, 0, 1], [1.0, 5.0, 2.0], (3, 2), loss=nan_above_4, rank=1,
                       sweeps=2, warm_start=warm_start)


def test_check_sampler_loss_accepts_the_built_ins_with_curvature() -> None:
    for name in ("squared", "huber", "logistic", "poisson"):
        from autofact.losses import get_loss

        check_sampler_loss(get_loss(name))
    check_sampler_loss(cauchy)
