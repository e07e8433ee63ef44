"""The first-order updates are torch.optim's, written out (so a fit never imports torch._dynamo)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import autofact
from autofact import FitError, MatrixFactorization
from autofact.objective import Objective
from autofact.solvers import DEFAULT_LR, GROWTH, fit_params
from autofact.solvers.first_order import _Adam, _Descent


def _run(make, steps=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(300, 5, generator=gen, dtype=torch.float64),
              torch.randn(40, generator=gen, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
             for _ in range(steps)]
    opt = make(params)
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return params


@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_adam_is_torch_optim_adam(lr, monkeypatch):
    monkeypatch.setattr(_Adam, "CHUNK", 128)  # the sliced denominator crosses row boundaries
    ours = _run(lambda ps: _Adam(ps, lr))
    theirs = _run(lambda ps: torch.optim.Adam(ps, lr=lr, foreach=False))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_descent_is_torch_optim_sgd():
    ours = _run(lambda ps: _Descent(ps, 0.05))
    theirs = _run(lambda ps: torch.optim.SGD(ps, lr=0.05))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_first_order_fits_and_the_post_do_not_import_torch_compile():
    """torch.optim's step and torch.fx's tracer import torch._dynamo (1.6 s, ~70 MB) on first
    use; the first-order solvers and the post's recorded gradient do not."""
    code = (
        "import sys, numpy as np, autofact\n"
        "r = autofact.Ratings.from_coo([0, 1, 2], [0, 1, 0], [1., 2., 3.], shape=(3, 2))\n"
        "for s in ('adam', 'gd', 'sgd'):\n"
        "    autofact.MatrixFactorization(rank=2, solver=s, epochs=2).fit(r)\n"
        "D = np.ma.masked_equal([[5., 3, 0, 1], [4, 0, 0, 1]], 0)\n"
        "autofact.matrix_factorization_bgd(D, np.ones((2, 2)), np.ones((2, 4)), steps=3)\n"
        "print(any(m.startswith('torch._dynamo') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ divergence (issue 8, item 6)
def _ratings(m=40, n=30, density=0.4, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, 2)), rng.normal(size=(n, 2))
    u, i = np.nonzero(rng.random((m, n)) < density)
    return autofact.Ratings.from_coo(u, i, offset + (P @ Q.T)[u, i], shape=(m, n))


def _objective_at(model, r, **kw):
    obj = Objective(r, loss=model.loss, regularization=model.regularization, beta=model.beta,
                    bias=model.bias, dtype=torch.float64, **kw)
    params = {"P": model.user_factors_, "Q": model.item_factors_}
    if model.bias:
        params.update(bu=model.user_bias_, bi=model.item_bias_)
    return obj.value({k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()})


@pytest.mark.parametrize("solver,lr,batch_size", [
    ("adam", 1e3, None), ("adam", 1e3, 64), ("gd", 0.05, None), ("sgd", 5.0, 64),
])
def test_a_diverging_fit_raises_fit_error_and_keeps_bounded_parameters(solver, lr, batch_size):
    # issue 8: `--solver adam --lr 1e3` exited 0 and saved a model with loss 4.9e14
    r = _ratings()
    model = MatrixFactorization(rank=2, solver=solver, lr=lr, batch_size=batch_size, epochs=50,
                                device="cpu", dtype="float64", seed=0)
    smaller = f"{lr / 10:g}"
    with pytest.raises(FitError, match=rf"at epoch \d+ with solver='{solver}', lr={lr!r}.*"
                                       rf"Try a smaller learning rate, e\.g\. lr={smaller}$") as info:
        model.fit(r)
    assert info.value.epoch >= 1
    kept = _objective_at(model, r)
    obj = Objective(r, bias=True, beta=model.beta, dtype=torch.float64)
    j0 = obj.value(obj.init_params(rank=2, seed=0))
    assert np.isfinite(kept) and kept - j0 <= GROWTH * max(abs(j0), 1.0)
    if batch_size is None and model.history_:  # full batch: epoch 1 reports J at the start
        assert model.history_[0]["loss"] == pytest.approx(j0, rel=1e-12)


def test_divergence_keeps_the_parameters_the_last_good_value_was_measured_at():
    # full batch: epoch t reports J at the parameters it started from, so when it is bad the
    # parameters epoch t-1 started from are put back (issue 8)
    r = _ratings()
    kw = dict(rank=2, solver="gd", lr=0.05, device="cpu", dtype="float64", seed=0)
    with pytest.raises(FitError, match="the fit diverged") as info:
        MatrixFactorization(epochs=200, **kw).fit(r)
    epoch = info.value.epoch
    assert epoch >= 3
    failed = MatrixFactorization(epochs=200, **kw)
    with pytest.raises(FitError):
        failed.fit(r)
    reference = MatrixFactorization(epochs=epoch - 2, **kw).fit(r)
    np.testing.assert_array_equal(failed.user_factors_, reference.user_factors_)
    assert len(failed.history_) == epoch - 1


def test_a_last_epoch_that_diverges_is_caught_after_it():
    # the parameters the last epoch leaves are checked too (issue 8)
    r = _ratings()
    model = MatrixFactorization(rank=2, solver="adam", lr=1e3, epochs=1, device="cpu", seed=0)
    with pytest.raises(FitError, match=r"after epoch 1 .*the initial parameters are kept"):
        model.fit(r)


def _nan_beyond(limit):
    def loss(pred, target):
        return torch.where(pred.abs() < limit, (target - pred) ** 2, torch.nan)

    return loss


