"""SVD++'s implicit term in the model (issue 9, item 3): ``MatrixFactorization(implicit=True)``
fitted by the Gibbs sampler or the full-batch gradient solvers, its ``implicit_factors_`` saved
and loaded, used by predict and by fold-in; refused, with the fix named, where it cannot be
learned."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

import autofact
from autofact import MatrixFactorization, Ratings, cli
from autofact.objective import Objective
from autofact.sharding import ShardPlan
from autofact.solvers.gibbs import gibbs_mf


def planted(m: int = 40, n: int = 30, rank: int = 3, frac: float = 0.5, seed: int = 0
            ) -> tuple[Ratings, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A rank-``rank`` matrix with biases and noise 0.1; ``frac`` of the cells train."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    R = 3.0 + 0.5 * rng.normal(size=(m, 1)) + 0.5 * rng.normal(size=(1, n)) + P @ Q.T
    R += 0.1 * rng.normal(size=R.shape)
    u, i = np.divmod(np.arange(m * n), n)
    train = rng.random(m * n) < frac
    flat = R.ravel()
    return (Ratings.from_coo(u[train], i[train], flat[train], shape=(m, n)),
            (u[~train], i[~train], flat[~train]))


@pytest.fixture(scope="module")
def fitted() -> tuple[MatrixFactorization, Ratings, tuple[np.ndarray, ...]]:
    train, test = planted()
    return MatrixFactorization(rank=3, implicit=True, epochs=30, seed=0).fit(train), train, test


def test_the_model_holds_the_samplers_factors_and_predicts_with_them(fitted) -> None:
    model, train, (tu, ti, tr) = fitted
    assert model.solver_ == "gibbs"
    # the model is the sampler's result: same chain (seed, sweeps, burn-in), factors as float32
    res = gibbs_mf(train, rank=3, sweeps=30, burn_in=3, seed=0, implicit=True)
    assert res.Y is not None
    np.testing.assert_allclose(model.implicit_factors_, res.Y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.user_factors_, res.P, rtol=1e-5, atol=1e-6)
    pred = model.predict(train.user_ids[tu], train.item_ids[ti])
    np.testing.assert_allclose(pred, np.clip(res.predict(tu, ti), *model.rating_range_),
                               rtol=1e-5, atol=1e-5)
    assert np.sqrt(np.mean((pred - tr) ** 2)) < 0.4  # the ratings' spread is ~2, noise 0.1
    # the implicit part is in the users' factors: they differ from a fit without it
    plain = MatrixFactorization(rank=3, epochs=30, seed=0).fit(train)
    assert plain.implicit_factors_ is None
    assert not np.allclose(plain.user_factors_, model.user_factors_, atol=1e-3)


def test_save_and_load_keep_the_implicit_factors(fitted, tmp_path) -> None:
    model, train, (tu, ti, _) = fitted
    path = model.save(tmp_path / "m.npz")
    same = autofact.load(path)
    assert same.implicit is True
    np.testing.assert_array_equal(same.implicit_factors_, model.implicit_factors_)
    users, items = train.user_ids[tu], train.item_ids[ti]
    np.testing.assert_array_equal(same.predict(users, items), model.predict(users, items))
    ratings = {int(train.item_ids[j]): 4.0 for j in (0, 3, 7)}
    np.testing.assert_array_equal(same.fold_in(ratings).factors, model.fold_in(ratings).factors)
    # a model without the term saves none, and loads with None
    plain = MatrixFactorization(rank=3, epochs=5).fit(train)
    assert autofact.load(plain.save(tmp_path / "p.npz")).implicit_factors_ is None


def test_fold_in_centres_the_new_user_on_their_items_implicit_factors(fitted) -> None:
    model, _, _ = fitted
    Y, Q = model.implicit_factors_.astype(np.float64), model.item_factors_.astype(np.float64)
    rated = np.array([1, 4, 9, 16])
    base = Y[rated].sum(0) / np.sqrt(len(rated))
    # ratings that the implicit part alone explains exactly: the fold-in's optimum is the
    # free part 0 (no loss, no penalty), so the factor is the normalized sum of the y_j
    r = model.global_mean_ + model.item_bias_[rated] + Q[rated] @ base
    folded = model.fold_in(dict(zip(model.item_ids_[rated].tolist(), r.tolist(), strict=True)))
    np.testing.assert_allclose(folded.factors, base, atol=1e-6)
    assert abs(folded.bias) < 1e-6
    # without the implicit factors the same ratings give another factor
    model_without = MatrixFactorization(rank=3)
    model_without.__dict__.update(model.__dict__)
    model_without.implicit_factors_ = None
    other = model_without.fold_in(dict(zip(model.item_ids_[rated].tolist(), r.tolist(),
                                           strict=True)))
    assert np.abs(other.factors - base).max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"implicit": "yes"}, "implicit must be True or False, got 'yes'"),
        ({"implicit": True, "solver": "als"},
         r"implicit=True does not combine with solver='als'.* use solver='gibbs' .*'lbfgs'"),
        ({"implicit": True, "solver": "adam", "batch_size": 8},
         r"implicit=True trains on full batches .* got solver='adam' with batch_size=8; use "
         r"batch_size=None"),
        ({"implicit": True, "solver": "sgd"}, r"implicit=True trains on full batches"),
        ({"implicit": True, "nonnegative": True, "solver": "adam"},
         r"implicit=True does not combine with nonnegative=True"),
        # issue 9 review: with solver='auto' (which picks lbfgs for implicit=True) this said
        # "nonnegative=True does not combine with solver='lbfgs' ...; use solver='als'"
        ({"implicit": True, "nonnegative": True},
         r"implicit=True does not combine with nonnegative=True: .* use one of them"),
        ({"implicit": True, "loss": "huber", "solver": "gibbs"},
         r"implicit=True \(SVD\+\+'s implicit term\) is sampled for the squared loss only "
         r"\(autofact.solvers.gibbs\); use implicit=False"),
        ({"implicit": True, "task": "ranking"}, r"implicit=True .* is for task='rating'"),
    ],
)
def test_implicit_is_refused_where_it_cannot_be_learned(kwargs: dict, match: str) -> None:
    train, _ = planted(m=10, n=8)
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(rank=2, epochs=2, **kwargs).fit(train)


# ---------------------------------------------------------------- the gradient solvers
def test_objective_gradient_is_the_svdpp_formula_by_autograd() -> None:
    # issue 9: J with the implicit term, written out densely, differentiated by autograd, in
    # float64; the library's blocked value and gradient must equal it
    train, _ = planted(m=12, n=9, rank=2)
    obj = Objective(train, loss="squared", regularization="l2", beta=0.3, bias=True,
                    dtype="float64", implicit=True)
    params = obj.init_params(2, seed=1, init_std=0.5)
    assert set(params) == {"P", "Q", "bu", "bi", "Y"}
    value = obj.value_and_grad(params)
    leaf = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    u, i = torch.from_numpy(train.users).long(), torch.from_numpy(train.items).long()
    counts = torch.bincount(u, minlength=12).double()
    X = torch.zeros(12, 9, dtype=torch.float64)
    X[u, i] = counts[u].rsqrt()
    P_eff = leaf["P"] + X @ leaf["Y"]  # p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j
    pred = obj.mu + leaf["bu"][u] + leaf["bi"][i] + (P_eff[u] * leaf["Q"][i]).sum(1)
    J = ((pred - torch.from_numpy(train.values)) ** 2).sum() \
        + sum(0.15 * (p * p).sum() for p in leaf.values())
    J.backward()
    assert value == pytest.approx(float(J.detach()), rel=1e-12)
    for k in leaf:
        torch.testing.assert_close(params[k].grad, leaf[k].grad, rtol=1e-10, atol=1e-10)
    assert obj.value(params) == pytest.approx(value, rel=1e-12)
    torch.testing.assert_close(obj.effective(params)["P"], P_eff.detach())
    with pytest.raises(ValueError, match="implicit=True trains on full batches"):
        obj.batch_loss(params, torch.arange(4))


def test_objective_refuses_the_implicit_term_on_a_shared_plan() -> None:
    class TwoProcesses(ShardPlan):
        world_size = 2

    train, _ = planted(m=10, n=8)
    with pytest.raises(ValueError, match="implicit=True needs every rating of a user in one "
                       "process; this plan shares the ratings between 2 processes"):
        Objective(train, implicit=True, plan=TwoProcesses())


@pytest.mark.parametrize("solver", ["lbfgs", "adam", "gd"])
def test_gradient_solvers_learn_the_implicit_term(solver: str, tmp_path) -> None:
    train, _ = planted(seed=3)
    kw = {"rank": 3, "solver": solver, "beta": 0.5, "dtype": "float64", "seed": 0}
    model = MatrixFactorization(implicit=True, **kw).fit(train, validation=train)
    plain = MatrixFactorization(**kw).fit(train)
    assert model.solver_ == solver and model.implicit_factors_.shape == (30, 3)
    # the exported user factors are the effective ones, P + X Y: the validation RMSE recorded
    # for the kept epoch (from Objective.effective) is the fitted model's own
    kept = [h for h in model.history_ if h.get("kept")]
    assert kept[0]["val_rmse"] == pytest.approx(-model.score(train), rel=1e-9)
    # Y changes the fit (the same start otherwise), and the model saves, loads and folds in
    assert not np.allclose(model.user_factors_, plain.user_factors_, atol=1e-4)
    same = autofact.load(model.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(same.implicit_factors_, model.implicit_factors_)
    ratings = {int(train.item_ids[j]): 4.0 for j in (0, 3, 7)}
    np.testing.assert_array_equal(same.fold_in(ratings).factors, model.fold_in(ratings).factors)


def test_auto_trains_the_implicit_term_by_lbfgs_where_it_would_pick_als() -> None:
    train, _ = planted(m=12, n=9)
    model = MatrixFactorization(rank=2, implicit=True, loss="huber", epochs=3).fit(train)
    assert model.solver_ == "lbfgs" and model.implicit_factors_ is not None


def _rewrite(src, dst, drop: str | None = None, meta_update: dict | None = None,
             replace: dict | None = None) -> None:
    """Copy the model file ``src`` to ``dst`` with one array dropped or replaced, or the
    metadata changed (a damaged file)."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != drop}
    if meta_update:
        meta = json.loads(arrays["meta"].tobytes().decode())
        meta.update(meta_update)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays.update(replace or {})
    np.savez(dst, **arrays)


