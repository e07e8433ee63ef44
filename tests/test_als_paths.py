"""The two ways ALS assembles its Hessians (issue 10): all K^2 products at once on short rows,
the upper triangle mirrored on long ones; both give the same fit."""

from __future__ import annotations

import math

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


def _data(seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 6, size=(50, 35)).astype(float)
    dense[rng.random(dense.shape) < 0.5] = np.nan
    return autofact.Ratings.from_dense(dense)


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_row_blocks_on_two_workers_give_the_factors_of_one(monkeypatch, loss):
    # issue 10: threads over whole row blocks, BLOCKS_PER_WORKER blocks a worker (one block a
    # side for one worker: all rows fit); rows are solved on their own, so the cut changes
    # nothing beyond rounding
    from autofact import threads

    data = _data()
    whole = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4, seed=0,
                                         dtype="float64").fit(data)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)  # every side worth splitting
    seen = []
    real = als._AlternatingNewton._block

    def spy(self, *args, **kwargs):
        import threading

        seen.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(als._AlternatingNewton, "_block", spy)
    fits = {}
    for n in (1, 2):
        seen.clear()
        fits[n] = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4,
                                               seed=0, dtype="float64", n_threads=n).fit(data)
        workers = {name for name in seen if name != "MainThread"}
        # one pool a side, of n workers (named ..._0, ..._1); one worker: the caller's thread
        assert {name.rsplit("_", 1)[-1] for name in workers} == ({"0", "1"} if n == 2 else set())
        per_side = [1, 1] if n == 1 else \
            [math.ceil(r / math.ceil(r / (n * als.BLOCKS_PER_WORKER))) for r in (50, 35)]
        assert len(seen) == 4 * sum(per_side)  # epochs x blocks of both sides
    for fit in fits.values():
        np.testing.assert_allclose(fit.user_factors_, whole.user_factors_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit.item_factors_, whole.item_factors_, rtol=1e-9, atol=1e-12)


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch):
    from autofact import threads

    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    with pytest.raises(ValueError, match="needs a loss with a non-zero second derivative"):
        autofact.MatrixFactorization(rank=3, solver="als", loss="absolute", epochs=2,
                                     n_threads=2).fit(_data())
