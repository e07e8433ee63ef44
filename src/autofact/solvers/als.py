"""``als``: alternating Newton. One epoch is an exact Newton step for every user row, then for
every item row.

The update for user ``u`` (items are symmetric), with ``x_u = [p_u, b_u]`` and ``y_i = [q_i, 1]``::

    g_u = sum_i  l'(r_hat_ui, r_ui) y_i + R'(x_u)
    H_u = sum_i  l''(r_hat_ui, r_ui) y_i y_i^T + diag(R''(x_u)) + eps I
    x_u <- x_u - H_u^{-1} g_u

where ``l'`` and ``l''`` are per-entry derivatives of the user's loss, taken by autograd, and
``R'``/``R''`` those of the regularizer. This is Newton's method only where its assumptions hold:
the loss is elementwise (its Hessian is diagonal) and the regularizer is a sum over entries (its
Hessian diagonal); :mod:`autofact.solvers.contract` refuses ``als`` otherwise. For the squared
loss and L2 this is exactly alternating least squares. The upper triangles of ``H_u`` for
every user at once are a sparse @ dense product, ``C @ Z`` with ``C`` the CSR of ``l''`` and
``Z[i]`` the upper triangle of ``y_i y_i^T``, each user's weighted sum of rows of ``Z`` (taken by
``embedding_bag``, issue 10). Each row costs ``O(K^3)`` for its solve (``K`` = rank + 1 with
biases), so the rank, not the number of ratings, bounds how large ``als`` can go; at
``K <= 16`` a block's systems, when at least :data:`ROWS_SOLVE_MIN`, are factored laid out
across its rows (:func:`_rows_damped_solve`), not by a LAPACK call a matrix. A row with ``n <= 4``
ratings (most rows of sparse data), a positive ``l''`` on each and a positive regularizer
curvature ``D`` solves the same system by Woodbury's identity instead, ``n x n`` rather than
``K x K`` and without forming ``H_u``: ``H_u = D + Y^T W Y`` (issue 10; rows grouped by their
count of ratings, each group's systems solved at once, laid out across its rows)::

    H_u^{-1} g_u = D^{-1} (g_u - Y^T z),    (W^{-1} + Y D^{-1} Y^T) z = Y D^{-1} g_u

**Second derivatives kept** (issue 10). ``l''`` and ``R''`` come from autograd; on a block's
first epoch their computation runs under a dispatch mode that follows data flow
(:func:`_follows`, autograd's derivative operations included). Where nothing flows from the
prediction (the rows) to the second derivative, and no value computed from it is read out to
Python on the way, it is a function of the targets, weights and constants (the squared loss's
``2 w``, L2's ``2 lambda``) and is kept: one number when the same for every entry, else the
block's values within an eighth of ``max_memory``; later epochs take only the first derivative
from autograd. Otherwise (Huber, logistic, Poisson) it is computed every epoch. The factors are
the same either way (:data:`CACHE_CURVATURE` turns it off).

**Memory and blocks** (issue 10; ``f`` bytes a float, ``T = K (K + 1) / 2``, ``M`` =
``max_memory``). Each side's rows are cut into blocks of at most ``M / 2 / (w 3 K^2 f)`` rows
(and ``max_nnz`` entries) for ``w`` worker threads (:func:`autofact.threads.workers_for`: by
sizes and cores, never the load), and into :data:`BLOCKS_PER_WORKER` blocks a worker when
``w > 1``: the ``w`` blocks in flight hold their ``H``, its Cholesky factor and ``C @ Z``'s
rows within ``M / 2``. ``Z``'s upper triangle (``n_other x T``) is computed once a half-sweep and
shared by the blocks when it fits in the other ``M / 2`` (into a buffer the solver keeps between
half-sweeps where it takes at most ``M / 16``). Otherwise consecutive blocks go in
groups: each column slice of ``Z`` (within ``M / 8``) is computed once a group and multiplied
by each block's ``C``, accumulating the group's upper triangles (within ``M / 4``) while its
``l''`` is kept (within ``M / 8``); then its blocks solve. Either way ``Z`` is used in
contiguous column slices of about :data:`Z_SLICE_BYTES` on the CPU, so the rows of ``Z`` the
sparse product gathers stay in cache. Each row is solved on its own, so the cut changes the factors by
rounding at most (Woodbury's split is chosen by block), and the epoch's loss only in the order
of its sum.

With the unobserved term (``Objective(unobserved_weight=w0)``, issue 12: every pair ``u`` did not
rate counts as a rating of 0 with weight ``w0``) the step stays exact, by the Gram trick: with
``y_i`` as above, ``o_i = mu + b^i_i`` the rest of the prediction, ``G = sum_i y_i y_i^T`` and
``h = sum_i o_i y_i`` over ALL items, once per half-sweep::

    g_u += 2 w0 (G x_u + h - sum_i r_hat_ui y_i)        H_u += 2 w0 (G - sum_i y_i y_i^T)

(the sums with ``r_hat`` over the user's rated items). The rated items' part rides on the
per-entry derivatives (``l' - 2 w0 r_hat``, ``l'' - 2 w0``) through the same sparse products. The
term is quadratic in ``x_u``: for the squared loss with L2 each step is still the exact row
minimizer.

**Ratings by item** (issue 11): where it fits in half of ``max_memory``, the item half-step
reads each item's ratings through a copy of the users and values in item order
(:func:`_by_item`: 8 bytes a float32 rating, and the weights), its blocks' row pointers cut from
the sorted item ids, which are not kept; building it needs 8 bytes a rating more for a moment,
the order's sort within ``max_memory``. Where it does not fit (:func:`_tiled`; sharded: on any
process), the item half-step takes its ratings from the ratings by user as they are, range by
range of items (:class:`_ItemTiles`: the same sums, added in another order), and the solver
keeps nothing a rating beyond its kept second derivatives (within an eighth of
``max_memory``). The epoch then also measures its start before anything moves (one pass over
the ratings), so the divergence guard keeps one copy of the parameters, not two.

**Sharded** (issue 11, an objective built with a plan shared by ``w`` processes,
:mod:`autofact.sharding`): users are partitioned, every rating of a user on one process
(``plan.owned_rows``). The user half-step is local: each process solves the users it owns, on a
compact table of their rows, and sends nothing. The item half-step sums each item's ``g_i`` and
the upper triangle of ``H_i`` (the data part, from each process's ratings: the same per-entry
derivatives and ``C @ Z`` products) over the processes with ``plan.all_sum``, in row ranges of
items that are the same on every process (each within ``max_memory``); each process then solves
a ``1/w`` slice of the range's rows (adding the regularizer's derivatives there, once) and sends
its steps to the others (``plan.each_rank``), so every process holds the same item rows bit for
bit, each row solved once. The Armijo backtracking of a non-quadratic loss sums each item row's
objective over the processes (the regularizer counted by rank 0), so every process takes the
same step and leaves the loop on the same halving. Woodbury's split is not used for items
there (an item's ratings are spread over processes). The epoch's value is the one-process value:
the losses summed over processes, the users' regularization over their owners, the items' once.
Per epoch each process sends ``2 (w-1)/w n (K(K+1)/2 + K) f`` bytes (the all-reduce) and its
``n K f / w`` steps (receiving ``n K f``); after the fit the plan gathers the user rows once
(``plan.gather_rows``, done by the model). With the unobserved term, the items' ``G`` and
``h`` sum each process's users' (``K^2 + K`` floats a half-sweep), and the epoch's value its
users' Gram sums (``k^2 + 2k + 2``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .. import threads
from .._memory import release_freed_memory
from ..objective import Objective, Params
from ..sparse import Csr, Pattern, build_patterns, gather_dot, spmm
from ._base import Epoch, NonFinite, all_finite

__all__ = ["make_als"]

#: At most this many worker threads run a side's row blocks (:func:`autofact.threads.workers_for`
#: decides how many, from the sizes and the cores, never the load).
COARSE_BLOCKS = 8
#: Multiply-adds (ratings x K^2 an epoch) a worker of an in-memory fit must have (issue 10, item
#: 2): the threads' coarse rule (:data:`autofact.threads.MIN_WORK_PER_WORKER`, 2^24) gave 1M
#: ratings at rank 10 (1.2e8) two workers, 7 % faster than one quiet but 1.2-1.5x slower beside a
#: busy process (each half-sweep's many small operations hand the GIL between the workers);
#: at rank 32 (1.1e9) two workers stay faster beside it too (0.8x).
MIN_WORK_PER_WORKER = 2**28
#: With several workers each side is cut into this many row blocks a worker, so that a worker
#: descheduled on a busy machine delays only its last, small block (issue 10). Each row is solved
#: on its own, so the cut changes the factors at most by rounding (a block's rows take
#: Woodbury's identity or the ``K x K`` solve by the block's share of short rows), and the
#: epoch's loss only in its summation order.
BLOCKS_PER_WORKER = 4
#: Rows with at most this many ratings solve their step through Woodbury's identity, an
#: ``n x n`` system instead of the ``K x K`` one (issue 10; see :func:`_woodbury_solve`).
WOODBURY_ROWS = 4
#: Up to this ``K`` (the rank, plus one with biases), a block's ``K x K`` systems, when at
#: least :data:`ROWS_SOLVE_MIN` of them, are factored and solved laid out across the rows
#: (:func:`_rows_damped_solve`: about ``9 K`` vector operations whatever the number of rows)
#: rather than by LAPACK, one small matrix at a time (issue 10, CPU time at ``K = 11``: the
#: same at 1,000 rows, 2x faster at 2,600, 3x at 6,000; at 500 rows 1.8x slower).
ROWS_SOLVE_K = 16
ROWS_SOLVE_MIN = 1024
#: ``Z`` is used in contiguous column slices of about this many bytes, so that the rows of ``Z``
#: a sparse product ``C @ Z`` gathers stay in a core's cache (issue 10: on the item side of 1M
#: ratings, 6,040 x 561 floats, 2.5-4x faster than one product with all columns). The cut is
#: by sizes only, and each entry of ``C @ Z`` is the same sum whatever the slices.
Z_SLICE_BYTES = 2 * 2**20


#: issue 10: a block's per-entry ``l''`` (and a block's regularizer curvature) is kept from the
#: first epoch when autograd's own computation of it shows no data flow from the prediction
#: (:func:`_derivatives`): a function of the targets, weights and constants, the same every
#: epoch. ``False`` recomputes it every epoch (the tests compare both).
CACHE_CURVATURE = True


def _slice_bytes(device: torch.device) -> int:
    """:data:`Z_SLICE_BYTES` on the CPU; on an accelerator no cap (one product per slice the
    budget allows: fewer kernel launches)."""
    return Z_SLICE_BYTES if device.type == "cpu" else 2**62


def make_als(obj: Objective, params: Params, nonnegative: bool = False) -> Epoch:
    """The epoch of ``als`` on ``params``; its value is the objective at the epoch's start."""
    from ..losses import squared

    reg_name = getattr(obj.reg, "__qualname__", "")
    quadratic = obj.loss is squared and reg_name.startswith(("l2(", "none("))
    run = _AlternatingNewton(obj, params, exact_quadratic=quadratic, nonnegative=nonnegative)
    # issue 11 (memory): where the ratings by item are taken by ranges (the data outgrows
    # max_memory), the epoch first measures its start, which the divergence guard then
    # verifies before anything moves, keeping one copy of the parameters instead of two (an
    # objective's pass a epoch, about 1/K of a half-step's products)
    epoch = Epoch(run, at_start=True, value=run.value if run.shared else None,
                  verifies_start=run.tiles is not None)
    run.hooks = weakref.ref(epoch)  # (no reference cycle: the solver is freed with the epoch)
    return epoch


