"""Bayesian matrix factorization for any twice-differentiable elementwise loss: Metropolis-Hastings
with Laplace proposals built from autograd's per-entry derivatives.

The model is :mod:`.gibbs`'s with the loss as the likelihood. For user ``u`` and item ``i``, with
``mu`` the best constant of the loss (the mean for ``squared``, the logit of the mean for
``logistic``, the log of the mean for ``poisson``)::

    s_ui = mu + b_u + c_i + p_u . q_i                  (the score, on the loss's link scale)
    p(r_ui | s_ui) ∝ exp(-loss(s_ui, r_ui))             (the loss is the negative log-likelihood)
    x_u = [p_u, b_u] ~ N(m_U, diag(lambda_U)^-1),       y_i = [q_i, c_i] ~ N(m_I, diag(lambda_I)^-1)

and every column's ``(m, lambda)`` has libFM's Normal-Gamma hyper-prior, drawn exactly as in
:mod:`.gibbs` (:func:`.priors.normal_gamma`). The log posterior of a user's block, given the
items and hyper-parameters, is ``log pi(x) = -sum_i loss(s_ui, r_ui) - (x - m)^T Lambda (x - m)/2``.

One sweep updates every user block at once (batched over rows, no Python loop over them), then
the user hyper-parameters, then every item block, then the item hyper-parameters. A block's
update at its current value ``x``, with ``z_i = [q_i, 1]`` and ``l'``, ``l''`` the first and
second derivatives of each entry's loss in its score (autograd,
:func:`autofact.objective.diagonal_derivatives`)::

    g(x) = sum_i l'_ui z_i + Lambda (x - m)
    H(x) = sum_i max(l''_ui, 0) z_i z_i^T + Lambda          (positive definite: H >= Lambda)
    x'   ~ q(. | x) = N(x - H(x)^-1 g(x), H(x)^-1)          (the Laplace proposal: a Newton step)
    accept x' with probability min(1, pi(x') q(x | x') / (pi(x) q(x' | x)))

``q(x | x')`` is the same construction at ``x'``. A negative ``l''`` (a loss that is not convex
there, such as a user's Cauchy loss) is clamped to 0, which keeps ``H`` positive definite; it
changes only the proposal, not what the chain targets.

**Exact:** the Metropolis-Hastings ratio uses the exact log posterior and the exact proposal
densities, so each block update leaves the exact conditional invariant, whatever the loss; the
hyper-parameter draws are exact Gibbs steps. The chain therefore targets the exact posterior of
the model above. For the squared loss the log posterior is quadratic, the proposal *is* the exact
conditional and every proposal is accepted (the sampler is then Gibbs sampling with the noise
precision fixed at 2: ``exp(-(r - s)^2)`` is ``N(s, 1/2)``).
**Approximate:** the proposal is a Gaussian fitted at the current point, so where the
conditional is far from Gaussian (few ratings and a strongly curved loss, a huber loss whose
residuals sit beyond ``delta``) proposals are rejected more often and the chain mixes more
slowly; ``acceptance`` reports the rate. The chain is finite (``sweeps``, the first ``burn_in``
discarded). Predictions plug the posterior means of the factors and biases into the inverse link
(``sigmoid(E[s])``, not ``E[sigmoid(s)]``), as :mod:`.gibbs` does for the ratings. The loss's own
scale is the likelihood's: no noise or dispersion level is sampled (``huber(1.0)`` is unit
variance in its centre); scale the loss to model another noise level.

How the posterior is kept: running means of the factors, biases and hyper-means (the prior of
an unknown user or item), one factorization's worth of memory. The means are Rao-Blackwellized:
a sweep adds ``a x' + (1 - a) x`` (the expected next state given ``x`` and ``x'``, with ``a`` the
acceptance probability) plus ``x_hat - x'`` (``x_hat`` the proposal's mean; zero in expectation
under the proposal), i.e. ``x_hat - (1 - a)(x' - x)``. Where every proposal is accepted (the
squared loss) that is the conditional mean, as :mod:`.gibbs` averages; the plain states have the
same expectation and more Monte Carlo noise.

The chain starts from ``warm_start`` (5) Newton steps per side under the initial prior
(``m = 0``, ``lambda = 1``), each taken where it raises the log posterior: started near zero
the factors' scale and their sampled precision ``lambda`` can stay small together for hundreds
of sweeps (on planted Poisson data held-out deviance 0.80 after 100 sweeps from near zero, 0.64
from the warm start, where a chain started at a MAP solution reached 0.62). The warm start moves
only where the chain begins, not what it targets. Measured on 10% validation splits carved
from ml-100k ``u1.base`` and ``u3.base`` (rank 10, 100 sweeps, ``benchmarks/laplace_validation.py``):
huber RMSE 0.934 / 0.941 against ``als``'s 0.957 / 0.969 at its default ``beta``; liked (rating
>= 4) by logistic: log loss 0.570 / 0.544 against 0.604 / 0.596 (0.553 / 0.532 without the warm
start, which helps huber by 0.01 RMSE instead); acceptance 0.91 (huber) and 0.58-0.72
(logistic); 5-26x ``als``'s time (one thread each, interleaved, on a busy 2-core machine;
``benchmarks/results/2026-11-28_2315_laplace_validation.md``).

Memory while sampling: the ratings in both orientations (indices int64, values float64: 48 bytes
a rating) and temporaries bounded by ``max_nnz`` ratings at a time (the per-entry derivatives and
each row's ``K x K`` system, ``K`` = rank + 1). Each sweep evaluates the loss and its two
derivatives twice per rating per side (at ``x`` and at ``x'``).

>>> res = laplace_mf([0, 0, 1, 1, 2], [0, 1, 0, 2, 1], [1.0, 0.0, 1.0, 0.0, 1.0], (3, 3),
...                  loss="logistic", rank=2, sweeps=20)
>>> res.predict([0, 2], [2, 0]).shape
(2,)
>>> 0.0 < res.acceptance_rate <= 1.0
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._newton import damped_newton
from ..errors import FitError
from ..losses import Loss, check_targets, get_loss
from ..objective import check_loss, diagonal_derivatives, loss_probe
from ..sparse import csr_tensor as _csr
from ..threads import use_threads
from .gibbs import GibbsResult
from .priors import check_chain, coo_arguments, normal_gamma

__all__ = ["LaplaceResult", "laplace_mf", "best_constant", "check_sampler_loss", "DEFAULT_SWEEPS"]


@dataclass
class LaplaceResult(GibbsResult):
    """:class:`~.gibbs.GibbsResult` (posterior means; ``mu`` the loss's best constant, ``alpha``
    fixed at 1: the likelihood is ``exp(-loss)``) plus the sampler's record.

    ``acceptance``: per sweep, the fraction of proposals accepted for users and for items.
    ``loss_train``: per sweep, the mean training loss per rating at the sampled state.
    """

    acceptance: list[tuple[float, float]] = field(default_factory=list)
    loss_train: list[float] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """The fraction of all proposals accepted (users and items, every sweep)."""
        if not self.acceptance:
            return float("nan")
        return float(np.mean(self.acceptance))


class _Side:
    """The ratings seen from one side (rows = users, or rows = items), sorted by row, cut into
    row blocks of at most ``max_nnz`` ratings (a single row may exceed it)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int,
                 n_cols: int, max_nnz: int) -> None:
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        self.cols = torch.from_numpy(cols.astype(np.int64))
        self.vals = torch.from_numpy(np.asarray(vals, dtype=np.float64)[order])
        self.counts = np.bincount(rows, minlength=n_rows)
        self.indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.indptr[1:])
        self.n_rows, self.n_cols = n_rows, n_cols
        self.blocks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        r0 = 0
        while r0 < n_rows:
            r1 = int(np.searchsorted(self.indptr, self.indptr[r0] + max_nnz, side="right")) - 1
            r1 = min(max(r1, r0 + 1), n_rows)
            a = int(self.indptr[r0])
            crow = torch.from_numpy(self.indptr[r0 : r1 + 1] - a)
            local = torch.repeat_interleave(torch.arange(r1 - r0), torch.diff(crow))
            self.blocks.append((r0, r1, crow, local))
            r0 = r1


