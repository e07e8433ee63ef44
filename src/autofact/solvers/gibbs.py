"""Bayesian matrix factorization by Gibbs sampling: BPMF with biases, per-user and per-item noise.

The model, for user ``u`` and item ``i`` with ``mu`` the training mean::

    r_ui = mu + b_u + c_i + p_u . q_i + e_ui,     e_ui ~ N(0, 1 / (alpha tau_u kappa_i))

    p_u ~ N(m_P, diag(lambda_P)^-1)      (implicit=True: N(m_P + |N(u)|^-1/2 sum_{j in N(u)} y_j, ..))
    q_i ~ N(m_Q, diag(lambda_Q)^-1),     y_j ~ N(m_Y, diag(lambda_Y)^-1)
    b_u ~ N(m_b, 1 / lambda_b),          c_i ~ N(m_c, 1 / lambda_c)
    tau_u, kappa_i ~ Gamma(a, rate=a)    (noise="both"; a = noise_shape; "user"/"item": one of
                                          them, "global": both fixed at 1)

Every column of every factor block, and each bias block, has libFM's Normal-Gamma hyper-prior
(``lambda ~ Gamma(1, 1)``, ``m | lambda ~ N(0, 1/lambda)``), and ``alpha ~ Gamma(1, 1)``: the
regularization strength and the noise level are sampled, not tuned (Rendle, "Factorization
Machines with libFM", TIST 2012; Salakhutdinov & Mnih, ICML 2008). The per-user and per-item noise
precisions ``tau_u``, ``kappa_i`` let noisy raters and divisive items count less, as in robust
Bayesian MF (Lakshminarayanan, Bouchard & Archambeau, AISTATS 2011); on validation splits of
ml-100k, ml-latest-small and filmtrust they lower RMSE by 0.003-0.007. ``implicit=True`` adds
SVD++'s implicit term (Koren, KDD 2008) written as a prior: a user's factor is centred on the
normalized sum of factors ``y_j`` of the items they rated.

One sweep draws, in turn: ``Y`` (implicit only); every user block ``x_u = [p_u, b_u]`` at once;
the user hyper-parameters; ``alpha`` and ``tau`` (from the residual sums the user draw leaves);
every item block ``[q_i, c_i]`` at once; the item hyper-parameters; ``kappa``. A user block's
conditional, with ``z_i = [q_i, 1]`` and ``w_ui = tau_u kappa_i``, is Gaussian::

    Lambda_u = diag(lambda) + alpha sum_{i in N(u)} w_ui z_i z_i^T
    h_u      = diag(lambda) m_u + alpha sum_{i in N(u)} w_ui (r_ui - mu - c_i) z_i
    x_u      = L_u^-T (L_u^-1 h_u + eps),    Lambda_u = L_u L_u^T,   eps ~ N(0, I)

``Lambda_u`` for all users at once is one sparse @ dense product (``vec Lambda = W @ vec(z z^T)``);
the Cholesky factorization, with the forward solve for ``L^-1 h`` riding along as an extra column,
and the back substitution (draw and mean together) are K vectorized steps over all rows (rows
last): nothing loops over rows in Python, and at K = 11 on ml-100k's ~1000 rows a side this takes
0.6x the time of batched LAPACK (one thread; 0.2x on two), whose per-matrix overhead dominates
such small systems (issue 9). ``Y`` given the user
factors is a Bayesian linear regression per column, drawn by solving a perturbed system
(Papandreou & Yuille, 2010) with conjugate gradients warm-started at the previous draw: exact
when the solve is (``cg_tol``), but by default the solve stops after ``cg_max_iter=3``
iterations, which makes the ``Y`` draw approximate. Measured on the validation splits below
(ml-100k u1, seed 0): 3 iterations a sweep gave 0.8921 RMSE, a solve to ``1e-6`` (~40 iterations
a sweep) 0.8928, 1e-2 (14) 0.8928, 2 iterations 0.8918 but 0.8309 against 0.8246 on
ml-latest-small, 1 iteration 0.8946; the ``Y`` draw then costs ~8 sparse products a sweep
(``X @ Y`` is carried along, not recomputed).

**Exact:** every other draw is from the model's exact conditional, so with an exact ``Y`` solve
(or ``implicit=False``) the chain targets the exact posterior. **Approximate:** the chain is
finite (``sweeps``, the first ``burn_in`` discarded), and predictions use the posterior means
of the factors and biases, ``E[b_u] + E[c_i] + E[p_u] . E[q_i]``, rather than the posterior mean
of the product: this drops the posterior covariance of ``p_u`` and ``q_i``. On the validation
splits it predicts as well as averaging the products of all kept samples (0.899 against 0.899
RMSE on ml-100k, 0.777 against 0.778 on filmtrust) and better than averaging any bounded number
of them (16 samples: 0.903).

How the posterior is kept: the running means of ``P``, ``Q`` (and ``Y``), of the biases and of
the column means ``m`` (the prior of an unknown user or item), i.e. one factorization's worth of
memory, whatever the number of sweeps. The means are Rao-Blackwellized: the mean of each draw's
Gaussian conditional is averaged, not the draw (same expectation, less Monte Carlo noise).

Where the chain starts (``init``, issue 10, item 4). ``'spectral'`` (the default): the item
biases and user biases at their conditional means given the start's hyper-parameters
(``sum t / (count + 1)``, ``t = r - mu``, items first), and the item factors from a truncated SVD
of what the biases leave (unrated cells zero), by subspace iteration from ``k`` random columns
(Cholesky QR between products, in float32; until the item subspace settles, at most 10 pairs
of products: 7 pairs and 0.9 s at 9M generated ratings, a third of a sweep; 6 pairs and 4 ms
on ml-100k, half a sweep). Unrated cells scale the singular values by the
density ``rho``, so the balanced factors ``U diag(s / rho)^1/2``, ``V diag(s / rho)^1/2`` have
mean squares ``s / (rho m)`` and ``s / (rho n)``: their inverses are the start's prior
precisions of the user and item factor columns. Only the start changes: the first sweep
draws every user from its exact conditional given these items, and every later draw is as
before, so the chain (and its stationary distribution) is the same Gibbs sampler; it only
spends fewer sweeps on leaving its start. ``'random'``: factors ``N(0, init_std^2)``, biases 0,
unit precisions, the start before issue 10: the user factors are prior noise (``lambda_P`` ~ 1.4)
while the item factors stay small (``lambda_Q`` ~ 40), and the signal grows a few per cent a
sweep. Held-out RMSE by sweep (seed 0, the model's default fit; random -> spectral): ml-100k u1
sweep 1 0.994 -> 0.944, sweep 4 0.946 -> 0.920 (LIBMF k=32: 0.920-0.921 from run to run,
reached at sweep 9 -> 4 or 5);
ml-latest-small sweep 1 0.917 -> 0.879 (LIBMF 0.881: sweep 5 -> 1); 10M generated ratings at the
ML-25M density sweep 1 1.022 -> 0.556 (LIBMF 0.632: sweep 6 -> 1); final RMSE 0.9033 -> 0.9031
and 0.8305 -> 0.8300; 1M generated (28 ratings a user) sweep 1 1.046 -> 0.899, sweep 8 1.006 ->
0.765. Filmtrust (1.1 % dense) is the exception: sweeps 1-5 0.802-0.788 -> 0.835-0.798, ahead
from sweep 7 (0.7833 -> 0.7781), final 0.7632 -> 0.7621. ``init_std`` then only sets the
directions without spectrum (and ``Y`` with ``implicit=True``).

During burn-in the same sums hold a provisional mean, which is what ``callback``'s ``means()``
(the model's validation RMSE, a fit stopped early) sees: restarted at the first two sweeps (the
first draws users at the start's hyper-parameters, not sampled ones; from the random start: at
every sweep up to ``burn_in // 2``, while the chain leaves its small initial factors) and at
every later burn-in sweep whose training RMSE fell by more than 2 % from the sweep before (the
chain is still moving), and restarted once more at the first kept sweep, so the result is the
mean of the kept sweeps only (and the sweep budget, which looks only at kept sweeps, is not
affected by it). With validation data and ``patience='auto'`` (13 sweeps; any improvement
counts) the spectral start's chain reaches its plateau sooner, and a wander of the kept mean
can outlast the patience: ml-100k u3 and ml-latest-small run all 130 sweeps as before, u1 stops
at 100 (test RMSE 0.9035; the random start ran 130, 0.9033) and filmtrust at 33 (0.7651,
against 123 and 0.7630; without patience 0.7621 against 0.7632).

Not adopted (measured): a warm start by noise-free sweeps from the random start (conditional
means: an ALS sweep at the initial hyper-parameters) does not leave the origin faster: with the
initial prior precision 1 it overfits (ml-100k u1 held-out 1.04 after it, 1M generated 1.16)
and with 10 or 50 it collapses to the biases; a larger ``init_std`` (0.3, 1.0) hardly (1M
generated: 0.966 at sweep 10, against 0.976).

Memory while sampling (issue 11, item 3: a process's peak within 1.5x its ratings at 12 bytes,
its factors and one copy of them at 4 bytes a parameter, plus the torch baseline, at 25M ratings
and rank 32 with one and two processes): the caller's ratings, used as they are (int32 indices,
float32 values, sorted by user and item, as a :class:`~autofact.Ratings` holds them; a shared
chain's users by row pointers, not a remapped copy); the items' view is a second copy (8 bytes a
rating) only when it fits an eighth of ``max_memory``, else it is built a slab of item rows at a
time from the users' view whenever it is used (:class:`_Columns`: a binary search per user, a
counting sort by item; ~2 % of a sweep at 25M). Per row: the current draw (float64: the chain's
numbers) and the running sums of the conditional means (float32, added as each block is drawn;
the users' kept apart only in the burn-in sweeps whose restart is not known before the draw).
Everything else is workspace within ``max_memory`` (:func:`_block_sizes`): a row block's
per-rating temporaries (~48 bytes a rating, float64 weights and residuals), its float32 Gram
sums, its conditionals (``8 (K+1)^2`` bytes a row) made a few rows at a time, and the products
``z_a z_b`` of the other side's rows a few columns at a time (all of them once a side when
they fit an eighth of ``max_memory``: issue 10, item 4), besides one float32 copy of the
other side's rows (4 K bytes a row); with threads forming blocks ahead (:func:`gibbs_mf`'s
``n_threads``) the blocks in flight share the rest and ``max_nnz``. The spectral start keeps
the users' view's residuals in float32 (4 bytes a rating) when they fit a quarter of
``max_memory`` (no block or slab is alive then), and the whole items' view's too when both fit
(8 bytes a rating: its item products are then CSR products over the items' rows), else forms
them per block for each product (its item products scattered from the users' view, a slice
of ratings at a time), and holds three item-sized tables at its peak (the subspace before and
after a pair of products, and the next one's orthonormal basis); the random start's draws,
the first of the stream, are made after it from a copy of the generator. At the end the draws
and the views are freed before a shared chain gathers every user's rows, into one table that
then holds the factors C-ordered (what the model keeps, without a copy). Issue 11's 25M
ratings over 4 processes (``benchmarks/shards.py``): 474-481 MiB a process, 0.91-0.93 of the
bound held (516-519 MiB), where it was 515-524 (1.00-1.01).

Defaults, chosen on validation splits carved from the training data (10% of ml-100k u1.base and
u3.base, of the ml-latest-small and filmtrust 90% training parts): 130 sweeps (issue 9: against
100, 0.0005 lower mean RMSE, lower in 11 of 12 split and chain-seed pairs; 150 and 200 gave only
0.0001 and 0.0003 more at 1.15x and 1.5x the time;
``benchmarks/results/2026-11-28_2340_gibbs_sweeps.md``), burn-in a tenth, per-user and per-item
noise (``noise_shape`` 8: 4 to 16 within 0.0004), ``implicit=False``:
the implicit term (3 CG iterations) changed the validation RMSE by -0.0018 / -0.0022 on ml-100k
u1 / u3, +0.0005 on ml-latest-small and -0.0001 on filmtrust (mean of seeds 0 and 1; mean
-0.0009) at 1.4-1.9x the sampling time, and with its sweeps cut to 75 to pay for that time, by
-0.0008 / -0.0012 / +0.0028 / +0.0012 (mean +0.0005); the default fit's time budget on ml-100k
(issue 9: a quarter of myFM's) leaves no room for it (``benchmarks/gibbs_validation.py``,
``benchmarks/results/2026-11-28_2230_implicit_validation.md``). Normal-Wishart
hyper-priors (BPMF's full prior precision) measured a tie on average (better on MovieLens, worse
on filmtrust) and are not offered.

Sharded (issue 11, ``plan=``): processes that each hold every rating of their users run one
chain. The user draw is local; the hyper-parameters' column sums, the residual sum and, per item
row block, the data sums of the item conditionals (``G``, ``g``, ``sum tau t^2``: ``2 (K+1)(K+4)``
bytes an item) are all-reduced; every process then draws the same item rows and hyper-parameters
from the same random stream, in which it draws every user's noise and keeps its own users'
part. The chain is the one-process chain up to the order of floating-point sums (and the
one-process chain is unchanged by this: the same stream, drawn a block at a time). Cost and
limits: ``docs/scaling.md``.

Only the squared loss with Gaussian priors is sampled here: the Laplace proposal with a
Metropolis-Hastings correction for other losses that issue 9 asks for is not implemented, and
:mod:`.contract` routes other losses to the other solvers.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._memory import bincount_sliced, release_freed_memory
from ..sparse import csr_tensor as _csr
from ..threads import max_threads, use_threads, workers_for
from .priors import check_chain, coo_arguments, normal_gamma_sums
from .priors import normal_gamma as _hyper

if TYPE_CHECKING:
    from ..sharding import ShardPlan

__all__ = ["ChainState", "GibbsResult", "gibbs_mf", "NOISE_MODELS"]

NOISE_MODELS = ("both", "user", "item", "global")
INITS = ("spectral", "random")
# libFM's hyper-prior constants: alpha_lambda = beta_lambda = 1, gamma_0 = 1, mu_0 = 0, and a
# Gamma(1, 1) prior on the noise precision.
_A0, _B0, _GAMMA0 = 1.0, 1.0, 1.0


@dataclass
class GibbsResult:
    """What prediction needs from a sampled fit: posterior means (see the module docstring).

    ``P`` (m, k), ``Q`` (n, k): posterior-mean user and item factors (``P`` includes the implicit
    part). ``Y`` (n, k) or ``None``: posterior-mean implicit item factors. ``bu`` (m,), ``bi`` (n,):
    posterior-mean biases. ``mu``: the training mean. ``prior_P``, ``prior_Q``: posterior-mean
    column means of the user and item factors, ``prior_bu``, ``prior_bi`` those of the biases:
    what a user or item without training ratings gets. ``alpha``: posterior-mean noise precision
    (``1 / sqrt(alpha)`` is the typical error). ``n_user_ratings``, ``n_item_ratings``: training
    counts. ``rmse_train``: each sweep's training RMSE; ``seconds``: the sampling time;
    ``cg_iterations``: each sweep's conjugate-gradient iterations of the ``Y`` draw (implicit).
    ``rows``: the users whose rows ``P`` and ``bu`` hold, in order (``None``: every user): a
    process's own users, in the running means of a chain shared by processes (issue 11).
    """

    mu: float
    P: np.ndarray
    Q: np.ndarray
    Y: np.ndarray | None
    bu: np.ndarray
    bi: np.ndarray
    prior_P: np.ndarray
    prior_Q: np.ndarray
    prior_bu: float
    prior_bi: float
    alpha: float
    n_user_ratings: np.ndarray
    n_item_ratings: np.ndarray
    rmse_train: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cg_iterations: list[int] = field(default_factory=list)
    rows: np.ndarray | None = None

    def predict(self, users: Any, items: Any) -> np.ndarray:
        """Predictions for 0-based index pairs; an index out of range (e.g. ``-1``) or of a row
        without training ratings is an unknown user/item and gets its block's prior mean (so
        does a user not in ``rows``)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        ku = (users >= 0) & (users < len(self.n_user_ratings))
        ki = (items >= 0) & (items < self.Q.shape[0])
        ku[ku] = self.n_user_ratings[users[ku]] > 0
        ki[ki] = self.n_item_ratings[items[ki]] > 0
        if self.rows is not None:  # the users' positions among the rows held
            pos = np.minimum(np.searchsorted(self.rows, users), max(len(self.rows) - 1, 0))
            ku &= (self.rows[pos] == users) if len(self.rows) else False
            users = pos
        u = np.where(ku, users, 0)
        i = np.where(ki, items, 0)
        Pu = np.where(ku[:, None], self.P[u], self.prior_P)
        Qi = np.where(ki[:, None], self.Q[i], self.prior_Q)
        bu = np.where(ku, self.bu[u], self.prior_bu)
        bi = np.where(ki, self.bi[i], self.prior_bi)
        return self.mu + bu + bi + np.einsum("bk,bk->b", Pu, Qi)