def test_lbfgs_nan_loss_raises_fit_error_not_index_error():
    # issue 8: a NaN in L-BFGS's line search raised torch's IndexError
    r = _ratings()
    model = MatrixFactorization(rank=2, solver="lbfgs", loss=_nan_beyond(4.0), bias=False,
                                epochs=20, device="cpu", seed=0)
    with pytest.raises(FitError, match=r"became nan at epoch 1 with solver='lbfgs', lr=1\.0 \(at "
                                       r"a line-search trial point\); the initial parameters"):
        model.fit(r)
    assert np.isfinite(model.user_factors_).all()


@pytest.mark.parametrize("solver,batch_size", [("lbfgs", None), ("als", None), ("gd", None),
                                               ("adam", None), ("adam", 64), ("sgd", 64)])
def test_a_loss_not_finite_at_the_start_is_named(solver, batch_size):
    r = _ratings()
    model = MatrixFactorization(rank=2, solver=solver, loss=_nan_beyond(1.0), bias=True,
                                batch_size=batch_size, epochs=3, device="cpu", seed=0)
    with pytest.raises(FitError, match=r"the objective is nan at the initial parameters, before "
                                       r"any step"):
        model.fit(r)


class _Switch:
    """A squared loss that turns NaN once armed: a stand-in for any objective that goes bad."""

    def __init__(self):
        self.armed = False

    def __call__(self, pred, target):
        out = (target - pred) ** 2
        return out * torch.nan if self.armed else out


@pytest.mark.parametrize("solver", ["als", "lbfgs", "adam"])
def test_a_non_finite_objective_mid_fit_restores_the_last_verified_parameters(solver):
    # issue 8: every solver stops with FitError; the kept parameters are the last whose objective
    # was seen finite (full batch: those epoch 2 started from, when epoch 3 fails)
    r = _ratings()
    loss = _Switch()
    obj = Objective(r, loss=loss, regularization="l2", beta=1.0, dtype=torch.float64)
    params = obj.init_params(rank=2, seed=0)
    seen = []

    def on_epoch(epoch, value, seconds):
        seen.append({k: v.detach().clone() for k, v in params.items()})
        loss.armed = epoch == 2

    with pytest.raises(FitError, match=r"became nan at epoch 3 with solver=") as info:
        fit_params(obj, params, solver=solver, epochs=10, lr=DEFAULT_LR[solver], batch_size=None,
                   seed=0, on_epoch=on_epoch)
    assert info.value.epoch == 3
    torch.testing.assert_close(params["P"].detach(), seen[0]["P"], rtol=0, atol=0)
    assert "the parameters after epoch 1 are kept" in str(info.value)


def test_lbfgs_reports_a_float64_objective_unrounded():
    # issue 8: the closure returned torch.tensor(value) in the default dtype (float32)
    r = _ratings()
    obj = Objective(r, regularization="l2", beta=1.0, dtype=torch.float64)
    start = obj.value(obj.init_params(rank=2, seed=0))
    params = obj.init_params(rank=2, seed=0)
    values = []
    fit_params(obj, params, solver="lbfgs", epochs=2, lr=1.0, batch_size=None, seed=0,
               on_epoch=lambda e, v, s: values.append(v))
    assert abs(values[0] - start) <= 1e-12 * abs(start)
    after_one = obj.value(_after_one_lbfgs_epoch(r))
    assert abs(values[1] - after_one) <= 1e-12 * abs(after_one) and values[1] < values[0]


def _after_one_lbfgs_epoch(r):
    obj = Objective(r, regularization="l2", beta=1.0, dtype=torch.float64)
    params = obj.init_params(rank=2, seed=0)
    fit_params(obj, params, solver="lbfgs", epochs=1, lr=1.0, batch_size=None, seed=0)
    return params


@pytest.mark.parametrize("solver", ["als", "adam"])
def test_rank_above_the_user_or_item_count_warns(solver):
    # issue 8: ALS at rank 1700 on ml-100k (1682 items) did not finish an epoch in 300 s
    r = _ratings(m=12, n=9, density=0.8)
    model = MatrixFactorization(rank=10, solver=solver, epochs=1, device="cpu")
    match = r"rank=10 exceeds min\(users, items\) = min\(12, 9\) = 9: .*try rank <= 9"
    with pytest.warns(UserWarning, match=match) as record:
        model.fit(r)
    assert ("rank^3" in str(record[0].message)) == (solver == "als")


def test_rank_at_the_item_count_does_not_warn():
    r = _ratings(m=12, n=9, density=0.8)
    MatrixFactorization(rank=9, solver="als", epochs=1, device="cpu").fit(r)  # warnings are errors


def test_cli_fit_that_diverges_fails_and_saves_nothing(tmp_path, capsys):
    # issue 8: `autofact fit --solver adam --lr 1e3` exited 0 and saved a model with loss 4.9e14
    from autofact import cli

    r = _ratings()
    data = tmp_path / "r.csv"
    data.write_text("".join(f"{u},{i},{v}\n" for u, i, v in zip(r.users, r.items, r.values,
                                                                 strict=True)))
    out = tmp_path / "m.npz"
    code = cli.main(["fit", str(data), "--out", str(out), "--solver", "adam", "--lr", "1e3",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "the fit diverged" in err and "Try a smaller learning rate, e.g. --lr 100" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_all_finite_is_isfinite_all_even_when_a_finite_sum_overflows(bad):
    # issue 10: the epoch's finiteness check sums first (one reduction); it must still answer
    # exactly as isfinite(t).all(), including finite entries whose sum overflows to inf
    from autofact.solvers._base import all_finite

    t = torch.full((1000, 4), 3e38, dtype=torch.float32)  # finite, but the sum is inf
    if bad is not None:
        t[7, 2] = bad
    assert all_finite(t) == bool(torch.isfinite(t).all()) == (bad is None)
    assert all_finite(torch.empty(0, 3))
