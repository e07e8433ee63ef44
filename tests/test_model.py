"""MatrixFactorization: the shared contract over solvers x losses x dtypes, and its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import autofact
from autofact import FitError, MatrixFactorization, Ratings
from autofact.objective import Objective

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="no CUDA device"))


def cauchy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's own loss, importable as 'tests.test_model:cauchy'."""
    return torch.log1p((target - pred) ** 2)


def planted(m=500, n=400, rank=5, density=0.1, noise=0.1, seed=0):
    """A rank-5 matrix with 10% of entries seen (plus noise) and 2% held out."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    R = P @ Q.T
    seen = rng.random((m, n)) < density
    held = (~seen) & (rng.random((m, n)) < 0.02)
    u, i = np.nonzero(seen)
    tu, ti = np.nonzero(held)
    train = Ratings.from_coo(u, i, R[u, i] + noise * rng.normal(size=len(u)), shape=(m, n))
    test = Ratings.from_coo(tu, ti, R[tu, ti] + noise * rng.normal(size=len(tu)), shape=(m, n))
    return train, test


@pytest.fixture(scope="module")
def lowrank():
    return planted()


SOLVER_SETTINGS = {
    "als": dict(epochs=12),
    "lbfgs": dict(epochs=15),
    "adam": dict(epochs=250, lr=0.02),
    "sgd": dict(epochs=30, lr=0.01, batch_size=256),
    "gd": dict(epochs=700, lr=0.0012, init_std=0.5),
}


@pytest.mark.parametrize("solver", list(SOLVER_SETTINGS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_recovers_planted_low_rank_matrix(lowrank, solver, dtype, device):
    if dtype == "float64" and solver in ("adam", "sgd", "gd") and device == "cpu":
        pytest.skip("float64 is covered by als and lbfgs on the CPU (keeps the suite short)")
    train, test = lowrank
    model = MatrixFactorization(rank=5, beta=0.5, solver=solver, dtype=dtype, device=device,
                                seed=0, **SOLVER_SETTINGS[solver])
    model.fit(train, validation=test)
    assert -model.score(test) < 0.15
    assert model.history_[-1]["val_rmse"] == pytest.approx(-model.score(test), rel=1e-4)
    assert model.history_[-1]["val_rmse"] < model.history_[0]["val_rmse"] / 5
    assert model.user_factors_.dtype == np.dtype(dtype)
    assert model.n_epochs_ == len(model.history_)


@pytest.mark.parametrize("loss", ["huber", "absolute", cauchy, "tests.test_model:cauchy"])
def test_robust_and_custom_losses_recover_despite_outliers(lowrank, loss):
    train, test = lowrank
    rng = np.random.default_rng(1)
    values = train.values.copy()
    bad = rng.random(len(values)) < 0.03
    values[bad] += rng.choice([-20.0, 20.0], bad.sum())
    dirty = Ratings(train.users, train.items, values, shape=train.shape, _sorted=True)
    solver = "als" if loss == "huber" else "adam"
    kw = dict(epochs=12) if solver == "als" else dict(epochs=300, lr=0.02)
    robust = MatrixFactorization(rank=5, beta=0.5, loss=loss, solver=solver, device="cpu", **kw)
    robust.fit(dirty)
    plain = MatrixFactorization(rank=5, beta=0.5, loss="squared", solver=solver, device="cpu", **kw)
    plain.fit(dirty)
    assert -robust.score(test) < 0.3
    assert -robust.score(test) < -plain.score(test) / 2


def test_logistic_and_poisson_losses():
    rng = np.random.default_rng(0)
    m, n = 200, 150
    P, Q = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    logits = P @ Q.T
    u, i = np.nonzero(rng.random((m, n)) < 0.3)
    tu, ti = np.nonzero(rng.random((m, n)) < 0.05)
    y = (rng.random(len(u)) < 1 / (1 + np.exp(-logits[u, i]))).astype(float)
    train = Ratings.from_coo(u, i, y, shape=(m, n))
    model = MatrixFactorization(rank=3, loss="logistic", beta=1.0, bias=False, device="cpu").fit(train)
    agree = np.mean((model.predict_indices(tu, ti) > 0) == (logits[tu, ti] > 0))
    assert agree > 0.8
    counts = rng.poisson(np.exp(0.5 * logits[u, i]))
    train = Ratings.from_coo(u, i, counts, shape=(m, n))
    model = MatrixFactorization(rank=3, loss="poisson", beta=1.0, bias=False, device="cpu").fit(train)
    corr = np.corrcoef(model.predict_indices(tu, ti), 0.5 * logits[tu, ti])[0, 1]
    assert corr > 0.8


def test_movielens_100k_default_model_reaches_rmse_095(ml100k):
    train = autofact.read(ml100k / "u1.base")
    test = autofact.read(ml100k / "u1.test")
    model = MatrixFactorization(seed=0).fit(train, validation=test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # u1.test has items absent from u1.base: the fallback
        rmse = -model.score(test)
    assert rmse <= 0.91  # issue 9: the default is the Gibbs sampler (myFM: 0.9098 on u1)
    assert model.solver_ == "gibbs"
    assert model.history_[-1]["kept"] and len(model.history_) == model.n_epochs_


# ------------------------------------------------------------------------- invariants
def test_seed_makes_runs_repeatable(lowrank):
    train, _ = lowrank
    kw = dict(rank=4, solver="sgd", epochs=2, batch_size=512, device="cpu")
    a = MatrixFactorization(seed=3, **kw).fit(train).user_factors_
    b = MatrixFactorization(seed=3, **kw).fit(train).user_factors_
    c = MatrixFactorization(seed=4, **kw).fit(train).user_factors_
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "change",
    [dict(rank=4), dict(beta=5.0), dict(loss="huber"), dict(lr=0.05), dict(epochs=3),
     dict(init_std=0.3), dict(seed=1), dict(bias=False), dict(regularization="l1"),
     dict(batch_size=1000), dict(nonnegative=True)],
)
def test_every_hyper_parameter_changes_the_result(lowrank, change):
    train, _ = lowrank
    base = dict(rank=3, solver="adam", epochs=5, lr=0.01, device="cpu", seed=0, beta=1.0)
    a = MatrixFactorization(**base).fit(train)
    b = MatrixFactorization(**{**base, **change}).fit(train)
    pa = a.predict_indices(train.users[:50], train.items[:50])
    pb = b.predict_indices(train.users[:50], train.items[:50])
    assert not np.allclose(pa, pb)


def test_more_l2_gives_smaller_norms(lowrank):
    train, _ = lowrank
    norms = []
    for beta in (0.1, 10.0, 100.0):
        m = MatrixFactorization(rank=5, beta=beta, solver="als", epochs=5, device="cpu").fit(train)
        norms.append(np.linalg.norm(m.user_factors_) + np.linalg.norm(m.item_factors_))
    assert norms[0] > norms[1] > norms[2]


def test_nonnegative_projection(lowrank):
    train, _ = lowrank
    m = MatrixFactorization(rank=5, solver="adam", epochs=20, nonnegative=True, device="cpu")
    m.fit(train)
    assert (m.user_factors_ >= 0).all() and (m.item_factors_ >= 0).all()


def test_chunked_gradient_equals_one_chunk(lowrank):
    train, _ = lowrank
    big = Objective(train, bias=True, dtype=torch.float64)
    small = Objective(train, bias=True, dtype=torch.float64, max_memory=2**16)
    assert len(big.patterns) == 1 and len(small.patterns) > 10
    pa, pb = big.init_params(4, seed=0), small.init_params(4, seed=0)
    assert big.value_and_grad(pa) == pytest.approx(small.value_and_grad(pb), rel=1e-12)
    for k in pa:
        torch.testing.assert_close(pa[k].grad, pb[k].grad, rtol=1e-10, atol=1e-10)


def test_minibatches_partition_the_full_gradient(lowrank):
    train, _ = lowrank
    obj = Objective(train, bias=True, dtype=torch.float64)
    full = obj.init_params(4, seed=0)
    obj.value_and_grad(full)
    parts = obj.init_params(4, seed=0)
    order = torch.randperm(obj.nnz)
    total = 0.0
    for s in range(0, obj.nnz, 777):
        loss = obj.batch_loss(parts, order[s : s + 777])
        loss.backward()
        total += float(loss.detach())
    assert total == pytest.approx(obj.value(full), rel=1e-10)
    for k in full:
        torch.testing.assert_close(parts[k].grad, full[k].grad, rtol=1e-8, atol=1e-8)


def test_weights_multiply_the_loss():
    r = Ratings.from_coo([0, 1], [0, 1], [1.0, 2.0], weights=[3.0, 0.0])
    obj = Objective(r, bias=False, regularization="none", dtype=torch.float64)
    params = obj.init_params(1, seed=0)
    with torch.no_grad():
        params["P"].fill_(1.0)
        params["Q"].fill_(0.5)
    assert obj.value(params) == pytest.approx(3.0 * 0.25 + 0.0)


# ------------------------------------------------------------------------- prediction
@pytest.fixture(scope="module")
def small_model():
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((30, 20)) < 0.5)
    df = {"user": [f"u{x}" for x in u], "item": [f"i{x}" for x in i],
          "rating": rng.integers(1, 6, len(u)).astype(float)}
    import pandas as pd

    train = Ratings.from_frame(pd.DataFrame(df))
    return MatrixFactorization(rank=3, epochs=5, device="cpu").fit(train), train


def test_predict_in_user_ids_matches_indices(small_model):
    model, train = small_model
    pred = model.predict(["u3", "u7"], ["i2", "i5"])
    raw = model.predict_indices(model.user_index(["u3", "u7"]), model.item_index(["i2", "i5"]))
    np.testing.assert_allclose(pred, np.clip(raw, 1, 5))
    assert model.predict("u3", "i2").shape == (1,)


def test_unknown_ids_fall_back_with_one_warning(small_model):
    model, _ = small_model
    with pytest.warns(UserWarning, match="2 of 3 pairs have a user or item that is not in the training"):
        pred = model.predict(["u1", "nobody", "u2"], ["i1", "i1", "nothing"])
    i1 = model.item_index("i1")[0]
    u2 = model.user_index("u2")[0]
    # issue 9: the unknown side is the average known user / item (the known side's mean score)
    P, Q = model.user_factors_.astype(float), model.item_factors_.astype(float)
    bu, bi = model.user_bias_.astype(float), model.item_bias_.astype(float)
    ku, ki = model.index_.user_counts > 0, model.index_.item_counts > 0
    avg_user = model.global_mean_ + bu[ku].mean() + bi[i1] + P[ku].mean(0) @ Q[i1]
    avg_item = model.global_mean_ + bu[u2] + bi[ki].mean() + P[u2] @ Q[ki].mean(0)
    assert pred[1] == pytest.approx(np.clip(avg_user, 1, 5))
    assert pred[2] == pytest.approx(np.clip(avg_item, 1, 5))
    strict = MatrixFactorization(**{**model.get_params(), "strict": True})
    strict.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_") or k.startswith("_")})
    with pytest.raises(autofact.UnknownIdError, match="user 'nobody' is not in the training data"):
        strict.predict(["u1", "nobody"], ["i1", "i1"])


def test_not_fitted_error():
    with pytest.raises(RuntimeError, match="not fitted yet; call fit"):
        MatrixFactorization().predict([1], [1])


# ------------------------------------------------------------------------- errors
def test_non_finite_loss_raises_fit_error_and_keeps_finite_params(lowrank):
    train, _ = lowrank
    model = MatrixFactorization(rank=5, solver="gd", lr=1.0, epochs=50, device="cpu")
    match = r"at epoch \d+ .* Try a smaller learning rate, e\.g\. lr=0\.1"
    with pytest.raises(FitError, match=match) as info:
        model.fit(train)
    assert info.value.epoch >= 1
    assert np.isfinite(model.user_factors_).all() and np.isfinite(model.item_factors_).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=0), "rank must be a positive int or 'auto', got 0"),
        (dict(rank=2.5), "rank must be a positive int or 'auto', got 2.5"),
        (dict(solver="newton"), "solver must be 'auto' or one of"),
        (dict(lr=-1.0), "lr must be a positive number, got -1.0"),
        (dict(epochs=0), "epochs must be a positive int, got 0"),
        (dict(beta=-1.0), "beta must be a finite number >= 0"),
        (dict(batch_size=0, solver="adam"), "batch_size must be a positive int or None"),
        (dict(batch_size=64, solver="als"), "batch_size=64 has no meaning for solver='als'"),
        (dict(loss="nope"), "loss must be one of"),
        (dict(regularization="l3"), "regularization must be one of"),
        (dict(device="tpu"), "device must be 'auto', 'cpu' or 'cuda"),
        (dict(dtype="int8"), "dtype must be 'float32' or 'float64', got 'int8'"),
        (dict(loss="tests.test_model:no_such_loss"), "has no attribute 'no_such_loss'"),
        (dict(loss="no_such_module_xyz:f"), "cannot import module 'no_such_module_xyz'"),
        (dict(loss=lambda p, t: ((p - t) ** 2).mean()), "must be elementwise"),
        (dict(loss=lambda p, t: np.abs(p.detach().numpy() - t.numpy())), "must return a torch.Tensor"),
        (dict(loss=lambda p, t: (p - t).detach() ** 2), "is not differentiable in pred"),
        (dict(regularization=lambda x: x**2), "must return a scalar tensor"),
    ],
)
def test_bad_hyper_parameters_get_clear_errors(lowrank, kwargs, match):
    train, _ = lowrank
    with pytest.raises((ValueError, TypeError), match=match):
        MatrixFactorization(**kwargs).fit(train)


def test_fit_rejects_non_ratings():
    with pytest.raises(TypeError, match="ratings must be an autofact.Ratings"):
        MatrixFactorization().fit([1, 2, 3])


def test_als_refuses_a_loss_without_curvature(lowrank):
    train, _ = lowrank
    with pytest.raises(ValueError, match="solver='als' needs a loss with a non-zero second"):
        MatrixFactorization(loss="absolute", solver="als", device="cpu").fit(train)


def test_get_set_params_and_repr():
    m = MatrixFactorization(rank=7, loss="huber")
    assert m.get_params()["rank"] == 7
    assert m.set_params(rank=8, beta=1.0) is m and m.rank == 8
    assert repr(m) == "MatrixFactorization(rank=8, loss='huber', beta=1.0)"
    with pytest.raises(ValueError, match="invalid parameter 'rnak'"):
        m.set_params(rnak=3)
    clone = MatrixFactorization(**m.get_params())
    assert clone.get_params() == m.get_params()


def test_fit_accepts_other_forms():
    D = np.array([[5.0, np.nan, 1.0], [4.0, 2.0, np.nan]])
    m = MatrixFactorization(rank=1, epochs=2, device="cpu").fit(D)
    assert m.user_factors_.shape == (2, 1) and m.item_factors_.shape == (3, 1)


# ------------------------------------------------------------------------- review regressions
def test_global_mean_minimizes_the_loss_for_a_log_link():
    """Poisson counts with a large mean: mu is the log of the mean, not the mean (issue 2)."""
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((60, 50)) < 0.3)
    r = Ratings.from_coo(u, i, rng.poisson(110.0, len(u)).astype(float), shape=(60, 50))
    for dtype in ("float32", "float64"):
        m = MatrixFactorization(rank=2, loss="poisson", dtype=dtype, device="cpu").fit(r)
        assert m.global_mean_ == pytest.approx(np.log(r.values.mean()), rel=1e-3)
        assert np.exp(m.predict_indices(u, i)).mean() == pytest.approx(r.values.mean(), rel=0.05)


def test_nonnegative_als_keeps_descending():
    rng = np.random.default_rng(0)
    W, H = rng.random((120, 4)), rng.random((90, 4))
    u, i = np.nonzero(rng.random((120, 90)) < 0.3)
    r = Ratings.from_coo(u, i, (W @ H.T)[u, i], shape=(120, 90))
    m = MatrixFactorization(rank=4, solver="als", nonnegative=True, beta=0.1, epochs=25,
                            bias=False, device="cpu").fit(r)
    losses = [h["loss"] for h in m.history_]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses[1:], losses[2:], strict=False))
    assert (m.user_factors_ >= 0).all() and (m.item_factors_ >= 0).all()
    assert -m.score(r) < 0.1


def test_unknown_pairs_without_bias_fall_back_to_the_mean():
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((30, 20)) < 0.5)
    r = Ratings.from_coo(u, i, rng.integers(1, 6, len(u)).astype(float), shape=(30, 20))
    m = MatrixFactorization(rank=2, bias=False, epochs=3, device="cpu").fit(r)
    with pytest.warns(UserWarning, match="not in the training data"):
        assert m.predict([999], [998])[0] == pytest.approx(r.values.mean(), rel=1e-6)
    # issue 9: one unknown side is the average known user: their mean score for item 0
    with pytest.warns(UserWarning, match="not in the training data"):
        expected = m.user_factors_.astype(float).mean(0) @ m.item_factors_[0].astype(float)
        assert m.predict([999], [0])[0] == pytest.approx(np.clip(expected, 1, 5), rel=1e-6)


def test_a_failed_refit_leaves_the_previous_model_intact(lowrank):
    train, _ = lowrank
    m = MatrixFactorization(rank=3, epochs=2, device="cpu").fit(train)
    before = m.predict_indices([0, 1], [0, 1])
    other = Ratings.from_coo([0, 1], [0, 1], [1.0, 2.0], shape=(2, 2))
    with pytest.raises(TypeError, match="validation must be an autofact.Ratings"):
        m.fit(other, validation="bad")
    assert m.user_ids_ is train.user_ids
    np.testing.assert_array_equal(m.predict_indices([0, 1], [0, 1]), before)


def test_clipping_follows_the_loss_not_its_spelling(tmp_path, lowrank):
    train, _ = lowrank
    by_name = MatrixFactorization(rank=2, loss="squared", epochs=2, device="cpu")
    by_function = MatrixFactorization(rank=2, loss=autofact.losses.squared, epochs=2, device="cpu")
    assert autofact.losses.clips_to_range(by_name.loss)
    assert autofact.losses.clips_to_range(by_function.loss)
    by_function.fit(train)
    by_function.save(tmp_path / "m.npz")
    again = autofact.load(tmp_path / "m.npz")
    users, items = train.user_ids[train.users[:50]], train.item_ids[train.items[:50]]
    np.testing.assert_array_equal(again.predict(users, items), by_function.predict(users, items))


def test_als_rejects_a_learning_rate_and_lbfgs_a_projection(lowrank):
    train, _ = lowrank
    with pytest.raises(ValueError, match="lr=0.1 has no meaning for solver='als'"):
        MatrixFactorization(solver="als", lr=0.1).fit(train)
    with pytest.raises(ValueError, match="nonnegative=True does not combine with solver='lbfgs'"):
        MatrixFactorization(solver="lbfgs", nonnegative=True).fit(train)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(bias="no"), "bias must be True or False, got 'no'"),
     (dict(seed="abc"), "seed must be an int or None, got 'abc'"),
     (dict(nonnegative=1), "nonnegative must be True or False")],
)
def test_flags_and_seed_are_checked(lowrank, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(**kwargs).fit(lowrank[0])


def test_numpy_scalars_are_accepted_and_index_errors_name_the_index(lowrank):
    train, _ = lowrank
    m = MatrixFactorization(rank=2, solver="adam", lr=np.float32(0.01), beta=np.float64(1.0),
                            epochs=2, device="cpu").fit(train)
    with pytest.raises(ValueError, match="user index 500 is out of range: expected 0 <= index < 500"):
        m.predict_indices([500], [0])


def test_dense_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"weights must have the shape of D \(2, 2\), got \(3,\)"):
        Ratings.from_dense(np.ones((2, 2)), weights=np.ones(3))


def test_factories_named_by_path_are_called_with_their_defaults(lowrank):
    train, _ = lowrank
    m = MatrixFactorization(rank=2, epochs=2, solver="adam", loss="autofact.losses:huber",
                            regularization="autofact.regularizers:l2", device="cpu").fit(train)
    assert np.isfinite(m.user_factors_).all()


def test_rows_without_training_ratings_are_unknown():
    """A split keeps the full shape: a user with no training rating is not 'known' (issue 2 §5)."""
    r = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [4.0, 2.0, 5.0, 1.0], shape=(3, 3))
    m = MatrixFactorization(rank=2, epochs=3, device="cpu").fit(r)
    assert m.user_index([2], strict=False).tolist() == [-1]
    assert m.item_index([2], strict=False).tolist() == [-1]
    with pytest.raises(autofact.UnknownIdError, match="user 2 is not in the training data"):
        m.user_index([2])
    with pytest.warns(UserWarning, match="1 of 1 pairs"):
        m.predict([2], [0])


# ------------------------------------------------------------------------- issue 8
def _with_strangers(seed=0):
    """Ratings 1-5 split so the validation set holds users and items the training set lacks:
    new ids, and ids in the id map with no training rating (as the splits leave them)."""
    rng = np.random.default_rng(seed)
    m, n = 60, 40
    P, Q = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    u, i = np.nonzero(rng.random((m, n)) < 0.35)
    v = np.clip(np.rint(3 + (P[u] * Q[i]).sum(1)), 1, 5)
    full = Ratings.from_coo(u, i, v, shape=(m, n))
    held = (rng.random(len(u)) < 0.2) | (u == 7) | (i == 5)  # user 7 and item 5: test only
    train, test = full.subset(~held), full.subset(held)
    import pandas as pd

    extra = pd.DataFrame({"user": [7, 1000, 1001, 3], "item": [1, 2, 2000, 2001],
                          "rating": [4.0, 1.0, 5.0, 2.0]})
    frame = pd.concat([test.to_frame()[["user", "item", "rating"]], extra], ignore_index=True)
    return train, Ratings.from_frame(frame)


def my_identity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's loss: predictions are its raw scores, never clipped."""
    return torch.log(torch.cosh(target - pred))


