"""Ranking: implicit-feedback factorization (the all-unobserved term) and pairwise losses.

Implicit-feedback matrix factorization (Hu, Koren and Volinsky 2008) treats every entry of the
``m x n`` matrix as an observation: an observed entry ``(u, i)`` is a preference ``1`` held with
confidence ``c_ui`` (:func:`confidence`: ``1 + alpha * r`` or ``1 + alpha * log(1 + r / eps)``), an
unobserved one a ``0`` held with weight ``w0``. With scores ``s_ui = p_u . q_i`` the objective is

.. math::

    L(P, Q) = \\sum_{(u,i) \\in \\Omega} c_{ui} (1 - s_{ui})^2
              + w_0 \\sum_{(u,i) \\notin \\Omega} s_{ui}^2
              + \\lambda (\\|P\\|^2 + \\|Q\\|^2)

and the sum over the unobserved entries is never formed: it is the sum over *all* entries minus
the observed ones, and (the Gram trick)

.. math::

    \\sum_{u,i} s_{ui}^2 = \\sum_{u,i} (p_u \\cdot q_i)^2 = \\langle P^T P,\\ Q^T Q \\rangle_F

costs ``O((m + n) k^2)``. :func:`all_unobserved` is that term as a differentiable torch function
of ``(P, Q)`` (for the gradient solvers, autograd differentiates it) and :func:`implicit_loss` the
whole data term. :func:`implicit_als` minimizes ``L`` exactly, one side at a time: with
``G = Q^T Q`` computed once per half-sweep, user ``u``'s row solves

.. math::

    (w_0 G + \\sum_{i \\in \\Omega_u} (c_{ui} - w_0) q_i q_i^T + \\lambda I)\\, p_u
    = \\sum_{i \\in \\Omega_u} c_{ui} q_i

(the correction runs only over the user's observed items), for a block of users at once (one
batched Cholesky; a row with fewer than ``k/2`` entries uses the Woodbury identity against the
shared ``w_0 G + lambda I`` instead, an ``n_u x n_u`` solve: the same answer, cheaper), and the
items likewise against ``P``.

Pairwise ranking losses are plain elementwise torch functions of ``(score_positive,
score_negative)`` (:func:`bpr`, :func:`warp`); :func:`sample_negatives` draws the negatives
(uniform or popularity-weighted, never an item the user has) and :func:`fit_pairwise` trains
``P``, ``Q`` and item biases with any such loss, including a user's own.

:func:`implicit_als` with ``cg_steps=3`` takes three conjugate-gradient steps a row instead of
the exact solve (as implicit does), each step two CSR products (a sampled dense-dense product and
a sparse-dense one, the last step only the first): not exact, much cheaper on large data (on
10M generated interactions at rank 64, one thread, an epoch 0.8-1.1x implicit's CPU ALS epoch,
exact 3-7x; the same NDCG@10 as exact on MovieLens 100K u1 and ml-latest-small; see
benchmarks/ranking.py).

``MatrixFactorization(task="ranking")`` runs :func:`fit_ranking` with :data:`RANKING_DEFAULTS`;
the functions here are its parts, usable on their own:

>>> P, Q = implicit_als(train, rank=64, alpha=0.5, weight=0.5, regularization=25.0)
>>> P, Q, b = fit_pairwise(train, rank=64, loss=bpr, epochs=30)
>>> loss = implicit_loss(P, Q, users, items, conf, weight=0.5)   # autograd-ready
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import Ratings
from .sparse import csr_tensor as _csr_tensor
from .threads import MIN_WORK_PER_WORKER

__all__ = [
    "CONFIDENCES",
    "confidence",
    "all_unobserved",
    "implicit_loss",
    "implicit_als",
    "implicit_objective",
    "bpr",
    "warp",
    "PAIRWISE_LOSSES",
    "sample_negatives",
    "fit_pairwise",
    "InteractionMatrix",
    "RANKING_DEFAULTS",
    "fit_ranking",
    "fold_in_row",
    "solve_rows",
]

#: names accepted by :func:`confidence`
CONFIDENCES = ("linear", "log", "binary")

#: the ranking task's defaults for :func:`implicit_als`, chosen on validation splits carved from
#: the training data of MovieLens 100K u1 and ml-latest-small 90/10 (see benchmarks/ranking.py)
RANKING_DEFAULTS: dict[str, Any] = {
    "rank": 64, "alpha": 0.5, "scheme": "linear", "weight": 0.5, "regularization": 25.0,
    "iterations": 15,
}

PairwiseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- argument checks
def _real(value: Any, name: str, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {minimum:g}, got {value!r}")
    return float(value)


def _int(value: Any, name: str, minimum: int = 1) -> int:
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool)
            and value >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_ratings(ratings: Any) -> Ratings:
    if not isinstance(ratings, Ratings):
        raise TypeError(
            f"ratings must be an autofact.Ratings, got {type(ratings).__name__}; build one with "
            "Ratings.from_frame / from_sparse / from_dense or autofact.read"
        )
    if len(ratings) == 0:
        raise ValueError("ratings is empty: implicit feedback needs at least one interaction")
    return ratings


# ---------------------------------------------------------------------------- confidence
def confidence(values: Any, alpha: float = 1.0, scheme: str = "linear",
               eps: float = 1.0) -> np.ndarray:
    """Confidence of observed entries from their values ``r``.

    ``'linear'``: ``1 + alpha * r``; ``'log'``: ``1 + alpha * log(1 + r / eps)``; ``'binary'``:
    ``1 + alpha`` whatever ``r`` is (every interaction counts the same). Values must be ``>= 0``.
    """
    alpha = _real(alpha, "alpha")
    r = np.asarray(values, dtype=np.float64)
    if scheme not in CONFIDENCES:
        raise ValueError(f"scheme must be one of {CONFIDENCES}, got {scheme!r}")
    if r.size and not (np.isfinite(r).all() and r.min() >= 0):
        raise ValueError(
            f"confidence needs finite values >= 0 (counts, plays, ratings), got min "
            f"{float(r.min())!r}; shift the values, set every interaction to 1, or (calling "
            "confidence) use scheme='binary'"
        )
    if scheme == "linear":
        return 1.0 + alpha * r
    if scheme == "log":
        eps = _real(eps, "eps", strict=True)
        return 1.0 + alpha * np.log1p(r / eps)
    return np.full(r.shape, 1.0 + alpha)


# ---------------------------------------------------------------------------- the Gram trick
def all_unobserved(P: torch.Tensor, Q: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight * sum over ALL (u, i) of (p_u . q_i)^2``, as ``weight * <P^T P, Q^T Q>_F``.

    ``O((m + n) k^2)`` time and ``O(k^2)`` extra memory: the ``m x n`` score matrix is never
    formed. Differentiable in ``P`` and ``Q`` (autograd gives the gradient).
    """
    return weight * ((P.T @ P) * (Q.T @ Q)).sum()


