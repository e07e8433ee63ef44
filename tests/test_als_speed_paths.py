"""The pieces of ALS's faster half-step (issue 10): the sparse products by ``embedding_bag``,
the Hessians' mirror by one gather, and the ``K x K`` systems solved laid out across the rows;
each against the plain computation it replaces."""

from __future__ import annotations

import pytest
import torch

from autofact.solvers import als
from autofact.sparse import Csr, csr_tensor, spmm


def _csr(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> Csr:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 6, (rows,), generator=gen)
    counts[1] = 0  # an empty row
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(counts, 0)
    col = torch.cat([torch.randperm(cols, generator=gen)[: int(c)].sort().values
                     for c in counts]).to(torch.int32)
    return Csr(crow, col, torch.randn(len(col), generator=gen, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_is_the_csr_product(dtype):
    # issue 10: C @ Z by embedding_bag, each row's entries added in order as the CSR product's
    C = _csr(30, 12, dtype)
    dense = torch.randn(12, 7, dtype=dtype)
    want = csr_tensor(C.crow, C.col, C.values, (30, 12)) @ dense
    got = spmm(C, dense)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(got[1], torch.zeros(7, dtype=dtype))
    # a column view of a wider matrix (as the solver passes Ya[:, :K])
    wide = torch.randn(12, 9, dtype=dtype)
    torch.testing.assert_close(spmm(C, wide[:, :7]), spmm(C, wide[:, :7].contiguous()),
                               rtol=0, atol=0)


def test_mirror_upper_fills_both_triangles():
    K = 5
    iu, ju = torch.triu_indices(K, K)
    hess = torch.randn(3, len(iu))
    want = torch.empty(3, K, K)
    want[:, iu, ju] = hess
    want[:, ju, iu] = hess
    assert torch.equal(als._mirror_upper(hess, iu, ju, K), want)


def _systems(R: int, K: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(R, K, 2 * K, generator=gen, dtype=torch.float64)
    H = A @ A.mT
    rh = torch.rand(R, K, generator=gen, dtype=torch.float64) + 0.1
    g = torch.randn(R, K, generator=gen, dtype=torch.float64)
    return H, rh, g


@pytest.mark.parametrize("with_term", [False, True])
def test_rows_damped_solve_matches_the_lapack_solve(with_term):
    # issue 10: the K x K systems factored across the rows give _damped_solve's steps, its
    # damping, the unobserved term's parts (gradient added in place) and its fallbacks: an
    # indefinite row (eigenvalue shift) and a non-finite one (no step)
    R, K = 40, 6
    H, rh, g = _systems(R, K)
    H[3] = -torch.eye(K, dtype=torch.float64) * 5  # not positive definite, even with rh
    H[7, 1, 2] = H[7, 2, 1] = float("nan")
    term = None
    Xv = torch.randn(R, K, dtype=torch.float64)
    if with_term:
        B = torch.randn(K, K, dtype=torch.float64)
        term = (B @ B.T, torch.randn(K, dtype=torch.float64))
    iu, ju = torch.triu_indices(K, K)
    g_lapack, g_rows = g.clone(), g.clone()
    want = als._damped_solve(H.clone(), g_lapack, rh, term, Xv)
    gT = g_rows.T  # a view: the term's gradient part lands in g_rows
    got = als._rows_damped_solve(H[:, iu, ju].T.contiguous(), rh.T.contiguous(), gT, iu, ju,
                                 term, Xv)
    torch.testing.assert_close(got.T, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_rows, g_lapack, rtol=0, atol=1e-12)
    assert torch.equal(got[:, 7], torch.zeros(K, dtype=torch.float64))
    assert bool(torch.isfinite(got[:, 3]).all()) and bool((got[:, 3] != 0).any())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 11])
def test_rows_cholesky_solve_matches_a_dense_solve(n):
    # issue 10: systems factored laid out across the rows, reading the lower triangle alone
    # (Woodbury's n <= 4 systems and the K x K ones, one function)
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(30, n, n + 2, generator=gen, dtype=torch.float64)
    M = A @ A.transpose(1, 2) + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(30, n, generator=gen, dtype=torch.float64)
    lower = torch.tril(M).permute(1, 2, 0)  # (n, n, rows), zeros above the diagonal
    x = als._rows_cholesky_solve(lambda j: lower[j:, j].clone(), b.T.contiguous())
    torch.testing.assert_close(x.T, torch.linalg.solve(M, b))


def test_z_slices_kept_between_half_sweeps_give_the_same_fit(monkeypatch):
    # issue 10: Z's slices written into one buffer the solver keeps (within max_memory / 16)
    # rather than fresh memory each half-sweep: the same products, the same factors
    import numpy as np

    import autofact

    rng = np.random.default_rng(0)
    dense = rng.integers(1, 6, size=(60, 45)).astype(float)
    dense[rng.random(dense.shape) < 0.5] = np.nan
    data = autofact.Ratings.from_dense(dense)
    seen = []
    real = als._AlternatingNewton._z_buffer

    def spy(self, numel, like):
        out = real(self, numel, like)
        seen.append(None if out is None else out.data_ptr())
        return out

    monkeypatch.setattr(als._AlternatingNewton, "_z_buffer", spy)
    kept = autofact.MatrixFactorization(rank=4, solver="als", epochs=4, seed=0,
                                        dtype="float64").fit(data)
    assert len(seen) == 8 and None not in seen and len(set(seen[2:])) == 1  # one, reused
    monkeypatch.setattr(als._AlternatingNewton, "_z_buffer", lambda self, numel, like: None)
    fresh = autofact.MatrixFactorization(rank=4, solver="als", epochs=4, seed=0,
                                         dtype="float64").fit(data)
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(fresh, name), err_msg=name)