@pytest.mark.parametrize("loss", ["squared", my_identity_loss])
def test_history_validation_rmse_is_score_and_evaluate(loss):
    """One rule for unknown users and items: history_ said 2.1496 where score() said 2.1395
    on the same data (issue 8)."""
    train, valid = _with_strangers()
    assert train.user_index([7]).tolist() == [7]  # in the id map, with no training rating
    m = MatrixFactorization(rank=3, epochs=3, beta=0.0, init_std=2.0, loss=loss, seed=0,
                            solver="adam", lr=0.05, device="cpu").fit(train, validation=valid)
    with pytest.warns(UserWarning, match="not in the training data"):
        score = -m.score(valid)
    with pytest.warns(UserWarning, match="not in the training data"):
        evaluated = autofact.evaluation.evaluate(m, valid)["rmse"]
    assert m.history_[-1]["val_rmse"] == pytest.approx(score, abs=1e-6)
    assert evaluated == pytest.approx(score, abs=1e-6)
    if loss is my_identity_loss:  # not clipped: some prediction leaves the rating range
        with pytest.warns(UserWarning):
            pred = m.predict(valid.user_ids[valid.users], valid.item_ids[valid.items])
        assert pred.max() > 5 or pred.min() < 1


def test_predict_returns_the_mean_response_for_every_loss():
    """poisson predicted a log-rate, logistic a logit (38.9 on 1-5 stars) (issue 8)."""
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((40, 30)) < 0.5)
    counts = Ratings.from_coo(u, i, rng.poisson(3.0, len(u)).astype(float), shape=(40, 30))
    m = MatrixFactorization(rank=2, loss="poisson", epochs=3, device="cpu").fit(counts)
    link = m.predict(u, i, kind="link")
    np.testing.assert_allclose(m.predict(u, i), np.exp(link), rtol=1e-12)
    assert m.predict(u, i).mean() == pytest.approx(3.0, rel=0.2)  # a rate, not a log-rate
    liked = Ratings.from_coo(u, i, (rng.random(len(u)) < 0.7).astype(float), shape=(40, 30))
    b = MatrixFactorization(rank=2, loss="logistic", epochs=3, device="cpu").fit(liked)
    p = b.predict(u, i)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-b.predict(u, i, kind="link"))), rtol=1e-12)
    assert ((p > 0) & (p < 1)).all() and p.mean() == pytest.approx(0.7, abs=0.1)
    with pytest.raises(ValueError, match="kind must be 'response' .* or 'link' .*, got 'mean'"):
        b.predict(u, i, kind="mean")