@dataclass
class ChainState:
    """A chain after sweep ``sweep``: everything it needs to go on bit for bit (issue 11:
    checkpoints; :func:`gibbs_mf`'s ``on_state`` and ``resume``). Copies, never the live arrays.

    ``rows``: per user, in order (a chain shared by processes: this process's users' rows):
    the current draw ``P`` (m, k) and ``bu`` (m,), the running sums ``sum`` (m, k+1) of the
    conditional means, ``tau`` (per-user noise), ``implicit_mean`` (``X @ Y``). ``arrays``: the
    items' ``Q``, ``bi``, ``sum``, ``tau``, the hyper-parameters ``hyp_u.mean``/``.prec`` (and
    ``hyp_i``, ``hyp_y``), the prior sums ``prior_u.sum``/``prior_i.sum``, ``Y`` and ``Y.sum``.
    ``values``: JSON values: ``alpha``, ``alpha_sum``, ``n_avg``, ``rmse``, ``cg_iterations``
    and ``rng``, the generator's ``bit_generator.state`` (the same on every sharing process).
    """

    sweep: int
    rows: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]
    values: dict[str, Any]


class _Side:
    """The ratings seen from one side (rows = users, or rows = items) as CSR, in row blocks of at
    most ``max_nnz`` ratings (a single row may exceed it)."""

    def __init__(self, rows: np.ndarray | None, cols: np.ndarray, vals: np.ndarray, n_rows: int,
                 n_cols: int, max_nnz: int, indptr: np.ndarray | None = None,
                 offset: float = 0.0, total: np.ndarray | None = None,
                 max_rows: int | None = None) -> None:
        """``rows`` (sorted) or ``indptr``; ``cols`` (int32) grouped by row; ``vals`` the ratings
        (float32), whose mean ``offset`` is taken off where they are used. ``total``: each row's
        ratings over every process sharing the chain (``None``: these are all of them); the
        row blocks are cut by it, so that every process cuts the same blocks. ``max_rows``: at
        most this many rows a block (``None``: no cap; issue 11: a block's conditionals take
        ``8 (K+1)^2`` bytes a row, so :func:`gibbs_mf` caps the rows by ``max_memory``)."""
        if indptr is None:
            assert rows is not None
            # rows sorted: where each row starts (issue 11, item 3: no int64 copy of them)
            self.indptr = np.searchsorted(rows, np.arange(n_rows + 1).astype(
                rows.dtype, copy=False), side="left").astype(np.int64)
            self.counts = np.diff(self.indptr)
        else:
            self.indptr = indptr.astype(np.int64)
            self.counts = np.diff(self.indptr)
        self.total = self.counts if total is None else total
        cut = self.indptr if total is None else np.r_[0, np.cumsum(total)]
        self.rows = rows  # int32 row of each rating, or None (then built a block at a time)
        self.cols = cols
        self.vals = vals
        self.offset = offset
        self.n_rows, self.n_cols = n_rows, n_cols
        self.blocks: list[tuple[int, int, int, int, torch.Tensor]] = []
        r0 = 0
        while r0 < n_rows:
            r1 = _next_cut(cut, r0, n_rows, max_nnz, max_rows)
            a, b = int(self.indptr[r0]), int(self.indptr[r1])
            crow = torch.from_numpy((self.indptr[r0 : r1 + 1] - a).astype(np.int32))
            self.blocks.append((r0, r1, a, b, crow))
            r0 = r1
        self.cols_t = torch.from_numpy(cols)
        self.max_rows = max_rows

    def parts(self) -> Iterator[tuple[int, _Side]]:
        """The side as ``(first row, side of consecutive rows)`` pieces: here one, itself
        (:class:`_Columns` builds its pieces one at a time)."""
        yield 0, self

    def spmm(self, block: tuple[int, int, int, int, torch.Tensor], data: np.ndarray,
             dense: np.ndarray) -> np.ndarray:
        """``(W @ dense)`` for one row block, ``W`` the block's CSR with entries ``data``, in
        ``dense``'s dtype (:func:`_spmm`)."""
        r0, r1, a, b, crow = block
        return _spmm(crow, self.cols[a:b], data, dense)

    def row_index(self, r0: int, r1: int, a: int, b: int) -> np.ndarray:
        """The row of each of the ratings ``a:b`` (those of rows ``r0:r1``)."""
        if self.rows is not None:
            return self.rows[a:b]
        return np.repeat(np.arange(r0, r1, dtype=np.int32), self.counts[r0:r1])

    def transpose(self, max_nnz: int, total: np.ndarray | None = None) -> _Side:
        """The same ratings seen from the columns (a counting sort: no per-rating permutation);
        ``total`` as in the constructor, for the columns; the same ``max_rows``."""
        import scipy.sparse as sp  # only here: import autofact does not load scipy

        small = len(self.cols) < 2**31 - 1  # int32 indices all through: no int64 copies
        ptr = self.indptr.astype(np.int32) if small else self.indptr
        A = sp.csr_matrix((self.vals, self.cols, ptr), shape=(self.n_rows, self.n_cols),
                          copy=False).tocsc()
        return _Side(None, A.indices.astype(np.int32, copy=False), A.data, self.n_cols,
                     self.n_rows, max_nnz, indptr=A.indptr, offset=self.offset, total=total,
                     max_rows=self.max_rows)


class _Columns:
    """The ratings seen from the columns (rows = items), without a second copy of them (issue
    11, item 3): the item rows come in slabs of consecutive rows, each built from the users'
    view when it is needed and freed after (:meth:`parts`), as :meth:`_Side.transpose` would
    build them (same arrays, same row blocks: the draws do not change). The item-major copy
    took 8 bytes a rating for the whole fit (200 MB at 25M ratings); a slab takes 8 bytes a
    rating of its items (``slab`` ratings at most, unless one block has more), and ~30 while it
    is built. Building every slab reads each user's ratings once: a binary search per user for
    where the slab's items end (a user's items are sorted), then a stable counting sort of the
    slab's ratings by item."""

    def __init__(self, users: _Side, n_rows: int, max_nnz: int, slab: int,
                 total: np.ndarray | None = None) -> None:
        """``users``: the users' view (its ``cols`` sorted within each user); ``n_rows``: the
        items; ``max_nnz``, ``total`` and the users' ``max_rows`` as in :class:`_Side`;
        ``slab``: the most ratings (of ``total``) a slab holds, whole row blocks."""
        self.users = users
        self.n_rows, self.n_cols = n_rows, users.n_rows
        self.counts = bincount_sliced(users.cols, n_rows)
        self.total = self.counts if total is None else total
        self.offset = users.offset
        self.max_nnz, self.max_rows = max_nnz, users.max_rows
        cut = np.r_[0, np.cumsum(self.total)]
        # the row blocks, as a _Side of every item row would cut them; slabs of whole blocks
        self.slabs: list[tuple[int, int]] = []
        r0 = s0 = 0
        while r0 < n_rows:
            r1 = _next_cut(cut, r0, n_rows, max_nnz, self.max_rows)
            if r0 > s0 and cut[r1] - cut[s0] > slab:
                self.slabs.append((s0, r0))
                s0 = r0
            r0 = r1
        if n_rows:
            self.slabs.append((s0, n_rows))

    def parts(self) -> Iterator[tuple[int, _Side]]:
        """Each slab ``(first item, its _Side)``, built in turn (the last one is freed by the
        caller dropping it)."""
        u = self.users
        start = u.indptr[:-1].copy()  # per user: where its ratings of the next slab start
        ends = u.indptr[1:]
        for s0, s1 in self.slabs:
            stop = _first_at_least(u.cols, start, ends, s1)
            yield s0, self._slab(s0, s1, start, stop)
            start = stop

    def _slab(self, s0: int, s1: int, start: np.ndarray, stop: np.ndarray) -> _Side:
        """Item rows ``s0:s1`` as a :class:`_Side`: the ratings ``start[u]:stop[u]`` of each
        user ``u``, ordered by item and, within an item, by user (as ``tocsc`` orders them):
        the slab's ratings gathered user by user (a CSR of users x the slab's items), then
        scipy's CSR-to-CSC counting sort, as :meth:`_Side.transpose` does for all of them (issue
        10, item 4: a stable argsort by item and three permuting gathers took 3x the time at 9M
        ratings, and ~30 bytes a rating of the slab against 16)."""
        import scipy.sparse as sp  # only here: import autofact does not load scipy

        u = self.users
        lens = stop - start
        ptr = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        small = len(u.cols) < 2**31 - 1  # int32 indices all through: no int64 copies
        itype = np.int32 if small else np.int64
        # the positions of the slab's ratings in the users' view, user by user
        rows = np.flatnonzero(lens)
        pos: np.ndarray = np.arange(int(ptr[-1]), dtype=itype)
        pos += np.repeat((start[rows] - ptr[rows]).astype(itype), lens[rows])
        del rows
        key = u.cols[pos]
        key -= s0
        vals = u.vals[pos]
        del pos
        A = sp.csr_matrix((vals, key, ptr.astype(itype)), shape=(len(lens), s1 - s0),
                          copy=False).tocsc()
        del key, vals
        return _Side(None, A.indices.astype(np.int32, copy=False), A.data, s1 - s0,
                     self.n_cols, self.max_nnz, indptr=A.indptr, offset=self.offset,
                     total=self.total[s0:s1], max_rows=self.max_rows)


