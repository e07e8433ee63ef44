"""The post's function, as written: ``matrix_factorization_bgd(D, P, Q, steps, alpha, beta)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Ratings
from .losses import get_loss
from .regularizers import get_regularizer

if TYPE_CHECKING:
    from ._replay import _Program

__all__ = ["matrix_factorization_bgd"]


def _record_gradient(objective: Any, X: torch.Tensor) -> _Program | None:
    """The replayable gradient program of :mod:`autofact._replay`, or ``None``.

    The replay rests on a private torch module (``torch.utils._python_dispatch``), so it is
    imported here, on first use, and not on the ``import autofact`` path. Where that import fails
    (a torch release that moved or changed the module) the caller silently runs eager autograd:
    the replay is only a speed-up, and both routes compute autograd's gradient.
    """
    try:
        from ._replay import record_gradient
    except (ImportError, AttributeError):
        return None
    return record_gradient(objective, X)


def matrix_factorization_bgd(
    D: Any,
    P: Any,
    Q: Any,
    steps: int = 5000,
    alpha: float = 0.0002,
    beta: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch gradient descent on ``sum_observed (D - P@Q)^2 + beta/2 (||P||^2 + ||Q||^2)``.

    ``D`` is an ``m x n`` numpy masked array (masked = missing; a plain ndarray is fully
    observed), ``P`` is ``m x k`` and ``Q`` is ``k x n``. Each step does ``P -= alpha * dP`` and
    ``Q -= alpha * dQ`` with the gradient from autograd, in the inputs' dtype (float64 in,
    float64 out). Returns the new ``(P, Q)`` as numpy arrays shaped like the inputs.

    >>> R = np.ma.masked_equal([[5, 3, 0, 1], [4, 0, 0, 1]], 0).astype(float)
    >>> P, Q = matrix_factorization_bgd(R, np.random.rand(2, 2), np.random.rand(2, 4))
    """
    if not isinstance(D, np.ndarray):
        raise TypeError(f"D must be a numpy masked array or ndarray, got {type(D).__name__}")
    P = np.asarray(P)
    Q = np.asarray(Q)
    if D.ndim != 2 or P.ndim != 2 or Q.ndim != 2:
        raise ValueError(
            f"D, P and Q must be 2-D, got shapes {D.shape}, {P.shape} and {Q.shape}"
        )
    m, n = D.shape
    if P.shape[0] != m:
        raise ValueError(f"P must have one row per row of D: D is {D.shape}, P is {P.shape}")
    if Q.shape[1] != n:
        raise ValueError(f"Q must have one column per column of D: D is {D.shape}, Q is {Q.shape}")
    if P.shape[1] != Q.shape[0]:
        raise ValueError(
            f"the ranks of P and Q disagree: P is {P.shape} (rank {P.shape[1]}) but Q is "
            f"{Q.shape} (rank {Q.shape[0]}); Q must be {P.shape[1]} x {n}"
        )
    if not (isinstance(steps, int | np.integer) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(v, int | float | np.floating) and np.isfinite(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    dtype = np.result_type(P.dtype, Q.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    ratings = Ratings.from_masked(D)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    loss = get_loss("squared")
    reg = get_regularizer("l2", float(beta))
    # D came in dense, so the dense product P @ Q is allowed here (and for the post's small
    # matrices it is the fastest route); the loss and regularizer still go through autograd.
    observed = torch.from_numpy(ratings.users.astype(np.int64) * n + ratings.items)
    target = torch.from_numpy(ratings.values).to(tdtype)
    # P and Q live in one flat parameter vector X (as views), so that the post's penalty
    # beta/2 (||P||^2 + ||Q||^2) is the L2 regularizer applied once, to X, and one update
    # X -= alpha * dX does both of the post's updates.
    X = torch.cat([torch.tensor(P, dtype=tdtype).reshape(-1),
                   torch.tensor(Q, dtype=tdtype).reshape(-1)])
    split = P.size

    def objective(X: torch.Tensor) -> torch.Tensor:
        Pt, Qt = X[:split].view(P.shape), X[split:].view(Q.shape)
        return loss(torch.take(Pt @ Qt, observed), target).sum() + reg(X)

    lr = float(alpha)
    steps = int(steps)
    small = m * n <= 65536
    if small and steps > 1:
        # Small matrices: eager autograd's bookkeeping (~100 us a backward) would dominate each
        # step, so autograd's gradient program is recorded once and replayed in NumPy.
        gradient = _record_gradient(objective, X)
        if gradient is not None:
            x = X.numpy().copy()
            with np.errstate(all="ignore"):  # a diverging run gives inf/nan, as in torch
                for _ in range(steps):
                    x -= lr * gradient(x)  # the post's update: P -= alpha * dP, Q -= alpha * dQ
            return x[:split].reshape(P.shape).copy(), x[split:].reshape(Q.shape).copy()
    X.requires_grad_()
    # torch's thread count is process-wide: it is left as the caller set it (changing it here and
    # back raced with other threads calling torch; issue 8)
    for _ in range(steps):
        J = objective(X)
        J.backward()
        with torch.no_grad():  # the post's update: P -= alpha * dP, Q -= alpha * dQ
            X.sub_(X.grad, alpha=lr)  # type: ignore[arg-type]
        X.grad = None
    X = X.detach()
    return X[:split].view(P.shape).numpy().copy(), X[split:].view(Q.shape).numpy().copy()