def test_logistic_refuses_ratings_that_are_not_binary():
    stars = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [1.0, 3.0, 5.0, 4.0], shape=(2, 2))
    with pytest.raises(ValueError, match=r"loss='logistic' models 0/1 \(or -1/\+1\) outcomes, "
                                         r"but the ratings hold the values \{1, 3, 4, 5\}; "
                                         r"binarize them first \(for example liked = ratings >= 4"):
        MatrixFactorization(loss="logistic").fit(stars)
    signs = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [-1.0, 1.0, 1.0, -1.0], shape=(2, 2))
    MatrixFactorization(rank=1, loss="logistic", epochs=1, device="cpu").fit(signs)
    zero_one = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [0.0, 1.0, 1.0, 0.0], shape=(2, 2))
    with pytest.raises(ValueError, match="validation ratings hold the values"):
        MatrixFactorization(loss="logistic", epochs=1).fit(zero_one, validation=stars)


def logit_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(pred, target, reduction="none")


logit_loss.inverse_link = torch.sigmoid  # type: ignore[attr-defined]


def test_a_users_loss_may_declare_its_inverse_link():
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((30, 20)) < 0.5)
    liked = Ratings.from_coo(u, i, (rng.random(len(u)) < 0.3).astype(float), shape=(30, 20))
    m = MatrixFactorization(rank=2, loss=logit_loss, epochs=3, solver="adam", device="cpu")
    m.fit(liked)
    np.testing.assert_allclose(m.predict(u, i),
                               torch.sigmoid(torch.from_numpy(m.predict(u, i, kind="link"))))
    logit_loss.inverse_link = "sigmoid"  # type: ignore[attr-defined]
    try:
        with pytest.raises(TypeError, match="inverse_link must be a function of a tensor"):
            m.fit(liked)
    finally:
        logit_loss.inverse_link = torch.sigmoid  # type: ignore[attr-defined]


