"""The two ways ALS assembles its Hessians (issue 10): all K^2 products at once on short rows,
the upper triangle mirrored on long ones; both give the same fit."""

from __future__ import annotations

import numpy as np
import pytest

import autofact
from autofact.solvers import als


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_short_and_long_row_hessians_give_the_same_fit(monkeypatch, loss):
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 6, size=(40, 30)).astype(float)
    dense[rng.random(dense.shape) < 0.6] = np.nan
    data = autofact.Ratings.from_dense(dense)
    fits = []
    for short_rows in (10**9, 0):  # every block "short", then every block "long"
        monkeypatch.setattr(als, "SHORT_ROWS", short_rows)
        fits.append(autofact.MatrixFactorization(rank=4, solver="als", loss=loss, epochs=5,
                                                 dtype="float64", seed=0).fit(data))
    np.testing.assert_allclose(fits[0].user_factors_, fits[1].user_factors_, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(fits[0].item_factors_, fits[1].item_factors_, rtol=1e-10,
                               atol=1e-12)


def test_a_non_finite_hessian_row_gets_no_step():
    import torch

    H = torch.eye(3).repeat(4, 1, 1)
    g = torch.ones(4, 3)
    H[2, 0, 1] = float("nan")
    x = als._spd_solve(H, g)
    assert torch.equal(x[2], torch.zeros(3))
    torch.testing.assert_close(x[[0, 1, 3]], torch.ones(3, 3))