def implicit_loss(P: torch.Tensor, Q: torch.Tensor, users: torch.Tensor, items: torch.Tensor,
                  conf: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """The implicit-feedback data term: ``sum_obs c (1 - s)^2 + weight * sum_unobs s^2``.

    Computed as :func:`all_unobserved` (every entry, the Gram trick) plus the correction on the
    observed entries, ``c (1 - s)^2 - weight * s^2``. Differentiable in ``P`` and ``Q``.
    """
    s = (P[users] * Q[items]).sum(1)
    return all_unobserved(P, Q, weight) + (conf * (1 - s) ** 2 - weight * s**2).sum()


# ---------------------------------------------------------------------------- interactions
@dataclass(frozen=True)
class InteractionMatrix:
    """The observed entries as CSR by user and by item (0-based indices), with a confidence.

    Built once per fit from a :class:`Ratings`; ``indptr``/``indices``/``conf`` are the user-side
    CSR, ``t_*`` the item-side one.
    """

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    conf: np.ndarray
    t_indptr: np.ndarray
    t_indices: np.ndarray
    t_conf: np.ndarray

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, conf: np.ndarray,
              shape: tuple[int, int]) -> InteractionMatrix:
        m, n = shape
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        conf = np.asarray(conf, dtype=np.float64)

        def csr(rows: np.ndarray, cols: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
            order = np.lexsort((cols, rows))
            indptr = np.zeros(size + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=size), out=indptr[1:])
            return indptr, cols[order], conf[order]

        a = csr(users, items, m)
        b = csr(items, users, n)
        return cls((m, n), a[0], a[1], a[2], b[0], b[1], b[2])

    @classmethod
    def from_ratings(cls, ratings: Ratings, conf: np.ndarray) -> InteractionMatrix:
        return cls.build(ratings.users, ratings.items, conf, ratings.shape)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``(users[k], items[k])`` is observed (binary search in the user's row)."""
        n = self.shape[1]
        keys = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr)) * n \
            + self.indices
        q = np.asarray(users, dtype=np.int64) * n + np.asarray(items, dtype=np.int64)
        pos = np.searchsorted(keys, q)
        pos = np.minimum(pos, len(keys) - 1)
        return keys[pos] == q


# ---------------------------------------------------------------------------- implicit ALS
@dataclass
class _Block:
    rows: torch.Tensor  # (B,) row indices
    cols: torch.Tensor  # (B, L) column indices, 0 where padded
    conf: torch.Tensor  # (B, L) confidence, 0 where padded
    mask: torch.Tensor  # (B, L) 1 where observed, 0 where padded


def _blocks(indptr: np.ndarray, indices: np.ndarray, conf: np.ndarray, k: int,
            dtype: torch.dtype, device: torch.device, max_floats: int) -> list[_Block]:
    """Rows grouped by length into padded blocks of at most ``max_floats`` gathered floats."""
    lengths = np.diff(indptr)
    order = np.argsort(lengths, kind="stable")
    blocks: list[_Block] = []
    start = 0
    m = len(order)
    sorted_len = np.maximum(lengths[order], 1)
    cum = np.concatenate(([0], np.cumsum(sorted_len)))
    while start < m:
        # rows sorted by length: a block's last row sets its padding, so the block's size (gathered
        # rows, confidences, and three k x k matrices a row) increases with its last row j
        count = np.arange(1, m - start + 1)
        cost = count * (sorted_len[start:] * (k + 2) + 3 * k * k)
        # and padding at most a quarter more than the rows' own entries
        waste = count * sorted_len[start:] > 1.25 * (cum[start + 1:] - cum[start]) + 8
        over = (cost > max_floats) | waste
        stop = start + max(1, int(np.argmax(over)) if over.any() else len(over))
        rows = order[start:stop]
        width = max(int(lengths[rows].max()), 1)
        pos = indptr[rows][:, None] + np.arange(width)[None, :]
        mask = np.arange(width)[None, :] < lengths[rows][:, None]
        pos = np.where(mask, pos, 0)
        cols = np.where(mask, indices[pos] if len(indices) else 0, 0)
        c = np.where(mask, conf[pos] if len(conf) else 0.0, 0.0)
        blocks.append(_Block(
            rows=torch.as_tensor(rows, device=device),
            cols=torch.as_tensor(cols, device=device),
            conf=torch.as_tensor(c, dtype=dtype, device=device),
            mask=torch.as_tensor(mask, dtype=dtype, device=device),
        ))
        start = stop
    return blocks