def test_fit_leaves_torchs_global_generator_alone(lowrank):
    """fit called torch.manual_seed (issue 8): seeded runs repeat through local generators."""
    train, _ = lowrank
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    kw = dict(rank=3, solver="sgd", epochs=2, batch_size=512, lr=0.01, device="cpu")
    a = MatrixFactorization(seed=5, **kw).fit(train)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(3)  # move the global generator: seeded fits must not care
    b = MatrixFactorization(seed=5, **kw).fit(train)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    c = MatrixFactorization(seed=6, **kw).fit(train)
    assert not np.array_equal(a.user_factors_, c.user_factors_)


def test_score_is_higher_is_better():
    """score() returned the RMSE, so a search would pick the worst model (issue 8)."""
    train, valid = _with_strangers()
    good = MatrixFactorization(rank=3, seed=0, device="cpu").fit(train)
    bad = MatrixFactorization(rank=3, seed=0, epochs=1, beta=1e4, device="cpu").fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert good.score(valid) > bad.score(valid)
        assert good.score(valid) == pytest.approx(
            -autofact.evaluation.evaluate(good, valid)["rmse"])


def test_fit_takes_id_pairs_and_ratings():
    pairs = np.array([["a", "x"], ["a", "y"], ["b", "x"], ["c", "y"]], dtype=object)
    y = np.array([5.0, 1.0, 4.0, 2.0])
    m = MatrixFactorization(rank=1, epochs=2, device="cpu").fit(pairs, y)
    assert m.user_ids_.tolist() == ["a", "b", "c"] and m.item_ids_.tolist() == ["x", "y"]
    assert -m.score(pairs, y) < 2
    with pytest.raises(ValueError, match=r"y must hold one rating per row of X: X has 4 rows"):
        m.fit(pairs, y[:3])
    with pytest.raises(ValueError, match=r"X must be an \(n, 2\) array of \(user id, item id\)"):
        m.fit(np.zeros((4, 3)), y)
    with pytest.raises(ValueError, match="y must be numbers .the ratings of X's pairs., got"):
        m.fit(pairs, ["good", "bad", "ok", "meh"])
    with pytest.raises(ValueError, match="looks like .user, item. pairs but no ratings"):
        m.fit(pairs)
    with pytest.raises(TypeError, match="pass validation data by name"):
        m.fit(Ratings.from_coo([0], [0], [1.0]), Ratings.from_coo([0], [0], [1.0]))


