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
    real = als._AlternatingNewton._finish

    def spy(self, *args, **kwargs):
        import threading

        seen.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(als._AlternatingNewton, "_finish", spy)
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


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_z_in_column_slices_shared_by_a_group_of_blocks_gives_the_fit_of_z_whole(monkeypatch,
                                                                                 loss):
    # issue 10: where Z (n_other x K(K+1)/2) does not fit in half of max_memory, its column
    # slices are computed once for a group of consecutive blocks and accumulated into each
    # block's upper triangles; the fit is the one of Z computed whole
    from autofact import threads

    rng = np.random.default_rng(1)
    m, n = 600, 450
    counts = np.minimum(rng.geometric(0.3, size=m), 40)  # most users short, some long
    users = np.repeat(np.arange(m), counts)
    items = np.concatenate([rng.choice(n, size=c, replace=False) for c in counts])
    data = autofact.Ratings.from_coo(users, items, rng.integers(1, 6, size=len(users)),
                                     shape=(m, n))
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)  # blocks cut for 2 workers
    groups = []
    real = als._groups

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        groups.append(out)
        return out

    monkeypatch.setattr(als, "_groups", spy)
    fits = {}
    for max_memory in (2**16, 2**26):
        fits[max_memory] = autofact.MatrixFactorization(
            rank=3, solver="als", loss=loss, epochs=4, seed=0, dtype="float64",
            max_memory=max_memory, n_threads=2).fit(data)
        if max_memory == 2**16:
            # both sides in groups (n_other x 10 x 8 bytes > 2**15), some of several blocks
            assert len(groups) == 2 * 4 and max(len(g) for gs in groups for g in gs) > 1
    assert len(groups) == 2 * 4  # Z whole: no groups
    # Z whole in column slices of 8 columns (the cache-sized slices, made small): the same fit
    monkeypatch.setattr(als, "Z_SLICE_BYTES", 1)
    sliced = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4, seed=0,
                                          dtype="float64", max_memory=2**26,
                                          n_threads=2).fit(data)
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(fits[2**16], name), getattr(fits[2**26], name),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(getattr(sliced, name), getattr(fits[2**26], name),
                                   rtol=1e-12, atol=1e-14)


def test_z_whole_in_cache_sized_column_slices_gives_the_same_fit(monkeypatch):
    # issue 10: Z whole is used in contiguous column slices (Z_SLICE_BYTES) so that C @ Z's
    # gathers stay in cache; each entry of C @ Z is the same sum whatever the slices, and the
    # fit is the one of the all-K^2 products (the short rows' path)
    fits = []
    for short_rows, slice_bytes in ((10**9, als.Z_SLICE_BYTES), (0, als.Z_SLICE_BYTES), (0, 1)):
        # all K^2 at once; the upper triangle in one slice; in slices of 8 of its 10 columns
        monkeypatch.setattr(als, "SHORT_ROWS", short_rows)
        monkeypatch.setattr(als, "Z_SLICE_BYTES", slice_bytes)
        fits.append(autofact.MatrixFactorization(rank=3, solver="als", loss="huber", epochs=4,
                                                 seed=0, dtype="float64").fit(_data()))
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(fits[1], name), getattr(fits[0], name), rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(getattr(fits[2], name), getattr(fits[1], name), rtol=1e-12,
                                   atol=1e-14)