@dataclass
class _Eval:
    """A block's rows at one point ``x``: log posterior, Cholesky factor of ``H``, the Laplace
    mean ``x - H^-1 g``, and whether all of it is finite."""

    logpost: torch.Tensor
    L: torch.Tensor
    mean: torch.Tensor
    ok: torch.Tensor
    loss: torch.Tensor  # each row's summed loss


def _evaluate(loss: Loss, side: _Side, blk: tuple[int, int, torch.Tensor, torch.Tensor],
              x: torch.Tensor, za: torch.Tensor, zz: torch.Tensor, tri: tuple[torch.Tensor, ...],
              offset: torch.Tensor, m: torch.Tensor, lam: torch.Tensor) -> _Eval:
    """Everything the MH step needs about the rows ``x`` (mb, K) of block ``blk``."""
    r0, r1, crow, local = blk
    a, b = int(side.indptr[r0]), int(side.indptr[r1])
    mb, K = x.shape
    cols = side.cols[a:b]
    target = side.vals[a:b]
    # index_select: several times faster than fancy indexing on the CPU
    score = (x.index_select(0, local) * za.index_select(0, cols)).sum(1)
    score += offset.index_select(0, cols)
    kept: list[torch.Tensor] = []

    def total(s: torch.Tensor) -> torch.Tensor:
        entries = loss(s, target)
        kept.append(entries)
        return entries.sum()

    g1, g2, _ = diagonal_derivatives(total, score)
    entries = kept[-1].detach()
    row_loss = torch.zeros(mb, dtype=x.dtype).index_add_(0, local, entries)
    g = _csr(crow, cols, g1, (mb, side.n_cols)) @ za
    hu = _csr(crow, cols, g2.clamp_min(0.0), (mb, side.n_cols)) @ zz
    iu, ju = tri[0], tri[1]
    H = torch.empty(mb, K, K, dtype=x.dtype)
    H[:, iu, ju] = hu
    H[:, ju, iu] = hu
    d = x - m
    g += lam * d
    H.diagonal(dim1=1, dim2=2).add_(lam)
    ok = torch.isfinite(row_loss) & torch.isfinite(g).all(1) & torch.isfinite(hu).all(1)
    if not bool(ok.all()):
        H[~ok] = torch.diag(lam)  # a placeholder the step never uses: those rows are rejected
        g[~ok] = 0.0
    L, info = torch.linalg.cholesky_ex(H)
    ok &= info == 0
    mean = x - torch.cholesky_solve(g[:, :, None], L)[:, :, 0]
    logpost = -row_loss - 0.5 * (lam * d * d).sum(1)
    return _Eval(logpost, L, mean, ok & torch.isfinite(mean).all(1), row_loss)