def test_grid_search_over_the_estimator():
    """scikit-learn's GridSearchCV fits clones on (user, item) pairs and keeps the best score."""
    sklearn = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(0)
    m, n = 30, 20
    P, Q = rng.normal(size=(m, 2)), rng.normal(size=(n, 2))
    u, i = np.nonzero(rng.random((m, n)) < 0.8)  # dense: every id in every training fold
    X = np.column_stack([u, i])
    y = (P[u] * Q[i]).sum(1) + 3
    search = sklearn.GridSearchCV(
        # als: beta is the regularization it minimizes with (the default sampler samples it)
        MatrixFactorization(rank=2, epochs=5, solver="als", device="cpu"),
        {"beta": [0.1, 1e4]}, cv=sklearn.KFold(3, shuffle=True, random_state=0),
    )
    search.fit(X, y)
    assert search.best_params_ == {"beta": 0.1}
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] > scores[1] and (scores < 0).all()


def test_the_post_function_leaves_torchs_thread_count_alone(monkeypatch):
    """matrix_factorization_bgd saved and restored torch.set_num_threads around its loop, racing
    with other threads (issue 8): it must not touch the process-wide setting at all."""
    def refuse(n):
        raise AssertionError(f"torch.set_num_threads({n}) was called")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    R = np.ma.masked_equal([[5, 3, 0, 1], [4, 0, 0, 1]], 0).astype(float)
    rng = np.random.default_rng(0)
    P, Q = autofact.matrix_factorization_bgd(R, rng.random((2, 2)), rng.random((2, 4)), steps=1)
    assert P.shape == (2, 2) and Q.shape == (2, 4)