def test_a_damaged_implicit_array_is_refused(fitted, tmp_path) -> None:
    model, _, _ = fitted
    path = model.save(tmp_path / "m.npz")
    assert "implicit_factors.npy" in zipfile.ZipFile(path).namelist()
    _rewrite(path, tmp_path / "a.npz", drop="implicit_factors")
    with pytest.raises(ValueError, match="implicit_factors is present, but the array is missing"):
        autofact.load(tmp_path / "a.npz")
    _rewrite(path, tmp_path / "b.npz", meta_update={"implicit_factors": False})
    with pytest.raises(ValueError, match="implicit_factors is absent, but the array is there"):
        autofact.load(tmp_path / "b.npz")
    _rewrite(path, tmp_path / "c.npz",
             replace={"implicit_factors": model.implicit_factors_[:, :2].copy()})
    with pytest.raises(ValueError, match=r"array 'implicit_factors' has shape \(30, 2\)"):
        autofact.load(tmp_path / "c.npz")


def test_cli_fit_implicit(tmp_path, capsys) -> None:
    train, _ = planted(m=20, n=15)
    data = tmp_path / "r.csv"
    rows = [f"{u},{i},{r}" for u, i, r in zip(train.user_ids[train.users],
                                                  train.item_ids[train.items], train.values,
                                                  strict=True)]
    data.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    out = tmp_path / "m.npz"
    assert cli.main(["fit", str(data), "--out", str(out), "--implicit", "--epochs", "5",
                     "--quiet"]) == 0
    capsys.readouterr()
    model = autofact.load(out)
    assert model.implicit is True and model.implicit_factors_.shape == (15, 10)
    assert cli.main(["fit", str(data), "--out", str(out), "--no-implicit", "--epochs", "5",
                     "--quiet"]) == 0
    assert autofact.load(out).implicit_factors_ is None
    # issue 9 review: the library's refusals in command-line words (--implicit, not implicit=True)
    capsys.readouterr()
    assert cli.main(["fit", str(data), "--out", str(out), "--implicit", "--loss", "huber",
                     "--solver", "gibbs", "--quiet"]) == 2
    assert "error: --implicit (SVD++'s implicit term) is sampled for the squared loss only " \
        "(autofact.solvers.gibbs); use --no-implicit with this loss" in capsys.readouterr().err
