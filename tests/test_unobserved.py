"""The rating model with implicit feedback's all-unobserved term (issue 12, item 3):
``MatrixFactorization(unobserved_weight=w0)`` / ``autofact fit --unobserved-weight W`` adds
``w0 * sum over the unrated (u, i) of r_hat_ui^2`` (every unrated pair a rating of 0 with weight
``w0``) to the rating objective, by the Gram trick.

Checked against a NumPy/torch reference that forms the dense matrix (here only, on tiny data):
the value and the gradient; gradcheck in float64; ALS exact (each half-sweep lowers the objective,
each row's gradient vanishes after its half-sweep, the optimum matches L-BFGS's); ``w0 = 0`` is
the rating model as before; save/load and fold-in keep the term; bad values are refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import autofact
from autofact import MatrixFactorization, Ratings
from autofact.objective import Objective
from autofact.solvers import fit_params
from autofact.solvers.als import make_als


def planted(m: int = 30, n: int = 24, k: int = 3, density: float = 0.35,
            seed: int = 0) -> tuple[Ratings, np.ndarray]:
    """Ratings from a planted rank-``k`` matrix on 1..5, a random ``density`` of it observed;
    also the observation mask."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, k)) @ rng.normal(size=(k, n)) / np.sqrt(k)
    full = np.clip(3.0 + A + 0.1 * rng.normal(size=(m, n)), 1, 5)
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True  # every user has a rating
    mask[rng.integers(0, m, n), np.arange(n)] = True  # every item too
    u, i = np.nonzero(mask)
    return Ratings(u, i, full[u, i], shape=(m, n)), mask


def dense_objective(params: dict[str, torch.Tensor], r: Ratings, mask: np.ndarray, mu: float,
                    w0: float, beta: float) -> torch.Tensor:
    """The objective with the m x n matrix formed (the reference: tests only)."""
    P, Q = params["P"], params["Q"]
    S = P @ Q.T
    pred = S + mu
    if "bu" in params:
        pred = pred + params["bu"][:, None] + params["bi"][None, :]
    R = torch.zeros(mask.shape, dtype=torch.float64)
    R[r.users, r.items] = torch.as_tensor(r.values, dtype=torch.float64)
    M = torch.as_tensor(mask)
    reg = sum(0.5 * beta * (p * p).sum() for p in params.values())
    return ((R - pred) ** 2)[M].sum() + w0 * (pred**2)[~M].sum() + reg


@pytest.mark.parametrize("bias", [False, True])
def test_value_and_gradient_equal_the_dense_reference(bias):
    # issue 12: the Gram trick (never densified) against the dense sum over the unrated entries
    r, mask = planted(m=120, n=60)  # 2500 ratings: several row blocks of at most 1024
    obj = Objective(r, beta=0.5, bias=bias, dtype="float64", unobserved_weight=0.3,
                    max_memory=2**16)
    assert len(obj.patterns) > 1
    params = obj.init_params(3, seed=1, init_std=0.5)
    ref = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    expected = dense_objective(ref, r, mask, obj.mu, 0.3, 0.5)
    expected.backward()
    expected = expected.detach()
    assert obj.value(params) == pytest.approx(float(expected), rel=1e-12)
    assert obj.value_and_grad(params) == pytest.approx(float(expected), rel=1e-12)
    for k in params:
        torch.testing.assert_close(params[k].grad, ref[k].grad, rtol=1e-10, atol=1e-10)
    # and the term is there: without it the value is lower by w0 * sum of the unrated pred^2
    plain = Objective(r, beta=0.5, bias=bias, dtype="float64")
    pred = (ref["P"] @ ref["Q"].T).detach() + obj.mu
    if bias:
        pred = pred + ref["bu"].detach()[:, None] + ref["bi"].detach()[None, :]
    gap = 0.3 * float((pred**2)[~torch.as_tensor(mask)].sum())
    assert obj.value(params) - plain.value(params) == pytest.approx(gap, rel=1e-10)


