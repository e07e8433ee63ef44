"""Rows with few ratings solve their ALS step by Woodbury's identity (issue 10): an n x n system
instead of the K x K one, the same step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autofact
from autofact.solvers import als


def _sparse(seed: int = 0) -> autofact.Ratings:
    # most rows and columns with 1-4 ratings, a few with many (like a review site)
    rng = np.random.default_rng(seed)
    m, n = 120, 90
    users = np.concatenate([np.repeat(np.arange(m), rng.integers(1, 5, m)),
                            np.zeros(40, dtype=int)])
    items = np.concatenate([rng.integers(0, n, len(users) - 40), rng.permutation(n)[:40]])
    items[: n] = np.arange(n)  # every item rated
    pairs = np.unique(np.column_stack([users, items]), axis=0)
    values = rng.integers(1, 6, len(pairs)).astype(float)
    return autofact.Ratings(pairs[:, 0], pairs[:, 1], values, shape=(m, n))


@pytest.mark.parametrize("loss", ["squared", "huber", "poisson"])
@pytest.mark.parametrize("bias", [True, False])
def test_woodbury_rows_give_the_fit_of_the_k_by_k_solve(monkeypatch, loss, bias):
    # issue 10: the same factors through the n x n system as through the K x K one
    data = _sparse()
    calls = []
    solve = als._woodbury_solve
    monkeypatch.setattr(als, "_woodbury_solve", lambda *a: calls.append(1) or solve(*a))
    fits = []
    for rows in (als.WOODBURY_ROWS, 10**9):  # Woodbury on short rows, then never
        monkeypatch.setattr(als, "WOODBURY_ROWS", rows)
        fits.append(autofact.MatrixFactorization(rank=5, solver="als", loss=loss, epochs=4,
                                                 bias=bias, dtype="float64", seed=0).fit(data))
    if loss != "huber":  # huber's l'' is 0 on its linear part: those blocks use K x K
        assert calls, "the Woodbury path was never taken"
    for attr in ("user_factors_", "item_factors_"):
        np.testing.assert_allclose(getattr(fits[0], attr), getattr(fits[1], attr), rtol=1e-9,
                                   atol=1e-11)


@pytest.mark.parametrize("n", range(als.WOODBURY_ROWS + 1))
def test_woodbury_solve_matches_a_dense_solve(n):
    # issue 10: rows with n ratings each (none included), laid out across the rows
    gen = torch.Generator().manual_seed(n)
    rows, K = 50, 7
    Y = torch.randn(rows, n, K, generator=gen, dtype=torch.float64)
    w = torch.rand(rows, n, generator=gen, dtype=torch.float64) + 0.5
    rh = torch.rand(rows, K, generator=gen, dtype=torch.float64) + 0.1
    g = torch.randn(rows, K, generator=gen, dtype=torch.float64)
    H = Y.transpose(1, 2) @ (Y * w[:, :, None]) + torch.diag_embed(rh)
    eps = 1e-6 * H.diagonal(dim1=1, dim2=2).abs().mean(1).clamp_min(1.0)
    H = H + eps[:, None, None] * torch.eye(K, dtype=torch.float64)
    x = als._woodbury_solve(Y.permute(2, 1, 0), w.T, rh.T, g.T)
    torch.testing.assert_close(x.T, torch.linalg.solve(H, g), rtol=1e-9, atol=1e-12)


def test_split_buckets_rows_by_their_count_of_ratings():
    # issue 10: each short row in the bucket of its count, its entries slot by slot
    from autofact.sparse import build_patterns

    users = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 5], dtype=torch.int32)
    items = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 4], dtype=torch.int32)
    (pat,) = build_patterns(users, items, (6, 5), 100)
    split = als._Split.of(pat)
    got = {n: (rows.tolist(), entries.tolist(), cols.tolist())
           for n, rows, entries, cols in split.buckets}
    assert got == {0: ([4], [], []), 1: ([5], [12], [4]),
                   2: ([0, 1], [0, 2, 1, 3], [0, 2, 1, 3]),  # slot 0 of each row, then slot 1
                   3: ([2], [4, 5, 6], [0, 1, 2])}
    assert split.long.tolist() == [3] and split.long_entries.tolist() == [7, 8, 9, 10, 11]


def _asymmetric(pred, target):
    """l'' of 4 above the target and 1 below: positive (the Woodbury path) and a function of
    the prediction (not kept)."""
    r = pred - target
    return torch.where(r > 0, 2.0 * r * r, 0.5 * r * r)


def _fit(loss, epochs: int = 5) -> autofact.MatrixFactorization:
    return autofact.MatrixFactorization(rank=5, solver="als", loss=loss, epochs=epochs,
                                        dtype="float64", seed=0).fit(_sparse())


@pytest.mark.parametrize("loss", ["squared", _asymmetric])
def test_forms_of_kept_curvatures_give_the_fit_computed_each_epoch(monkeypatch, loss):
    # issue 10: the long rows' CSR of l'' and the short rows' l'' and regularizer curvature by
    # bucket are made once while l'' and R'' are kept (squared loss, L2), made each epoch
    # where l'' depends on the prediction: either way the fit of the solver that keeps nothing
    made = []
    csr_long = als._Split.csr_long
    monkeypatch.setattr(als._Split, "csr_long", lambda s, v: made.append(1) or csr_long(s, v))
    on = _fit(loss)
    built = len(made)
    monkeypatch.setattr(als, "CACHE_CURVATURE", False)
    off = _fit(loss)
    for attr in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_array_equal(getattr(on, attr), getattr(off, attr), err_msg=attr)
    per_epoch = (len(made) - built) / 5
    assert per_epoch >= 1  # the long rows' CSR is used (the path this test is about)
    if loss == "squared":
        assert built == per_epoch  # made in the first epoch only
    else:
        assert built == len(made) - built  # made every epoch, as without keeping
    # the test has teeth: forms kept whatever their sources (stale where l'' changes) change
    # the asymmetric loss's fit
    if loss is _asymmetric:
        monkeypatch.setattr(als, "CACHE_CURVATURE", True)
        monkeypatch.setattr(als._Curvatures, "holds", lambda self, key, t: True)
        form = als._AlternatingNewton._form

        def stale(self, name, pat, sources, make):
            key = (name, id(pat))
            if key not in self._forms:
                self._forms[key] = (tuple(t for _, t in sources), make())
            return self._forms[key][1]
        monkeypatch.setattr(als._AlternatingNewton, "_form", stale)
        wrong = _fit(loss)
        monkeypatch.setattr(als._AlternatingNewton, "_form", form)
        scale = float(np.abs(off.user_factors_).max())
        assert float(np.abs(wrong.user_factors_ - off.user_factors_).max()) > 1e-6 * scale