def _solve_side(X: torch.Tensor, Y: torch.Tensor, blocks: list[_Block], reg: torch.Tensor,
                weight: float) -> None:
    """Update every row of ``X`` to its exact least-squares solution against the fixed ``Y``
    (in place): a batched Cholesky a block, or Woodbury for short rows."""
    k = Y.shape[1]
    G = weight * (Y.T @ Y)  # the Gram trick: once per half-sweep
    # rows with fewer than k/2 entries: Woodbury against the shared D = G + lambda I (one k x k
    # inverse a half-sweep, then an L x L solve a row instead of a k x k Cholesky), when every
    # row has the same lambda and every correction weight c - w0 is >= 0
    Z = None
    if len(reg) and bool(reg.min() == reg.max()) and float(reg[0]) > 0:
        D = G + float(reg[0]) * torch.eye(k, dtype=Y.dtype, device=Y.device)
        Z = torch.cholesky_solve(Y.T, torch.linalg.cholesky(D)).T  # rows y_i D^-1
    for blk in blocks:
        Yg = Y[blk.cols]  # (B, L, k)
        w = (blk.conf - weight) * blk.mask  # the observed entries' correction, 0 where padded
        lam = reg[blk.rows][:, None]
        b = torch.bmm(blk.conf[:, None, :], Yg)[:, 0]  # sum_i c_ui y_i
        if Z is not None and 2 * blk.cols.shape[1] <= k and bool((w >= 0).all()):
            # (D + Yo^T W Yo)^-1 b = x0 - Zo^T (I + W Yo Zo^T)^-1 W Yo x0, x0 = D^-1 b
            Zg = Z[blk.cols]  # (B, L, k): rows of Yo D^-1
            x0 = torch.bmm(blk.conf[:, None, :], Zg)[:, 0]  # D^-1 b (D symmetric)
            M = torch.bmm(Yg, Zg.transpose(1, 2)) * w[:, :, None]
            M.diagonal(dim1=1, dim2=2).add_(1.0)
            rhs = torch.bmm(Yg, x0[:, :, None]) * w[:, :, None]
            t = torch.linalg.solve(M, rhs)
            X[blk.rows] = x0 - torch.bmm(Zg.transpose(1, 2), t)[:, :, 0]
            continue
        A = torch.bmm(Yg.transpose(1, 2), Yg * w[:, :, None])
        A += G
        A.diagonal(dim1=1, dim2=2).add_(lam)
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):  # only with regularization 0 and a singular system
            X[blk.rows] = torch.linalg.lstsq(A, b[:, :, None]).solution[:, :, 0]
        else:
            X[blk.rows] = torch.cholesky_solve(b[:, :, None], L)[:, :, 0]


def _matvecs() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """scipy's kernels behind ``csr @ dense`` and ``csc @ dense`` (``Y += A X``, into a given
    array: no fresh output to zero each product), or ``None`` where this scipy lacks them."""
    try:
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - every scipy >= 1.8 has it
        return None
    fns = getattr(_sparsetools, "csr_matvecs", None), getattr(_sparsetools, "csc_matvecs", None)
    return None if None in fns else fns  # type: ignore[return-value]


