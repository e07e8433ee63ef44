"""The Normal-Gamma hyper-prior on the columns of a factor block, shared by the samplers.

libFM's prior (Rendle, "Factorization Machines with libFM", TIST 2012) on the mean ``m`` and
precision ``lambda`` of each column of a block ``x`` (rows x cols)::

    lambda ~ Gamma(1, rate=1),      m | lambda ~ N(0, 1 / (gamma0 lambda)),   gamma0 = 1

Given the rows, each column's ``(m, lambda)`` is drawn from its exact Normal-Gamma posterior, so
the regularization strength of :mod:`.gibbs` and :mod:`.laplace` is sampled, not tuned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["normal_gamma", "normal_gamma_sums", "check_chain", "coo_arguments"]

# libFM's hyper-prior constants: alpha_lambda = beta_lambda = 1, gamma_0 = 1, mu_0 = 0
_A0, _B0, _GAMMA0 = 1.0, 1.0, 1.0


def normal_gamma(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw (mean, precision) of each column of ``x`` (rows x cols) from the Normal-Gamma
    posterior under libFM's prior ``lambda ~ Gamma(1, 1)``, ``m | lambda ~ N(0, 1/lambda)``."""
    return normal_gamma_sums(rng, x.shape[0], x.sum(0), (x * x).sum(0))


def normal_gamma_sums(rng: np.random.Generator, n: int, total: np.ndarray, squares: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normal_gamma` from the column sums ``total`` and ``squares`` (of ``x`` and
    ``x * x``) of ``n`` rows: what processes that each hold some rows sum (issue 11)."""
    mbar = total / (n + _GAMMA0)
    ss = squares - (n + _GAMMA0) * mbar * mbar  # sum (x - mbar)^2 + gamma0 mbar^2
    rate = _B0 + np.maximum(ss, 0.0) / 2
    lam = rng.gamma(_A0 + (n + 1) / 2, 1.0 / np.asarray(rate, dtype=np.float64))
    mean = mbar + rng.standard_normal(len(total)) / np.sqrt((n + _GAMMA0) * lam)
    return mean, lam


def check_chain(rank: Any, sweeps: Any, burn_in: Any) -> int:
    """Check a sampler's ``rank``, ``sweeps`` and ``burn_in`` (``None``: a tenth of the sweeps);
    returns the burn-in. Shared by the Gibbs and the Laplace-MH samplers."""
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int | np.integer) or sweeps < 1:
        raise ValueError(f"sweeps must be a positive int, got {sweeps!r}")
    if burn_in is None:
        return int(sweeps) // 10
    if (isinstance(burn_in, bool) or not isinstance(burn_in, int | np.integer)
            or not 0 <= burn_in < sweeps):
        raise ValueError(
            f"burn_in must be an int in [0, sweeps) = [0, {sweeps}), got {burn_in!r}; at least "
            "one sweep must be averaged"
        )
    return int(burn_in)


def coo_arguments(users: Any, items: Any, values: Any, shape: Any, name: str) -> tuple[Any, ...]:
    """A sampler's ratings as ``(users, items, values, shape)``: given as those four, or as one
    :class:`autofact.Ratings` in ``users``. ``name`` is the sampler's, for the error."""
    if items is None and hasattr(users, "users"):  # a Ratings
        r = users
        users, items, values, shape = r.users, r.items, r.values, r.shape
    if items is None or values is None or shape is None:
        raise TypeError(f"{name} needs users, items, values and shape, or one Ratings")
    return users, items, values, shape
