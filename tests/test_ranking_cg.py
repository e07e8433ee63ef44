"""autofact.ranking's conjugate-gradient sweeps (issue 12, item 6): every route of the CG
products (scipy's kernels on the CPU, in chunks, through scipy's public product, torch's CSR as on
CUDA) takes the same steps as textbook conjugate gradient on each row's normal equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autofact import ranking
from autofact.ranking import InteractionMatrix, _CsrSide, confidence, implicit_als


def _problem(seed: int = 0, m: int = 23, n: int = 17) -> InteractionMatrix:
    """Random interactions with one user and one item that have none (rows solved against the
    Gram term alone) and confidences on both sides of ``w0 = 0.5`` (negative corrections)."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, (m - 1) * (n - 1), 120))
    users, items = keys // (n - 1), keys % (n - 1)
    conf = confidence(rng.integers(0, 6, len(keys)), alpha=0.3)  # 1.0 .. 2.5
    conf[::7] = 0.2  # below w0
    return InteractionMatrix.build(users, items, conf, (m, n))


def _reference_cg(X: np.ndarray, Y: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                  conf: np.ndarray, reg: np.ndarray, w0: float, steps: int) -> np.ndarray:
    """Textbook CG from each row of ``X`` on ``A x = b`` with ``A`` formed densely."""
    X = X.copy()
    G = Y.T @ Y
    for u in range(X.shape[0]):
        js, c = indices[indptr[u]:indptr[u + 1]], conf[indptr[u]:indptr[u + 1]]
        Yo = Y[js]
        A = w0 * G + (Yo.T * (c - w0)) @ Yo + reg[u] * np.eye(Y.shape[1])
        b = Yo.T @ c
        x = X[u]
        r = b - A @ x
        p = r.copy()
        rs = r @ r
        for _ in range(steps):
            Ap = A @ p
            a = rs / (p @ Ap) if p @ Ap > 0 else 0.0
            x = x + a * p
            r = r - a * Ap
            rs_new = r @ r
            p = r + (rs_new / rs if rs > 0 else 0.0) * p
            rs = rs_new
        X[u] = x
    return X


