"""Bayesian matrix factorization by Gibbs sampling (BPMF with biases, optionally SVD++'s implicit term).

The model, for user ``u`` and item ``i`` with ``mu`` the training mean::

    r_ui = mu + b_u + c_i + p_u . q_i + e_ui,          e_ui ~ N(0, 1 / alpha)

    p_u ~ N(m_P + |N(u)|^-1/2 sum_{j in N(u)} y_j,  diag(lambda_P)^-1)     (implicit=True)
    p_u ~ N(m_P, diag(lambda_P)^-1)                                         (implicit=False)
    q_i ~ N(m_Q, diag(lambda_Q)^-1),   y_j ~ N(m_Y, diag(lambda_Y)^-1)
    b_u ~ N(m_b, 1 / lambda_b),        c_i ~ N(m_c, 1 / lambda_c)

with ``N(u)`` the items user ``u`` rated in training. With ``implicit=True`` this is SVD++ (Koren,
KDD 2008) written as a prior: a user's factor is centred on the normalized sum of the factors ``y_j``
of the items they rated, so a user with few ratings is placed by *which* items they rated. Every
column of every factor block (and each bias block) has a Normal-Gamma hyper-prior on its mean and
precision, as in libFM's MCMC (Rendle, "Factorization Machines with libFM", TIST 2012)::

    lambda ~ Gamma(1, 1),  m | lambda ~ N(0, 1 / lambda),  alpha ~ Gamma(1, 1)

so nothing is tuned: the regularization strength is sampled. One sweep draws, in turn, ``Y``
(implicit only), every user block ``[p_u, b_u]`` at once, the user hyper-parameters, every item
block ``[q_i, c_i]`` at once, the item hyper-parameters, and ``alpha``. Each user or item block is
drawn from its exact Gaussian conditional (Salakhutdinov & Mnih, ICML 2008): with ``x_u = [p_u,
b_u]`` and ``z_i = [q_i, 1]``::

    Lambda_u = diag(lambda) + alpha sum_{i in N(u)} z_i z_i^T
    h_u      = diag(lambda) m_u + alpha sum_{i in N(u)} (r_ui - mu - c_i) z_i
    x_u      = Lambda_u^-1 h_u + L_u^-T eps,      Lambda_u = L_u L_u^T,  eps ~ N(0, I)

``Lambda_u`` for all rows at once is one sparse product (``vec(Lambda) = C @ vec(z z^T)``, the
trick of the alternating solver), and the Cholesky factors are batched. ``Y`` given the user
factors is a Bayesian linear regression per factor column (``P - m_P = X Y + noise`` with ``X`` the
normalized user-item indicator), drawn by perturbation and conjugate gradients: solving
``(Lambda_Y + X^T Lambda_P X) y = rhs + perturbation`` with the perturbation drawn so the solution is
an exact draw (Papandreou & Yuille 2010, as Macau does); it is exact up to the CG tolerance.

**What is exact:** every conditional is the model's exact conditional (``Y``'s up to a relative CG
residual of ``cg_tol``). **What is approximate:** the Markov chain is run for a finite number of
sweeps, and the posterior predictive mean is estimated from ``keep`` thinned samples of the
factors (the biases, which enter linearly, are averaged over every post-burn-in sweep). Kept user
factors are Rao-Blackwellized: the stored user block is the *mean* of its Gaussian conditional,
paired with the item block it was conditioned on, which estimates the same expectation with less
Monte Carlo noise.

How the posterior is kept: ``keep`` samples of ``P`` and ``Q`` (and ``Y`` with ``implicit``),
``keep * (n_users + n_items (+ n_items)) * rank`` floats, plus posterior-mean biases and the last
sweep's hyper-parameters. The average over samples of ``p_u^s . q_i^s`` is the dot product of the
concatenated samples, so a sampled model is also an ordinary factorization of rank
``keep * rank``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["GibbsResult", "gibbs_mf"]

# libFM's hyper-prior constants: alpha_lambda = beta_lambda = 1, gamma_0 = 1, mu_0 = 0, and a
# Gamma(1, 1) prior on the noise precision.
_A0, _B0, _GAMMA0 = 1.0, 1.0, 1.0


@dataclass
class GibbsResult:
    """What prediction needs from a sampled fit (see the module docstring).

    ``P`` (S, m, k), ``Q`` (S, n, k): kept samples of the user and item factors (``P`` holds the
    full user factor, implicit part included). ``Y`` (S, n, k) or ``None``: kept implicit item
    factors. ``bu`` (m,), ``bi`` (n,): posterior-mean biases. ``mu``: the training mean.
    ``prior_P``/``prior_Q``/``prior_Y``: the last sweep's column means and precisions of each block
    (``(mean (k,), precision (k,))``), ``prior_bu``/``prior_bi`` those of the biases: the prior an
    unknown user or item gets. ``alpha``: posterior-mean noise precision. ``rmse_train``: the
    training RMSE of each sweep's sample.
    """

    mu: float
    P: np.ndarray
    Q: np.ndarray
    Y: np.ndarray | None
    bu: np.ndarray
    bi: np.ndarray
    prior_P: tuple[np.ndarray, np.ndarray]
    prior_Q: tuple[np.ndarray, np.ndarray]
    prior_Y: tuple[np.ndarray, np.ndarray] | None
    prior_bu: tuple[float, float]
    prior_bi: tuple[float, float]
    alpha: float
    n_user_ratings: np.ndarray
    n_item_ratings: np.ndarray
    rmse_train: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Prediction for index pairs from the posterior means; a user or item with no training
        rating (or index ``-1``) gets its prior mean (the posterior mean of its block's mean)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        ku = (users >= 0) & (users < self.P.shape[0])
        ki = (items >= 0) & (items < self.Q.shape[0])
        ku[ku] = self.n_user_ratings[users[ku]] > 0
        ki[ki] = self.n_item_ratings[items[ki]] > 0
        u = np.where(ku, users, 0)
        i = np.where(ki, items, 0)
        Pu = np.where(ku[:, None], self.P[u], self.prior_P[0])
        Qi = np.where(ki[:, None], self.Q[i], self.prior_Q[0])
        bu = np.where(ku, self.bu[u], self.prior_bu[0])
        bi = np.where(ki, self.bi[i], self.prior_bi[0])
        return self.mu + bu + bi + np.einsum("bk,bk->b", Pu, Qi)


class _Side:
    """One orientation of the ratings (rows = users or items), as CSR in row blocks."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int,
                 n_cols: int, max_nnz: int) -> None:
        counts = np.bincount(rows, minlength=n_rows)
        self.indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])
        self.indices = cols
        self.vals = vals
        self.counts = counts
        self.n_rows, self.n_cols = n_rows, n_cols
        # row blocks of at most max_nnz entries (a single row may exceed it)
        self.blocks: list[tuple[int, int]] = []
        r0 = 0
        while r0 < n_rows:
            r1 = int(np.searchsorted(self.indptr, self.indptr[r0] + max_nnz, side="right")) - 1
            r1 = min(max(r1, r0 + 1), n_rows)
            self.blocks.append((r0, r1))
            r0 = r1

    def csr(self, r0: int, r1: int, data: np.ndarray | None = None) -> sp.csr_matrix:
        a, b = int(self.indptr[r0]), int(self.indptr[r1])
        ptr = self.indptr[r0 : r1 + 1] - a
        if data is None:
            data = np.ones(b - a)
        return sp.csr_matrix((data, self.indices[a:b], ptr), shape=(r1 - r0, self.n_cols),
                             copy=False)