def _next_cut(cut: np.ndarray, r0: int, n_rows: int, max_nnz: int, max_rows: int | None
              ) -> int:
    """Where the row block starting at ``r0`` ends: at most ``max_nnz`` ratings (``cut``:
    their cumulative counts by row) and ``max_rows`` rows, at least one row."""
    r1 = int(np.searchsorted(cut, cut[r0] + max_nnz, side="right")) - 1
    if max_rows is not None:
        r1 = min(r1, r0 + max_rows)
    return min(max(r1, r0 + 1), n_rows)


def _first_at_least(cols: np.ndarray, lo: np.ndarray, hi: np.ndarray, value: int
                    ) -> np.ndarray:
    """Per row, the first position ``p`` in ``lo[row]:hi[row]`` with ``cols[p] >= value``
    (``hi[row]`` if none), ``cols`` sorted within each row: a binary search of all rows at
    once, on the rows still searching."""
    lo, hi = lo.copy(), hi.copy()
    act = np.flatnonzero(lo < hi)
    while len(act):
        a, b = lo[act], hi[act]
        mid = (a + b) >> 1
        go = cols[mid] < value
        a[go] = mid[go] + 1
        b[~go] = mid[~go]
        lo[act], hi[act] = a, b
        act = act[a < b]
    return lo


def _spmm(crow: torch.Tensor, cols: np.ndarray, vals: np.ndarray, dense: np.ndarray
          ) -> np.ndarray:
    """``W @ dense`` for the CSR ``W`` (``crow``: its row pointers from 0, ``cols``, ``vals``)
    and ``dense`` (columns of ``W`` x c, C order), in ``dense``'s dtype, by torch's CSR
    product: each output the sum of its row's terms in order (scipy's CSR kernel gives the
    same numbers bit for bit, at twice the CPU on one thread; torch's parallel product pays a
    fixed cost a call on a busy machine, ~10 ms at 2 threads beside other processes)."""
    W = _csr(crow, torch.from_numpy(cols), torch.from_numpy(vals.astype(dense.dtype, copy=False)),
             (len(crow) - 1, dense.shape[0]))
    return (W @ torch.from_numpy(dense)).numpy()


def _gamma(rng: np.random.Generator, shape: Any, rate: Any) -> Any:
    return rng.gamma(shape, 1.0 / np.asarray(rate, dtype=np.float64))


def _row_sums(side: _Side, r0: int, r1: int, x: np.ndarray) -> np.ndarray:
    """Sums of ``x`` (the ratings of rows ``r0:r1``, in order) per row; 0 for empty rows."""
    a = int(side.indptr[r0])
    out = np.zeros(r1 - r0)
    rated = side.counts[r0:r1] > 0
    if len(x):
        out[rated] = np.add.reduceat(x, side.indptr[r0:r1][rated] - a)
    return out