@pytest.mark.parametrize("route", ["scipy", "scipy public", "scipy chunks", "torch"])
@pytest.mark.parametrize("items", [False, True])
@pytest.mark.parametrize("per_row_reg", [False, True])
def test_every_cg_route_takes_textbook_cg_steps(route: str, items: bool, per_row_reg: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 12, item 6: the first residual folds b into one SpMM, the last step takes p.Ap from
    # the SDDMM alone, the item side on the CPU runs transposed on the user-major layout; each
    # must still be plain CG (3 steps from the current rows)
    R = _problem()
    m, n = R.shape
    k, w0 = 4, 0.5
    rng = np.random.default_rng(1)
    P, Q = rng.normal(size=(m, k)), rng.normal(size=(n, k))
    X, Y = (Q, P) if items else (P, Q)
    indptr, indices, conf = ((R.t_indptr, R.t_indices, R.t_conf) if items
                             else (R.indptr, R.indices, R.conf))
    reg = rng.uniform(0.5, 2.0, X.shape[0]) if per_row_reg else np.full(X.shape[0], 0.7)
    expected = _reference_cg(X, Y, indptr, indices, conf, reg, w0, 3)

    threads = torch.get_num_threads()
    if route == "scipy chunks":  # three chunks of entries, whatever the sizes
        monkeypatch.setattr(ranking, "MIN_WORK_PER_WORKER", 1)
        torch.set_num_threads(3)
    host = route != "torch"
    try:
        user = _CsrSide(R, False, k, w0, torch.float64, torch.device("cpu"), host=host)
        side = _CsrSide(R, True, k, w0, torch.float64, torch.device("cpu"), host=host,
                        like=user) if items else user
    finally:
        torch.set_num_threads(threads)
    # on the CPU the item side shares the user side's storage (one copy of the entries)
    assert (side.col is user.col) == (host or not items)
    if route == "scipy chunks":
        assert len(side.parts) == 3 and side.pool is not None
    if route == "scipy public":  # a scipy without the private kernels: its public product
        side.kernels = None
    Xt = torch.tensor(X)
    side.solve(Xt, torch.tensor(Y), torch.tensor(reg), 3)
    np.testing.assert_allclose(Xt.numpy(), expected, rtol=1e-9, atol=1e-11)
    # the solve is repeatable on the same side (its buffers are reused, not accumulated)
    Xt2 = torch.tensor(X)
    side.solve(Xt2, torch.tensor(Y), torch.tensor(reg), 3)
    side.close()
    assert torch.equal(Xt, Xt2)


def test_cg_sweeps_match_the_reference_through_implicit_als() -> None:
    # issue 12, item 6: whole sweeps (users, then items against the new users), float32 as the
    # ranking task runs them, frequency-scaled regularization (a lambda per row)
    R = _problem(seed=2)
    m, n = R.shape
    k, w0, lam = 5, 0.5, 0.3
    rng = np.random.default_rng(3)
    P0, Q0 = rng.normal(size=(m, k)) * 0.3, rng.normal(size=(n, k)) * 0.3
    P, Q = implicit_als(R, k, weight=w0, regularization=lam, scale_regularization=1.0,
                        iterations=2, cg_steps=2, init=(torch.tensor(P0), torch.tensor(Q0)),
                        dtype=torch.float32)
    ureg = lam * (np.diff(R.indptr) + w0 * n)
    ireg = lam * (np.diff(R.t_indptr) + w0 * m)
    Pr, Qr = P0, Q0
    for _ in range(2):
        Pr = _reference_cg(Pr, Qr, R.indptr, R.indices, R.conf, ureg, w0, 2)
        Qr = _reference_cg(Qr, Pr, R.t_indptr, R.t_indices, R.t_conf, ireg, w0, 2)
    np.testing.assert_allclose(P.numpy(), Pr, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(Q.numpy(), Qr, rtol=2e-4, atol=2e-5)


def test_a_cg_sweep_lowers_the_objective_from_any_start() -> None:
    # issue 12, item 6: each CG half-sweep is a descent step on the (convex) row problems
    R = _problem(seed=4)
    values = []
    implicit_als(R, 4, weight=0.5, regularization=0.5, iterations=6, cg_steps=1, init_std=1.0,
                 dtype=torch.float64,
                 callback=lambda it, P, Q: values.append(
                     ranking.implicit_objective(P, Q, R, 0.5, 0.5)))
    assert all(b < a for a, b in zip(values, values[1:], strict=False))


def test_implicit_objective_is_the_objective_by_its_definition() -> None:
    # issue 12, item 6: the per-epoch objective (the ranking task's history) takes the observed
    # scores from a sampled product instead of gathering nnz x k rows; its value must be the
    # definition's, every entry of the matrix formed
    R = _problem(seed=5)
    m, n = R.shape
    rng = np.random.default_rng(6)
    P, Q = torch.tensor(rng.normal(size=(m, 3))), torch.tensor(rng.normal(size=(n, 3)))
    w0, lam = 0.4, 0.3
    C = np.zeros((m, n))
    C[np.repeat(np.arange(m), np.diff(R.indptr)), R.indices] = R.conf
    observed = np.zeros((m, n), dtype=bool)
    observed[np.repeat(np.arange(m), np.diff(R.indptr)), R.indices] = True
    S = (P @ Q.T).numpy()
    expected = (np.where(observed, C * (1 - S) ** 2, w0 * S**2).sum()
                + lam * (P.square().sum() + Q.square().sum()).item())
    assert ranking.implicit_objective(P, Q, R, w0, lam) == pytest.approx(expected, rel=1e-12)


def test_cg_takes_int32_index_arrays() -> None:
    # issue 12, item 6: an InteractionMatrix built by hand with int32 indices (scipy's own
    # index type, here beside int64 indptr: torch's CSR wants one type for both) gives the same
    # CG sweeps and objective as the int64 one
    R = _problem(seed=7)
    R32 = InteractionMatrix(R.shape, R.indptr, R.indices.astype(np.int32), R.conf,
                            R.t_indptr.astype(np.int32), R.t_indices, R.t_conf)
    a = implicit_als(R, 3, iterations=2, cg_steps=2, dtype=torch.float64)
    b = implicit_als(R32, 3, iterations=2, cg_steps=2, dtype=torch.float64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ranking.implicit_objective(*b, R32) == ranking.implicit_objective(*a, R)