def _gamma(rng: np.random.Generator, shape: np.ndarray | float, rate: np.ndarray | float
           ) -> np.ndarray:
    return rng.gamma(shape, 1.0 / np.asarray(rate))


def _hyper(rng: np.random.Generator, theta: np.ndarray, offset: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Draw (mean, precision) per column of ``theta`` (rows x cols) from their Normal-Gamma
    conditional (libFM's): lambda first given the current mean is libFM's order; here the mean and
    precision are drawn jointly from the Normal-Gamma posterior."""
    x = theta if offset is None else theta - offset
    n = x.shape[0]
    s1 = x.sum(0)
    mbar = s1 / (n + _GAMMA0)
    ss = (x * x).sum(0) - (n + _GAMMA0) * mbar * mbar  # sum (x - mbar)^2 + gamma0 mbar^2
    lam = _gamma(rng, _A0 + (n + 1) / 2, _B0 + np.maximum(ss, 0.0) / 2)
    # (shape (a0 + n + 1)/2 with a0 = 1 is libFM's (alpha_lambda + n + 1)/2)
    mean = mbar + rng.standard_normal(x.shape[1]) / np.sqrt((n + _GAMMA0) * lam)
    return mean, lam


def _triu(K: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(K)


def _sample_rows(
    rng: np.random.Generator,
    side: _Side,
    other: np.ndarray,
    other_bias: np.ndarray,
    target: np.ndarray,
    prior_mean: np.ndarray,
    prior_prec: np.ndarray,
    alpha: float,
    out: np.ndarray,
    out_mean: np.ndarray | None,
) -> tuple[float, float]:
    """Draw every row block ``x = [f, b]`` of one side from its Gaussian conditional, in place.

    ``other`` (n_cols, k) are the other side's factors, ``other_bias`` its biases, ``target`` the
    ratings minus ``mu`` in this side's order; ``prior_mean`` (n_rows, K) or (K,), ``prior_prec``
    (K,). Writes the draw into ``out`` (n_rows, K) and, if given, the conditional mean into
    ``out_mean``. Returns ``(sum of x^T G x - 2 x^T g, sum of t^2)`` for the noise's conditional,
    where ``G, g`` are the data terms (without ``alpha`` or the prior), ``t`` the targets.
    """
    k = other.shape[1]
    K = k + 1
    iu, ju = _triu(K)
    Z = np.empty((other.shape[0], len(iu) + K), dtype=np.float64)
    za = np.empty((other.shape[0], K), dtype=np.float64)
    za[:, :k] = other
    za[:, k] = 1.0
    np.multiply(za[:, iu], za[:, ju], out=Z[:, : len(iu)])
    # sum_i c_i z_i is the bias part of the linear term: C @ (c * z)
    np.multiply(za, other_bias[:, None], out=Z[:, len(iu):])
    quad = 0.0
    tt = 0.0
    for r0, r1 in side.blocks:
        mb = r1 - r0
        if mb == 0:
            continue
        a, b = int(side.indptr[r0]), int(side.indptr[r1])
        C = side.csr(r0, r1)
        CZ = C @ Z
        t = target[a:b]
        g = side.csr(r0, r1, t) @ za - CZ[:, len(iu):]
        G = np.empty((mb, K, K))
        G[:, iu, ju] = CZ[:, : len(iu)]
        G[:, ju, iu] = CZ[:, : len(iu)]
        # t^2 - 2 t c + c^2 summed per row, for the noise: sum (t - c)^2 over the block
        cb = other_bias[side.indices[a:b]]
        tt += float(np.dot(t - cb, t - cb))
        Lam = G * alpha
        Lam[:, np.arange(K), np.arange(K)] += prior_prec
        pm = prior_mean[r0:r1] if prior_mean.ndim == 2 else prior_mean[None, :]
        h = alpha * g + prior_prec * pm
        Lt = torch.from_numpy(Lam)
        L, info = torch.linalg.cholesky_ex(Lt)
        if bool((info != 0).any()):
            raise np.linalg.LinAlgError("a row's conditional precision is not positive definite")
        mean = torch.cholesky_solve(torch.from_numpy(h)[:, :, None], L)
        eps = torch.from_numpy(rng.standard_normal((mb, K, 1)))
        noise = torch.linalg.solve_triangular(L.mT, eps, upper=True)
        x = (mean + noise)[:, :, 0].numpy()
        out[r0:r1] = x
        if out_mean is not None:
            out_mean[r0:r1] = mean[:, :, 0].numpy()
        # sum over rows of x^T G x - 2 x^T (g) where g excludes the bias offset: recompute with
        # the data-only linear term (g already has the other side's bias removed)
        quad += float(np.einsum("bk,bkl,bl->", x, G, x) - 2.0 * np.einsum("bk,bk->", x, g))
    return quad, tt


def _cg_implicit(
    rng: np.random.Generator,
    X: sp.csr_matrix,
    XT: sp.csr_matrix,
    resid: np.ndarray,
    lamP: np.ndarray,
    mY: np.ndarray,
    lamY: np.ndarray,
    Y: np.ndarray,
    tol: float,
    max_iter: int,
    diagXtX: np.ndarray,
) -> int:
    """Draw ``Y`` (n, k) in place from its Gaussian conditional given ``resid = P - m_P`` (m, k).

    Per column ``k``: precision ``lamY_k I + lamP_k X^T X``, linear term
    ``lamY_k mY_k + lamP_k X^T resid_k``. The draw solves the system with a right-hand side
    perturbed by ``sqrt(lamY) eps_1 + X^T (sqrt(lamP) eps_2)`` (so the solution has exactly the
    conditional's covariance), by Jacobi-preconditioned CG on all columns at once, warm-started at
    the current ``Y``. Returns the iterations used.
    """
    n, k = Y.shape
    m = X.shape[0]
    rhs = lamY * mY + np.sqrt(lamY) * rng.standard_normal((n, k))
    rhs += XT @ (lamP * resid + np.sqrt(lamP) * rng.standard_normal((m, k)))

    def op(V: np.ndarray) -> np.ndarray:
        return lamY * V + XT @ (lamP * (X @ V))

    Minv = 1.0 / (lamY + diagXtX[:, None] * lamP)
    R = rhs - op(Y)
    bnorm = np.sqrt((rhs * rhs).sum(0))
    Zp = Minv * R
    Pd = Zp.copy()
    rz = (R * Zp).sum(0)
    it = 0
    for it in range(1, max_iter + 1):
        AP = op(Pd)
        step = rz / np.maximum((Pd * AP).sum(0), 1e-300)
        Y += step * Pd
        R -= step * AP
        if bool((np.sqrt((R * R).sum(0)) <= tol * bnorm).all()):
            break
        Zp = Minv * R
        rz_new = (R * Zp).sum(0)
        Pd *= rz_new / np.maximum(rz, 1e-300)
        Pd += Zp
        rz = rz_new
    return it


def gibbs_mf(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    *,
    rank: int = 10,
    sweeps: int = 200,
    burn_in: int | None = None,
    implicit: bool = True,
    seed: int | None = 0,
    init_std: float = 0.1,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 200,
    rao_blackwell: bool = True,
    max_nnz: int = 1 << 20,
    callback: Callable[[int, "_State"], None] | None = None,
) -> GibbsResult:
    """Sample the posterior of Bayesian biased MF (see the module docstring); float64 throughout.

    ``users``/``items``: 0-based int arrays, ``values`` the ratings, ``shape`` ``(m, n)``; pairs
    must be distinct. ``burn_in`` defaults to ``sweeps // 4``; ``keep`` thinned samples of the
    factors are kept from the sweeps after it. ``callback(sweep, state)`` runs after each sweep.
    """
    t0 = time.perf_counter()
    m, n = int(shape[0]), int(shape[1])
    if burn_in is None:
        burn_in = sweeps // 4
    burn_in = min(max(int(burn_in), 0), sweeps - 1)
    rng = np.random.default_rng(seed)
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    mu = float(vals.mean())
    order_u = np.lexsort((items, users))
    u_side = _Side(users[order_u], items[order_u].astype(np.int32), vals[order_u] - mu, m, n,
                   max_nnz)
    order_i = np.lexsort((users, items))
    i_side = _Side(items[order_i], users[order_i].astype(np.int32), vals[order_i] - mu, n, m,
                   max_nnz)
    k = rank
    K = k + 1
    Xu = init_std * rng.standard_normal((m, K))  # [P, bu]
    Xi = init_std * rng.standard_normal((n, K))  # [Q, bi]
    Xu[:, k] = 0.0
    Xi[:, k] = 0.0
    mean_u = np.zeros((m, K)) if rao_blackwell else None
    alpha = 1.0
    hyp_u = (np.zeros(K), np.ones(K))
    hyp_i = (np.zeros(K), np.ones(K))
    if implicit:
        nu = np.maximum(u_side.counts, 1).astype(np.float64)
        X = u_side.csr(0, m, np.repeat(nu**-0.5, u_side.counts))
        XT = X.T.tocsr()
        diagXtX = np.asarray(X.multiply(X).sum(0)).ravel()
        Y = init_std * rng.standard_normal((n, k))
        hyp_y = (np.zeros(k), np.ones(k))
        implicit_mean = X @ Y
    else:
        Y = None
    Pm, Qm = np.zeros((m, K)), np.zeros((n, K))  # running sums of [P, bu] and [Q, bi]
    Ym = np.zeros((n, k)) if implicit else None
    mPm, mQm = np.zeros(K), np.zeros(K)
    alpha_sum = 0.0
    n_avg = 0
    rmse: list[float] = []
    cnt_u = u_side.counts > 0
    cnt_i = i_side.counts > 0
    for sweep in range(1, sweeps + 1):
        if implicit:
            assert Y is not None
            resid = Xu[:, :k] - hyp_u[0][:k]
            _cg_implicit(rng, X, XT, resid, hyp_u[1][:k], hyp_y[0], hyp_y[1], Y, cg_tol,
                         cg_max_iter, diagXtX)
            implicit_mean = X @ Y
            pm = np.empty((m, K))
            pm[:, :k] = hyp_u[0][:k] + implicit_mean
            pm[:, k] = hyp_u[0][k]
        else:
            pm = hyp_u[0]
        if sweep > burn_in:  # the item state the user draw is conditioned on
            Qm += Xi
            mQm += hyp_i[0]
            mPm += hyp_u[0]
        _sample_rows(rng, u_side, Xi[:, :k], Xi[:, k], u_side.vals, pm, hyp_u[1], alpha, Xu,
                     mean_u)
        # rows with no ratings keep a prior draw; hyper-parameters use rated rows only
        if implicit:
            hyp_u = _hyper(rng, Xu[cnt_u], np.concatenate(
                [implicit_mean[cnt_u], np.zeros((int(cnt_u.sum()), 1))], 1))
        else:
            hyp_u = _hyper(rng, Xu[cnt_u])
        quad, tt = _sample_rows(rng, i_side, Xu[:, :k], Xu[:, k], i_side.vals, hyp_i[0],
                                hyp_i[1], alpha, Xi, None)
        hyp_i = _hyper(rng, Xi[cnt_i])
        if implicit:
            hyp_y = _hyper(rng, Y)
        sse = max(quad + tt, 0.0)
        nnz = len(vals)
        alpha = float(_gamma(rng, _A0 + nnz / 2, _B0 + sse / 2))
        rmse.append(math.sqrt(sse / nnz))
        if sweep > burn_in:
            Pm += mean_u if rao_blackwell else Xu  # type: ignore[operator]
            if Ym is not None:
                Ym += Y
            alpha_sum += alpha
            n_avg += 1
        if callback is not None:
            callback(sweep, _State(Xu, Xi, Y, alpha))
    Pm /= n_avg
    Qm /= n_avg
    mPm /= n_avg
    mQm /= n_avg
    return GibbsResult(
        mu=mu, P=Pm[:, :k], Q=Qm[:, :k], Y=None if Ym is None else Ym / n_avg,
        bu=Pm[:, k], bi=Qm[:, k], prior_P=(mPm[:k], hyp_u[1][:k]),
        prior_Q=(mQm[:k], hyp_i[1][:k]), prior_Y=None if not implicit else hyp_y,
        prior_bu=(float(mPm[k]), float(hyp_u[1][k])), prior_bi=(float(mQm[k]), float(hyp_i[1][k])),
        alpha=alpha_sum / n_avg, n_user_ratings=u_side.counts, n_item_ratings=i_side.counts,
        rmse_train=rmse, seconds=time.perf_counter() - t0,
    )


@dataclass
class _State:
    """The chain's current state, for callbacks."""

    Xu: np.ndarray
    Xi: np.ndarray
    Y: np.ndarray | None
    alpha: float