def _log_det_half(L: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)


def _mh_side(loss: Loss, side: _Side, X: torch.Tensor, other: torch.Tensor, mu: float,
             hyp: tuple[np.ndarray, np.ndarray], gen: torch.Generator, out_mean: torch.Tensor,
             sweep: int, what: str, greedy: bool = False) -> tuple[int, float, int]:
    """One MH step with the Laplace proposal for every row of ``X`` (n_rows, K) = ``[f, b]``,
    in place, given ``other`` (n_cols, K) = ``[f, b]`` of the other side. Writes the
    Rao-Blackwellized mean ``a x' + (1 - a) x`` of each row into ``out_mean``. Returns the rows
    with ratings whose proposal was accepted, the summed loss at the new state and the number of
    rows with ratings (a row without any samples its prior exactly: always accepted, not
    counted). ``greedy``: the warm start's step instead, the proposal's mean (a Newton step)
    taken where it raises the log posterior."""
    K = X.shape[1]
    k = K - 1
    za = torch.cat([other[:, :k], torch.ones(other.shape[0], 1, dtype=X.dtype)], 1)
    iu, ju = torch.triu_indices(K, K)
    zz = za[:, iu] * za[:, ju]
    offset = other[:, k] + mu
    m = torch.from_numpy(hyp[0])
    lam = torch.from_numpy(hyp[1])
    rated = torch.from_numpy(side.counts > 0)
    # every row's randomness drawn at once: the chain does not depend on the row blocks
    eps_all = torch.randn(side.n_rows, K, 1, dtype=X.dtype, generator=gen)
    u_all = torch.rand(side.n_rows, dtype=X.dtype, generator=gen)
    accepted = 0
    total_loss = 0.0
    for blk in side.blocks:
        r0, r1 = blk[0], blk[1]
        x = X[r0:r1]
        cur = _evaluate(loss, side, blk, x, za, zz, (iu, ju), offset, m, lam)
        if not bool(cur.ok.all()):
            bad = int((~cur.ok).nonzero()[0, 0]) + r0
            where = f"sweep {sweep}" if sweep else "the warm start"
            raise FitError(
                f"{where}: the loss or its derivatives are not finite at the current "
                f"state of {what} {bad} (a score out of the loss's domain, or an overflow); "
                "check the loss on these ratings, or use a MAP solver such as solver='lbfgs'",
                epoch=sweep,
            )
        if greedy:
            new = _evaluate(loss, side, blk, cur.mean, za, zz, (iu, ju), offset, m, lam)
            take = new.ok & (new.logpost >= cur.logpost)
            X[r0:r1] = torch.where(take[:, None], cur.mean, x)
            out_mean[r0:r1] = X[r0:r1]
            accepted += int(take[rated[r0:r1]].sum())
            total_loss += float(torch.where(take, new.loss, cur.loss).sum())
            continue
        eps = eps_all[r0:r1]
        prop = cur.mean + torch.linalg.solve_triangular(cur.L.mT, eps, upper=True)[:, :, 0]
        log_fwd = -0.5 * (eps[:, :, 0] ** 2).sum(1) + _log_det_half(cur.L)
        new = _evaluate(loss, side, blk, prop, za, zz, (iu, ju), offset, m, lam)
        w = (new.L.mT @ (x - new.mean)[:, :, None])[:, :, 0]
        log_rev = -0.5 * (w * w).sum(1) + _log_det_half(new.L)
        log_ratio = new.logpost - cur.logpost + log_rev - log_fwd
        log_ratio = torch.where(new.ok & torch.isfinite(log_ratio), log_ratio, -math.inf)
        a = torch.exp(log_ratio.clamp(max=0.0))
        take = u_all[r0:r1] < a
        # E[next | x, x'] = a x' + (1 - a) x, plus mean - x' (zero mean under q(. | x)): for
        # a = 1 the conditional mean of the proposal, as Gibbs sampling's Rao-Blackwellized mean
        out_mean[r0:r1] = cur.mean - (1 - a[:, None]) * (prop - x)
        X[r0:r1] = torch.where(take[:, None], prop, x)
        accepted += int(take[rated[r0:r1]].sum())
        total_loss += float(torch.where(take, new.loss, cur.loss).sum())
    return accepted, total_loss, int(rated.sum())