def test_the_kept_z_buffer_is_dropped_by_a_half_sweep_that_does_not_use_it(monkeypatch):
    # issue 10 (review): the buffer the solver keeps for Z's slices (within max_memory / 16)
    # stayed alive through the other side's half-sweep when that side's Z does not fit whole
    # (column slices in groups, whose budget takes all of max_memory): now dropped there
    import autofact
    from autofact.objective import Objective

    gen = torch.Generator().manual_seed(0)
    m, n = 2000, 20  # 5 ratings a user: the copy by item fits, Z by user (the items') not
    users = torch.arange(m).repeat_interleave(5)
    items = torch.stack([torch.randperm(n, generator=gen)[:5].sort().values for _ in range(m)])
    values = torch.randint(1, 6, (5 * m,), generator=gen).double()
    r = autofact.Ratings.from_coo(users.numpy(), items.reshape(-1).numpy(), values.numpy(),
                                  shape=(m, n))
    obj = Objective(r, bias=True, max_memory=2**18, dtype="float64")
    params = obj.init_params(4, seed=0)  # K = 5, 15 products: Z 2,400 B by item, 240,000 by user
    kept = []
    real = als._AlternatingNewton._z_buffer

    def spy(self, numel, like):
        out = real(self, numel, like)
        kept.append(out is not None)
        return out

    monkeypatch.setattr(als._AlternatingNewton, "_z_buffer", spy)
    epoch = als.make_als(obj, params)
    solver = epoch.run
    assert solver.tiles is None  # (the in-memory path, both sides by _side)
    epoch.run()
    assert kept == [True]  # the users' half-sweep used one; the items' Z went in groups
    assert solver._zbuf is None


def test_the_ranges_half_sweep_drops_the_user_sides_z_buffer(monkeypatch):
    # issue 10 (review): with the item half-step by ranges (tiled, or sharded), the Z buffer
    # the user half-sweep keeps sat beside the ranges' budget, which takes all of max_memory
    from autofact.objective import Objective
    from tests.test_memory_als import planted

    monkeypatch.setattr(als, "BY_ITEM_SHARE", 0.0)
    obj = Objective(planted(), bias=True, beta=0.5, dtype="float32", max_memory=2**22)
    epoch = als.make_als(obj, obj.init_params(3, seed=0))
    solver = epoch.run
    assert solver.tiles is not None  # (the item half-step by ranges)
    with torch.no_grad():
        solver.half_sweep(0)
    assert solver._zbuf is not None  # the user side kept one (it fits max_memory / 16)
    with torch.no_grad():
        solver.half_sweep(1)
    assert solver._zbuf is None
