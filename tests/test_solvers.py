"""The first-order updates are torch.optim's, written out (so a fit never imports torch._dynamo)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

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