def best_constant(loss: str | Loss, values: Any) -> float:
    """The constant score ``c`` minimizing ``sum_r loss(c, r)``: the mean for the squared loss,
    the logit of the mean for the logistic, the log of the mean for Poisson (damped Newton steps
    on autograd's derivatives, from the better of the mean and 0)."""
    loss = get_loss(loss)
    t = torch.tensor(np.asarray(values, dtype=np.float64))  # a copy: values may be read-only

    def value(c: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss(c.expand_as(t), t).sum())

    def derivatives(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g1, g2, _ = diagonal_derivatives(lambda s: loss(s, t).sum(), c.detach().expand_as(t)
                                         .clone())
        return g1.sum().reshape(1), g2.sum().reshape(1, 1)

    mean = float(t.mean())
    starts = [(c, value(torch.tensor([c], dtype=torch.float64))) for c in (mean, 0.0)]
    c0, v0 = min(starts, key=lambda cv: cv[1] if math.isfinite(cv[1]) else math.inf)
    if not math.isfinite(v0):
        return mean
    x = torch.tensor([c0], dtype=torch.float64)
    damped_newton(value, derivatives, x, 100, damping=1e-9, rtol=1e-12)
    c = float(x[0])
    return c if math.isfinite(c) else mean


def _loss_name(loss: Loss) -> str:
    return getattr(loss, "__qualname__", None) or repr(loss)


def check_sampler_loss(loss: Loss) -> None:
    """Refuse a loss the sampler cannot use: not elementwise (:func:`~autofact.objective.check_loss`),
    without curvature on the probe (``absolute``: its Laplace proposal has no Hessian), or with a
    second derivative that is not finite there."""
    check_loss(loss, torch.float64)
    name = _loss_name(loss)
    if not loss_probe(loss)[1]:
        raise ValueError(
            f"the Laplace-MH sampler (solver='gibbs' for a loss other than 'squared') needs a "
            f"loss with a non-zero second derivative; loss {name} has none on a probe (as "
            "'absolute'): use solver='lbfgs' or 'adam' for it"
        )
    # scores on both sides of 0/1 targets, and equal to them (where |r|^1.5 has no curvature)
    pred = torch.tensor([-2.0, -0.5, 0.0, 1.0, 0.5, 0.25, 2.0, 3.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0] * 4, dtype=torch.float64)
    _, g2, _ = diagonal_derivatives(lambda s: loss(s, target).sum(), pred)
    if not bool(torch.isfinite(g2).all()):
        raise ValueError(
            f"the Laplace-MH sampler (solver='gibbs' for a loss other than 'squared') needs "
            f"finite second derivatives; loss {name} has {g2.tolist()} at scores "
            f"{pred.tolist()} with targets 0/1: make it twice differentiable, or use "
            "solver='lbfgs' or 'adam' for it"
        )


#: sweeps of :func:`laplace_mf` by default (and of ``MatrixFactorization(solver='gibbs')`` with
#: a loss other than squared and ``epochs=None``): the number its validation runs used
DEFAULT_SWEEPS = 100


def laplace_mf(
    users: Any,
    items: Any = None,
    values: Any = None,
    shape: tuple[int, int] | None = None,
    *,
    loss: str | Loss = "squared",
    rank: int = 10,
    sweeps: int = DEFAULT_SWEEPS,
    burn_in: int | None = None,
    seed: int | None = 0,
    init_std: float = 0.1,
    warm_start: int = 5,
    max_nnz: int = 1 << 18,
    n_threads: int | None = None,
    implicit: bool = False,
    callback: Callable[[int, float, Callable[[], LaplaceResult]], bool | None] | None = None,
) -> LaplaceResult:
    """Sample the posterior of Bayesian biased MF under ``loss`` (see the module docstring);
    float64 arithmetic.

    Give the training ratings as 0-based COO arrays ``users, items, values`` and ``shape`` =
    ``(n_users, n_items)``, or as one :class:`autofact.Ratings`. ``(user, item)`` pairs must be
    distinct. ``loss``: a built-in name, a ``'module:function'`` path or a callable
    ``loss(pred, target) -> per-entry tensor``, elementwise and with a second derivative.
    ``burn_in`` (default ``sweeps // 10``) sweeps are discarded, the rest averaged; before them
    ``warm_start`` Newton steps per side move the start towards a mode (module docstring).
    ``callback(sweep, mean_loss, means)`` runs after each sweep (``mean_loss``: the training loss
    per rating at the sampled state; ``means()``: the posterior means so far, as the result);
    returning ``True`` stops sampling. ``implicit=True`` is refused (the implicit term is
    sampled for the squared loss only, by :func:`~.gibbs.gibbs_mf`). Raises
    :class:`~autofact.FitError` if the loss or its derivatives turn non-finite at an accepted
    state.
    """
    t0 = time.perf_counter()
    users, items, values, shape = coo_arguments(users, items, values, shape, "laplace_mf")
    burn_in = check_chain(rank, sweeps, burn_in)
    if (isinstance(warm_start, bool) or not isinstance(warm_start, int | np.integer)
            or warm_start < 0):
        raise ValueError(f"warm_start must be an int >= 0 (0: none), got {warm_start!r}")
    if implicit:
        raise ValueError(
            "implicit=True (SVD++'s implicit term) is sampled for the squared loss only "
            "(autofact.solvers.gibbs); use implicit=False with this loss"
        )
    loss_fn = get_loss(loss)
    check_sampler_loss(loss_fn)
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if not (users.shape == items.shape == vals.shape and users.ndim == 1):
        raise ValueError(
            f"users, items and values must be 1-D arrays of one length, got shapes "
            f"{users.shape}, {items.shape}, {vals.shape}"
        )
    if len(vals) == 0:
        raise ValueError("laplace_mf needs at least one rating, got none")
    m, n = int(shape[0]), int(shape[1])
    for name, idx, size in (("users", users, m), ("items", items, n)):
        if idx.min() < 0 or idx.max() >= size:
            raise ValueError(
                f"{name} must be 0-based indices below shape = {(m, n)}, got values in "
                f"[{idx.min()}, {idx.max()}]"
            )
    if not np.isfinite(vals).all():
        raise ValueError("values must be finite; drop or impute the NaN/inf ratings first")
    check_targets(loss_fn, vals)
    K = int(rank) + 1
    with use_threads(min(len(vals), max_nnz) * K * (K + 1) / 2, n_threads):
        return _sample(loss_fn, users, items, vals, (m, n), rank=int(rank), sweeps=int(sweeps),
                       burn_in=burn_in, seed=seed, init_std=float(init_std), max_nnz=max_nnz,
                       warm_start=warm_start, callback=callback, t0=t0)


def _sample(loss: Loss, users: np.ndarray, items: np.ndarray, vals: np.ndarray,
            shape: tuple[int, int], *, rank: int, sweeps: int, burn_in: int, seed: int | None,
            init_std: float, max_nnz: int, warm_start: int,
            callback: Callable[[int, float, Callable[[], LaplaceResult]], bool | None] | None,
            t0: float) -> LaplaceResult:
    m, n = shape
    nnz = len(vals)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    mu = best_constant(loss, vals)
    u_side = _Side(users, items, vals, m, n, max_nnz)
    i_side = _Side(items, users, vals, n, m, max_nnz)
    k, K = rank, rank + 1
    Xu = torch.from_numpy(init_std * rng.standard_normal((m, K)))  # [P, bu]
    Xi = torch.from_numpy(init_std * rng.standard_normal((n, K)))  # [Q, bi]
    Xu[:, k] = 0.0
    Xi[:, k] = 0.0
    mean_u, mean_i = Xu.clone(), Xi.clone()
    hyp_u = (np.zeros(K), np.ones(K))
    hyp_i = (np.zeros(K), np.ones(K))
    cnt_u, cnt_i = u_side.counts > 0, i_side.counts > 0
    Pm, Qm = torch.zeros(m, K, dtype=torch.float64), torch.zeros(n, K, dtype=torch.float64)
    mPm, mQm = np.zeros(K), np.zeros(K)
    n_avg = 0
    acceptance: list[tuple[float, float]] = []
    loss_train: list[float] = []

    def means() -> LaplaceResult:
        """The posterior means so far (before any sweep is averaged: the last sweep's)."""
        if n_avg == 0:
            P, Q, mP, mQ, c = mean_u, mean_i, hyp_u[0], hyp_i[0], 1
        else:
            P, Q, mP, mQ, c = Pm, Qm, mPm, mQm, n_avg
        Pn, Qn = (P / c).numpy(), (Q / c).numpy()
        return LaplaceResult(
            mu=mu, P=Pn[:, :k].copy(), Q=Qn[:, :k].copy(), Y=None, bu=Pn[:, k].copy(),
            bi=Qn[:, k].copy(), prior_P=mP[:k] / c, prior_Q=mQ[:k] / c,
            prior_bu=float(mP[k] / c), prior_bi=float(mQ[k] / c), alpha=1.0,
            n_user_ratings=u_side.counts, n_item_ratings=i_side.counts,
            seconds=time.perf_counter() - t0, acceptance=list(acceptance),
            loss_train=list(loss_train),
        )

    with torch.no_grad():
        for _ in range(warm_start):  # Newton steps to a mode under the initial prior
            _mh_side(loss, u_side, Xu, Xi, mu, hyp_u, gen, mean_u, 0, "user", greedy=True)
            _mh_side(loss, i_side, Xi, Xu, mu, hyp_i, gen, mean_i, 0, "item", greedy=True)
        for sweep in range(1, sweeps + 1):
            averaging = sweep > burn_in
            if averaging:  # the priors the draws below are conditioned on
                mPm += hyp_u[0]
                mQm += hyp_i[0]
            acc_u, _, rows_u = _mh_side(loss, u_side, Xu, Xi, mu, hyp_u, gen, mean_u, sweep,
                                        "user")
            hyp_u = normal_gamma(rng, Xu.numpy()[cnt_u])
            acc_i, total, rows_i = _mh_side(loss, i_side, Xi, Xu, mu, hyp_i, gen, mean_i, sweep,
                                            "item")
            hyp_i = normal_gamma(rng, Xi.numpy()[cnt_i])
            acceptance.append((acc_u / max(rows_u, 1), acc_i / max(rows_i, 1)))
            loss_train.append(total / nnz)
            if averaging:
                Pm += mean_u
                Qm += mean_i
                n_avg += 1
            if callback is not None and callback(sweep, loss_train[-1], means):
                break
    return means()