class _AlternatingNewton:
    """One epoch = a Newton step on every user row, then on every item row (see module doc).

    Rows are handled in blocks whose Hessians fit in ``max_memory``, so the solver's memory stays
    bounded at any rank and size. Unless the objective is exactly quadratic (squared loss with L2
    or no regularization, where the Newton step is the exact minimizer), each row's step is halved
    until that row's own objective decreases (Armijo backtracking, row by row), so robust or
    non-quadratic losses such as Huber or Poisson cannot overshoot.
    """

    def __init__(self, obj: Objective, params: Params, exact_quadratic: bool,
                 nonnegative: bool = False) -> None:
        self.nonnegative = nonnegative
        K = params["P"].shape[1] + (1 if "bu" in params else 0)
        # H, its Cholesky factor and the upper-triangle accumulator: about 3 K^2 floats a row
        max_rows = max(1, obj.max_memory // (3 * 8 * K * K))
        self.shared = obj.plan.world_size > 1
        self.obj = obj
        self.params = params
        self.checked = False
        self.exact_quadratic = exact_quadratic
        self._splits: dict[int, _Split | None] = {}  # id(pattern) -> its short/long rows
        self._split_budget = obj.max_memory // 16  # (issue 11: bytes of splits kept)
        self._split_lock = threading.Lock()
        # the second derivatives kept from the first epoch where fixed, per-entry values
        # within an eighth of max_memory (issue 10)
        self.curv = _Curvatures(CACHE_CURVATURE, obj.max_memory // 8)
        # forms of the kept curvatures (the long rows' CSR of l'', the short rows' l'' and
        # regularizer curvature by bucket), made once while their sources are kept (issue 10)
        self._forms: dict[tuple[str, int], tuple[tuple[torch.Tensor, ...], Any]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._zbuf: torch.Tensor | None = None  # Z's slices, kept between half-sweeps
        # issue 11 (memory): the item half-step's ratings taken from the ratings as they are,
        # range by range of items, where their copy by item does not fit (:func:`_tiled`)
        self.tiles: _ItemTiles | None = None
        # the epoch make_als returns (its guard's on_start), weakly
        self.hooks: weakref.ref[Epoch] | None = None
        # the item half-step's objective and ranges of item rows: by item (sharded) or by
        # ranges of the ratings by user (tiles)
        self.objT: Objective = obj
        self.ranges: list[tuple[int, int, list[Pattern]]] = []
        self.solve_rows = max_rows  # rows solved at once (H and its Cholesky factor)
        if self.shared:
            self._init_shared(max_rows, K)
            return
        # issue 10: threads over whole row blocks rather than inside each operation, where a
        # descheduled thread on a busy machine stalls every operation; one thread a block
        work = obj.nnz * K * K
        self.workers = 1
        tiled = _tiled(obj)
        # issue 11 (memory): where the data outgrows max_memory (tiled) one worker, whose
        # operations take the fit's threads: each worker thread's heap keeps its own freed
        # blocks (25M ratings, rank 32, 64 MiB: the fit's peak 828 MiB with 2, 778 with 1)
        if work >= 2 * MIN_WORK_PER_WORKER and not tiled:  # (shared: returned above)
            self.workers = min(COARSE_BLOCKS, threads.workers_for(work),
                               work // MIN_WORK_PER_WORKER)
        # each side's blocks: the rows whose workspace (H, its Cholesky factor, the upper
        # triangle's C @ Z: 3 K^2 floats a row) fits a worker's share of half of max_memory,
        # and BLOCKS_PER_WORKER blocks a worker (see _side for the other half)
        item = obj.values.element_size()
        row_caps = []
        for side in (0, 1):
            rows = obj.shape[side]
            cap = max(1, obj.max_memory // 2 // (self.workers * 3 * item * K * K))
            if self.workers > 1:
                cap = min(cap, math.ceil(rows / (self.workers * BLOCKS_PER_WORKER)))
            row_caps.append(cap)
        self.sides = [(obj, build_patterns(obj.users, obj.items, obj.shape, obj.max_nnz,
                                           max_rows=row_caps[0]))]
        if tiled:  # issue 11 (memory): the ratings by item taken range by range
            self._use_tiles(obj.shape[0], K, max_rows)
            return
        objT, blocks = _by_item(obj, None, obj.shape[0], lambda rows, cols, shape: build_patterns(
            rows, cols, shape, obj.max_nnz, keep_rows=obj.keep_rows, max_rows=row_caps[1]))
        objT.patterns = blocks
        self.sides.append((objT, blocks))

    def _init_shared(self, max_rows: int, K: int) -> None:
        """The sharded layout (module docstring): this process's users as a compact table, its
        ratings by item in row ranges of items that every process cuts alike."""
        obj = self.obj
        self.workers = 1  # each process is one worker; the machine's cores are the processes'
        self.checked = True  # the contract's probe checked the curvature (no per-process test)
        m, n = obj.shape
        dev = obj.users.device
        self.owned = obj.plan.owned_rows(obj.users, m)
        self.own = torch.nonzero(self.owned).flatten().to(dev)
        # params["P"] (and "bu") hold either every user's rows or only this process's, in
        # order (MatrixFactorization.fit passes those: a process's memory is its users')
        self.compact = self.params["P"].shape[0] != m
        # the user blocks' workspace in half of max_memory, Z's in the other (see _side); the
        # blocks keep row pointers (found from the users' indices: the compact row r is user
        # own[r], every rating's user among them) and views of obj.items (issue 11: no
        # renumbered copy of the users, 4 bytes a rating at the set-up's peak)
        self.sides = [(obj, build_patterns(obj.users, obj.items, (len(self.own), n),
                                           obj.max_nnz, max_rows=max(1, max_rows // 2),
                                           row_ids=self.own))]
        if _tiled(obj):  # (every process alike: the item ranges' sums are collective)
            self._use_tiles(len(self.own), K, max_rows, row_ids=self.own)
            return
        # issue 11 (memory): the map in the ratings' index dtype, looked up with index_select
        # (an int32 index as it is): 4 bytes a rating, where lut[users.long()] made two int64
        # copies (16 bytes a rating) on the way
        lut = torch.full((m,), -1, dtype=obj.users.dtype, device=dev)
        lut[self.own] = torch.arange(len(self.own), dtype=obj.users.dtype, device=dev)
        self.objT, self.ranges = _by_item(
            obj, lut, len(self.own),
            lambda rows, cols, shape: _aligned_patterns(rows, cols, shape, obj.max_nnz,
                                                        max_rows))

    def _use_tiles(self, n_rows: int, K: int, max_rows: int,
                   row_ids: torch.Tensor | None = None) -> None:
        """The item half-step takes its ratings range by range from the ratings by user
        (:class:`_ItemTiles`: ``n_rows`` rows, ``row_ids`` their users as in
        :func:`~autofact.sparse.build_patterns`), against :attr:`objT` = ``obj`` as it is;
        rows solved in pieces whose ``H`` and ``L`` take ``max_memory / 6`` (float32)."""
        self.tiles = _ItemTiles(self.obj, n_rows, K, max_rows, row_ids)
        self.solve_rows = max(1, max_rows // 2)
        self.ranges = [(a, b, []) for a, b in self.tiles.spans]

    def value(self) -> float:
        """The objective at the parameters now, summed over the processes (sharded only: each
        process's users' rows are current on their owner alone)."""
        p, obj = self.params, self.obj
        with torch.no_grad():
            P, bu = self._users()
            bias = bu is not None
            X = torch.cat([P, bu[:, None]], 1) if bu is not None else P
            Q = p["Q"]
            Ya = torch.cat([Q, torch.ones(Q.shape[0], 1, dtype=Q.dtype, device=Q.device),
                            p["bi"][:, None]], 1) if bias else Q  # (issue 11: one copy)
            total = torch.zeros((), dtype=torch.float64, device=X.device)
            K = X.shape[1]
            # with the unobserved term, its rated entries' correction -w0 r_hat^2 (a zero Gram
            # term: the all-pairs sum is added below)
            term = (X.new_zeros(K, K), X.new_zeros(K)) if obj.unobserved_weight else None
            for pat in self.sides[0][1]:
                rows = slice(pat.row0, pat.row1)
                total += self._row_objective(obj, pat, X[rows], Ya, bias, term).double().sum()
            if obj.plan.owns_regularizer:
                total += self._item_regularization().double()
            unobserved = self._unobserved_total(P, bu) if obj.unobserved_weight else 0.0
            del X, Ya
        # issue 11 (memory): its tables and blocks' temporaries freed, their pages back to the
        # system before the guard's check and the epoch (glibc kept ~16 MiB at 4 x 6M ratings)
        release_freed_memory()
        return obj.plan.all_sum_float(float(total)) + unobserved

    def _unobserved_total(self, Pr: torch.Tensor, bu: torch.Tensor | None) -> float:
        """``w0`` times the sum of ``r_hat_ui^2`` over ALL pairs (:meth:`Objective.unobserved_total`'s
        Gram trick, in float64), the users' sums taken over the processes: ``P^T P``,
        ``a^T P``, ``1^T P``, ``|a|^2`` and ``1^T a`` of each process's users (``a = mu + b^u``),
        ``k^2 + 2 k + 2`` floats all-reduced. ``Pr``, ``bu``: this process's users' rows
        (:meth:`_users`)."""
        p, obj, f64 = self.params, self.obj, torch.float64
        P = Pr.to(f64)
        a = bu.to(f64) + obj.mu if bu is not None else P.new_full((len(P),), obj.mu)
        k = P.shape[1]
        sums = torch.cat([(P.T @ P).reshape(-1), a @ P, P.sum(0), (a * a).sum()[None],
                          a.sum()[None]])
        obj.plan.all_sum([sums])
        PtP, aP, P1 = sums[: k * k].view(k, k), sums[k * k : k * k + k], sums[k * k + k : -2]
        Q = p["Q"].to(f64)
        m, n = obj.shape
        b = p["bi"].to(f64) if "bi" in p else Q.new_zeros(n)
        total = ((PtP * (Q.T @ Q)).sum() + 2 * (aP @ Q.sum(0) + P1 @ (b @ Q))
                 + n * sums[-2] + 2 * sums[-1] * b.sum() + m * (b * b).sum())
        return float(obj.unobserved_weight * total)

    def _users(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's users' rows of ``P`` and ``bu`` (a copy when the parameters hold
        every user's)."""
        p = self.params
        if self.compact:
            return p["P"], p.get("bu")
        return p["P"][self.own], p["bu"][self.own] if "bu" in p else None

    def _item_regularization(self) -> torch.Tensor:
        p = self.params  # (a slice at a time: no table-sized temporary, issue 11, item 3)
        total = self.obj.regularization_value(p["Q"])
        return total + self.obj.regularization_value(p["bi"]) if "bi" in p else total

    def __call__(self) -> float:
        """One epoch; returns the objective at its start (the loss comes from the first pass)."""
        p = self.params
        hooks = self.hooks() if self.hooks is not None else None
        if hooks is not None and hooks.verifies_start and hooks.on_start is not None:
            # the objective at the start, before anything moves (make_als): the guard's check
            hooks.on_start(self.value() if self.shared else self.obj.value(p))
        if self.shared:
            return self._shared_epoch()
        with torch.no_grad():
            reg = float(self.obj.regularization(p))
            if self.obj.unobserved_weight:  # the sum over all pairs (the rated: in the loss)
                reg += float(self.obj.unobserved_total(p))
        loss = self.half_sweep(0)
        self.half_sweep(1)
        return loss + reg

    def _shared_epoch(self) -> float:
        """One epoch shared by the processes; its value summed over them (module docstring)."""
        with torch.no_grad():
            # issue 11: this process's user rows taken once an epoch (a copy where the
            # parameters hold every user's rows), used by each step below and put back once
            P, bu = self._users()
            reg = self.obj.regularization_value(P).double()
            if bu is not None:
                reg += self.obj.regularization_value(bu).double()
            if self.obj.plan.owns_regularizer:
                reg += self._item_regularization().double()
            # the sum over all pairs (the rated: in the loss), the same on every process
            unobserved = self._unobserved_total(P, bu) if self.obj.unobserved_weight else 0.0
            # issue 11 (memory): the regularizers' temporaries (a table's size each) back to
            # the system before the user half-step's workspace
            release_freed_memory()
            loss = self._shared_users(P, bu)
            # a user row gone non-finite: every process must stop alike (all_finite: one sum,
            # where isfinite's mask and its int64 count took 12 bytes an entry, issue 11)
            bad = sum(not all_finite(t) for t in (P, bu) if t is not None)
        total = torch.tensor([loss, float(reg), float(bad)], dtype=torch.float64)
        self.obj.plan.all_sum([total])  # the losses and the users' regularization: summed
        start = float(total[0] + total[1]) + unobserved
        if total[2] > 0:  # (item rows are the same on every process: so is their check)
            raise NonFinite(math.nan, start=start)
        with torch.no_grad():
            self._shared_items(P, bu)
        return start

    def half_sweep(self, side: int) -> float:
        """The Newton step on every user row (``side=0``) or every item row (``1``); returns
        the loss before it (with the unobserved term: less its observed entries' share)."""
        p = self.params
        if self.shared:  # the user rows this process owns, as a compact table
            with torch.no_grad():
                P, bu = self._users()
                if side == 1:
                    self._zbuf = None  # (the ranges' budget has no room for the user side's Z)
                    self._shared_items(P, bu)
                    return 0.0
                return self._shared_users(P, bu)
        if side == 1 and self.tiles is not None:  # issue 11: the ratings by user, by ranges
            self._zbuf = None  # (the ranges' budget has no room for the user side's Z)
            with torch.no_grad():
                return self._shared_items(p["P"], p.get("bu"))
        obj, blocks = self.sides[side]
        X, bx, Y, by = (p["P"], p.get("bu"), p["Q"], p.get("bi")) if side == 0 else \
            (p["Q"], p.get("bi"), p["P"], p.get("bu"))
        with torch.no_grad():
            return self._side(obj, blocks, X, bx, Y, by)

    def _shared_users(self, P: torch.Tensor, bu: torch.Tensor | None) -> float:
        """The user half-step on this process's users' rows ``P`` (and ``bu``), put back into
        the parameters where those are a copy (:meth:`_users`); the loss before it."""
        p = self.params
        obj, blocks = self.sides[0]
        loss = self._side(obj, blocks, P, bu, p["Q"], p.get("bi"))
        if not self.compact:
            p["P"][self.own] = P
            if bu is not None:
                p["bu"][self.own] = bu
        return loss

    def _shared_items(self, Y: torch.Tensor, by: torch.Tensor | None) -> float:
        """The item half-step shared by the processes (module docstring), against this
        process's users' rows ``Y`` (and ``by``), range by range of items; with
        :attr:`tiles`, also the one-process item half-step (a world of one). Returns this
        process's loss before the step (its ratings')."""
        p, obj, plan = self.params, self.objT, self.obj.plan
        X, bx = p["Q"], p.get("bi")
        k = X.shape[1]
        bias = bx is not None
        K = k + 1 if bias else k
        dev, dt = X.device, X.dtype
        Ya = torch.cat([Y, torch.ones(Y.shape[0], 1, dtype=dt, device=dev), by[:, None]], 1) \
            if by is not None else Y
        Yf = Ya[:, :K]
        iu, ju = torch.triu_indices(K, K, device=dev)
        products = _Products(Yf, iu, ju)
        w0 = obj.unobserved_weight
        term = None
        if w0:  # the Gram trick's G and h over every user: each process's users', summed
            o = by + obj.mu if by is not None else torch.full((Y.shape[0],), obj.mu, dtype=dt,
                                                               device=dev)
            gram = torch.cat([(Yf.T @ Yf).reshape(-1), Yf.T @ o])
            plan.all_sum([gram])
            term = (w0 * gram[: K * K].view(K, K), w0 * gram[K * K :])
        tiles = self.tiles
        if tiles is not None:
            tiles.start()
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        for a, b, pats in self.ranges:
            mb = b - a
            Xv = torch.cat([X[a:b], bx[a:b, None]], 1) if bx is not None else X[a:b].clone()
            grad = torch.zeros(mb, K, dtype=dt, device=dev)
            upper = torch.zeros(mb, len(iu), dtype=dt, device=dev)
            row_losses: Callable[[torch.Tensor], torch.Tensor]
            if tiles is not None:  # issue 11: this range's ratings from the ratings by user
                tiles.advance(a, b)
                loss += tiles.sums(self, obj, a, b, Xv, Ya, Yf, iu, ju, term, grad, upper)

                def row_losses(Xt: torch.Tensor, a: int = a, b: int = b) -> torch.Tensor:
                    assert tiles is not None
                    return tiles.row_losses(obj, a, b, Xt, Ya, bias, term)
            else:
                loss += self._range_sums(obj, pats, a, Xv, Ya, Yf, bias, term, products, grad,
                                         upper)

                def row_losses(Xt: torch.Tensor, a: int = a,
                               pats: list[Pattern] = pats) -> torch.Tensor:
                    out = torch.zeros(Xt.shape[0], dtype=Xt.dtype, device=Xt.device)
                    for pat in pats:
                        if pat.nnz == 0:
                            continue
                        r = slice(pat.row0 - a, pat.row1 - a)
                        out[r] += self._row_losses(obj, pat, Xt[r], Ya, bias, term)
                    return out
            plan.all_sum([grad, upper])  # every process's ratings of these items
            # each process solves its slice of the range's rows (the regularizer's derivatives
            # added there, once) and sends its steps to the others: every process then holds
            # the same steps, bit for bit, each solved once
            w, me = plan.world_size, plan.rank
            s0, s1 = mb * me // w, mb * (me + 1) // w
            mine = slice(s0, s1)
            rg, rh = self.curv.reg(obj, (a, b), Xv[mine])
            g = grad[mine] + rg
            del grad
            part = torch.zeros(s1 - s0, K, dtype=dt, device=dev)
            Xm, um = Xv[mine], upper[mine]
            for c0 in range(0, s1 - s0, self.solve_rows):  # H within max_memory
                c = slice(c0, min(c0 + self.solve_rows, s1 - s0))
                # with term: its sum over every user (g gets its gradient part in place)
                part[c] = _damped_solve(_mirror_upper(um[c], iu, ju, K), g[c], rh[c], term,
                                        Xm[c])
            del upper, um
            step = torch.empty(mb, K, dtype=dt, device=dev)
            for q, piece in enumerate(plan.each_rank(part.reshape(-1))):
                step[mb * q // w : mb * (q + 1) // w] = piece.view(-1, K).to(dev)
            if not self.exact_quadratic:
                slope = torch.zeros(mb, dtype=dt, device=dev)  # summed: each row from its solver
                slope[mine] = (g * part).sum(1)
                step = step * self._shared_backtrack(obj, row_losses, Xv, bias, step, slope,
                                                     term)[:, None]
            X[a:b] -= step[:, :k]
            if self.nonnegative:
                X[a:b] = X[a:b].clamp_min(0)
            if bx is not None:
                bx[a:b] -= step[:, k]
            if tiles is not None:  # (issue 11: as after each group of _side's blocks)
                release_freed_memory()
        return float(loss)

    def _range_sums(self, obj: Objective, pats: list[Pattern], a: int, Xv: torch.Tensor,
                    Ya: torch.Tensor, Yf: torch.Tensor, bias: bool,
                    term: tuple[torch.Tensor, torch.Tensor] | None, products: _Products,
                    grad: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """A range's gradient and Hessian upper triangles from its item blocks ``pats`` (the
        ratings by item), added into ``grad`` and ``upper``; its loss before the step."""
        w0 = obj.unobserved_weight
        loss = torch.zeros((), dtype=torch.float64, device=Xv.device)
        curv = []  # each block's rows and CSR of l'' (the range's l'': 4-8 bytes a rating)
        for pat in pats:
            if pat.nnz == 0:
                continue
            r = slice(pat.row0 - a, pat.row1 - a)
            pred = gather_dot(self._augment(Xv[r], bias), Ya, pat) + obj.mu
            g1, g2, block_loss = self.curv.entry(obj, pat, pred)
            loss += block_loss.double()
            if term is not None:  # the unobserved term's rated part (module docstring)
                g1 = g1 - 2 * w0 * pred
                g2 = g2 - 2 * w0
                loss -= w0 * (pred * pred).sum().double()
            # issue 10: sparse @ dense by embedding_bag (spmm): 1.6-2x torch's CSR product at
            # a range's shapes (2,568 items x 23,000 users, 154k ratings, 22-33 columns)
            grad[r] += spmm(Csr(pat.crow, pat.col, g1), Yf)
            curv.append((r, Csr(pat.crow, pat.col, g2)))
        # each column slice of Z computed once for the range's blocks (issue 10): cache-
        # sized where Z fits in half of max_memory, else within the budget's slices
        dev = Xv.device
        cols = max(1, min(obj.max_nnz * 8 // max(Ya.shape[0] + Xv.shape[0], 1),
                          _slice_bytes(dev) // max(1, Ya.shape[0] * Ya.element_size())))
        T = upper.shape[1]
        for c0 in range(0, T if curv else 0, cols):
            c1 = min(c0 + cols, T)
            Zs = products.upper(c0, c1)
            for r, C in curv:
                upper[r, c0:c1] += spmm(C, Zs)
            del Zs
        return loss

    def _shared_backtrack(self, obj: Objective,
                          row_losses: Callable[[torch.Tensor], torch.Tensor],
                          Xv: torch.Tensor, bias: bool, step: torch.Tensor,
                          slope: torch.Tensor,
                          term: tuple[torch.Tensor, torch.Tensor] | None = None,
                          halvings: int = 10) -> torch.Tensor:
        """:meth:`_backtrack` for a range of item rows shared by the processes: each row's
        objective summed over them (its regularization counted by rank 0), so every process
        finds the same step sizes and leaves the loop on the same halving. ``row_losses(X)``:
        this process's ratings' loss sums of the range's rows at ``X``; ``slope``: this
        process's rows' ``grad . step`` (those it solved; zeros elsewhere)."""
        plan = obj.plan
        k = Xv.shape[1] - (1 if bias else 0)

        def local(Xt: torch.Tensor) -> torch.Tensor:
            out = row_losses(Xt)
            if plan.owns_regularizer:
                out += self._row_regularization(obj, Xt, k, bias)
                if term is not None:
                    out += ((Xt @ term[0]) * Xt).sum(1) + 2 * (Xt @ term[1])
            return out

        first = torch.stack([local(Xv), slope])
        plan.all_sum([first])

        def summed(Xt: torch.Tensor) -> torch.Tensor:
            f1 = local(Xt)
            plan.all_sum([f1])
            return f1

        return _armijo(summed, first[0], first[1], Xv, step, halvings)

    @staticmethod
    def _augment(Xv: torch.Tensor, bias: bool) -> torch.Tensor:
        if not bias:
            return Xv
        return torch.cat([Xv, torch.ones(Xv.shape[0], 1, dtype=Xv.dtype, device=Xv.device)], 1)

    def _side(
        self,
        obj: Objective,
        blocks: list[Pattern],
        X: torch.Tensor,
        bx: torch.Tensor | None,
        Y: torch.Tensor,
        by: torch.Tensor | None,
    ) -> float:
        """Newton step on the rows of ``X`` (and ``bx``); returns the loss before the step."""
        k = X.shape[1]
        bias = bx is not None
        K = k + 1 if bias else k
        dev, dt = X.device, X.dtype
        if bias:
            assert bx is not None and by is not None
            Ya = torch.cat([Y, torch.ones(Y.shape[0], 1, dtype=dt, device=dev), by[:, None]], 1)
        else:
            Ya = Y
        Yf = Ya[:, :K]
        iu, ju = torch.triu_indices(K, K, device=dev)
        term = None
        if obj.unobserved_weight:  # the Gram trick: G and h once per half-sweep
            w0 = obj.unobserved_weight
            o = by + obj.mu if by is not None else torch.full((Y.shape[0],), obj.mu, dtype=dt,
                                                               device=dev)
            term = (w0 * (Yf.T @ Yf), w0 * (Yf.T @ o))

        # the y_i y_i^T, shared by the blocks (issue 10). Memory: each block's workspace is in
        # its worker's share of half of max_memory (see __init__). Z's upper triangle
        # (n_other x K(K+1)/2) whole when it fits in the other half: computed once, by the
        # first block that needs it. Otherwise in groups of consecutive blocks, each group's
        # upper triangles of C @ Z (at most a quarter of max_memory) accumulated over Z's
        # column slices (an eighth), each slice computed once a group and used by all its
        # blocks, the blocks' l'' kept meanwhile (an eighth).
        n_other, item = Yf.shape[0], Yf.element_size()
        whole = _z_fits(n_other, K, item, obj.max_memory)
        if not whole:
            self._zbuf = None  # (the groups' budget has no room for the other side's buffer)
        products = _Products(Yf, iu, ju, whole=whole,
                             buffer=self._z_buffer(n_other * len(iu), Yf) if whole else None)
        pool = self._pool() if self.workers > 1 and len(blocks) > 1 else None

        def each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
            """``fn`` on each item, on the workers; the results in the items' order."""
            def run(x: Any) -> Any:
                with torch.no_grad():  # grad mode is per thread
                    return fn(x)
            return list(pool.map(run, items)) if pool is not None else [run(x) for x in items]

        def prepare(pat: Pattern) -> _Prep:
            return self._prepare(obj, pat, X, bx, Ya, Yf, K, term)

        def finish(job: tuple[Pattern, _Prep, torch.Tensor | None]) -> torch.Tensor:
            pat, prep, hess = job
            return self._finish(obj, pat, prep, X, bx, Ya, Yf, k, K, term, products, hess)

        def fill(job: tuple[torch.Tensor, Any, int, int, torch.Tensor]) -> None:
            h, C, c0, c1, Zs = job  # a block's columns c0:c1 of C @ Z
            h[:, c0:c1] = spmm(C, Zs)

        if products.whole:
            losses = each(lambda pat: finish((pat, prepare(pat), None)), blocks)
        else:
            T = len(iu)
            width = max(1, min(obj.max_memory // 8, _slice_bytes(dev)) // (n_other * item))
            losses = []
            for group in _groups(blocks, T * item, 2 * item, obj.max_memory):
                preps = each(prepare, group)
                # the rows each block solves through K x K systems, their upper triangles
                hess = [None if p.C is None else
                        torch.empty(p.kk_rows, T, dtype=dt, device=dev) for p in preps]
                todo = [i for i, h in enumerate(hess) if h is not None]
                for c0 in range(0, T if todo else 0, width):
                    c1 = min(c0 + width, T)
                    Zs = products.upper(c0, c1)
                    each(fill, [(hess[i], preps[i].C, c0, c1, Zs) for i in todo])
                    del Zs
                losses += each(finish, list(zip(group, preps, hess, strict=True)))
                del preps, hess
                # issue 11 (memory): the group's blocks freed, their pages go back to the
                # system (glibc keeps freed blocks on its heaps, one a worker thread)
                release_freed_memory()
        loss = torch.zeros((), dtype=dt, device=dev)
        for block_loss in losses:  # in block order: the same sum whichever worker ran which
            loss += block_loss
        return float(loss)

    def _z_buffer(self, numel: int, like: torch.Tensor) -> torch.Tensor | None:
        """A flat buffer of at least ``numel`` entries for ``Z``'s slices, kept between
        half-sweeps (one, for the larger side) where it takes at most ``max_memory / 16``;
        else ``None``, the kept one dropped, as :meth:`_side` drops it for a side whose ``Z``
        is not whole: no half-sweep holds it beside its own budget (issue 10: fresh pages for
        ``Z`` each half-sweep, the system's zeroing of them included, cost 15-20% of a sparse
        fit's CPU time)."""
        if numel * like.element_size() > self.obj.max_memory // 16:
            self._zbuf = None  # (not kept beside this half-sweep's own Z)
            return None
        buf = self._zbuf
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype \
                or buf.device != like.device:
            self._zbuf = buf = None  # (the old one freed first)
            buf = self._zbuf = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf

    def _pool(self) -> ThreadPoolExecutor:
        """The solver's :attr:`workers` threads, started once and kept between half-sweeps
        (issue 10: on a busy machine a new thread can wait milliseconds to start, 60 times a
        fit); shut down when the solver is collected."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="autofact-als")
            weakref.finalize(self, self._executor.shutdown, wait=False)
        return self._executor

    def _prepare(self, obj: Objective, pat: Pattern, X: torch.Tensor, bx: torch.Tensor | None,
                 Ya: torch.Tensor, Yf: torch.Tensor, K: int,
                 term: tuple[torch.Tensor, torch.Tensor] | None) -> _Prep:
        """A block's derivatives, gradient and the CSR of ``l''`` its ``K x K`` systems need
        (the first half of a block's Newton step; :meth:`_finish` the second)."""
        bias = bx is not None
        rows = slice(pat.row0, pat.row1)
        # a copy, never a view of X: other workers update X's rows in place meanwhile, which
        # would bump the version autograd checks in reg_derivatives. With biases Xv is the
        # first K columns of [x, b, 1] (one copy for both)
        if bias:
            assert bx is not None
            Xa = torch.cat([X[rows], bx[rows, None],
                            torch.ones(pat.row1 - pat.row0, 1, dtype=X.dtype, device=X.device)], 1)
            Xv = Xa[:, :K]
        else:
            Xv = Xa = X[rows].clone()
        pred = gather_dot(Xa, Ya, pat)
        pred += obj.mu
        g1, g2, block_loss = self.curv.entry(obj, pat, pred)
        if not self.checked:
            if not bool((g2 != 0).any()):
                raise ValueError(
                    "solver='als' needs a loss with a non-zero second derivative; this loss "
                    "has none (e.g. 'absolute'): use solver='adam' or 'sgd'"
                )
            self.checked = True
        if term is not None:  # the unobserved term's rated part, on the per-entry derivatives
            w0 = obj.unobserved_weight
            g1 = g1 - 2 * w0 * pred
            g2 = g2 - 2 * w0
            block_loss = block_loss - w0 * (pred * pred).sum()
        del pred
        grad = spmm(Csr(pat.crow, pat.col, g1), Yf)
        rg, rh = self.curv.reg(obj, id(pat), Xv)
        grad += rg
        split = self._split(pat, K) if term is None else None
        if split is not None and self.curv.positive(("loss", id(pat)), g2) \
                and self.curv.positive(("reg", id(pat)), rh):
            # issue 10: rows with few ratings (most rows of sparse data) by Woodbury's identity,
            # only the others through their K x K Hessians
            C = self._form("long", pat, ((("loss", id(pat)), g2),),
                           lambda: split.csr_long(g2)) if split.long.numel() else None
            return _Prep(Xv, g2, block_loss, grad, rh, split, C, len(split.long))
        return _Prep(Xv, g2, block_loss, grad, rh, None, Csr(pat.crow, pat.col, g2),
                     pat.row1 - pat.row0)

    def _finish(self, obj: Objective, pat: Pattern, prep: _Prep, X: torch.Tensor,
                bx: torch.Tensor | None, Ya: torch.Tensor, Yf: torch.Tensor, k: int, K: int,
                term: tuple[torch.Tensor, torch.Tensor] | None, products: _Products,
                hess: torch.Tensor | None = None) -> torch.Tensor:
        """A block's steps, from :meth:`_prepare`'s ``prep`` (and ``hess``, its ``K x K`` rows'
        upper triangles when computed already): solved, backtracked, applied to ``X`` and
        ``bx``; the block's loss before them."""
        bias = bx is not None
        dev, dt = X.device, X.dtype
        rows = slice(pat.row0, pat.row1)
        Xv, g2, grad, rh, split = prep.Xv, prep.g2, prep.grad, prep.rh, prep.split
        if split is not None:
            # the short rows by Woodbury's identity, by their count of ratings, laid out
            # across the rows (index_select and index_copy_: 3-4x faster than indexing)
            stepT = torch.empty(K, len(grad), dtype=dt, device=dev)
            gT, YT = grad.T.contiguous(), products.transposed()
            sp = split

            def fixed() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
                rhT = rh.T.contiguous()
                return ([(g2.index_select(0, ents).view(n, len(rws)), rhT.index_select(1, rws))
                         for n, rws, ents, _ in sp.buckets], rhT.index_select(1, sp.long))
            # the same tensors every epoch while l'' and the regularizer's curvature are kept
            by_bucket, rhT_long = self._form("buckets", pat, ((("loss", id(pat)), g2),
                                                              (("reg", id(pat)), rh)), fixed)
            for (n, rws, _, cols), (w, rh_rows) in zip(split.buckets, by_bucket, strict=True):
                stepT.index_copy_(1, rws, _woodbury_solve(
                    YT.index_select(1, cols).view(K, n, len(rws)), w, rh_rows,
                    gT.index_select(1, rws)))
            if prep.C is not None:
                stepT.index_copy_(1, split.long, self._newton_step(
                    obj, prep.C, Ya, products, K, rhT_long, gT.index_select(1, split.long),
                    hess=hess))
        else:
            assert prep.C is not None
            # (grad.T, a view: the unobserved term's gradient part is added to grad in place)
            stepT = self._newton_step(obj, prep.C, Ya, products, K, rh.T, grad.T, term=term,
                                      Xv=Xv, hess=hess)
        if not self.exact_quadratic:
            stepT = stepT * self._backtrack(obj, pat, Xv, Ya, bias, stepT.T, grad, term)
        X[rows] -= stepT[:k].T
        if self.nonnegative:  # project now, so the other side is solved against it
            X[rows] = X[rows].clamp_min(0)
        if bias:
            bx[rows] -= stepT[k]  # type: ignore[index]
        return prep.loss

    @staticmethod
    def _newton_step(obj: Objective, C: Csr, Ya: torch.Tensor, products: _Products, K: int,
                     rhT: torch.Tensor, gT: torch.Tensor,
                     term: tuple[torch.Tensor, torch.Tensor] | None = None,
                     Xv: torch.Tensor | None = None,
                     hess: torch.Tensor | None = None) -> torch.Tensor:
        """``H^{-1} g`` for ``C``'s rows, laid out across them (``K x rows``, as ``rhT`` and
        ``gT``), ``H`` built from ``C``, the CSR of their ``l''``, ``rhT`` (the regularizer's
        Hessian diagonal) and with ``term`` the unobserved term (at ``Xv``, the rows), whose
        gradient part it adds to ``gT`` in place. ``hess``: ``C @ Z``'s upper triangle when
        computed already (:meth:`_side`'s groups)."""
        # upper(H) = C @ Z with Z[i] the upper triangle of y_i y_i^T: Z whole, computed once a
        # half-sweep, when it fits in half of max_memory (C @ Z, the block's rows, is in the
        # block's share of the other half), used in cache-sized column slices; else in column
        # slices that keep Z and C @ Z within the memory budget, computed again for each block
        iu, ju = products.iu, products.ju
        mb = len(C.crow) - 1
        if hess is None:
            T = len(iu)
            slices: list[tuple[int, int, torch.Tensor | None]]
            if products.whole:
                slices = list(products.slices())
            else:
                width = max(1, obj.max_nnz * 8 // max(Ya.shape[0] + mb, 1))
                slices = [(c0, min(c0 + width, T), None) for c0 in range(0, T, width)]
            if len(slices) == 1 and slices[0][2] is not None:
                hess = spmm(C, slices[0][2])  # (one slice: no copy)
            else:
                hess = torch.empty(mb, T, dtype=Ya.dtype, device=Ya.device)
                for c0, c1, Zs in slices:
                    hess[:, c0:c1] = spmm(C, products.upper(c0, c1) if Zs is None else Zs)
        if K <= ROWS_SOLVE_K and mb >= ROWS_SOLVE_MIN:
            return _rows_damped_solve(hess.T.contiguous(), rhT, gT, iu, ju, term, Xv)
        H = _mirror_upper(hess, iu, ju, K)
        del hess
        return _damped_solve(H, gT.T, rhT.T, term, Xv).T  # with term: its sum over all items

    def _form(self, name: str, pat: Pattern,
              sources: tuple[tuple[tuple[str, Any], torch.Tensor], ...],
              make: Callable[[], Any]) -> Any:
        """``make()``, a form of the block's second derivatives ``sources`` (``(key, tensor)``
        pairs, as :class:`_Curvatures` keys them), kept while every one of them is the very
        tensor :class:`_Curvatures` keeps (the same object each epoch, read only): made once,
        not each half-sweep (issue 10). Where one is computed each epoch it is made each time
        and not kept (at most the kept curvatures' size again)."""
        key = (name, id(pat))
        tensors = tuple(t for _, t in sources)
        hit = self._forms.get(key)
        if hit is not None and len(hit[0]) == len(tensors) \
                and all(a is b for a, b in zip(hit[0], tensors, strict=True)):
            return hit[1]
        out = make()
        if all(self.curv.holds(k, t) for k, t in sources):
            self._forms[key] = (tensors, out)
        else:
            self._forms.pop(key, None)
        return out

    def _split(self, pat: Pattern, K: int) -> _Split | None:
        """The block's rows with at most :data:`WOODBURY_ROWS` ratings and the others (built
        once per block while the splits kept fit in a sixteenth of ``max_memory``, else each
        half-sweep: issue 11, their entries' places are 8-16 bytes a rating); ``None`` when too
        few rows are short to gain from it."""
        key = id(pat)
        if key in self._splits:
            return self._splits[key]
        split = _Split.of(pat) if WOODBURY_ROWS < K else None
        size = 0 if split is None else split.nbytes()
        with self._split_lock:
            fits = size <= self._split_budget
            if fits:
                self._split_budget -= size
        if fits:
            self._splits[key] = split
        return split

    def _row_objective(self, obj: Objective, pat: Pattern, Xv: torch.Tensor, Ya: torch.Tensor,
                       bias: bool, term: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """Each of the block's rows' share of the objective: its losses and its regularization
        (and with ``term``, its unobserved term less a constant: ``x^T (w0 G) x + 2 x . (w0 h)
        - w0 sum_i r_hat_ui^2`` over its rated items)."""
        k = Xv.shape[1] - (1 if bias else 0)
        out = self._row_losses(obj, pat, Xv, Ya, bias, term)
        if term is not None:
            Gw, hw = term
            out = out + ((Xv @ Gw) * Xv).sum(1) + 2 * (Xv @ hw)
        return out + self._row_regularization(obj, Xv, k, bias)

    def _row_losses(self, obj: Objective, pat: Pattern, Xv: torch.Tensor, Ya: torch.Tensor,
                    bias: bool, term: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> torch.Tensor:
        """Each of the block's rows' sum of its losses (with ``term``, less ``w0 r_hat^2`` on
        each of its rated items)."""
        pred = gather_dot(self._augment(Xv, bias), Ya, pat) + obj.mu
        losses = obj.entry_loss(pred, pat.start, pat.stop)
        if term is not None:
            losses = losses - obj.unobserved_weight * pred * pred
        ones = torch.ones(Ya.shape[0], 1, dtype=Xv.dtype, device=Xv.device)
        return spmm(Csr(pat.crow, pat.col, losses), ones)[:, 0]  # row sums

    @staticmethod
    def _row_regularization(obj: Objective, Xv: torch.Tensor, k: int, bias: bool
                            ) -> torch.Tensor:
        """Each row's regularization (its factors, and its bias in column ``k``)."""
        out = torch.func.vmap(obj.reg)(Xv[:, :k])
        if bias:
            out = out + torch.func.vmap(obj.reg)(Xv[:, k])
        return out

    def _backtrack(self, obj: Objective, pat: Pattern, Xv: torch.Tensor, Ya: torch.Tensor,
                   bias: bool, step: torch.Tensor, grad: torch.Tensor,
                   term: tuple[torch.Tensor, torch.Tensor] | None = None,
                   halvings: int = 10) -> torch.Tensor:
        """Per-row step sizes ``t`` in {1, 1/2, ...} meeting Armijo's condition (0 if none do)."""
        f0 = self._row_objective(obj, pat, Xv, Ya, bias, term)
        slope = (grad * step).sum(1)  # the decrease the linear model promises per unit of t
        return _armijo(lambda Xt: self._row_objective(obj, pat, Xt, Ya, bias, term), f0, slope,
                       Xv, step, halvings)


def _armijo(objective: Callable[[torch.Tensor], torch.Tensor], f0: torch.Tensor,
            slope: torch.Tensor, Xv: torch.Tensor, step: torch.Tensor, halvings: int
            ) -> torch.Tensor:
    """Per-row step sizes ``t`` in {1, 1/2, ...} meeting Armijo's condition (0 if none do):
    ``objective(X)`` gives each row's objective at ``X``, ``f0`` at ``Xv``, and ``slope`` the
    decrease the linear model promises per unit of ``t`` (``grad . step``)."""
    t = torch.ones(Xv.shape[0], dtype=Xv.dtype, device=Xv.device)
    done = torch.zeros_like(t, dtype=torch.bool)
    for _ in range(halvings):
        f1 = objective(Xv - t[:, None] * step)
        ok = torch.isfinite(f1) & (f1 <= f0 - 1e-4 * t * slope.clamp_min(0))
        done |= ok
        if bool(done.all()):
            return t
        t = torch.where(done, t, t / 2)
    return torch.where(done, t, torch.zeros_like(t))


def _by_item(obj: Objective, lut: torch.Tensor | None, n_users: int,
             cut: Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], Any]
             ) -> tuple[Objective, Any]:
    """``obj``'s ratings by item for the item half-step: the same objective with users and
    items swapped (:meth:`Objective.transposed`'s order and values), users numbered by ``lut``
    (``None``: as they are), and ``cut(rows, cols, shape)``, its row blocks, cut from the
    sorted item ids, which are then dropped (issue 11: the blocks' row pointers replace them,
    4 bytes a rating). It keeps 8 bytes a rating (users and values by item, and the weights);
    on the way, the order (4 bytes a rating, its sort within ``max_memory``: :func:`_item_order`)
    and the sorted item ids (4, for ``cut``)."""
    n = obj.shape[1]
    order, counts = _item_order(obj.items, n, obj.max_memory)
    cols = torch.index_select(obj.users, 0, order)
    if lut is not None:
        cols = torch.index_select(lut, 0, cols)
    t = copy.copy(obj)
    t.values = torch.index_select(obj.values, 0, order)
    t.weights = None if obj.weights is None else torch.index_select(obj.weights, 0, order)
    del order
    shape = (n, n_users)
    rows = torch.repeat_interleave(torch.arange(n, dtype=obj.items.dtype, device=cols.device),
                                   counts)  # the sorted item ids, for the cut alone
    blocks = cut(rows, cols, shape)
    del rows
    t.users, t.items, t.shape = cols[:0], cols, shape
    t.patterns = []
    return t, blocks


#: Bytes a sorted entry takes at the peak of :func:`_item_order`'s chunks (torch's stable sort
#: of int32: its outputs, 12 bytes, and as much inside; then the places, int64).
SORT_BYTES = 48


def _item_order(items: torch.Tensor, n: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stable order of ``items`` (``torch.sort(items, stable=True)``'s indices, int32 on the
    CPU below 2^31 entries) and each item's count. One sort where its workspace (about 24 bytes
    an entry) fits in ``budget`` bytes (``max_memory``); otherwise a counting sort over chunks
    of ``budget / SORT_BYTES`` entries (issue 11: the workspace is a chunk's, not the
    ratings'): the entries of a chunk, sorted, go to their items' first free places, so the
    order is the stable one."""
    N, dev = len(items), items.device
    idx = torch.int32 if N < 2**31 and dev.type == "cpu" else torch.int64
    if N * SORT_BYTES // 2 <= budget:  # the sort itself
        _, order = torch.sort(items, stable=True)
        return order.to(idx), torch.bincount(items, minlength=n)
    chunk = max(1024, budget // SORT_BYTES)
    counts = torch.zeros(n, dtype=torch.int64, device=dev)
    order = torch.empty(N, dtype=idx, device=dev)
    for s in range(0, N, chunk):
        counts += torch.bincount(items[s : s + chunk], minlength=n)
    free = torch.cumsum(counts, 0) - counts  # each item's first free place
    for s in range(0, N, chunk):
        part = items[s : s + chunk]
        key, within = torch.sort(part, stable=True)
        # each entry's place among its item's entries in the chunk, after the earlier chunks'
        first = torch.searchsorted(key, key)
        place = free[key.long()] + torch.arange(len(key), device=dev) - first
        order.index_copy_(0, place, (within + s).to(idx))
        free += torch.bincount(part, minlength=n)
    return order, counts


#: issue 11 (memory): the item half-step's copy of the ratings by item (:func:`_by_item`: the
#: users and values in item order, and the weights: 8 bytes a float32 rating or more) is made
#: only where it takes at most this share of ``max_memory``. Otherwise the item half-step takes
#: each range of items' ratings from the ratings by user as they are (:class:`_ItemTiles`) and
#: the solver keeps nothing a rating.
BY_ITEM_SHARE = 0.5


def _tiled(obj: Objective) -> bool:
    """Whether the item half-step takes its ratings range by range (:class:`_ItemTiles`): where
    the copy by item would not fit in :data:`BY_ITEM_SHARE` of ``max_memory``; under several
    processes, where it would not fit on any of them (every process takes the same ranges)."""
    per = obj.users.element_size() + obj.values.element_size() + (
        0 if obj.weights is None else obj.weights.element_size())
    need = torch.tensor([float(obj.nnz * per > obj.max_memory * BY_ITEM_SHARE)],
                        dtype=torch.float64)
    obj.plan.all_max([need])
    return bool(need[0] > 0)


def _lower_bound(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bound: int
                 ) -> torch.Tensor:
    """In each segment ``[lo, hi)`` of ``values`` (sorted within each segment), the first
    position whose value is at least ``bound`` (``hi`` where none is): a binary search in every
    segment at once, ``log2`` of the longest segment's length steps."""
    lo, hi = lo.clone(), hi.clone()
    last = max(len(values) - 1, 0)
    while True:
        active = lo < hi
        if not bool(active.any()):
            return lo
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        below = torch.index_select(values, 0, mid.clamp(max=last)) < bound
        right = active & below
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(active & ~below, mid, hi)


class _ItemTiles:
    """The item half-step's ratings taken from the ratings by user as they are (issue 11,
    memory: no copy of them by item, nothing kept a rating), where that copy would not fit in
    ``max_memory`` (:func:`_tiled`).

    The items are cut into ranges (:attr:`spans`, the same on every process: they depend on
    the shapes and ``max_memory`` only) whose sums, each item row's gradient and Hessian upper
    triangle (``K + K (K + 1) / 2`` floats), and a product's result as large, fit in a quarter
    of ``max_memory``; the users into blocks (:attr:`blocks`) whose ``Z`` rows (``y_u y_u^T``'s
    upper triangles) fit in an eighth, of at most ``max_nnz`` ratings; the rows are solved in
    pieces whose ``H`` and Cholesky factor fit in a sixth (float32; a third in float64: the
    solver's :attr:`~_AlternatingNewton.solve_rows`). A user's ratings are sorted by item, so a
    range's ratings of a block's users are a run in each user's row: a
    binary search in every row at once finds where the range's run ends, after the previous
    range's (a cursor a user while a half-step runs: 16 bytes a user). A tile (a block's
    ratings of a range, gathered: within ``max_nnz``) gives its entries' ``l'`` and ``l''``,
    and the range's sums through the transposed sparse products ``C^T @ Y`` and ``C^T @ Z``
    (by :func:`~autofact.sparse.spmm` on the tile's transpose),
    ``Z`` of the block's users only: all its columns at once, no column slices of every
    user's ``Z``. The sums are those of the ratings by item added in another order (rounding
    only); the item rows are solved as :meth:`_AlternatingNewton._shared_items` solves them.
    """

    def __init__(self, obj: Objective, n_rows: int, K: int, max_rows: int,
                 row_ids: torch.Tensor | None = None) -> None:
        n = obj.shape[1]
        f = obj.values.element_size()
        T = K * (K + 1) // 2
        span = max(1, obj.max_memory // 4 // (2 * (T + K) * f))
        self.spans = [(a, min(n, a + span)) for a in range(0, n, span)]
        rows = max(1, obj.max_memory // 8 // (T * f))
        # (row pointers and views of the item ids: nothing a rating)
        self.blocks = build_patterns(obj.users, obj.items, (n_rows, n), obj.max_nnz,
                                     keep_rows=False, max_rows=rows, row_ids=row_ids)
        # every block's Z computed once a half-step where all of them fit in that eighth
        self.keep_z = n_rows * T * f <= obj.max_memory // 8
        self._z: dict[int, torch.Tensor] = {}
        self._lo: list[torch.Tensor] = []
        self._hi: list[torch.Tensor] = []

    def start(self) -> None:
        """A half-step begins: every user's cursor at its first rating."""
        self._hi = [p.crow[:-1].long() for p in self.blocks]
        self._z = {}

    def advance(self, a: int, b: int) -> None:
        """The next range, items ``[a, b)`` (ranges in order): in each user's row, its ratings
        from the cursor up to its first of an item ``>= b``."""
        self._lo = self._hi
        self._hi = [_lower_bound(p.col, lo, p.crow[1:].long(), b)
                    for p, lo in zip(self.blocks, self._lo, strict=True)]

    def tile(self, j: int, a: int, b: int) -> tuple[Pattern, torch.Tensor] | None:
        """Block ``j``'s ratings of the range ``[a, b)`` (:meth:`advance`'s): their pattern
        (the block's rows, the range's items numbered from ``a``) and their places in the
        block; ``None`` when it has none."""
        p, lo, hi = self.blocks[j], self._lo[j], self._hi[j]
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return None
        crow = torch.zeros(len(counts) + 1, dtype=torch.int64, device=lo.device)
        torch.cumsum(counts, 0, out=crow[1:])
        idx = torch.repeat_interleave(lo - crow[:-1], counts, output_size=total)
        idx += torch.arange(total, device=lo.device)
        col = torch.index_select(p.col, 0, idx)
        col -= a
        # keep_rows: the transpose's order, pointers and rows built once for the tile's two
        # products (:meth:`sums`; 8 bytes a rating of the tile while it lives)
        return Pattern(row0=p.row0, row1=p.row1, start=0, n_cols=b - a,
                       crow=crow.to(col.dtype), col=col, keep_rows=True), idx

    @staticmethod
    def _view(obj: Objective, p: Pattern, idx: torch.Tensor) -> Objective:
        """``obj`` on a tile's ratings alone (their values and weights, gathered)."""
        view = copy.copy(obj)
        view.values = torch.index_select(obj.values[p.start : p.stop], 0, idx)
        view.weights = None if obj.weights is None else torch.index_select(
            obj.weights[p.start : p.stop], 0, idx)
        return view

    def _z_rows(self, j: int, Yf: torch.Tensor, iu: torch.Tensor, ju: torch.Tensor
                ) -> torch.Tensor:
        """Block ``j``'s rows of ``Z`` (``Yf``: its users' rows)."""
        z = self._z.get(j)
        if z is None:
            z = _Products(Yf, iu, ju).upper(0, len(iu))
            if self.keep_z:
                self._z[j] = z
        return z

    def sums(self, solver: _AlternatingNewton, obj: Objective, a: int, b: int,
             Xv: torch.Tensor, Ya: torch.Tensor, Yf: torch.Tensor, iu: torch.Tensor,
             ju: torch.Tensor, term: tuple[torch.Tensor, torch.Tensor] | None,
             grad: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """The range's gradient and Hessian upper triangles from this process's ratings,
        added into ``grad`` and ``upper``; their loss before the step."""
        bias = Ya.shape[1] == Xv.shape[1] + 1
        Xa = solver._augment(Xv, bias)
        w0 = obj.unobserved_weight
        loss = torch.zeros((), dtype=torch.float64, device=Xv.device)
        for j, p in enumerate(self.blocks):
            got = self.tile(j, a, b)
            if got is None:
                continue
            pat, idx = got
            r = slice(p.row0, p.row1)
            view = self._view(obj, p, idx)
            pred = gather_dot(Ya[r], Xa, pat) + obj.mu
            g1, g2, tile_loss = solver.curv.entry(view, pat, pred, key=("tile", a, j))
            loss += tile_loss.double()
            if term is not None:  # the unobserved term's rated part (module docstring)
                g1 = g1 - 2 * w0 * pred
                g2 = g2 - 2 * w0
                loss -= w0 * (pred * pred).sum().double()
            del pred, view
            # issue 10: C^T @ Y and C^T @ Z as the transpose's sparse @ dense products by
            # embedding_bag (spmm; its order found once a tile): 2.2-3x torch's product
            # with the transposed CSR, the same results
            grad += spmm(pat.transposed(g1), Yf[r])
            upper += spmm(pat.transposed(g2), self._z_rows(j, Yf[r], iu, ju))
        return loss

    def row_losses(self, obj: Objective, a: int, b: int, Xt: torch.Tensor, Ya: torch.Tensor,
                   bias: bool, term: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> torch.Tensor:
        """Each item row's sum of this process's losses at the range's rows ``Xt`` (with
        ``term``, less ``w0 r_hat^2`` on each rating)."""
        Xa = _AlternatingNewton._augment(Xt, bias)
        out = torch.zeros(b - a, dtype=Xt.dtype, device=Xt.device)
        for j, p in enumerate(self.blocks):
            got = self.tile(j, a, b)
            if got is None:
                continue
            pat, idx = got
            pred = gather_dot(Ya[p.row0 : p.row1], Xa, pat) + obj.mu
            losses = self._view(obj, p, idx).entry_loss(pred, 0, pat.nnz)
            if term is not None:
                losses = losses - obj.unobserved_weight * pred * pred
            out.index_add_(0, pat.col, losses)
        return out


def _aligned_patterns(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int],
                      max_nnz: int, span: int) -> list[tuple[int, int, list[Pattern]]]:
    """A row-sorted pattern cut into row ranges ``[a, b)`` of ``span`` rows (the same on every
    process, whatever its ratings), each with its row blocks of at most ``max_nnz`` entries
    (this process's own cut): ``(a, b, blocks)``, the blocks' rows and entries numbered as in
    the whole pattern."""
    n, m = shape
    crow = torch.searchsorted(rows, torch.arange(n + 1, dtype=rows.dtype,
                                                 device=rows.device)).cpu()
    out = []
    for a in range(0, n, span):
        b = min(n, a + span)
        s, e = int(crow[a]), int(crow[b])
        blocks = build_patterns(rows[s:e] - a, cols[s:e], (b - a, m), max_nnz, keep_rows=False)
        out.append((a, b, [dataclasses.replace(p, row0=p.row0 + a, row1=p.row1 + a,
                                               start=p.start + s) for p in blocks]))
    return out


def _z_fits(n_other: int, K: int, item: int, max_memory: int, columns: int | None = None
            ) -> bool:
    """Whether ``Z`` (``n_other`` rows, the upper triangle's ``K (K + 1) / 2`` columns or
    ``columns``, ``item`` bytes each) fits in half of ``max_memory`` (issue 10: then it is
    computed once a half-sweep and shared by the blocks, which keep to the other half)."""
    cols = K * (K + 1) // 2 if columns is None else columns
    return n_other * cols * item <= max_memory // 2


class _Products:
    """The columns of ``Z`` (``Z[i]``: the upper triangle of ``y_i y_i^T``) for one half-sweep,
    computed once and shared by its row blocks (issue 10) when they fit in one slice
    (``whole``: in half of the memory budget), written into ``buffer`` when given (flat, at
    least ``n_other x T``: the solver's, kept between half-sweeps); a slice of the upper
    triangle (the memory budget's column slices) is computed on each request."""

    def __init__(self, Yf: torch.Tensor, iu: torch.Tensor, ju: torch.Tensor,
                 whole: bool = False, buffer: torch.Tensor | None = None) -> None:
        self.Yf, self.iu, self.ju = Yf, iu, ju
        self.whole = whole
        self._buffer = buffer
        self._kept: dict[str, torch.Tensor] = {}
        self._slices: list[tuple[int, int, torch.Tensor]] | None = None
        self._pairs: tuple[list[int], list[int]] | None = None
        self._lock = threading.Lock()

    def _once(self, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if key not in self._kept:
                self._kept[key] = make()
            return self._kept[key]

    def transposed(self) -> torch.Tensor:
        """``Yf^T``, contiguous (``K x n_other``: Woodbury's rows gather its columns)."""
        return self._once("transposed", lambda: self.Yf.T.contiguous())

    def upper(self, c0: int, c1: int) -> torch.Tensor:
        """Columns ``c0:c1`` of the upper triangle (index_select: the same values as
        ``Yf[:, a]``, 5x faster on the CPU)."""
        if c0 == 0 and c1 == len(self.iu):
            return self._once("upper", self._whole_upper)
        return self._gathered(c0, c1)

    def _gathered(self, c0: int, c1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Columns ``c0:c1`` of the upper triangle, run by run of the triangle's rows (``y_a``
        times ``y_b..y_c``, written in place, into ``out`` when given): the products of two
        column gathers of ``Yf``, bit for bit, 2.5-3x faster at rank 32 (issue 11: the column
        slices are computed again for each group of blocks or range of items when ``Z`` is
        larger than the budget)."""
        Yf = self.Yf
        if self._pairs is None:
            self._pairs = (self.iu.tolist(), self.ju.tolist())
        iu, ju = self._pairs
        K = Yf.shape[1]
        if out is None:
            out = torch.empty(Yf.shape[0], c1 - c0, dtype=Yf.dtype, device=Yf.device)
        c = c0
        while c < c1:
            a, b = iu[c], ju[c]
            run = min(c1 - c, K - b)  # row a of the triangle goes on to column K - 1
            torch.mul(Yf[:, a : a + 1], Yf[:, b : b + run], out=out[:, c - c0 : c - c0 + run])
            c += run
        return out

    def slices(self) -> list[tuple[int, int, torch.Tensor]]:
        """The whole upper triangle as contiguous column slices ``(c0, c1, Z[:, c0:c1])`` of
        about :data:`Z_SLICE_BYTES` each, computed once."""
        with self._lock:
            if self._slices is None:
                Yf, T, buf = self.Yf, len(self.iu), self._buffer
                n = Yf.shape[0]
                width = max(8, _slice_bytes(Yf.device) // max(1, n * Yf.element_size()))
                out = []
                for c0 in range(0, T, width):
                    c1 = min(c0 + width, T)
                    at = None if buf is None else buf[c0 * n : c1 * n].view(n, c1 - c0)
                    out.append((c0, c1, self._gathered(c0, c1, at)))
                self._slices = out
            return self._slices

    def _whole_upper(self) -> torch.Tensor:
        """The whole upper triangle, row of the triangle by row (``y_a`` times ``y_a..y_K``):
        the same products as :meth:`upper`'s gathers, written in place, 2-3x faster."""
        Yf = self.Yf
        K = Yf.shape[1]
        Z = torch.empty(Yf.shape[0], len(self.iu), dtype=Yf.dtype, device=Yf.device)
        c = 0
        for a in range(K):
            torch.mul(Yf[:, a : a + 1], Yf[:, a:], out=Z[:, c : c + K - a])
            c += K - a
        return Z


@dataclass
class _Prep:
    """A block between :meth:`_AlternatingNewton._prepare` and ``_finish``: its rows (``Xv``),
    per-entry ``l''`` (``g2``), loss, gradient, the regularizer's curvature ``rh``, the Woodbury
    split it takes (``None``: every row by its ``K x K`` system) and the CSR ``C`` of ``l''``
    of the ``kk_rows`` rows that take the ``K x K`` system (``None``: none)."""

    Xv: torch.Tensor
    g2: torch.Tensor
    loss: torch.Tensor
    grad: torch.Tensor
    rh: torch.Tensor
    split: _Split | None
    C: Csr | None
    kk_rows: int


def _groups(blocks: list[Pattern], row_bytes: int, entry_bytes: int, max_memory: int
            ) -> list[list[Pattern]]:
    """Consecutive blocks whose rows' accumulated upper triangles (``row_bytes`` a row) stay
    within a quarter of ``max_memory`` and their entries' ``l''`` (``entry_bytes`` an entry)
    within an eighth; at least one block a group."""
    out: list[list[Pattern]] = []
    rows = entries = 0
    for pat in blocks:
        mb = pat.row1 - pat.row0
        if out and (rows + mb) * row_bytes <= max_memory // 4 \
                and (entries + pat.nnz) * entry_bytes <= max_memory // 8:
            out[-1].append(pat)
            rows, entries = rows + mb, entries + pat.nnz
        else:
            out.append([pat])
            rows, entries = mb, pat.nnz
    return out


@dataclass
class _Split:
    """A block's rows with at most :data:`WOODBURY_ROWS` ratings, by their count ``n``
    (``buckets``: ``(n, rows, entries, cols)``, the rows' entries' positions in the block
    and their columns, slot by slot: ``entries[a * len(rows) + j]`` is row ``rows[j]``'s
    ``a``-th entry) and the others (``long``, with the CSR of their entries alone)."""

    buckets: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]
    long: torch.Tensor
    long_entries: torch.Tensor
    long_crow: torch.Tensor
    long_col: torch.Tensor

    @classmethod
    def of(cls, pat: Pattern) -> _Split | None:
        """The split of ``pat``; ``None`` when fewer than a quarter of its rows are short."""
        crow = pat.crow.long()
        counts = crow[1:] - crow[:-1]
        is_short = counts <= WOODBURY_ROWS
        n_short = int(is_short.sum())
        if n_short * 4 < len(counts) or pat.nnz == 0:
            return None
        buckets = []
        for n in range(WOODBURY_ROWS + 1):
            rows = torch.nonzero(counts == n)[:, 0]
            if len(rows):
                offsets = torch.arange(n, device=crow.device)
                entries = (crow[rows][None, :] + offsets[:, None]).reshape(-1)
                buckets.append((n, rows, entries, pat.col.long()[entries]))
        long = torch.nonzero(~is_short)[:, 0]
        row_of = torch.repeat_interleave(torch.arange(len(counts), device=crow.device), counts)
        long_entries = torch.nonzero(~is_short[row_of])[:, 0]
        long_crow = torch.zeros(len(long) + 1, dtype=pat.crow.dtype, device=crow.device)
        torch.cumsum(counts[long], 0, out=long_crow[1:])
        return cls(buckets, long, long_entries, long_crow, pat.col[long_entries])

    def nbytes(self) -> int:
        """The bytes its tensors hold."""
        tensors = [t for _, rows, ents, cols in self.buckets for t in (rows, ents, cols)]
        tensors += [self.long, self.long_entries, self.long_crow, self.long_col]
        return sum(t.numel() * t.element_size() for t in tensors)

    def csr_long(self, values: torch.Tensor) -> Csr:
        """The CSR of the long rows' entries of ``values`` (one value per entry of the block)."""
        return Csr(self.long_crow, self.long_col, values.index_select(0, self.long_entries))


def _woodbury_solve(Y: torch.Tensor, w: torch.Tensor, rh: torch.Tensor, g: torch.Tensor
                    ) -> torch.Tensor:
    """``H^{-1} g`` for rows whose ``H = D + Y^T diag(w) Y`` has few ratings (issue 10), each
    row's data laid out across the rows (the last dimension), so every operation runs along
    them and sums over the ``K`` or ``n`` leading entries are additions of whole vectors.

    ``Y``: ``(K, n, rows)``, each row's ``n`` ratings' ``y_i`` (every row of a call has ``n``,
    at most :data:`WOODBURY_ROWS`), ``w``: ``(n, rows)``, their ``l'' > 0``; ``rh``, ``g``:
    ``(K, rows)``; ``D = diag(rh + eps)`` with ``rh > 0`` and the same ``eps`` as the ``K x K``
    path. Woodbury's identity gives the same step as the ``K x K`` solve from an ``n x n``
    one, returned as ``(K, rows)``::

        H^{-1} g = D^{-1} (g - Y^T z),    (diag(1/w) + Y D^{-1} Y^T) z = Y D^{-1} g
    """
    K, n = Y.shape[:2]
    # the mean of H's diagonal before eps (positive: rh > 0, w > 0): rh's, and each rating's
    # w |y|^2 spread over the K entries (issue 10: one pass over Y, not three)
    mean = rh.mean(dim=0, keepdim=True)
    if n:
        mean = mean + (w * (Y * Y).sum(0)).sum(0, keepdim=True) / K
    d = rh + 1e-6 * mean.clamp_min(1.0)
    if n == 0:
        return g / d
    Yd = Y / d[:, None, :]
    inverse = w.reciprocal()

    def column(j: int) -> torch.Tensor:
        """Column ``j`` of ``diag(1/w) + Y D^{-1} Y^T`` from the diagonal down."""
        c = (Yd[:, j:] * Y[:, j : j + 1]).sum(0)
        c[0].add_(inverse[j])
        return c

    z = _rows_cholesky_solve(column, (Yd * g[:, None, :]).sum(0))
    return (g - (Y * z[None]).sum(1)) / d


def _rows_cholesky_solve(column: Callable[[int], torch.Tensor], b: torch.Tensor
                         ) -> torch.Tensor:
    """``A^{-1} b`` for a batch of positive definite ``n x n`` systems laid out across the rows
    (the last dimension), both the ``K x K`` systems (:func:`_rows_damped_solve`) and Woodbury's
    ``n x n`` ones (:func:`_woodbury_solve`). ``column(j)`` gives column ``j`` of ``A`` from
    the diagonal down, ``(n - j, rows)``, called once each in order, and becomes column ``j``
    of the factor in place (a tensor the caller gives up); ``b`` is ``(n, rows)``, not
    modified. A Cholesky factorization written over the rows, column by column, then the two
    triangular solves: about ``n^2`` vector operations and no per-matrix call (issue 10:
    LAPACK's call a matrix costs more than the arithmetic at ``n <= 16``; in-place operations
    on views throughout, since at ``n <= 4`` each operation's overhead is the cost). A system
    that is not positive definite gets non-finite entries."""
    n = b.shape[0]
    L: list[torch.Tensor] = []  # L[j]: the factor's column j from the diagonal down
    for j in range(n):
        c = column(j)
        for m in range(j):  # less L[j:, m] L[j, m]
            c.addcmul_(L[m][j - m :], L[m][j - m], value=-1)
        diag = c[0]
        diag.sqrt_()
        if j + 1 < n:
            c[1:].div_(diag)
        L.append(c)
    x = b.clone()  # L y = b, then L^T x = y
    xs = x.unbind(0)
    for i in range(n):
        xs[i].div_(L[i][0])
        if i + 1 < n:
            x[i + 1 :].addcmul_(L[i][1:], xs[i], value=-1)
    for i in reversed(range(n)):
        if i + 1 < n:
            xs[i].sub_((L[i][1:] * x[i + 1 :]).sum(0))
        xs[i].div_(L[i][0])
    return x


def _mirror_upper(hess: torch.Tensor, iu: torch.Tensor, ju: torch.Tensor, K: int
                  ) -> torch.Tensor:
    """The ``(rows, K, K)`` symmetric matrices whose upper triangles (``iu``, ``ju``) are the
    rows of ``hess``: one gather of its columns (index_select rather than ``H[:, iu, ju] =
    ...`` twice: the same values, 3-5x faster on the CPU, issue 10)."""
    at = torch.arange(len(iu), device=hess.device)
    place = torch.empty(K * K, dtype=torch.long, device=hess.device)
    place[iu * K + ju] = at  # each entry of H: its column of hess
    place[ju * K + iu] = at
    return hess.index_select(1, place).view(hess.shape[0], K, K)


def _damped_solve(H: torch.Tensor, grad: torch.Tensor, rh: torch.Tensor,
                  term: tuple[torch.Tensor, torch.Tensor] | None = None,
                  Xv: torch.Tensor | None = None) -> torch.Tensor:
    """The Newton step ``H^{-1} grad`` of each row, ``H`` (the data part, modified in place)
    given the regularizer's curvature ``rh``, a small damping on the diagonal and with ``term``
    ``(w0 G, w0 h)`` the unobserved term at ``Xv``, whose gradient part is added to ``grad`` in
    place; a non-finite step is zeroed."""
    if term is not None:
        assert Xv is not None
        Gw, hw = term
        grad += 2 * (Xv @ Gw + hw)
        H += 2 * Gw
    diag = torch.diagonal(H, dim1=1, dim2=2)
    diag += rh
    diag += 1e-6 * diag.abs().mean(dim=1, keepdim=True).clamp_min(1.0)
    step = _spd_solve(H, grad)
    if not bool(torch.isfinite(step.sum())):  # one reduction in the usual case
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    return step


def _rows_damped_solve(hT: torch.Tensor, rhT: torch.Tensor, gT: torch.Tensor,
                       iu: torch.Tensor, ju: torch.Tensor,
                       term: tuple[torch.Tensor, torch.Tensor] | None = None,
                       Xv: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_damped_solve` with the rows' data laid out across them, as
    :func:`_woodbury_solve`'s: ``hT`` the upper triangles of ``H``'s data part (``T x rows``,
    ``T = K (K + 1) / 2`` in ``iu``, ``ju``'s order, row by row of the triangle; overwritten),
    ``rhT`` and ``gT`` (``K x rows``; with ``term``, its gradient part is added to ``gT`` in
    place); returns the steps, ``K x rows``. The same damping; a Cholesky factorization written
    over the rows, column by column (issue 10: ``K`` vector operations a column, none a row).
    A row whose step comes out non-finite (its ``H`` not positive definite, or not finite)
    takes :func:`_spd_solve` as :func:`_damped_solve` does (an eigenvalue shift, or no step)."""
    K, R = gT.shape
    first = [0]  # where each row of the triangle starts (its diagonal entry)
    for a in range(K - 1):
        first.append(first[-1] + K - a)
    at_diag = torch.tensor(first, device=hT.device)
    if term is not None:
        assert Xv is not None
        Gw, hw = term
        gT += 2 * (Xv @ Gw + hw).T
        hT += 2 * Gw[iu, ju][:, None]
    diag = hT.index_select(0, at_diag)
    diag += rhT
    diag += 1e-6 * diag.abs().mean(dim=0, keepdim=True).clamp_min(1.0)
    hT.index_copy_(0, at_diag, diag)
    # column j of H from the diagonal down: row j of the triangle
    # (copies: the fallback below reads hT's rows that come out non-finite)
    x = _rows_cholesky_solve(lambda j: hT[first[j] : first[j] + K - j].clone(), gT)
    if not bool(torch.isfinite(x.sum())):  # one reduction in the usual case
        bad = torch.nonzero(~torch.isfinite(x).all(0))[:, 0]
        H = _mirror_upper(hT.index_select(1, bad).T, iu, ju, K)
        fixed = _spd_solve(H, gT.index_select(1, bad).T.contiguous())
        x.index_copy_(1, bad, torch.nan_to_num(fixed, nan=0.0, posinf=0.0, neginf=0.0).T)
    return x


def _spd_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve ``H x = g`` row-batch-wise; rows whose ``H`` is not positive definite fall back."""
    L, info = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(g[:, :, None], L)[:, :, 0]
    # a finite sum means every entry is finite (an inf or nan would make it inf or nan): one
    # reduction instead of an elementwise test of the K^2 entries of every row (issue 10)
    if bool(torch.isfinite(H.sum() + g.sum())):
        finite = torch.ones(len(H), dtype=torch.bool, device=H.device)  # the usual case, at once
    else:
        finite = torch.isfinite(H).flatten(1).all(1) & torch.isfinite(g).all(1)
        x[~finite] = 0.0
    bad = (info != 0) & finite
    if bool(bad.any()):
        # Indefinite curvature (a non-convex loss far from a minimum): a damped step instead.
        Hb = H[bad]
        eig_min = torch.linalg.eigvalsh(Hb)[:, 0]
        shift = (-eig_min).clamp_min(0) + 1e-3 * Hb.diagonal(dim1=1, dim2=2).abs().mean(1) + 1e-6
        Hb = Hb + shift[:, None, None] * torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
        x[bad] = torch.linalg.solve(Hb, g[bad])
    return x



#: Operations whose result depends on no tensor's values (shapes, dtypes and scalars only).
_VALUE_FREE = frozenset({
    "ones_like", "zeros_like", "empty_like", "full_like", "new_ones", "new_zeros", "new_empty",
    "new_full", "new_empty_strided", "scalar_tensor", "_efficientzerotensor", "zeros", "ones",
    "empty", "full", "empty_strided", "arange",
})
#: Random operations: their results change from call to call, so they count as data that flows.
_RANDOM = ("rand", "normal", "bernoulli", "uniform", "multinomial", "poisson", "exponential",
           "cauchy", "geometric", "dropout")
#: Operations whose result's shape depends on the values.
_SHAPE_FROM_VALUES = frozenset({"nonzero", "nonzero_static", "masked_select", "_unique",
                                "_unique2", "unique_dim", "unique_consecutive"})
_FLOW_MODE: Any = None


def _storage(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr()) or id(t)
    except (RuntimeError, NotImplementedError):  # a tensor without storage (a zero tensor)
        return id(t)


def _flow_mode() -> Any:
    """The dispatch mode that follows data flow (:func:`_follows`), built on first use: it
    rests on torch's private ``torch.utils._python_dispatch``, imported only then (``None``
    where it is missing: then nothing is kept)."""
    global _FLOW_MODE
    if _FLOW_MODE is not None:
        return _FLOW_MODE or None
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
    except ImportError:  # pragma: no cover - a torch without it
        _FLOW_MODE = False
        return None

    class Flow(TorchDispatchMode):  # type: ignore[misc]
        """Runs each aten operation as usual (autograd's backward included) and marks the
        storage of every result computed from a marked tensor."""

        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # eager only (see autofact._replay._Recorder)
            return False

        def __init__(self, source: torch.Tensor) -> None:
            super().__init__()
            self.marked: set[int] = set()
            self.kept: list[torch.Tensor] = []  # alive, so no marked storage is reused
            self.read_out = False  # a marked value reached Python (a branch, a shape)
            self.mark(source)

        def mark(self, t: torch.Tensor) -> None:
            self.marked.add(_storage(t))
            self.kept.append(t)

        def reaches(self, t: torch.Tensor) -> bool:
            return _storage(t) in self.marked

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            flows = any(self.reaches(t) for t in tree_leaves((args, kwargs))
                        if isinstance(t, torch.Tensor))
            if any(word in name for word in _RANDOM):
                flows = True
            elif name in _VALUE_FREE or (func is torch.ops.aten.pow.Tensor_Scalar
                                         and not isinstance(args[1], torch.Tensor)
                                         and args[1] == 0):  # x ** 0 is 1 for every x
                flows = False
            if flows:
                results = tree_leaves(out)
                if name in _SHAPE_FROM_VALUES or any(
                        r is not None and not isinstance(r, torch.Tensor) for r in results):
                    self.read_out = True  # item(), a bool, a shape: a branch we cannot see
                for r in results:
                    if isinstance(r, torch.Tensor):
                        self.mark(r)
                # which arguments the operation writes: its schema (OpOverload._schema, torch's
                # private name, read with getattr); without one, every tensor argument counts
                schema = getattr(func, "_schema", None)
                specs = list(schema.arguments) if schema is not None else [None] * len(args)
                for a, spec in zip(args, specs, strict=False):
                    if isinstance(a, torch.Tensor) and (spec is None or (
                            spec.alias_info is not None and spec.alias_info.is_write)):
                        self.mark(a)  # written in place from marked data
            return out

    _FLOW_MODE = Flow
    return Flow


def _follows(run: Callable[[], tuple[torch.Tensor, ...]], source: torch.Tensor
             ) -> tuple[tuple[torch.Tensor, ...], bool]:
    """``run()``'s result and whether its second element (a second derivative) is free of
    ``source``: no data flows from ``source`` to it through any operation ``run`` executes,
    autograd's own derivative operations included, and no value computed from ``source`` was
    read out to Python (a branch) on the way. ``x ** 0`` counts as free of ``x`` (it is 1),
    so the squared loss's ``l'' = 2 w`` is found free of the prediction, Huber's (``0`` or
    ``w`` by a comparison with it) and the logistic loss's are not."""
    mode = _flow_mode()
    if mode is None:  # pragma: no cover - a torch without the dispatch mode
        return run(), False
    flow = mode(source)
    with flow:
        out = run()
    return out, not flow.read_out and not flow.reaches(out[1])


def _first_derivative(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(df/dx, f(x))`` by autograd: :func:`autofact.objective.diagonal_derivatives` without
    the second derivative (the first by the same operations: the same values)."""
    with torch.enable_grad():
        y = x.detach().requires_grad_()
        value = f(y)
        if not value.requires_grad:
            return torch.zeros_like(y), value.detach()
        (g1,) = torch.autograd.grad(value, y, allow_unused=True)
    return (torch.zeros_like(y) if g1 is None else g1.detach()), value.detach()


_UNSEEN = object()


class _Curvatures:
    """Each block's second derivatives, kept from the first epoch where they are fixed (issue
    10): a block's per-entry ``l''`` and its rows' regularizer curvature, by autograd as ever;
    on a block's first call the computation runs under :func:`_follows`, and when no data
    flows from the prediction (the rows) to the second derivative it is a function of the
    targets, weights and constants alone, the same every epoch: later epochs take only the
    first derivative from autograd and reuse it. Kept as the block's values while they fit in
    ``budget`` bytes in all, past that as one number where it is the same for every entry (the
    squared loss without weights: 2; filled in each epoch), else computed every epoch; whether
    its entries are all positive (Woodbury's condition) is found once. Where the second derivative
    depends on the prediction (Huber, logistic, Poisson) it is computed every epoch, as when
    ``enabled`` is false."""

    def __init__(self, enabled: bool, budget: int) -> None:
        self.enabled = enabled
        self.budget = budget
        self.kept: dict[tuple[str, Any], Any] = {}  # float | tensor | None (computed each epoch)
        self._positive: dict[tuple[str, Any], bool] = {}
        self._lock = threading.Lock()

    def holds(self, key: tuple[str, Any], t: torch.Tensor) -> bool:
        """Whether ``t`` is the tensor kept for ``key`` (returned as is every epoch)."""
        return self.enabled and self.kept.get(key) is t

    def positive(self, key: tuple[str, Any], t: torch.Tensor) -> bool:
        """Whether every entry of ``t``, the second derivative of ``key`` (``("loss", id(pat))``
        or ``("reg", id(pat))``), is positive: found once where it is kept."""
        known = self._positive.get(key)
        if known is not None:
            return known
        out = bool((t > 0).all())
        if self.kept.get(key) is not None:
            self._positive[key] = out
        return out

    def entry(self, obj: Objective, pat: Pattern, pred: torch.Tensor, key: Any = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`Objective.entry_derivatives` of ``pat``'s entries at ``pred``; ``key``: the
        block's name in the cache (``None``: ``id(pat)``, for a block the solver keeps; a block
        made anew each epoch, as :class:`_ItemTiles`' are, names itself)."""
        def first() -> tuple[torch.Tensor, torch.Tensor]:
            return _first_derivative(lambda z: obj.entry_loss(z, pat.start, pat.stop).sum(),
                                     pred)
        return self._get(("loss", id(pat) if key is None else key),
                         lambda: obj.entry_derivatives(pred, pat.start, pat.stop), first, pred)

    def reg(self, obj: Objective, key: Any, Xv: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Objective.reg_derivatives` at the block ``key``'s rows ``Xv``."""
        g1, g2, _ = self._get(("reg", key), lambda: (*obj.reg_derivatives(Xv), Xv),
                              lambda: (_first_derivative(obj.reg, Xv)[0], Xv), Xv)
        return g1, g2

    def _get(self, key: tuple[str, Any], full: Callable[[], tuple[torch.Tensor, ...]],
             first: Callable[[], tuple[torch.Tensor, torch.Tensor]], source: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kept = self.kept.get(key, _UNSEEN) if self.enabled else None
        if kept is None:
            g1, g2, value = full()
            return g1, g2, value
        if kept is _UNSEEN:
            (g1, g2, value), fixed = _follows(full, source)
            self._keep(key, g2 if fixed else None)
            return g1, g2, value
        g1, value = first()
        return g1, (torch.full_like(g1, kept) if isinstance(kept, float) else kept), value

    def _keep(self, key: tuple[str, Any], g2: torch.Tensor | None) -> None:
        kept: Any = None
        if g2 is not None and g2.numel() > 0:
            size = g2.numel() * g2.element_size()
            with self._lock:
                fits = size <= self.budget
                if fits:
                    self.budget -= size
            if fits:
                kept = g2  # (read only: no caller writes into a second derivative)
            else:
                first = g2.reshape(-1)[0]
                if bool((g2 == first).all()):
                    kept = float(first)  # exact: a float holds any float32 or float64
        self.kept[key] = kept