def test_gradcheck_float64():
    # issue 12: autograd's gradient of the term (through batch_loss over every entry, which is J)
    r, _ = planted(m=8, n=7, k=2, density=0.5)
    obj = Objective(r, beta=0.1, bias=True, dtype="float64", unobserved_weight=0.7)
    params = obj.init_params(2, seed=0, init_std=0.5)
    names = list(params)
    idx = torch.arange(obj.nnz)

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        return obj.batch_loss(dict(zip(names, tensors, strict=True)), idx)

    inputs = tuple(params[k].detach().clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(f, inputs)
    assert float(f(*inputs).detach()) == pytest.approx(obj.value(params), rel=1e-12)


def test_minibatches_of_an_epoch_sum_to_the_objective():
    # issue 12: the term in batch_loss is an unbiased share: a partition sums to J
    r, _ = planted()
    obj = Objective(r, beta=0.5, bias=True, dtype="float64", unobserved_weight=0.2)
    params = obj.init_params(3, seed=0, init_std=0.5)
    order = torch.randperm(obj.nnz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        total = sum(float(obj.batch_loss(params, order[s:s + 37])) for s in range(0, obj.nnz, 37))
    assert total == pytest.approx(obj.value(params), rel=1e-10)


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_als_lowers_the_objective_every_half_sweep(loss):
    # issue 12: the term in ALS's row systems is exact: no half-sweep raises J
    r, _ = planted()
    obj = Objective(r, loss=loss, beta=0.5, bias=True, dtype="float64", unobserved_weight=0.25)
    params = obj.init_params(3, seed=0)
    als = make_als(obj, params).run
    before = obj.value(params)
    for _ in range(6):
        for side in (0, 1):
            als.half_sweep(side)
            after = obj.value(params)
            assert after <= before + 1e-9 * abs(before)
            before = after


def test_als_half_sweep_solves_each_row_exactly():
    # issue 12: after the user half-sweep the gradient in P and b_u is zero (up to the 1e-6
    # damping of the Newton system), while Q's is not
    r, _ = planted()
    obj = Objective(r, beta=0.5, bias=True, dtype="float64", unobserved_weight=0.25)
    params = obj.init_params(3, seed=0)
    make_als(obj, params).run.half_sweep(0)
    obj.value_and_grad(params)
    assert float(params["P"].grad.abs().max()) < 1e-4
    assert float(params["bu"].grad.abs().max()) < 1e-4
    assert float(params["Q"].grad.abs().max()) > 1e-2


def fit_to_optimum(obj: Objective, solver: str, epochs: int) -> dict[str, torch.Tensor]:
    params = obj.init_params(3, seed=0)
    fit_params(obj, params, solver=solver, epochs=epochs, lr=1.0, batch_size=None, seed=0)
    return params


def test_als_matches_lbfgs_optimum_on_a_planted_problem():
    # issue 12: both solvers reach the same minimum of the objective with the term
    r, _ = planted()
    obj = Objective(r, beta=2.0, bias=True, dtype="float64", unobserved_weight=0.05)
    a = fit_to_optimum(obj, "als", 80)
    b = fit_to_optimum(obj, "lbfgs", 20)
    va, vb = obj.value(a), obj.value(b)
    assert va == pytest.approx(vb, rel=1e-8)
    sa = (a["P"] @ a["Q"].T + a["bu"][:, None] + a["bi"][None, :]).detach()
    sb = (b["P"] @ b["Q"].T + b["bu"][:, None] + b["bi"][None, :]).detach()
    torch.testing.assert_close(sa, sb, rtol=0, atol=1e-3)
    # and the term changed the optimum (a test that could not fail would prove nothing)
    plain = Objective(r, beta=2.0, bias=True, dtype="float64")
    c = fit_to_optimum(plain, "als", 80)
    sc = (c["P"] @ c["Q"].T + c["bu"][:, None] + c["bi"][None, :]).detach()
    assert float((sa - sc).abs().max()) > 0.05


@pytest.mark.parametrize("solver", ["auto", "als", "lbfgs", "adam"])
def test_zero_weight_is_the_rating_model_bit_for_bit(solver):
    # issue 12: unobserved_weight=0 leaves every solver's fit as it was (auto: still the sampler)
    r, _ = planted()
    kw = {"rank": 3, "seed": 0, "solver": solver, "epochs": 5}
    a = MatrixFactorization(**kw).fit(r)
    b = MatrixFactorization(unobserved_weight=0.0, **kw).fit(r)
    c = MatrixFactorization(unobserved_weight=0, **kw).fit(r)
    assert a.solver_ == b.solver_ == c.solver_ == ("gibbs" if solver == "auto" else solver)
    for m in (b, c):
        assert np.array_equal(m.user_factors_, a.user_factors_)
        assert np.array_equal(m.item_factors_, a.item_factors_)
        assert np.array_equal(m.item_bias_, a.item_bias_)
    d = MatrixFactorization(unobserved_weight=0.05, **{**kw, "solver": solver
                                                       if solver != "auto" else "als"}).fit(r)
    assert not np.array_equal(d.user_factors_, a.user_factors_)


def test_auto_routes_to_als_and_the_gradient_solvers_agree():
    # issue 12: the sampler does not carry the term, so 'auto' picks ALS (exact for it)
    r, _ = planted()
    fits = {s: MatrixFactorization(rank=3, seed=0, solver=s, dtype="float64", epochs=e,
                                   unobserved_weight=0.1).fit(r)
            for s, e in (("auto", 60), ("lbfgs", 20), ("adam", 500))}
    assert fits["auto"].solver_ == "als"
    loss = {s: m.history_[-1]["loss"] for s, m in fits.items()}
    assert loss["lbfgs"] == pytest.approx(loss["auto"], rel=1e-6)
    assert loss["adam"] == pytest.approx(loss["auto"], rel=1e-6)


def test_save_load_keep_the_weight_and_fold_in_includes_the_term(tmp_path):
    # issue 12: the option travels with the model, and a folded-in user solves the fit's row
    r, _ = planted()
    model = MatrixFactorization(rank=3, seed=0, beta=2.0, unobserved_weight=0.2,
                                dtype="float64").fit(r)
    path = model.save(tmp_path / "m.npz")
    loaded = autofact.load(path)
    assert loaded.unobserved_weight == 0.2
    assert "unobserved_weight=0.2" in repr(loaded)
    ratings = {3: 4.0, 7: 2.0, 11: 5.0, 15: 3.5}
    folded = loaded.fold_in(ratings)
    # the exact minimizer of the fold-in objective, solved by hand: x = [p, b], every item's
    # prediction z_i . x + o_i; the rated ones' squared error, the others' w0 (z_i . x + o_i)^2
    Q, bi = loaded.item_factors_, loaded.item_bias_
    items = loaded.item_index(list(ratings))
    o = loaded.global_mean_ + bi
    Z = np.hstack([Q, np.ones((len(Q), 1))])
    rated = np.zeros(len(Q), dtype=bool)
    rated[items] = True
    y = np.array(list(ratings.values())) - o[items]
    k = Q.shape[1]
    H = Z[items].T @ Z[items] + 0.2 * Z[~rated].T @ Z[~rated] + 0.5 * 2.0 * np.eye(k + 1)
    x = np.linalg.solve(H, Z[items].T @ y - 0.2 * Z[~rated].T @ o[~rated])
    np.testing.assert_allclose(folded.factors, x[:k], atol=1e-8)
    assert folded.bias == pytest.approx(x[k], abs=1e-8)
    loaded.set_params(unobserved_weight=0.0)  # without the term: another row
    assert not np.allclose(loaded.fold_in(ratings).factors, folded.factors, atol=1e-4)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1", None])
def test_bad_weights_are_refused(bad):
    r, _ = planted()
    with pytest.raises(ValueError, match=r"unobserved_weight must be a finite number >= 0"):
        MatrixFactorization(unobserved_weight=bad).fit(r)
    with pytest.raises(ValueError, match=r"unobserved_weight must be a finite number >= 0"):
        Objective(r, unobserved_weight=bad)


def test_gibbs_and_the_ranking_task_refuse_the_term():
    r, _ = planted()
    with pytest.raises(ValueError, match=r"solver='gibbs' does not sample the unobserved term"):
        MatrixFactorization(solver="gibbs", unobserved_weight=0.1).fit(r)
    with pytest.raises(ValueError, match=r"unobserved_weight=0.1 is for task='rating'"):
        MatrixFactorization(task="ranking", unobserved_weight=0.1).fit(r)


def test_cli_fit_unobserved_weight(tmp_path):
    # issue 12: the option on the command line, through a real process
    r, _ = planted()
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(
        f"{u},{i},{v:.3f}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    out = tmp_path / "m.npz"
    cmd = [sys.executable, "-m", "autofact", "fit", str(data), "--rank", "3", "--epochs", "4",
           "--unobserved-weight", "0.1", "--out", str(out), "--json", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["solver"] == "als"
    assert autofact.load(out).unobserved_weight == 0.1
    bad = subprocess.run(cmd[:-6] + ["--unobserved-weight", "-1", "--out", str(tmp_path / "x.npz")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "--unobserved-weight: must be a number >= 0, got '-1'" in bad.stderr
    assert not Path(tmp_path / "x.npz").exists()
    # issue 12 review: the library's refusal in command-line words, not unobserved_weight=0.1
    bad = subprocess.run(cmd[:-6] + ["--task", "ranking", "--unobserved-weight", "0.1", "--out",
                                     str(tmp_path / "x.npz")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "error: --unobserved-weight 0.1 is for --task rating" in bad.stderr
    assert "leave --unobserved-weight 0" in bad.stderr


def test_als_row_block_does_not_share_the_factors_version_counter():
    # found while measuring issue 12: with bias=False and several ALS workers, a worker's rows
    # were a view of P, so another worker's in-place row update bumped the version autograd
    # checks in reg_derivatives ("modified by an inplace operation", 1 fit in 4 on ml-100k at
    # rank 64). Deterministic here: the regularizer itself updates a row of P in place, as
    # another worker would between the forward and the backward
    r, _ = planted()
    holder: dict[str, torch.Tensor] = {}

    def bumping_l2(x: torch.Tensor) -> torch.Tensor:
        out = 0.25 * (x * x).sum()
        P = holder.get("P")
        if P is not None:
            with torch.no_grad():
                P[-1:].add_(0.0)  # another worker's update: same values, a new version
        return out

    bumping_l2.separable = True  # type: ignore[attr-defined]
    obj = Objective(r, regularization=bumping_l2, bias=False, dtype="float64")
    params = obj.init_params(3, seed=0)
    holder["P"] = params["P"]
    before = obj.value(params)
    make_als(obj, params).run()
    assert obj.value(params) < before