@functools.lru_cache(maxsize=8)
def _triangle(K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upper triangle's rows and columns (row-major, as ``np.triu_indices``) and the
    position in it of each ``(a, b)`` (K, K), symmetric."""
    iu, ju = np.triu_indices(K)
    full = np.empty((K, K), dtype=np.int64)
    full[iu, ju] = full[ju, iu] = np.arange(len(iu))
    for a in (iu, ju, full):
        a.flags.writeable = False
    return iu, ju, full


# The most bytes the Gram products' float32 columns of the other side's rows take at once
# (:meth:`_Terms.gram`; issue 11, item 3)
_GRAM_BUFFER = 4 << 20
# ... and the augmented conditionals of a block's rows (8 (K+1)^2 bytes a row) made at once
_CONDITIONAL_BYTES = 4 << 20
# ... and the most triangle entries one sparse product of the kept products forms (issue 10,
# item 4): one product a triangle row paid torch's fixed cost a call K times a block (ml-100k,
# rank 10: 1.3 ms a block against 0.55 in two products of 33 columns); much wider ones lose the
# other side's rows from the cache (rank 32, 3,000 rows: all 561 columns at once 1.5x the time
# of chunks of 48)
_GRAM_COLUMNS = 48


class _Terms:
    """The other side's state as the products need it: ``za = [f, 1]``, and the upper triangle
    of ``za za^T`` per row, a few of its columns at a time (:meth:`gram`; in float32: half the
    time of the sweep's largest product, and no change in the draws' accuracy at four decimals
    on the validation splits)."""

    def __init__(self, other: np.ndarray, other_bias: np.ndarray, whole: bool = False,
                 buffer: int = 0, table: int | None = 0) -> None:
        """``other`` (n, k) and ``other_bias`` (n,); or, with ``whole``, ``other`` is already
        ``[f, 1]`` (n, k+1, float64, C order) and is used as it is (no copy). ``buffer``: the
        bytes of the Gram products' columns formed at once (0: ``_GRAM_BUFFER``); ``table``:
        the products of every triangle entry are formed once, for all of a side's blocks, when
        they fit this many bytes (``2 K (K+1)`` a row; ``None``: always; issue 10, item 4: at
        9M ratings forming them again for each block was 12 % of a sweep's CPU)."""
        self.buffer = buffer or _GRAM_BUFFER
        K = other.shape[1] if whole else other.shape[1] + 1
        k = K - 1
        self.iu, self.ju, self.full = _triangle(K)
        if whole:
            za = other
        else:
            za = np.empty((other.shape[0], K))
            za[:, :k] = other
            za[:, k] = 1.0
        self.z32 = za.astype(np.float32)  # float32 before the products
        self.za = za
        self.bias = other_bias
        n = za.shape[0]
        T = len(self.iu)
        self.products: list[np.ndarray] | None = None
        if table is None or 2 * K * (K + 1) * n <= table:
            # kept: the triangle's columns in equal chunks, each one sparse product a block
            # (issue 10, item 4: a triangle row at a time took 2.3x the time of 2 chunks at
            # rank 10 on ml-100k, the fixed cost of 11 products; see _GRAM_COLUMNS), of at most
            # ``buffer`` bytes; formed with the rows of the other side last (contiguous rows
            # ``z_a``, ``z_b``: 0.07 ms against 0.26 by :meth:`_form`'s short strided rows at
            # rank 10 and 1,682 rows), then put rows first (while no block is alive: two
            # chunks' temporaries, at most the table's bytes again)
            width = max(1, min(_GRAM_COLUMNS, T, self.buffer // (4 * max(n, 1))))
            step = -(-T // -(-T // width))  # T in equal chunks of at most ``width``
            self.chunks = [(c0, min(T, c0 + step)) for c0 in range(0, T, step)]
            zt = np.ascontiguousarray(self.z32.T)
            self.products = []
            for c0, c1 in self.chunks:
                pt = np.take(zt, self.iu[c0:c1], axis=0)
                pt *= np.take(zt, self.ju[c0:c1], axis=0)
                self.products.append(np.ascontiguousarray(pt.T))
            del zt
        else:
            # formed for each block: a triangle row (or a few columns of it) at a time, each
            # chunk one contiguous product of two columns of ``z`` (issue 10, item 4: chunks
            # across triangle rows took 1.7x the time to form at rank 32 and 37,000 rows, for
            # the few % their wider products save)
            step = max(1, min(K, self.buffer // (4 * max(n, 1))))
            full = self.full
            self.chunks = [(int(full[i, j0]), int(full[i, min(K, j0 + step) - 1]) + 1)
                           for i in range(K) for j0 in range(i, K, step)]

    def _form(self, c0: int, c1: int, out: np.ndarray) -> np.ndarray:
        """The products ``z_a z_b`` of the triangle's columns ``c0:c1`` (row-major, as
        :func:`_triangle`; within one triangle row ``a``) for every row of the other side, into
        ``out`` (n, c1 - c0)."""
        i, j0 = int(self.iu[c0]), int(self.ju[c0])
        return np.multiply(self.z32[:, i : i + 1], self.z32[:, j0 : j0 + c1 - c0], out=out)

    def gram(self, side: _Side, blk: tuple[int, int, int, int, torch.Tensor], w: np.ndarray
             ) -> np.ndarray:
        """``G`` for the rows of ``blk``: per row the upper triangle (row-major) of ``sum_j w_j
        z_j z_j^T`` over its ratings (rows x K(K+1)/2, float32). The triangle's products
        ``z_a z_b`` are formed for every row of the other side, a chunk of its columns at a
        time (issue 11, item 3: all of them at once were ``2 K (K+1)`` bytes a row of the other
        side, 163 MiB for 72,690 users at rank 32, three times that while they were built; now
        at most ``buffer`` bytes, unless the table of all of them, formed once a side, fits);
        each output is the same sum whatever the columns formed with it (the sparse product
        sums each output column on its own)."""
        r0, r1, a, b, crow = blk
        n = self.z32.shape[0]
        w32, cols = w.astype(np.float32), side.cols[a:b]
        if self.products is not None and len(self.chunks) == 1:
            return _spmm(crow, cols, w32, self.products[0])
        out = np.empty((r1 - r0, len(self.iu)), dtype=np.float32)
        width = max(c1 - c0 for c0, c1 in self.chunks)
        buf = np.empty(n * width if self.products is None else 0, dtype=np.float32)
        for c, (c0, c1) in enumerate(self.chunks):
            if self.products is not None:  # formed once for every block
                za = self.products[c]
            else:
                za = self._form(c0, c1, buf[: n * (c1 - c0)].reshape(n, c1 - c0))
            out[:, c0:c1] = _spmm(crow, cols, w32, za)
        return out


def _block_conditional(
    side: _Side, blk: tuple[int, int, int, int, torch.Tensor], terms: _Terms,
    prior_mean: np.ndarray, prior_prec: np.ndarray, alpha: float,
    tau_row: np.ndarray | None, tau_col: np.ndarray | None,
    reduce: Callable[[list[np.ndarray]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Gaussian conditional of the rows of one block (module docstring) as one augmented
    matrix ``M`` (K+1, K+1, rows), rows last: ``M[:K, :K]`` holds the upper triangle of the
    precision ``Lam``, ``M[:K, K]`` the linear term ``h`` (the mean is ``Lam^-1 h``); the lower
    triangle is not filled. Also returns the row scale ``s = alpha tau_row`` and the data sums
    ``G`` (upper triangle, rows x K(K+1)/2, float32), ``g`` (rows, K) and ``sum tau_col t^2`` with
    ``t = r - mu - other bias``, which give each row's residual sum at any ``x``. ``reduce``
    sums the data sums over the processes that share the chain, in place (each holds some of
    every row's ratings: the item side of a sharded chain)."""
    r0, r1 = blk[0], blk[1]
    CZ, g, tt = _block_sums(side, blk, terms, tau_col, reduce)
    s = np.full(r1 - r0, alpha) if tau_row is None else alpha * tau_row[r0:r1]
    M = _augmented(CZ, g, s, prior_mean[r0:r1] if prior_mean.ndim == 2 else prior_mean,
                   prior_prec, terms.full)
    return M, s, CZ, g, tt


def _block_sums(side: _Side, blk: tuple[int, int, int, int, torch.Tensor], terms: _Terms,
                tau_col: np.ndarray | None,
                reduce: Callable[[list[np.ndarray]], None] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data sums ``G``, ``g`` and ``sum tau_col t^2`` of one block's rows (see
    :func:`_block_conditional`), summed over the processes by ``reduce``."""
    r0, r1, a, b, _ = blk
    cols = side.cols[a:b]
    t = side.vals[a:b] - np.take(terms.bias + side.offset, cols)  # float64
    if tau_col is None:
        w, wt = np.ones(b - a), t
    else:
        w = np.take(tau_col, cols)
        wt = w * t
    CZ = terms.gram(side, blk, w)  # G = sum w z z^T, per row (float32)
    g = side.spmm(blk, wt, terms.za)  # g = sum w t z
    tt = _row_sums(side, r0, r1, wt * t)
    if reduce is not None:
        reduce([CZ, g, tt])
    return CZ, g, tt


def _augmented(CZ: np.ndarray, g: np.ndarray, s: np.ndarray, prior_mean: np.ndarray,
               prior_prec: np.ndarray, full: np.ndarray) -> np.ndarray:
    """The augmented conditional ``M`` (K+1, K+1, rows) of :func:`_block_conditional` from its
    rows' data sums, row scales and prior means ((rows, K) or (K,))."""
    K = g.shape[1]
    M = np.empty((K + 1, K + 1, len(s)))
    for i in range(K):  # the triangle's row i is one contiguous slice of G's columns
        # rows last, in float64 (exact), a triangle row at a time: no float64 copy of all of G
        M[i, i:K] = CZ[:, full[i, i] : full[i, K - 1] + 1].T
        M[i, i:K] *= s
        M[i, i] += prior_prec[i]
    h = M[:K, K]
    np.multiply(g.T, s, out=h)
    if prior_mean.ndim == 2:
        h += (prior_prec * prior_mean).T
    else:
        h += (prior_prec * prior_mean)[:, None]
    return M


def _cholesky_draw(M: np.ndarray, eps: np.ndarray, mean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``x = L^-T (L^-1 h + eps)`` for every row of the augmented ``M`` (see
    :func:`_block_conditional`; overwritten) with ``Lam = L L^T``, and, if ``mean``, the mean
    ``L^-T L^-1 h`` as ``x``'s second column. ``eps`` (K, rows). Returns ``x`` (K, 1 or 2, rows)
    and ``v + eps`` (K, rows), ``v = L^-1 h``.

    Written as K vectorized steps over all rows (rows last, so every slice is contiguous): for
    K ~ 11 and ~1000 rows this is several times faster than batched LAPACK, whose per-matrix
    overhead dominates. The right-looking factorization runs on the upper triangle ``U = L^T``
    of ``[[Lam, h], [h^T, .]]``: step ``j`` turns row ``j`` into ``U[j, j:]`` and, in column
    ``K``, ``v_j`` (the forward solve rides along as an extra column); the back substitution
    solves ``U x = v + eps`` (and ``U x = v``) column by column.
    """
    K = M.shape[0] - 1
    tmp = np.empty_like(M[0])
    for j in range(K):
        d = M[j, j]
        if not d.min() > 0:  # cannot happen: Lam >= diag(prior_prec) > 0
            raise np.linalg.LinAlgError("a row's conditional precision is not positive definite")
        np.sqrt(d, out=d)
        u = M[j, j + 1 :]
        u /= d
        for c in range(j + 1, K):  # trailing upper triangle, row c: U[c, c:] -= u_c u[c:]
            r = u[c - j - 1 :]
            t = np.multiply(r, r[0], out=tmp[: len(r)])
            M[c, c:] -= t
    v = M[:K, K]
    ve = v + eps
    nr = 2 if mean else 1
    y = np.empty((K, nr, M.shape[2]))
    y[:, 0] = ve
    if mean:
        y[:, 1] = v
    for j in range(K - 1, -1, -1):  # U x = y, last row first
        y[j] /= M[j, j]
        if j:
            y[:j] -= M[:j, j, None] * y[j]
    return y, ve


def _sample_rows(
    noise: np.random.Generator | Callable[[int, int], np.ndarray],
    side: _Side | _Columns,
    other: np.ndarray,
    other_bias: np.ndarray | None,
    prior_mean: np.ndarray,
    prior_prec: np.ndarray,
    alpha: float,
    tau_row: np.ndarray | None,
    tau_col: np.ndarray | None,
    out: np.ndarray,
    out_mean: np.ndarray | None,
    reduce: Callable[[list[np.ndarray]], None] | None = None,
    *,
    add_mean: bool = False,
    work: tuple[int, int] = (0, 0),
    pool: _BlockPool | None = None,
    table: int | None = 0,
) -> np.ndarray:
    """Draw every row block ``x = [f, b]`` of one side from its Gaussian conditional, in place.

    ``other`` (n_cols, k) and ``other_bias`` (n_cols,) are the other side's factors and biases;
    or ``other`` (n_cols, k+1) holds both, the biases last, and ``other_bias`` is ``None``
    (issue 11, item 3: the products then use ``other`` itself, its last column set to 1 while
    they run and put back after, instead of a float64 copy ``[f, 1]``);
    ``tau_row``/``tau_col`` the per-row and per-column noise precisions relative to ``alpha``
    (``None``: 1); ``prior_mean`` (n_rows, K) or (K,), ``prior_prec`` (K,). Writes the draw into
    ``out`` (n_rows, K) and, if given, the conditional mean into ``out_mean`` (``add_mean``:
    adds it, for running sums kept without a copy of the means). ``work``: the bytes of the
    Gram products formed at once and of the conditionals made at once (0: ``_GRAM_BUFFER``,
    ``_CONDITIONAL_BYTES``). ``noise``: a
    generator drawn a block at a time, or ``noise(r0, r1)``, the standard normals of rows
    ``r0:r1`` (rows x K), asked for block by block in order;
    ``reduce`` as in :func:`_block_conditional`; ``pool``: threads that form the blocks' data
    sums ahead of the draws (:class:`_BlockPool`; ``None``: here, one block at a time);
    ``table``: as in :class:`_Terms`.
    Returns each row's
    ``sum_j tau_col_j e_j^2`` at the drawn ``x``, from the same sums, so no residual is formed
    rating by rating: with ``s = alpha tau_row``, ``Lam = diag(lam) + s G`` and ``h = s g +
    lam m``, ``x^T G x - 2 x^T g + sum tau t^2`` is ``(|L^T x|^2 - x^T diag(lam) x - 2 x^T (h -
    lam m)) / s + sum tau t^2``, and ``L^T x = v + eps``.
    """
    if other_bias is not None:
        return _draw_rows(noise, side, _Terms(other, other_bias, buffer=work[0], table=table),
                          prior_mean,
                          prior_prec, alpha, tau_row, tau_col, out, out_mean, reduce, add_mean,
                          work[1], pool)
    k = other.shape[1] - 1
    bias = other[:, k].copy()
    other[:, k] = 1.0
    try:
        return _draw_rows(noise, side, _Terms(other, bias, whole=True, buffer=work[0],
                                                  table=table),
                          prior_mean, prior_prec, alpha, tau_row, tau_col, out, out_mean, reduce,
                          add_mean, work[1], pool)
    finally:
        other[:, k] = bias


def _draw_rows(
    noise: np.random.Generator | Callable[[int, int], np.ndarray], side: _Side | _Columns,
    terms: _Terms, prior_mean: np.ndarray, prior_prec: np.ndarray, alpha: float,
    tau_row: np.ndarray | None, tau_col: np.ndarray | None, out: np.ndarray,
    out_mean: np.ndarray | None, reduce: Callable[[list[np.ndarray]], None] | None,
    add_mean: bool, conditional_bytes: int = 0, pool: _BlockPool | None = None,
) -> np.ndarray:
    """:func:`_sample_rows` given the other side's :class:`_Terms`, a piece of rows at a time
    (one piece, or the item slabs of a :class:`_Columns`); the blocks' data sums formed by
    ``pool`` ahead of the draws, which stay in order here (the same random stream)."""
    K = terms.za.shape[1]
    sub = max(1, (conditional_bytes or _CONDITIONAL_BYTES) // (8 * (K + 1) ** 2))
    sse = np.zeros(side.n_rows)
    for p0, piece in side.parts():
        p1 = p0 + piece.n_rows
        pmean = prior_mean[p0:p1] if prior_mean.ndim == 2 else prior_mean
        ptau = None if tau_row is None else tau_row[p0:p1]
        sums_of = functools.partial(_block_sums, piece, terms=terms, tau_col=tau_col,
                                    reduce=reduce)
        sums = (map(sums_of, piece.blocks) if pool is None
                else pool.in_order(sums_of, piece.blocks))
        for blk, (CZ, g, tt_b) in zip(piece.blocks, sums, strict=True):
            b0, b1 = blk[0], blk[1]
            s_b = np.full(b1 - b0, alpha) if ptau is None else alpha * ptau[b0:b1]
            # the conditionals (8 (K+1)^2 bytes a row) a few rows at a time (issue 11, item 3)
            for r0 in range(b0, b1, sub):
                r1 = min(b1, r0 + sub)
                s, tt = s_b[r0 - b0 : r1 - b0], tt_b[r0 - b0 : r1 - b0]
                M = _augmented(CZ[r0 - b0 : r1 - b0], g[r0 - b0 : r1 - b0], s,
                               pmean[r0:r1] if pmean.ndim == 2 else pmean, prior_prec,
                               terms.full)
                h = M[:K, K].copy()
                # eps drawn row by row (rows x K), as before the rows-last layout: same draws
                eps = (noise.standard_normal((r1 - r0, K))
                       if isinstance(noise, np.random.Generator)
                       else noise(p0 + r0, p0 + r1)).T
                x, ve = _cholesky_draw(M, eps, out_mean is not None)
                del M  # issue 11, item 3: not alive while the next rows' is built
                xs = x[:, 0]
                out[p0 + r0 : p0 + r1] = xs.T
                if out_mean is not None:
                    if add_mean:  # in the sums' precision: the same sum whatever holds it
                        out_mean[p0 + r0 : p0 + r1] += x[:, 1].T.astype(out_mean.dtype)
                    else:
                        out_mean[p0 + r0 : p0 + r1] = x[:, 1].T
                pm = pmean[r0:r1].T if pmean.ndim == 2 else pmean[:, None]
                q = (ve * ve).sum(0) - (prior_prec[:, None] * xs * (xs - 2.0 * pm)).sum(0)
                q -= 2.0 * (xs * h).sum(0)
                q /= s
                q += tt
                q[piece.total[r0:r1] == 0] = 0.0
                sse[p0 + r0 : p0 + r1] = np.maximum(q, 0.0)
            del CZ, g
        del piece, sums, sums_of
    return sse


class _BlockPool:
    """Threads that form a side's row blocks' data sums (the Gram products: ~80 % of a sweep)
    ahead of the draws, as many blocks ahead as there are threads (issue 10, item 4). The
    draws stay in order in the calling thread, from the same random stream, and each block's
    sums are what the calling thread would form: the chain is the same whatever the threads.
    How many: :func:`autofact.threads.workers_for` (sizes, cores and quota, never the load);
    each block in flight holds a block's workspace, so :func:`gibbs_mf` shares ``max_memory``
    out between them."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="autofact-gibbs")

    def in_order(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """``fn(item)`` for each of ``items``, in order, computed up to ``workers`` ahead."""
        pending: collections.deque[Future[Any]] = collections.deque()
        nxt = 0
        try:
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < self.workers:
                    pending.append(self.executor.submit(fn, items[nxt]))
                    nxt += 1
                yield pending.popleft().result()
        finally:  # stopped early (an error, Ctrl-C): nothing more is started
            for f in pending:
                f.cancel()


class _Design:
    """The implicit term's design ``X`` (m x n): the user-item indicator with row ``u`` scaled by
    ``|N(u)|^-1/2``, as two torch CSR matrices (``X`` and ``X^T``, float64 values), built once per
    fit: 12 more bytes a rating in each orientation."""

    def __init__(self, u_side: _Side, i_side: _Side) -> None:
        m, n = u_side.n_rows, i_side.n_rows
        self.scale = np.maximum(u_side.counts, 1).astype(np.float64) ** -0.5
        rows = u_side.row_index(0, m, 0, int(u_side.indptr[-1]))
        self.diag = np.bincount(u_side.cols, np.take(self.scale * self.scale, rows), minlength=n)
        self.X = _csr(torch.from_numpy(u_side.indptr), torch.from_numpy(u_side.cols.astype(
            np.int64)), torch.from_numpy(np.take(self.scale, rows)), (m, n))
        self.XT = _csr(torch.from_numpy(i_side.indptr), torch.from_numpy(i_side.cols.astype(
            np.int64)), torch.from_numpy(np.take(self.scale, i_side.cols)), (n, m))

    def times(self, V: np.ndarray) -> np.ndarray:
        """``X @ V`` (m x k)."""
        return (self.X @ torch.from_numpy(np.ascontiguousarray(V))).numpy()

    def times_t(self, W: np.ndarray) -> np.ndarray:
        """``X^T @ W`` (n x k)."""
        return (self.XT @ torch.from_numpy(np.ascontiguousarray(W))).numpy()


def _draw_implicit(
    rng: np.random.Generator, design: _Design, resid: np.ndarray, lamP: np.ndarray,
    mY: np.ndarray, lamY: np.ndarray, Y: np.ndarray, XY: np.ndarray, tol: float, max_iter: int,
) -> int:
    """Draw ``Y`` (n, k) in place from its conditional given ``resid = P - m_P`` (m, k); ``XY``
    (m, k) holds ``X @ Y`` on entry and is kept equal to it.

    With ``X`` the user-item indicator scaled by ``scale[u] = |N(u)|^-1/2`` (``design``), column
    ``k`` has precision ``lamY_k I + lamP_k X^T X`` and linear term ``lamY_k mY_k + lamP_k X^T
    resid_k``. Solving the system with the linear term perturbed by ``sqrt(lamY) eps_1 + X^T
    (sqrt(lamP) eps_2)`` gives an exact draw; the solve is Jacobi-preconditioned CG on all
    columns at once, warm-started at the current ``Y``, to a relative residual of ``tol`` (or
    ``max_iter`` iterations). Returns the iterations.
    """
    n, k = Y.shape
    m = resid.shape[0]
    X, XT = design.times, design.times_t
    rhs = lamY * mY + np.sqrt(lamY) * rng.standard_normal((n, k))
    rhs += XT(lamP * resid + np.sqrt(lamP) * rng.standard_normal((m, k)))
    Minv = 1.0 / (lamY + design.diag[:, None] * lamP)
    R = rhs - (lamY * Y + XT(lamP * XY))
    bnorm = np.sqrt((rhs * rhs).sum(0))
    Zp = Minv * R
    D = Zp.copy()
    rz = (R * Zp).sum(0)
    it = 0
    while it < max_iter and not bool((np.sqrt((R * R).sum(0)) <= tol * bnorm).all()):
        it += 1
        XD = X(D)
        AD = lamY * D + XT(lamP * XD)
        step = rz / np.maximum((D * AD).sum(0), 1e-300)
        Y += step * D
        XY += step * XD
        R -= step * AD
        Zp = Minv * R
        rz_new = (R * Zp).sum(0)
        D *= rz_new / np.maximum(rz, 1e-300)
        D += Zp
        rz = rz_new
    return it


def _check(rank: Any, sweeps: Any, burn_in: Any, noise: Any, noise_shape: Any) -> int:
    burn_in = check_chain(rank, sweeps, burn_in)
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    if not (isinstance(noise_shape, int | float) and math.isfinite(noise_shape)
            and noise_shape > 0):
        raise ValueError(f"noise_shape must be a positive number, got {noise_shape!r}")
    return burn_in


def gibbs_mf(
    users: Any,
    items: Any = None,
    values: Any = None,
    shape: tuple[int, int] | None = None,
    *,
    rank: int = 10,
    sweeps: int = 130,
    burn_in: int | None = None,
    noise: str = "both",
    noise_shape: float = 8.0,
    implicit: bool = False,
    seed: int | None = 0,
    init_std: float = 0.1,
    init: str = "spectral",
    cg_tol: float = 1e-6,
    cg_max_iter: int = 3,
    max_nnz: int = 1 << 19,
    max_memory: int | None = 64 << 20,
    n_threads: int | None = None,
    callback: Callable[[int, float, Callable[..., GibbsResult]], bool | None] | None = None,
    plan: ShardPlan | None = None,
    on_state: Callable[[int, Callable[[], ChainState], bool], None] | None = None,
    resume: ChainState | None = None,
) -> GibbsResult:
    """Sample the posterior of Bayesian biased MF (see the module docstring); float64 arithmetic.

    Give the training ratings as 0-based COO arrays ``users, items, values`` and ``shape`` =
    ``(n_users, n_items)``, or as one :class:`autofact.Ratings`. ``(user, item)`` pairs must be
    distinct. ``burn_in`` (default ``sweeps // 10``) sweeps are discarded, the rest averaged.
    ``callback(sweep, train_rmse, means)`` runs after each sweep (``train_rmse``: the root mean
    of the noise-weighted squared residuals, ``sum tau_u kappa_i e_ui^2 / N``; ``means()``: the
    posterior means so far, as the result; during burn-in the provisional mean of the module
    docstring); returning ``True`` stops sampling (during burn-in the result is then that
    provisional mean). ``init``: where the chain starts, ``'spectral'`` (a truncated SVD of the
    centred ratings, see the module docstring) or ``'random'`` (factors ``N(0, init_std^2)``,
    biases 0, unit prior precisions: the start before issue 10). ``max_nnz`` ratings and
    ``max_memory`` bytes of workspace (``None``: no cap; issue 11, item 3) bound a row block
    and the items' view (see the module docstring's memory paragraph); neither changes a draw.
    ``n_threads``
    caps torch's threads (:mod:`autofact.threads`: one per 2**27 multiply-adds of the largest
    product, a row block's Gram product) and the threads that form the row blocks' data sums
    ahead of the draws (:func:`~autofact.threads.workers_for`: one per 2**24 multiply-adds of a
    side's Gram products, one process only, from 4 usable cores; issue 10, item 4: at 9M
    ratings on this 2-core machine they made a sweep 0.9-1.1 s against 1.5-1.7 when a core
    was free, but cost 10-35 % more CPU for no shorter sweep beside other load). Neither
    changes a draw.

    ``plan`` (:mod:`autofact.sharding`, issue 11): the processes that share the chain. Each
    passes its own ratings (every rating of a user on one process: ``plan.share`` of all the
    ratings, or ``read_local(split='users')``) and the shape of all of them; each draws its
    users' rows, the item rows' normal equations are summed over the processes, and every
    process draws the same item rows and hyper-parameters from the same random stream: the
    chain is the one-process chain up to the order of floating-point sums. ``means()`` in the
    callback then holds this process's users' rows only (``rows``), ``means(True)``
    every user's (a collective: every process must call it); the returned result holds every
    user's, on every process. ``implicit=True`` runs in one process.

    Checkpoints (issue 11): ``on_state(sweep, state, last)`` runs after ``callback``;
    ``state()`` gives the :class:`ChainState` after that sweep, ``last`` is whether sampling
    stops after it. ``resume=`` such a state (rows: this process's users') goes on from the
    sweep after it with the same draws as a chain never stopped (given the same arguments).

    >>> res = gibbs_mf([0, 0, 1, 1, 2], [0, 1, 0, 2, 1], [5.0, 3.0, 4.0, 1.0, 2.0], (3, 3),
    ...                rank=2, sweeps=20)
    >>> res.predict([0, 2], [2, 0]).shape
    (2,)
    """
    t0 = time.perf_counter()
    users, items, values, shape = coo_arguments(users, items, values, shape, "gibbs_mf")
    burn_in = _check(rank, sweeps, burn_in, noise, noise_shape)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if plan is not None and plan.world_size == 1:
        plan = None
    if plan is not None:  # one random stream on every process, seeded or not (issue 11)
        seed = plan.common_seed(seed)
    if plan is not None and implicit:
        raise ValueError(
            f"implicit=True samples in one process (its Y draw sums over every user); got a plan "
            f"shared by {plan.world_size} processes: fit without plan=, or with implicit=False"
        )
    K = int(rank) + 1
    block_nnz, max_rows, work = _block_sizes(max_memory, K, max_nnz)
    slab = None if max_memory is None else max(1, max_memory // _SLAB_BYTES_A_RATING)
    start_bytes = None if max_memory is None else max_memory // _START_SHARE
    with use_threads(min(len(values), max_nnz) * K * (K + 1) / 2, n_threads):
        # issue 10, item 4: threads that form the row blocks' data sums ahead of the draws (by
        # the sweep's Gram work, the cores and the quota; one process only: a shared chain's
        # sums are collectives, made in order), each block in flight within its share of
        # max_memory
        # (from _POOL_MIN_CORES usable cores: with two, the draws' thread takes one of them,
        # and at 9M ratings beside other load the threads cost 10-35 % more CPU for no
        # shorter sweep; issue 10, item 4)
        workers = 1
        if plan is None and max_threads(n_threads) >= _POOL_MIN_CORES:
            workers = workers_for(len(values) * K * (K + 1) / 2)
        # ... and the other side's Gram products formed once a side when they fit an eighth of
        # max_memory (shared by the threads). The blocks share the rest and max_nnz: the
        # ``workers`` blocks in flight and the one being drawn (whose sums are alive), each
        # with its own Gram buffer, hold no more than one block did (issue 11's 25M peak rose
        # 4 % with the blocks in flight split in two only: record 1000)
        table: int | None = None
        if max_memory is not None:
            table = max_memory // _TABLE_SHARE
            alive = workers + 1 if workers > 1 else 1
            block_nnz, max_rows, work = _block_sizes(
                max(1, (max_memory - table) // alive), K, max(1, max_nnz // alive))
            work = (max(1, work[0] // workers), work[1])
        pool = _BlockPool(workers) if workers > 1 else None
        try:
            return _gibbs(users, items, values, shape, rank=int(rank), sweeps=int(sweeps),
                          burn_in=burn_in, noise=noise, noise_shape=float(noise_shape),
                          implicit=bool(implicit), seed=seed, init_std=init_std, init=init,
                          cg_tol=cg_tol, cg_max_iter=cg_max_iter, max_nnz=block_nnz,
                          max_rows=max_rows, work=work, slab=slab, start_bytes=start_bytes,
                          callback=callback, t0=t0, pool=pool, table=table,
                          plan=plan, on_state=on_state, resume=resume)
        finally:
            if pool is not None:
                pool.executor.shutdown(cancel_futures=True)


# How ``max_memory`` is shared out (issue 11, item 3): a row block's per-rating temporaries
# (float64 values, weights and residuals, the float32 values of its sparse products: ~48 bytes
# a rating) take at most half, its per-row arrays the rest (:func:`_block_sizes`); the items'
# view, when it does not fit whole, is built in slabs that hold 8 bytes a rating (an eighth;
# ~30 bytes a rating while a slab is built, when no block is alive)
_BLOCK_BYTES_A_RATING = 48
_SLAB_BYTES_A_RATING = 8 * 8
# ... and the spectral start keeps its residuals (4 bytes a rating, issue 10, item 4) when they
# fit this fraction of it (no row block or slab is alive then)
_START_SHARE = 4
# ... and the other side's Gram products are formed once a side (2 K (K+1) bytes a row of it,
# issue 10, item 4) when they fit this fraction of it
_TABLE_SHARE = 8
# Threads form row blocks ahead of the draws (:class:`_BlockPool`) only from this many usable
# cores (:func:`autofact.threads.max_threads`: n_threads, the environment, affinity and quota)
_POOL_MIN_CORES = 4


def _block_sizes(max_memory: Any, K: int, max_nnz: int
                 ) -> tuple[int, int | None, tuple[int, int]]:
    """The ratings and rows a row block may hold so that its workspace stays within
    ``max_memory`` bytes (issue 11, item 3): ``_BLOCK_BYTES_A_RATING`` a rating (at most
    ``max_nnz`` ratings and half of ``max_memory``), ``_GRAM_BUFFER`` and
    ``_CONDITIONAL_BYTES`` (the augmented conditionals, ``8 (K+1)^2`` bytes a row, made a few
    rows at a time; each at most an eighth of ``max_memory``: returned as the third value, for
    :func:`_sample_rows`' ``work``), and per row the Gram sums (``2 K (K+1)``, float32) and
    ``8 K`` float64 vectors (linear term, noise, draw and mean, ...). ``None``: no cap on the
    rows."""
    if max_memory is None:
        return max_nnz, None, (0, 0)
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes or None, got "
                         f"{max_memory!r}; e.g. 64 * 2**20 (64 MiB of row-block workspace)")
    nnz = max(1, min(max_nnz, max_memory // 2 // _BLOCK_BYTES_A_RATING))
    per_row = 2 * K * (K + 1) + 64 * K
    work = (max(1, min(_GRAM_BUFFER, max_memory // 8)),
            max(1, min(_CONDITIONAL_BYTES, max_memory // 8)))
    rest = max_memory - nnz * _BLOCK_BYTES_A_RATING - sum(work)
    return nnz, max(1, rest // per_row), work


# A burn-in sweep whose training RMSE is below this fraction of the previous sweep's restarts the
# provisional mean (the chain is still moving; issue 10, item 4)
_SETTLED = 0.98

# Rows of the per-sweep draws of every user a sharing process makes at a time (bounds the
# temporaries to this many rows while it keeps its own users' part).
_DRAW_ROWS = 1 << 16


def _own_part(draw: Callable[[int, int], np.ndarray], n_rows: int, own: np.ndarray,
              width: tuple[int, ...]) -> np.ndarray:
    """Rows ``own`` (sorted) of the draws for rows ``0:n_rows``, drawn ``draw(r0, r1)`` (rows
    ``r0:r1``, each ``width`` wide) ``_DRAW_ROWS`` rows at a time, in order."""
    out = np.empty((len(own), *width))
    for r0 in range(0, n_rows, _DRAW_ROWS):
        r1 = min(r0 + _DRAW_ROWS, n_rows)
        a, b = np.searchsorted(own, [r0, r1])
        out[a:b] = draw(r0, r1)[own[a:b] - r0]
    return out


def _normals_of(rng: np.random.Generator, n_rows: int, K: int, own: np.ndarray | None
                ) -> np.ndarray:
    """Standard normals for ``n_rows`` rows (rows x K) from ``rng``, kept for rows ``own``
    (sorted; ``None``: all). Every process draws every row, so the stream stays the same on
    all of them (and the one-process chain's, which draws the same numbers a block at a
    time)."""
    if own is None:
        return rng.standard_normal((n_rows, K))
    return _own_part(lambda r0, r1: rng.standard_normal((r1 - r0, K)), n_rows, own, (K,))


def _gammas_of(rng: np.random.Generator, shape: np.ndarray, rate: np.ndarray,
               own: np.ndarray | None) -> np.ndarray:
    """``Gamma(shape, rate)`` draws, ``shape`` given for every row and ``rate`` for rows
    ``own`` (``None``: all), as :func:`_normals_of` (``numpy``'s gamma is the standard gamma
    times the scale, so the stream does not depend on the rates)."""
    if own is None:
        return _gamma(rng, shape, rate)
    z = _own_part(lambda r0, r1: rng.standard_gamma(shape[r0:r1]), len(shape), own, ())
    return z * (1.0 / np.asarray(rate, dtype=np.float64))


def _gibbs(users: Any, items: Any, values: Any, shape: tuple[int, int], *, rank: int,
           sweeps: int, burn_in: int, noise: str, noise_shape: float, implicit: bool,
           seed: int | None, init_std: float, cg_tol: float, cg_max_iter: int, max_nnz: int,
           max_rows: int | None = None, slab: int | None = None,
           start_bytes: int | None = None, pool: _BlockPool | None = None,
           table: int | None = 0,
           work: tuple[int, int] = (0, 0),
           init: str = "random",
           callback: Callable[[int, float, Callable[..., GibbsResult]], bool | None] | None,
           t0: float, plan: ShardPlan | None = None,
           on_state: Callable[[int, Callable[[], ChainState], bool], None] | None = None,
           resume: ChainState | None = None) -> GibbsResult:
    m, n = int(shape[0]), int(shape[1])
    users = np.asarray(users)
    items = np.asarray(items)
    vals = np.asarray(values)
    rng = np.random.default_rng(seed)
    # users' view: sorted by user, then item (a Ratings already is: its arrays are used as
    # they are; the item slabs (_Columns) search each user's items)
    if not _sorted_pairs(users, items):
        o = np.lexsort((items, users))
        users, items, vals = users[o], items[o], vals[o]
        del o
    own: np.ndarray | None = None  # the users this process draws (None: all)
    owned = np.ones(0, dtype=bool)  # sharing: its mask over every user
    total_u = total_i = None  # ratings per user and item over the processes (None: these)
    reduce: Callable[[list[np.ndarray]], None] | None = None
    if plan is None:
        nnz = len(vals)
        mu = float(vals.mean(dtype=np.float64)) if nnz else 0.0
    else:
        sharing = plan

        def reduce(arrays: list[np.ndarray]) -> None:
            sharing.all_sum([torch.from_numpy(a) for a in arrays])

        # issue 11: the users whose ratings this process holds (rank 0 also those no process
        # holds, drawn from their prior as in one process); refuses a user split over processes
        # (given each user once: issue 11, item 3, not an int64 copy of every rating's user)
        per_user = bincount_sliced(users, m)
        owned = plan.owned_rows(torch.from_numpy(np.flatnonzero(per_user)), m).numpy()
        own = np.flatnonzero(owned)
        counts = torch.from_numpy(np.concatenate([per_user, bincount_sliced(items, n)]))
        sums = torch.tensor([float(vals.sum(dtype=np.float64)), float(len(vals))],
                            dtype=torch.float64)
        plan.all_sum([counts, sums])
        total_u, total_i = counts[:m].numpy(), counts[m:].numpy()
        nnz = int(sums[1])
        mu = float(sums[0]) / max(nnz, 1)
    if nnz == 0:
        raise ValueError("gibbs_mf needs at least one rating, got none")
    m_own = m if own is None else len(own)
    items = items.astype(np.int32, copy=False)
    vals = vals.astype(np.float32, copy=False)
    if own is None:
        u_side = _Side(users.astype(np.int32, copy=False), items, vals, m_own, n, max_nnz,
                       offset=mu, max_rows=max_rows)
    else:  # this process's users as rows 0..len(own)-1 (issue 11, item 3: by their row
        # pointers, not a remapped copy of every rating's user, 4 bytes a rating and 8 while
        # it was made)
        indptr = np.zeros(m_own + 1, dtype=np.int64)
        np.cumsum(per_user[own], out=indptr[1:])
        del per_user
        u_side = _Side(None, items, vals, m_own, n, max_nnz, indptr=indptr, offset=mu,
                       max_rows=max_rows)
    del users
    # the items' view (issue 11, item 3): a second copy of the ratings (8 bytes a rating) when
    # it fits a slab of ``max_memory`` (or implicit=True, whose design needs it whole), else
    # built a slab of item rows at a time, every time it is used
    i_side: _Side | _Columns
    if implicit or nnz <= (slab or len(vals)):  # one slab, surely (issue 10: not cut to see)
        i_side = u_side.transpose(max_nnz, total=total_i)
    else:
        columns = _Columns(u_side, n, max_nnz, slab or len(vals), total_i)
        i_side = columns
        if len(columns.slabs) == 1:
            i_side = u_side.transpose(max_nnz, total=total_i)
        del columns
    k, K = int(rank), int(rank) + 1
    # the first draws of the stream, every user's normals and then every item's, are the
    # initial factors; issue 11, item 3: they are drawn after the spectral start, which does
    # not use them, from a copy of the generator (the stream moves on past them here), so they
    # are not alive at the start's peak (25 MiB at 25M ratings over 4 processes)
    first = np.random.Generator(type(rng.bit_generator)())
    first.bit_generator.state = rng.bit_generator.state
    _skip_normals(rng, (m + n) * K)
    hyp_u = (np.zeros(K), np.ones(K))
    hyp_i = (np.zeros(K), np.ones(K))
    start_of = None
    if init == "spectral" and resume is None:  # issue 10, item 4
        start_of = _spectral_start(rng, u_side, i_side, k, nnz, reduce,
                                   cache_bytes=start_bytes, pool=pool)
        release_freed_memory()  # the start's workspace, before the sweeps' (issue 11, item 3)
    Xu = _normals_of(first, m, K, own)  # [P, bu]
    Xu *= init_std  # (in place: issue 11, item 3)
    Xi = first.standard_normal((n, K))  # [Q, bi]
    Xi *= init_std
    del first
    Xu[:, k] = 0.0
    Xi[:, k] = 0.0
    if start_of is not None:
        Q0, c0, lam_u, lam_i = start_of
        del start_of
        found = np.isfinite(lam_u)  # directions without spectrum keep the random start
        for j in np.flatnonzero(found):  # (a column at a time: no copy of Q0's)
            Xi[:, j] = Q0[:, j]
        Xi[:, k] = c0
        hyp_u[1][:k][found], hyp_i[1][:k][found] = lam_u[found], lam_i[found]
        del Q0, c0
    alpha = 1.0
    by_u, by_i = noise in ("both", "user"), noise in ("both", "item")
    tau_u = np.ones(m_own) if by_u else None
    tau_i = np.ones(n) if by_i else None
    n_user = u_side.counts if total_u is None else total_u
    n_item = i_side.total
    cnt_u, cnt_i = u_side.counts > 0, i_side.total > 0
    Y = Ym = None
    if implicit:
        assert isinstance(i_side, _Side)  # (implicit=True: the items' view whole)
        design = _Design(u_side, i_side)
        Y = init_std * rng.standard_normal((n, k))
        Ym = np.zeros((n, k))
        hyp_y = (np.zeros(k), np.ones(k))
        implicit_mean = design.times(Y)  # X @ Y, kept up to date by the Y draw
    # running sums for the posterior means
    # issue 11, item 3: float32, 4 bytes a parameter (the one copy of the parameters the
    # bound allows the sampler); the conditional means are added as each block is drawn
    Pm, Qm = np.zeros((m_own, K), dtype=np.float32), np.zeros((n, K), dtype=np.float32)
    mPm, mQm = np.zeros(K), np.zeros(K)
    alpha_sum = 0.0
    n_avg = 0
    rmse: list[float] = []
    cg_iters: list[int] = []  # the Y draw's CG iterations, per sweep
    start = 0
    if resume is not None:  # issue 11: a checkpoint's chain, into the arrays just set up
        start, rows, arrays, values = resume.sweep, resume.rows, resume.arrays, resume.values
        Xu[:, :k], Xu[:, k], Pm[...] = rows["P"], rows["bu"], rows["sum"]
        Xi[:, :k], Xi[:, k], Qm[...] = arrays["Q"], arrays["bi"], arrays["sum"]
        mPm[...], mQm[...] = arrays["prior_u.sum"], arrays["prior_i.sum"]
        hyp_u = (arrays["hyp_u.mean"].copy(), arrays["hyp_u.prec"].copy())
        hyp_i = (arrays["hyp_i.mean"].copy(), arrays["hyp_i.prec"].copy())
        tau_u = None if tau_u is None else rows["tau"].astype(np.float64)
        tau_i = None if tau_i is None else arrays["tau"].astype(np.float64)
        if implicit:
            assert Y is not None and Ym is not None
            Y[...], Ym[...], implicit_mean[...] = arrays["Y"], arrays["Y.sum"], \
                rows["implicit_mean"]
            hyp_y = (arrays["hyp_y.mean"].copy(), arrays["hyp_y.prec"].copy())
        alpha, alpha_sum, n_avg = float(values["alpha"]), float(values["alpha_sum"]), \
            int(values["n_avg"])
        rmse[:], cg_iters[:] = map(float, values["rmse"]), map(int, values["cg_iterations"])
        rng.bit_generator.state = values["rng"]

    def chain_state(done: int) -> ChainState:
        """The chain after sweep ``done`` (copies)."""
        rows: dict[str, np.ndarray] = {"P": Xu[:, :k].copy(), "bu": Xu[:, k].copy(),
                                       "sum": Pm.copy()}
        arrays: dict[str, np.ndarray] = {
            "Q": Xi[:, :k].copy(), "bi": Xi[:, k].copy(), "sum": Qm.copy(),
            "prior_u.sum": mPm.copy(), "prior_i.sum": mQm.copy(),
            "hyp_u.mean": hyp_u[0].copy(), "hyp_u.prec": hyp_u[1].copy(),
            "hyp_i.mean": hyp_i[0].copy(), "hyp_i.prec": hyp_i[1].copy()}
        if tau_u is not None:
            rows["tau"] = np.array(tau_u, dtype=np.float64)
        if tau_i is not None:
            arrays["tau"] = np.array(tau_i, dtype=np.float64)
        if implicit:
            assert Y is not None and Ym is not None
            rows["implicit_mean"] = implicit_mean.copy()
            arrays.update({"Y": Y.copy(), "Y.sum": Ym.copy(), "hyp_y.mean": hyp_y[0].copy(),
                           "hyp_y.prec": hyp_y[1].copy()})
        values = {"alpha": alpha, "alpha_sum": alpha_sum, "n_avg": n_avg, "rmse": list(rmse),
                  "cg_iterations": list(cg_iters), "rng": rng.bit_generator.state}
        return ChainState(done, rows, arrays, values)

    def means(whole: bool = False) -> GibbsResult:
        """The posterior means so far: of the kept sweeps, or during burn-in the provisional
        mean (module docstring). Sharing a chain: this process's users' rows (``rows``), or with ``whole``
        every user's (gathered from the other processes: each of them must ask too)."""
        P: np.ndarray
        Q: np.ndarray
        if n_avg == 0:
            P, Q, mP, mQ, Ya, c, al = Xu, Xi, hyp_u[0], hyp_i[0], Y, 1, alpha  # (no sweep)
        else:
            P, Q, mP, mQ, Ya, c, al = Pm, Qm, mPm, mQm, Ym, n_avg, alpha_sum
        rows = own
        if own is not None and whole:
            full = np.zeros((m, K), dtype=P.dtype)
            full[own] = P
            assert plan is not None
            plan.gather_rows([torch.from_numpy(full)], torch.from_numpy(owned))
            full /= c  # in place, the same numbers (issue 11, item 3: no second m x K table)
            Pb, rows = full[:, k].copy(), None
            Pk = _factors_first(full)  # (over the biases: taken first)
        else:
            Pk, Pb = P[:, :k] / c, P[:, k] / c
        return GibbsResult(
            mu=mu, P=Pk, Q=Q[:, :k] / c, Y=None if Ya is None else Ya / c,
            bu=Pb, bi=Q[:, k] / c, prior_P=mP[:k] / c, prior_Q=mQ[:k] / c,
            prior_bu=float(mP[k] / c), prior_bi=float(mQ[k] / c), alpha=al / c,
            n_user_ratings=n_user, n_item_ratings=n_item, rmse_train=list(rmse),
            seconds=time.perf_counter() - t0, cg_iterations=list(cg_iters), rows=rows,
        )

    # the provisional mean's restarts (module docstring): a chain from the random start is still
    # leaving it during the first half of the burn-in; one from the spectral start is not, but
    # its first sweep's users are drawn at the start's hyper-parameters, not sampled ones
    early = max(1, burn_in // 2) if init == "random" else min(2, burn_in)
    pm: np.ndarray
    for sweep in range(start + 1, sweeps + 1):
        if implicit:
            assert Y is not None
            cg_iters.append(_draw_implicit(rng, design, Xu[:, :k] - hyp_u[0][:k], hyp_u[1][:k],
                                           hyp_y[0], hyp_y[1], Y, implicit_mean, cg_tol,
                                           cg_max_iter))
            pm = np.empty((m, K))
            pm[:, :k] = hyp_u[0][:k] + implicit_mean
            pm[:, k] = hyp_u[0][k]
        else:
            pm = hyp_u[0]
        prior_u, prior_i = hyp_u[0], hyp_i[0]  # the priors the draws are conditioned on
        # sharing the chain: every user's noise, so that every process's stream stays the same
        user_noise = rng if own is None else _OwnNormals(rng, m, K, own)
        # issue 10, item 4: the mean restarts at the first kept sweep (the posterior mean is
        # that of the kept sweeps, as without this); during burn-in a provisional one, restarted
        # at each sweep up to ``early`` and whenever the training RMSE fell by more than 2 %
        # (known after the users' draw: only then are their conditional means kept apart)
        restart: bool | None = sweep == burn_in + 1 or sweep <= early or None
        if restart is None and sweep > burn_in:
            restart = False
        if restart:
            Pm[...] = 0.0
        mean_u = Pm if restart is not None else np.zeros_like(Pm)
        sse_u = _sample_rows(user_noise, u_side, Xi, None, pm, hyp_u[1], alpha, tau_u, tau_i,
                             Xu, mean_u, add_mean=True, work=work, pool=pool, table=table)
        if isinstance(user_noise, _OwnNormals):
            user_noise.finish()
        # hyper-parameters from rated rows only (unrated rows are draws from the prior)
        if implicit:
            off = Xu[cnt_u].copy()
            off[:, :k] -= implicit_mean[cnt_u]
            hyp_u = _hyper(rng, off)
        else:
            hyp_u = _hyper_rows(rng, Xu, cnt_u, reduce)
        # the noise: alpha and tau_u given the residuals at the users' draw, ...
        sse = float(sse_u.sum() if tau_u is None else np.dot(tau_u, sse_u))
        if plan is not None:
            sse = plan.all_sum_float(sse)
        rmse.append(math.sqrt(sse / nnz))
        if restart is None:
            restart = rmse[-1] < _SETTLED * rmse[-2]
            if restart:
                Pm[...] = mean_u
            else:
                Pm += mean_u
        del mean_u
        if restart:
            for a in (Qm, mPm, mQm) + (() if Ym is None else (Ym,)):
                a[...] = 0.0
            alpha_sum, n_avg = 0.0, 0
        alpha = float(_gamma(rng, _A0 + nnz / 2, _B0 + sse / 2))
        if tau_u is not None:
            tau_u = _gammas_of(rng, noise_shape + n_user / 2, noise_shape + alpha * sse_u / 2,
                               own)
        sse_i = _sample_rows(rng, i_side, Xu, None, hyp_i[0], hyp_i[1], alpha, tau_i, tau_u,
                             Xi, Qm, reduce, add_mean=True, work=work, pool=pool,
                             table=table)
        hyp_i = _hyper_rows(rng, Xi, cnt_i, None)
        # ... and kappa_i given those at the items' draw
        if tau_i is not None:
            tau_i = _gamma(rng, noise_shape + i_side.total / 2, noise_shape + alpha * sse_i / 2)
        if implicit:
            assert Y is not None
            hyp_y = _hyper(rng, Y)
        mQm += prior_i
        mPm += prior_u
        if Ym is not None and Y is not None:
            Ym += Y
        alpha_sum += alpha
        n_avg += 1
        stop = bool(callback is not None and callback(sweep, rmse[-1], means))
        if on_state is not None:
            on_state(sweep, functools.partial(chain_state, sweep), stop or sweep == sweeps)
        if stop:
            break
    if n_avg:  # (no sweep kept: the means are the draws)
        # issue 11, item 3: the posterior means need neither the draws nor the views, freed
        # before every user's rows are gathered (the draws: 25 MiB at 25M ratings over 4
        # processes; the items' view, when held whole, 8 bytes a rating)
        del Xu, Xi, u_side, i_side
        release_freed_memory()
    return means(whole=True)


def _factors_first(full: np.ndarray) -> np.ndarray:
    """The factor columns ``full[:, :k]`` of ``full`` (m, k+1) as a C-ordered (m, k) array in
    ``full``'s own memory (each row moved down over the biases, 4,096 rows at a time;
    ``full[:, k]`` is overwritten, so take the biases first): the same numbers as
    ``np.ascontiguousarray(full[:, :k])`` without a second m x k table (issue 11, item 3: the
    model copies the factors into a C-ordered tensor, 20 MiB at 162,540 users, rank 32, at a
    sharded fit's peak)."""
    m, K = full.shape
    k = K - 1
    flat = full.reshape(-1)
    for r0 in range(0, m, 1 << 12):  # each row lands at or before where it starts
        r1 = min(m, r0 + (1 << 12))
        flat[r0 * k : r1 * k] = full[r0:r1, :k].reshape(-1)  # (a copy of the rows first)
    return flat[: m * k].reshape(m, k)


def _sorted_pairs(users: np.ndarray, items: np.ndarray, chunk: int = 1 << 14) -> bool:
    """Whether the pairs are sorted by user, then item (checked ``chunk`` at a time: no
    temporaries the length of the ratings)."""
    for a in range(0, max(len(users) - 1, 0), chunk):
        u, i = users[a : a + chunk + 1], items[a : a + chunk + 1]
        if not bool(np.all((u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (i[1:] >= i[:-1])))):
            return False
    return True


def _skip_normals(rng: np.random.Generator, count: int, chunk: int = 1 << 16) -> None:
    """Move ``rng`` on past ``count`` standard normals, as drawing them in one call (each
    value is drawn in turn, whatever the calls), ``chunk`` at a time."""
    for a in range(0, count, chunk):
        rng.standard_normal(min(chunk, count - a))


class _OwnNormals:
    """``noise(r0, r1)`` for a process sharing the chain: the standard normals (rows x K) of
    its users ``own[r0:r1]`` among every user's, drawn from ``rng`` in order as the row blocks
    ask for them (``_DRAW_ROWS`` rows at a time; issue 11, item 3: not all of its users' at
    once, 8 K bytes a user); :meth:`finish` draws the rest, so every process's stream moves
    on by every user's numbers, as in one process."""

    def __init__(self, rng: np.random.Generator, n_rows: int, K: int, own: np.ndarray) -> None:
        self.rng, self.n_rows, self.K, self.own = rng, n_rows, K, own
        self.done = 0  # rows drawn so far, of every user's

    def __call__(self, r0: int, r1: int) -> np.ndarray:
        out = np.empty((r1 - r0, self.K))
        if r1 > r0:
            self._draw(int(self.own[r1 - 1]) + 1, out, r0)
        return out

    def finish(self) -> None:
        self._draw(self.n_rows)

    def _draw(self, stop: int, out: np.ndarray | None = None, r0: int = 0) -> None:
        while self.done < stop:
            end = min(self.done + _DRAW_ROWS, stop)
            z = self.rng.standard_normal((end - self.done, self.K))
            if out is not None:
                a, b = np.searchsorted(self.own, [self.done, end])
                out[a - r0 : b - r0] = z[self.own[a:b] - self.done]
            self.done = end


def _hyper_rows(rng: np.random.Generator, x: np.ndarray, rated: np.ndarray,
                reduce: Callable[[list[np.ndarray]], None] | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.priors.normal_gamma` of the rows ``x[rated]``, which the processes sharing the
    chain (``reduce``: their sum) hold between them: from their summed column sums."""
    n, total, squares = _rated_sums(x, rated)
    if reduce is None:
        return normal_gamma_sums(rng, n, total, squares)
    stats = np.concatenate([[float(n)], total, squares])
    reduce([stats])
    K = x.shape[1]
    return normal_gamma_sums(rng, int(round(stats[0])), stats[1 : K + 1], stats[K + 1 :])


def _rated_sums(x: np.ndarray, rated: np.ndarray, chunk: int = 1 << 14
                ) -> tuple[int, np.ndarray, np.ndarray]:
    """The rows ``x[rated]``: how many, their column sums and the sums of their squares, the
    same numbers as ``x[rated].sum(0)`` and ``(x[rated] ** 2).sum(0)`` (numpy sums a column
    row after row: each chunk is summed after the sum so far), ``chunk`` rows at a time
    (issue 11, item 3: not a copy of the rows and one of their squares, 16 bytes a
    parameter)."""
    K = x.shape[1]
    total, squares = np.zeros(K), np.zeros(K)
    n = 0
    for a in range(0, x.shape[0], chunk):
        c, keep = x[a : a + chunk], rated[a : a + chunk]
        if not keep.all():  # (every row rated: the rows themselves, no copy; issue 10)
            c = c[keep]
        if n == 0:
            total, squares = c.sum(0), (c * c).sum(0)
        elif len(c):
            buf = np.empty((len(c) + 1, K))
            buf[0], buf[1:] = total, c
            total = buf.sum(0)
            buf[0] = squares
            np.multiply(c, c, out=buf[1:])
            squares = buf.sum(0)
        n += len(c)
    return n, total, squares



# The spectral start's residuals are formed in float64 this many ratings at a time (issue 11,
# item 3)
_RESIDUAL_SLICE = 1 << 16

# The spectral start (issue 10, item 4): at most this many pairs of products with the centred
# ratings, stopping once the item subspace has settled: the mean squared cosine of its principal
# angles with the previous pair's above 1 - _START_TOL.
_START_PAIRS = 10
_START_TOL = 1e-2


def _orthonormal(Y: np.ndarray, reduce: Callable[[list[np.ndarray]], None] | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Columns spanning those of ``Y`` (rows x k), orthonormal (Cholesky QR: ``Y L^-T`` with
    ``L L^T = Y^T Y``, the Gram matrix summed over the processes by ``reduce`` when each holds
    some of the rows), written over ``Y`` or into ``out`` (the same numbers: issue 11, item 3,
    no copy of ``Y`` and no product temporaries); a tiny ridge keeps dependent columns
    finite."""
    G = Y.T @ Y
    if reduce is not None:
        reduce([G])
    k = G.shape[0]
    G[np.diag_indices(k)] += 1e-10 * float(np.trace(G)) / k + 1e-300
    L = np.linalg.cholesky(G)
    Li = np.linalg.inv(L).T
    if out is not None:
        for a in range(0, Y.shape[0], _DRAW_ROWS):
            np.matmul(Y[a : a + _DRAW_ROWS], Li, out=out[a : a + _DRAW_ROWS])
        return out
    for a in range(0, Y.shape[0], _DRAW_ROWS):  # in place (issue 11, item 3: no copy of Y)
        Y[a : a + _DRAW_ROWS] = Y[a : a + _DRAW_ROWS] @ Li
    return Y


def _spectral_start(rng: np.random.Generator, u_side: _Side, i_side: _Side | _Columns, k: int,
                    nnz: int, reduce: Callable[[list[np.ndarray]], None] | None,
                    cache_bytes: int | None = None, pool: _BlockPool | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The chain's start (issue 10, item 4): item factors ``Q0`` (n, k) and biases ``c0`` (n,),
    and the prior precisions of the user and item factor columns (k,) that go with them.

    ``c0`` and the user biases ``b0`` are the biases' conditional means at the start's
    hyper-parameters (``alpha = lambda = 1``: ``sum t / (count + 1)``, items first, ``t = r -
    mu``). The factors come from a truncated SVD of the residual ``e = t - c0_i - b0_u`` (zero
    where unrated) by subspace iteration from ``k`` random columns: ``Y = orth(A W)``, ``W =
    A^T Y``, until the span of ``W`` settles (``_START_PAIRS``, ``_START_TOL``). With ratings
    missing at rate ``1 - rho`` (``rho = nnz / (m n)``, ``m`` and ``n`` the users and items
    with a rating, whatever the shape), ``A``'s singular values are about
    ``rho`` times the full matrix's, so the balanced factors ``Y diag(s / rho)^1/2`` and ``W
    diag(1 / (s rho))^1/2`` (``s`` the column norms of ``W``) have ``P0 Q0^T ~ Y W^T / rho``;
    their mean squares ``s / (rho m)`` and ``s / (rho n)`` give the precisions. A column with no
    spectrum (``s ~ 0``, e.g. constant ratings) gets ``nan`` (the caller keeps its random start).

    Each process sharing the chain (``reduce``) holds some users' rows: item sums and the Gram
    matrices of the user-side columns are summed, so every process computes the same item-side
    numbers and stops at the same pair. Memory: ``e`` is kept in float32 for the users' view
    only (4 bytes a rating) when that fits ``cache_bytes`` (``None``: always), else formed a
    row block at a time for each product (issue 11, item 3: it was kept in both orientations,
    8 bytes a rating); the products are in float32 (the start needs no more), the rest in
    float64. ``pool``: threads for the users' blocks of the products with ``A`` (each block's
    rows its own: the same numbers).
    """
    n = i_side.n_rows
    off = u_side.offset

    def sums(side: _Side | _Columns, t: Callable[[_Side, int, int], np.ndarray]
             ) -> np.ndarray:
        """Per row of ``side``, the sum of ``t(piece, a, b)`` over its ratings, block by
        block."""
        out = np.zeros(side.n_rows)
        for p0, piece in side.parts():
            for r0, r1, a, b, _ in piece.blocks:
                out[p0 + r0 : p0 + r1] = _row_sums(piece, r0, r1, t(piece, a, b))
        return out

    def t_of(piece: _Side, a: int, b: int) -> np.ndarray:  # the centred ratings a:b, float64
        return piece.vals[a:b].astype(np.float64) - off

    c0 = sums(i_side, t_of)
    if reduce is not None:
        reduce([c0])
    c0 /= i_side.total + 1.0
    b0 = sums(u_side, lambda p, a, b: t_of(p, a, b) - np.take(c0, p.cols[a:b]))
    b0 /= u_side.counts + 1.0

    def residual(p: _Side, a: int, b: int, item: np.ndarray, user: np.ndarray) -> np.ndarray:
        """``t - c0_i - b0_u`` of the ratings ``a:b`` of ``p`` (``item``, ``user``: each one's),
        in float32, formed in float64 ``_RESIDUAL_SLICE`` ratings at a time, in place (issue
        11, item 3: a row block's at once took four float64 temporaries, 16 MiB at 25M ratings
        over 4 processes, at the start's peak; the same numbers)."""
        out = np.empty(b - a, dtype=np.float32)
        for s in range(0, b - a, _RESIDUAL_SLICE):
            e = min(b - a, s + _RESIDUAL_SLICE)
            t = p.vals[a + s : a + e].astype(np.float64)
            t -= off
            t -= np.take(c0, item[s:e])
            t -= np.take(b0, user[s:e])
            out[s:e] = t
        return out

    def e_u(p: _Side, a: int, b: int, rows: np.ndarray) -> np.ndarray:
        return residual(p, a, b, p.cols[a:b], rows)

    # issue 10, item 4: the users' view's residuals in float32 (the products' precision: the
    # same numbers), formed once, not for each of the up to 20 products (at 9M ratings 1.3 s
    # of the start's 2.0), when their 4 bytes a rating fit ``cache_bytes``
    def cached(side: _Side, e: Callable[[_Side, int, int, np.ndarray], np.ndarray]
               ) -> np.ndarray:
        """The residuals ``e`` of every rating of ``side``, in float32, block by block."""
        out = np.empty(len(side.cols), dtype=np.float32)
        for r0, r1, a, b, _ in side.blocks:
            out[a:b] = e(side, a, b, side.row_index(r0, r1, a, b))
        return out

    E = None
    if cache_bytes is None or 4 * len(u_side.cols) <= cache_bytes:
        E = cached(u_side, e_u)

    def e_block(r0: int, r1: int, a: int, b: int) -> np.ndarray:
        """The residuals of the users' view's block ``r0:r1`` (ratings ``a:b``), float32."""
        if E is not None:
            return E[a:b]
        return e_u(u_side, a, b, u_side.row_index(r0, r1, a, b))

    def by_rows(side: _Side, residuals: Callable[[int, int, int, int], np.ndarray]
                ) -> Callable[[np.ndarray], np.ndarray]:
        """``dense -> A @ dense`` over the rows of ``side`` (a whole view), ``A``'s entries
        ``residuals(r0, r1, a, b)`` (float32) for each row block, in float32."""

        def times(dense: np.ndarray) -> np.ndarray:
            out = np.empty((side.n_rows, dense.shape[1]))
            dt = dense.astype(np.float32)

            def block(blk: tuple[int, int, int, int, torch.Tensor]) -> None:
                r0, r1, a, b, crow = blk
                out[r0:r1] = _spmm(crow, side.cols[a:b], residuals(r0, r1, a, b), dt)

            for _ in (map(block, side.blocks) if pool is None
                      else pool.in_order(block, side.blocks)):
                pass
            return out

        return times

    A_u = by_rows(u_side, e_block)

    def e_i(p: _Side, a: int, b: int, rows: np.ndarray) -> np.ndarray:
        return residual(p, a, b, rows, p.cols[a:b])

    def product(side: _Side | _Columns, e: Callable[[_Side, int, int, np.ndarray], np.ndarray]
                ) -> Callable[[np.ndarray], np.ndarray]:
        """``dense -> A @ dense`` over ``side``'s rows, ``A``'s entries ``e(piece, a, b,
        rows)``, in float32, formed block by block for each product (issue 11, item 3: not
        kept, 8 bytes a rating for the two sides)."""

        def times(dense: np.ndarray) -> np.ndarray:
            out = np.empty((side.n_rows, dense.shape[1]))
            dt = dense.astype(np.float32)
            for p0, piece in side.parts():
                for r0, r1, a, b, crow in piece.blocks:
                    rows = piece.row_index(r0, r1, a, b)  # of the piece: + p0 of the side
                    vals = e(piece, a, b, rows + p0 if p0 else rows)
                    out[p0 + r0 : p0 + r1] = _spmm(crow, piece.cols[a:b], vals, dt)
            return out

        return times

    try:  # ``Y += A @ X`` for a CSC ``A`` (scipy's kernel behind ``csc_matrix @ dense``)
        from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
    except ImportError:  # pragma: no cover - then the item slabs are built for each product
        _csc_matvecs = None

    def scatter(dense: np.ndarray) -> np.ndarray:
        """``A^T @ dense`` for the items from the users' view: each user block's ``A_b^T
        dense_b`` added into one float32 output, every item's terms in user order as the items'
        view sums them (the same numbers; issue 11, item 3: no item slabs built for each
        product, and no float32 copy of all of ``dense``); in float32 (the caller makes it
        float64 once ``dense`` is freed)."""
        out = np.zeros((n, dense.shape[1]), dtype=np.float32)
        flat = out.reshape(-1)
        for r0, r1, a, b, crow in u_side.blocks:
            vals = e_block(r0, r1, a, b)
            part = np.ascontiguousarray(dense[r0:r1], dtype=np.float32).reshape(-1)
            _csc_matvecs(n, r1 - r0, dense.shape[1], crow.numpy(), u_side.cols[a:b], vals,
                         part, flat)
        return out

    # issue 10, item 4: with the items' view whole and its residuals fitting ``cache_bytes``
    # beside the users' (4 more bytes a rating), they are formed once too, and ``A^T @ dense``
    # is torch's CSR product over the items' rows: the same sums (each item's terms in user
    # order), half the time of the scatter on ml-100k (0.11 ms a product against 0.22)
    A_i: Callable[[np.ndarray], np.ndarray]
    if isinstance(i_side, _Side) and E is not None and (
            cache_bytes is None or 4 * (len(u_side.cols) + len(i_side.cols)) <= cache_bytes):
        E_i = cached(i_side, e_i)
        A_i = by_rows(i_side, lambda r0, r1, a, b: E_i[a:b])
    else:
        A_i = scatter if _csc_matvecs is not None else product(i_side, e_i)
    W = rng.standard_normal((n, k))
    V = None
    for _ in range(_START_PAIRS):
        Y = _orthonormal(A_u(W), reduce)
        # issue 11, item 3: the last W is not alive while the next one is made (14 MiB at 25M
        # ratings over 4 processes), nor Y while it is made float64 (10 MiB), nor a copy of W
        # and a product's temporary while V_new is made (29 MiB): the start was the peak
        del W
        W = A_i(Y)
        del Y
        W = W.astype(np.float64, copy=False)
        if reduce is not None:
            reduce([W])
        V_new = _orthonormal(W, out=np.empty_like(W))  # (not in place: W is used again)
        if V is not None and float(np.sum((V.T @ V_new) ** 2)) / k > 1.0 - _START_TOL:
            break
        V = V_new
    del V, V_new  # (issue 11, item 3: not alive beside W and W * W)
    s = np.sqrt((W * W).sum(0))
    s[~(s > 1e-8 * s.max(initial=0.0))] = np.nan  # no spectrum in that direction
    # the density among the rated users and items: rows without a rating have no part in A, and
    # a shape far larger than the rated part (1,000 ratings in a 102,799 x 37,344 shape: rho
    # 2.6e-7 over the whole) scaled the factors by 1/sqrt(rho) until the draws' float32 Gram
    # sums lost positive definiteness (LinAlgError at sweep 1). Every row rated: the same rho.
    rated = np.array([float(np.count_nonzero(u_side.counts))])
    if reduce is not None:
        reduce([rated])
    m_r, n_r = max(float(rated[0]), 1.0), max(float(np.count_nonzero(i_side.total)), 1.0)
    rho = nnz / (m_r * n_r)
    W /= np.sqrt(s * rho)  # (in place: issue 11, item 3)
    return W, c0, rho * m_r / s, rho * n_r / s