class _CsrSide:
    """One side's observed entries, for conjugate-gradient sweeps on its rows' normal equations
    ``A x = b``, ``A = w0 G + lambda I + sum_i (c_i - w0) y_i y_i^T``, ``b = sum_i c_i y_i``.

    ``A v`` for every row at once is a sampled dense-dense product (SDDMM: ``v . y_i`` for each
    observed entry, torch's ``sampled_addmm``) and a sparse-dense one (SpMM: ``sum_i (c_i - w0)
    (v . y_i) y_i`` a row), ``O(nnz k)`` each, plus ``v (w0 G + lambda I)``. On the CPU
    (``host``) both sides keep the user-major layout: the item side's SDDMM reads the rows of
    ``P`` in order and its SpMM is the transposed product (scipy's CSC kernel, scattering into
    the item rows), so the large factor matrix is streamed rather than gathered at random; the
    SpMMs are scipy's kernels, adding into preallocated buffers (its public ``@`` where the
    kernels are missing), over ``torch.get_num_threads()`` chunks of entries in threads (scipy
    releases the GIL; a chunk has at least :data:`~autofact.threads.MIN_WORK_PER_WORKER`
    multiply-adds). Elsewhere (CUDA) each side has its own CSR and the products are torch's.
    """

    size: tuple[int, int]
    c: torch.Tensor  # confidences, in storage order
    w: torch.Tensor  # c - w0
    crow: torch.Tensor
    col: torch.Tensor
    t: torch.Tensor  # the SDDMM's output values, reused
    pattern: torch.Tensor  # the CSR (values c) whose sparsity the SDDMM samples
    out: torch.Tensor  # the CSR over t
    pool: Any  # a ThreadPoolExecutor over the chunks, or None
    # chunks of the storage: rows r0:r1, entries e0:e1, their local indptr and indices, and
    # the chunk as a scipy matrix (CSC, the transpose, on the item side)
    parts: list[tuple[int, int, int, int, np.ndarray, np.ndarray, Any]]

    def __init__(self, R: InteractionMatrix, items: bool, rank: int, weight: float,
                 dtype: torch.dtype, device: torch.device, host: bool | None = None,
                 like: _CsrSide | None = None) -> None:
        m, n = R.shape
        self.weight = weight
        self.host = device.type == "cpu" if host is None else host
        # transposed: the entries are stored by user while this side's rows are the items
        self.transposed = items and self.host
        self.buffers: dict[str, torch.Tensor] = {}
        self.kernels: tuple[Callable[..., None], Callable[..., None]] | None = None
        if self.transposed and like is not None and like.host and not like.transposed:
            # the user side's storage, shared (its SDDMM buffer too: the sides take turns)
            self.size, self.c, self.w, self.crow, self.col = (
                like.size, like.c, like.w, like.crow, like.col)
            self.t, self.pattern, self.out = like.t, like.pattern, like.out
            self.kernels, self.pool = like.kernels, like.pool
            self.parts = [(*part[:6], part[6].T) for part in like.parts]
            return
        if items and not self.host:
            indptr, indices, conf, size = R.t_indptr, R.t_indices, R.t_conf, (n, m)
        else:
            indptr, indices, conf, size = R.indptr, R.indices, R.conf, (m, n)
        self.size = size
        self.c = torch.as_tensor(conf, dtype=dtype, device=device)
        self.w = self.c - weight  # the observed entries' correction weights
        self.crow = torch.as_tensor(np.asarray(indptr, dtype=np.int64), device=device)
        self.col = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=device)
        self.t = torch.empty_like(self.c)
        self.pattern = _csr_tensor(self.crow, self.col, self.c, size)
        self.out = _csr_tensor(self.crow, self.col, self.t, size)
        self.pool = None
        self.parts = []
        if not self.host:
            return
        import scipy.sparse as sp

        self.kernels = _matvecs()
        itype = np.int32 if max(len(indices), *size) < 2**31 else np.int64
        ptr = np.asarray(indptr, dtype=np.int64)
        ind = np.asarray(indices, dtype=itype)
        # chunks: torch's thread count, one per MIN_WORK_PER_WORKER multiply-adds at most
        chunks = max(1, min(torch.get_num_threads(), size[0],
                            len(indices) * rank // MIN_WORK_PER_WORKER))
        # row ranges of the storage with about the same number of entries each
        cuts = np.searchsorted(ptr, np.linspace(0, ptr[-1], chunks + 1)[1:-1])
        bounds = [0, *sorted({int(b) for b in cuts} - {0, size[0]}), size[0]]
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            e0, e1 = int(ptr[r0]), int(ptr[r1])
            lptr = (ptr[r0:r1 + 1] - e0).astype(itype)
            mat = sp.csr_matrix((self.c.numpy()[e0:e1], ind[e0:e1], lptr), shape=(r1 - r0, size[1]))
            self.parts.append((r0, r1, e0, e1, lptr, ind[e0:e1], mat.T if self.transposed else mat))
        if len(self.parts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(len(self.parts))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def sddmm(self, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """``v_x . y_j`` for every observed entry ``(x, j)`` of this side, in storage order (one
        buffer, overwritten by the next call)."""
        A, B = (Y, V) if self.transposed else (V, Y)
        torch.sparse.sampled_addmm(self.pattern, A, B.T, beta=0.0, out=self.out)
        return self.t

    def spmm_add(self, values: torch.Tensor, Y: torch.Tensor, out: torch.Tensor) -> None:
        """``out[x] += sum_j values_xj y_j`` for every row ``x`` of this side (in place)."""
        if not self.host:
            out.addmm_(_csr_tensor(self.crow, self.col, values, self.size), Y)
            return
        vals, Yn, On = values.numpy(), Y.numpy(), out.numpy()
        k = Yn.shape[1]
        scratch = [On] + [np.zeros_like(On) for _ in self.parts[1:]] if self.transposed else []

        def part(j: int) -> None:
            r0, r1, e0, e1, lptr, lind, mat = self.parts[j]
            if self.transposed:  # items x (users r0:r1), scattering into every item row
                X, dst = Yn[r0:r1], scratch[j]
            else:
                X, dst = Yn, On[r0:r1]
            if self.kernels is None or not (dst.flags.c_contiguous and X.flags.c_contiguous):
                mat.data = vals[e0:e1]
                dst += mat @ X
            else:
                rows, cols = (self.size[1], r1 - r0) if self.transposed else (r1 - r0, self.size[1])
                fn = self.kernels[1] if self.transposed else self.kernels[0]
                fn(rows, cols, k, lptr, lind, vals[e0:e1], X.ravel(), dst.ravel())

        if self.pool is None:
            part(0)
        else:
            list(self.pool.map(part, range(len(self.parts))))
        for extra in scratch[1:]:
            On += extra

    def _buffer(self, name: str, like: torch.Tensor, cols: int | None = None) -> torch.Tensor:
        shape = (like.shape[0], like.shape[1] if cols is None else cols)
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self.buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def solve(self, X: torch.Tensor, Y: torch.Tensor, reg: torch.Tensor, steps: int) -> None:
        """``steps`` conjugate-gradient steps on every row of ``X`` from its current value (in
        place), as implicit's ``least_squares_cg``: ``steps + 1`` SDDMMs and ``steps`` SpMMs.

        The right-hand side is folded into the first residual, ``r = sum_i (c_i - (c_i - w0)
        x . y_i) y_i - (w0 G + lambda I) x`` (one SpMM for ``b - A x``), and the last step needs
        only ``p . A p = p (w0 G + lambda I) p + sum_i (c_i - w0) (p . y_i)^2`` (no SpMM).
        """
        G = self.weight * (Y.T @ Y)
        lam: torch.Tensor | None = reg[:, None]
        if len(reg) and bool(reg.min() == reg.max()):  # one lambda: folded into G
            G.diagonal().add_(reg[0])
            lam = None
        r, p, Ap = (self._buffer(name, X) for name in ("r", "p", "Ap"))
        t = self.sddmm(X, Y)
        torch.addcmul(self.c, self.w, t, value=-1.0, out=t)  # c - (c - w0) x . y
        torch.mm(X, G, out=r).neg_()
        if lam is not None:
            r.addcmul_(lam, X, value=-1.0)
        self.spmm_add(t, Y, r)  # r = b - A x
        p.copy_(r)
        rs = torch.einsum("ij,ij->i", r, r)[:, None]
        for step in range(steps):
            t = self.sddmm(p, Y)
            torch.mm(p, G, out=Ap)
            if lam is not None:
                Ap.addcmul_(lam, p)
            last = step + 1 == steps
            if last:  # x moves, r is not needed again: p . A p without the SpMM
                pAp = torch.einsum("ij,ij->i", p, Ap)[:, None]
                s = self._buffer("s", X, 1).zero_()
                self.spmm_add(t.square_().mul_(self.w), self._ones(Y), s)
                pAp += s
            else:
                self.spmm_add(t.mul_(self.w), Y, Ap)
                pAp = torch.einsum("ij,ij->i", p, Ap)[:, None]
            a = torch.where(pAp > 0, rs / pAp.clamp_min(1e-30), torch.zeros_like(rs))
            X.addcmul_(a, p)
            if last:
                break
            r.addcmul_(a, Ap, value=-1.0)
            rs_new = torch.einsum("ij,ij->i", r, r)[:, None]
            beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
            torch.addcmul(r, beta, p, out=p)  # p = r + beta p
            rs = rs_new

    def _ones(self, Y: torch.Tensor) -> torch.Tensor:
        return self._buffer("ones", Y, 1).fill_(1.0)


def implicit_als(
    ratings: Ratings | InteractionMatrix,
    rank: int = 64,
    *,
    alpha: float = RANKING_DEFAULTS["alpha"],
    scheme: str = RANKING_DEFAULTS["scheme"],
    eps: float = 1.0,
    weight: float = RANKING_DEFAULTS["weight"],
    regularization: float = RANKING_DEFAULTS["regularization"],
    scale_regularization: float = 0.0,
    iterations: int = RANKING_DEFAULTS["iterations"],
    init_std: float = 0.01,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_floats: int = 2**24,
    cg_steps: int = 0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008) with the Gram trick; returns ``(P, Q)``.

    Minimizes the objective in the module docstring exactly, one side at a time (each half-sweep
    is the exact minimizer over that side, so the objective never increases). ``ratings`` gives
    the observed entries; their values become confidences by :func:`confidence`
    (``alpha``, ``scheme``, ``eps``), or pass an :class:`InteractionMatrix` with its own.
    ``weight`` is ``w0``, the weight of every unobserved zero. The regularization of row ``x``
    is ``regularization * (n_x + weight * n_other) ** scale_regularization`` with ``n_x`` the
    row's observed count (``scale_regularization=0``: the same ``lambda`` for every row, as in
    the paper; ``1``: frequency-scaled, Rendle et al. 2021). ``cg_steps=0`` solves each row's
    normal equations exactly; ``cg_steps=3`` takes three conjugate-gradient steps on them from
    the current row instead (Takacs et al. 2011, implicit's default: ``O(n_x k)`` a step instead
    of ``O(n_x k^2)``, not exact). Exact rows are solved a padded block of at most
    ``max_floats`` gathered floats at a time, one batched Cholesky per block. The defaults are
    :data:`RANKING_DEFAULTS` (implicit's own are ``alpha`` on binary data, ``weight=1``,
    ``regularization=0.05``).
    """
    rank = _int(rank, "rank")
    iterations = _int(iterations, "iterations", 0)
    regularization = _real(regularization, "regularization")
    scale_regularization = _real(scale_regularization, "scale_regularization")
    weight = _real(weight, "weight")
    init_std = _real(init_std, "init_std")
    cg_steps = _int(cg_steps, "cg_steps", 0)
    if isinstance(ratings, InteractionMatrix):
        R = ratings
    else:
        ratings = _check_ratings(ratings)
        R = InteractionMatrix.from_ratings(ratings, confidence(ratings.values, alpha, scheme, eps))
    m, n = R.shape
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if init is None:
        P = (torch.randn(m, rank, generator=gen, dtype=torch.float64) * init_std).to(device, dtype)
        Q = (torch.randn(n, rank, generator=gen, dtype=torch.float64) * init_std).to(device, dtype)
    else:
        P, Q = (t.detach().to(device, dtype).clone() for t in init)
    sides: list[Any]
    if cg_steps:  # conjugate gradient on CSR products: nothing gathered per entry
        user = _CsrSide(R, False, rank, weight, dtype, device)
        sides = [user, _CsrSide(R, True, rank, weight, dtype, device, like=user)]
    else:
        sides = [_blocks(R.indptr, R.indices, R.conf, rank, dtype, device, max_floats),
                 _blocks(R.t_indptr, R.t_indices, R.t_conf, rank, dtype, device, max_floats)]

    def regs(indptr: np.ndarray, n_other: int) -> torch.Tensor:
        cnt = np.diff(indptr).astype(np.float64)
        lam = regularization * (cnt + weight * n_other) ** scale_regularization
        return torch.as_tensor(lam, dtype=dtype, device=device)

    ureg, ireg = regs(R.indptr, n), regs(R.t_indptr, m)
    try:
        with torch.no_grad():
            for it in range(iterations):
                for X, Y, side, reg in ((P, Q, sides[0], ureg), (Q, P, sides[1], ireg)):
                    if cg_steps:
                        side.solve(X, Y, reg, cg_steps)
                    else:
                        _solve_side(X, Y, side, reg, weight)
                if callback is not None:
                    callback(it, P, Q)
    finally:
        if cg_steps:
            for side in sides:
                side.close()
    return P, Q


def implicit_objective(P: torch.Tensor, Q: torch.Tensor, R: InteractionMatrix,
                       weight: float = 1.0, regularization: float = 0.0) -> float:
    """The value of the objective :func:`implicit_als` minimizes (constant regularization).

    :func:`implicit_loss`'s sum, with the observed entries' scores from one sampled product on
    the CSR (``O(nnz)`` memory: no ``nnz x k`` gather of ``P`` and ``Q`` rows)."""
    dev = P.device
    conf = torch.as_tensor(R.conf, dtype=P.dtype, device=dev)
    pattern = _csr_tensor(torch.as_tensor(np.asarray(R.indptr, dtype=np.int64), device=dev),
                          torch.as_tensor(np.asarray(R.indices, dtype=np.int64), device=dev),
                          conf, R.shape)
    with torch.no_grad():
        s = torch.sparse.sampled_addmm(pattern, P, Q.T, beta=0.0).values()
        value = all_unobserved(P, Q, weight) + (conf * (1 - s) ** 2 - weight * s**2).sum()
        value = value + regularization * (P.square().sum() + Q.square().sum())
    return float(value)


# ---------------------------------------------------------------------------- pairwise losses
def bpr(score_positive: torch.Tensor, score_negative: torch.Tensor) -> torch.Tensor:
    """Bayesian personalized ranking (Rendle et al. 2009): ``-log sigmoid(s+ - s-)`` per pair.

    ``score_negative`` may carry extra trailing negatives per positive (shape ``(B, K)`` against
    ``(B,)``): the loss is then per (positive, negative) pair.
    """
    if score_negative.dim() > score_positive.dim():
        score_positive = score_positive[..., None]
    return -torch.nn.functional.logsigmoid(score_positive - score_negative)


def warp(score_positive: torch.Tensor, score_negative: torch.Tensor,
         margin: float = 1.0) -> torch.Tensor:
    """WARP-style loss (Weston et al. 2011): the hinge on the hardest of ``K`` sampled negatives,
    weighted by ``log(1 + estimated rank)``.

    ``score_negative`` is ``(B, K)``; the rank of the positive among all items is estimated from
    the fraction of sampled negatives within ``margin`` of it (``K`` violations: ranked last
    among the sample). Returns one loss per positive, shape ``(B,)``; the weight is held constant
    (no gradient through the rank estimate), as in WARP.
    """
    if score_negative.dim() == score_positive.dim():
        score_negative = score_negative[..., None]
    gaps = margin - score_positive[..., None] + score_negative
    violating = (gaps > 0).sum(-1).to(score_positive.dtype)
    K = score_negative.shape[-1]
    weight = torch.log1p(violating * (1.0 / K) * 100.0).detach()  # rank estimate on ~100 items
    hardest = gaps.max(-1).values
    return weight * torch.relu(hardest)


#: built-in pairwise losses by name
PAIRWISE_LOSSES: dict[str, PairwiseLoss] = {"bpr": bpr, "warp": warp}


# ---------------------------------------------------------------------------- negative sampling
def sample_negatives(R: InteractionMatrix, users: np.ndarray, k: int = 1, *,
                     sampling: str = "uniform", power: float = 0.75,
                     rng: np.random.Generator | None = None, max_rounds: int = 100) -> np.ndarray:
    """``k`` items per user that the user has NOT interacted with, shape ``(len(users), k)``.

    ``sampling='uniform'`` draws among the items with at least one interaction;
    ``'popularity'`` draws item ``i`` with probability proportional to ``count_i ** power``.
    Positives are rejected and redrawn (never returned); a user who has every candidate item
    raises ``ValueError``.
    """
    rng = np.random.default_rng() if rng is None else rng
    k = _int(k, "k")
    users = np.asarray(users, dtype=np.int64)
    counts = np.diff(R.t_indptr).astype(np.float64)
    candidates = np.flatnonzero(counts > 0)
    if sampling == "uniform":
        cdf = None
    elif sampling == "popularity":
        w = counts[candidates] ** _real(power, "power")
        cdf = np.cumsum(w / w.sum())
    else:
        raise ValueError(f"sampling must be 'uniform' or 'popularity', got {sampling!r}")
    have = np.diff(R.indptr)[users]
    if len(users) and int(have.max()) >= len(candidates):
        full = users[np.flatnonzero(have >= len(candidates))[0]]
        raise ValueError(
            f"user index {int(full)} has interacted with every item, so it has no negative to "
            "sample; drop that user from pairwise training"
        )

    def draw(size: int) -> np.ndarray:
        if cdf is None:
            return candidates[rng.integers(0, len(candidates), size)]
        pos = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
        return candidates[np.minimum(pos, len(candidates) - 1)]

    uu = np.repeat(users, k)
    out = draw(len(uu))
    bad = np.flatnonzero(R.contains(uu, out))
    for _ in range(max_rounds):
        if len(bad) == 0:
            break
        out[bad] = draw(len(bad))
        bad = bad[R.contains(uu[bad], out[bad])]
    if len(bad):  # a user with almost every item under a skewed draw: take one uniformly
        for j in bad:
            row = R.indices[R.indptr[uu[j]]:R.indptr[uu[j] + 1]]
            free = np.setdiff1d(candidates, row, assume_unique=True)
            out[j] = free[rng.integers(0, len(free))]
    return out.reshape(len(users), k)


# ---------------------------------------------------------------------------- pairwise training
def fit_pairwise(
    ratings: Ratings | InteractionMatrix,
    rank: int = 64,
    *,
    loss: str | PairwiseLoss = "bpr",
    epochs: int = 30,
    lr: float = 0.01,
    regularization: float = 0.01,
    batch_size: int = 1024,
    negatives: int = 1,
    sampling: str = "uniform",
    init_std: float = 0.1,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, float], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train ``P``, ``Q`` and item biases ``b`` with a pairwise loss; returns ``(P, Q, b)``.

    Scores are ``s_ui = p_u . q_i + b_i``. Each epoch visits every observed ``(u, i)`` once, in
    random order, with ``negatives`` items per pair drawn by :func:`sample_negatives`, and takes
    Adam steps on

    .. math::

        \\mathrm{mean}\\ \\ell(s_{ui}, s_{uj}) + \\lambda (\\|p_u\\|^2 + \\|q_i\\|^2
        + \\|q_j\\|^2 + b_i^2 + b_j^2)

    (the regularization on the rows in the batch, as in BPR's SGD). ``loss`` is ``'bpr'``,
    ``'warp'`` or any function ``loss(score_positive, score_negative)`` returning per-pair (or
    per-positive) losses, given ``score_positive`` of shape ``(B,)`` and ``score_negative`` of
    shape ``(B,)`` (``negatives=1``) or ``(B, negatives)``; autograd differentiates it. The
    ratings' values are ignored: every
    observed entry is a positive. A user who has every item has no negative: their pairs are
    left out, with a warning.
    """
    rank = _int(rank, "rank")
    epochs = _int(epochs, "epochs", 0)
    batch_size = _int(batch_size, "batch_size")
    negatives = _int(negatives, "negatives")
    lr = _real(lr, "lr", strict=True)
    regularization = _real(regularization, "regularization")
    if isinstance(loss, str):
        if loss not in PAIRWISE_LOSSES:
            raise ValueError(
                f"loss must be one of {sorted(PAIRWISE_LOSSES)} or a function "
                f"loss(score_positive, score_negative), got {loss!r}"
            )
        loss_fn = PAIRWISE_LOSSES[loss]
    elif callable(loss):
        loss_fn = loss
    else:
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
    if isinstance(ratings, InteractionMatrix):
        R = ratings
    else:
        ratings = _check_ratings(ratings)
        R = InteractionMatrix.from_ratings(ratings, np.ones(len(ratings)))
    m, n = R.shape
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    P = torch.nn.Embedding(m, rank, sparse=True, dtype=dtype)
    Q = torch.nn.Embedding(n, rank, sparse=True, dtype=dtype)
    B = torch.nn.Embedding(n, 1, sparse=True, dtype=dtype)
    with torch.no_grad():
        P.weight.copy_(torch.randn(m, rank, generator=gen, dtype=dtype) * init_std)
        Q.weight.copy_(torch.randn(n, rank, generator=gen, dtype=dtype) * init_std)
        B.weight.zero_()
    opt = torch.optim.SparseAdam([P.weight, Q.weight, B.weight], lr=lr)
    users = np.repeat(np.arange(m, dtype=np.int64), np.diff(R.indptr))
    items = R.indices.astype(np.int64)
    full = np.diff(R.indptr) >= int(np.count_nonzero(np.diff(R.t_indptr)))
    if full.any():  # no negative to pair with: these users cannot be trained pairwise
        warnings.warn(
            f"{int(full.sum())} user(s) interacted with every item and have no negative to "
            "sample; they are left out of pairwise training (their factors stay at the start)",
            UserWarning, stacklevel=2,
        )
        keep = ~full[users]
        users, items = users[keep], items[keep]
    for epoch in range(epochs):
        order = rng.permutation(len(users))
        total = 0.0
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            u_np = users[rows]
            j_np = sample_negatives(R, u_np, negatives, sampling=sampling, rng=rng)
            u = torch.as_tensor(u_np)
            i = torch.as_tensor(items[rows])
            j = torch.as_tensor(j_np)
            pu, qi, qj = P(u), Q(i), Q(j)  # (b, k), (b, k), (b, K, k)
            bi, bj = B(i)[:, 0], B(j)[..., 0]
            sp = (pu * qi).sum(-1) + bi
            sn = (pu[:, None, :] * qj).sum(-1) + bj
            if negatives == 1:
                sn = sn[:, 0]
            per = loss_fn(sp, sn)
            value = per.mean()
            penalty = regularization * (pu.square().sum() + qi.square().sum()
                                        + qj.square().sum() / negatives + bi.square().sum()
                                        + bj.square().sum() / negatives) / len(rows)
            opt.zero_grad()
            (value + penalty).backward()
            opt.step()
            total += float(value.detach()) * len(rows)
        if not math.isfinite(total):
            from .errors import FitError

            raise FitError(
                f"the pairwise loss became non-finite in epoch {epoch + 1}; lower lr (now {lr})"
            )
        if callback is not None:
            callback(epoch, total / max(len(users), 1))
    return P.weight.detach(), Q.weight.detach(), B.weight.detach()[:, 0]


# ---------------------------------------------------------------------------- the ranking task
#: pairwise training defaults used by :func:`fit_ranking` for ``loss='bpr'``/``'warp'``
PAIRWISE_EPOCHS = 30


def fit_ranking(
    ratings: Ratings,
    rank: int,
    *,
    loss: Any = "squared",
    alpha: float = RANKING_DEFAULTS["alpha"],
    beta: float = RANKING_DEFAULTS["regularization"],
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    init_std: float = 0.01,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cg_steps: int = 0,
    callback: Callable[[int, float], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What ``MatrixFactorization(task='ranking').fit`` runs; returns ``(P, Q, item_bias)``.

    ``loss='squared'``: implicit-feedback ALS (:func:`implicit_als`) with confidence
    ``1 + alpha * r``, unobserved weight ``RANKING_DEFAULTS['weight']`` and ``lambda = beta``,
    ``epochs`` sweeps (15 by default), each row solved exactly or by ``cg_steps`` conjugate
    gradient steps; ``item_bias`` is ``None``. ``'bpr'``, ``'warp'`` or a
    function ``loss(score_positive, score_negative)``: :func:`fit_pairwise` with Adam
    (``lr`` 0.01, ``batch_size`` 1024, ``epochs`` 30 by default) and L2 ``beta`` on the rows of
    each batch, ``beta / 2500`` (the shared default ``beta=25`` gives 0.01, the best of
    0.001, 0.004, 0.01 and 0.03 over the validation splits of MovieLens 100K u1 and
    ml-latest-small, by NDCG@10).
    """
    if isinstance(loss, str) and loss == "squared":
        if lr is not None or batch_size is not None:
            raise ValueError(
                f"lr={lr!r} / batch_size={batch_size!r} have no meaning for the ranking task's "
                "implicit ALS (loss='squared'); leave them None or use loss='bpr'"
            )
        w0 = RANKING_DEFAULTS["weight"]
        R = InteractionMatrix.from_ratings(
            _check_ratings(ratings), confidence(ratings.values, alpha, RANKING_DEFAULTS["scheme"]))

        def after(it: int, P: torch.Tensor, Q: torch.Tensor) -> None:
            if callback is not None:
                callback(it, implicit_objective(P, Q, R, w0, beta))

        P, Q = implicit_als(
            R, rank, weight=w0, regularization=beta,
            iterations=RANKING_DEFAULTS["iterations"] if epochs is None else epochs,
            init_std=init_std, seed=seed, dtype=dtype, device=device, cg_steps=cg_steps,
            callback=after,
        )
        return P, Q, None
    P, Q, b = fit_pairwise(
        ratings, rank, loss=loss, epochs=PAIRWISE_EPOCHS if epochs is None else epochs,
        lr=0.01 if lr is None else lr, batch_size=1024 if batch_size is None else batch_size,
        regularization=beta / 2500.0, init_std=max(init_std, 0.1), seed=seed,
        dtype=dtype, callback=callback,
    )
    return P, Q, b


def fold_in_row(Q: np.ndarray, items: np.ndarray, values: np.ndarray, *,
                alpha: float = RANKING_DEFAULTS["alpha"],
                beta: float = RANKING_DEFAULTS["regularization"],
                weight: float = RANKING_DEFAULTS["weight"]) -> np.ndarray:
    """A new user's factors against the frozen items ``Q``: the exact ALS row solve
    ``(w0 Q^T Q + Q_o^T (C - w0) Q_o + beta I) x = Q_o^T c`` over the user's items."""
    Q = np.asarray(Q, dtype=np.float64)
    items = np.asarray(items, dtype=np.int64)
    c = confidence(values, alpha, RANKING_DEFAULTS["scheme"])
    Qo = Q[items]
    A = weight * (Q.T @ Q) + (Qo.T * (c - weight)) @ Qo + beta * np.eye(Q.shape[1])
    return np.linalg.solve(A, Qo.T @ c)


def solve_rows(Y: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, *,
               alpha: float = RANKING_DEFAULTS["alpha"],
               beta: float = RANKING_DEFAULTS["regularization"],
               weight: float = RANKING_DEFAULTS["weight"]) -> np.ndarray:
    """Exact ALS rows against the frozen ``Y`` for rows given as CSR (``indptr``, ``indices``
    into ``Y``'s rows, ``values`` the ratings or counts): :func:`fold_in_row` for many rows at
    once, batched (one Cholesky per padded block, no loop over rows)."""
    Yt = torch.as_tensor(np.asarray(Y, dtype=np.float64))
    conf = confidence(values, alpha, RANKING_DEFAULTS["scheme"])
    blocks = _blocks(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64),
                     conf, Yt.shape[1], torch.float64, torch.device("cpu"), 2**22)
    X = torch.zeros(len(indptr) - 1, Yt.shape[1], dtype=torch.float64)
    reg = torch.full((len(indptr) - 1,), float(beta), dtype=torch.float64)
    _solve_side(X, Yt, blocks, reg, float(weight))
    return X.numpy()
