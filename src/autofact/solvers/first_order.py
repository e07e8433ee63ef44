"""First-order solvers, written out as torch.optim computes them: ``gd``, ``sgd`` and ``adam``.

``gd``    the post's fixed-step batch descent ``X -= lr * dJ/dX`` (torch.optim.SGD's rule), full
          batch
``sgd``   the same update on shuffled mini-batches (Funk-style stochastic descent; 1024 ratings a
          batch unless ``batch_size`` says otherwise)
``adam``  torch.optim.Adam's update, full batch (``batch_size=None``) or shuffled mini-batches

A mini-batch's objective is its ratings' loss plus each row's regularizer weighted by that row's
share of its ratings in the batch, so the batches of one epoch sum to the full objective ``J``;
a step gathers, regularizes and updates only the rows its ratings touch, so it costs
O(batch x rank), not O((users + items) x rank) (issue 10; Adam then updates its moments for
those rows only, as ``torch.optim.SparseAdam`` does). A regularizer that is not a sum over rows
falls back to the whole regularizer scaled by the batch's share of the ratings, on every row.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from .._memory import release_freed_memory
from ..objective import Objective, Params
from ..threads import limit_threads, threads_for
from ._base import Epoch, all_finite, check_finite

__all__ = ["make_first_order"]


class _Descent:
    """``p <- p - lr * g``: the post's update (``gd``), and plain SGD (torch.optim.SGD's defaults)."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr = params, float(lr)

    def zero_grad(self) -> None:
        # in place: a 25M-rating fit would otherwise free and reallocate ~60 MB every epoch
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)

    @torch.no_grad()
    def step_rows(self, touched: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """The update on the rows ``rows`` of parameter ``k`` only, for each ``(k, rows, leaf)``:
        ``leaf`` holds those rows' values (gathered this step, ``rows`` distinct) and their
        gradient. The new rows are written with ``index_copy_``: ``index_add_`` on a 2-d table
        adds row by row and, as the table outgrows the cache, took 3x as long (issue 10)."""
        for k, rows, leaf in touched:
            if leaf.grad is not None:
                self.params[k].index_copy_(0, rows, leaf.detach().add(leaf.grad, alpha=-self.lr))


class _Adam(_Descent):
    """Adam as torch.optim.Adam computes it with its defaults (betas 0.9 and 0.999, eps 1e-8)::

        m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

    Written out rather than called through ``torch.optim``: its ``step`` imports
    ``torch._dynamo`` on first use (1.6 s and 69 MB resident, per process), which is most of a
    large fit's first epoch and over the memory budget of a 25M-rating fit. The square-root
    denominator is formed a slice at a time in one buffer, so no parameter-sized temporary
    exists.
    """

    #: Entries of a parameter updated at a time (the denominator's buffer: 1 MiB in float32).
    CHUNK = 1 << 18

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        self.betas, self.eps = betas, eps
        self.state: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step_rows(self, touched: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """Adam on the touched rows only (lazy, as ``torch.optim.SparseAdam``): their moments
        and values move; ``t`` counts the steps that touched the parameter."""
        b1, b2 = self.betas
        for k, rows, leaf in touched:
            g, p = leaf.grad, self.params[k]
            if g is None:
                continue
            t, m, v = self.state.get(k) or (0, torch.zeros_like(p), torch.zeros_like(p))
            t += 1
            self.state[k] = (t, m, v)
            mr = m.index_select(0, rows).lerp_(g, 1 - b1)
            vr = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
            m.index_copy_(0, rows, mr)
            v.index_copy_(0, rows, vr)
            step_size, c2 = self.lr / (1 - b1**t), math.sqrt(1 - b2**t)
            p.index_copy_(0, rows, torch.addcdiv(leaf.detach(), mr, (vr.sqrt() / c2).add_(self.eps),
                                                 value=-step_size))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``adam.{k}.t``, ``.m``, ``.v`` of each parameter ``k`` that has taken a step."""
        out: dict[str, torch.Tensor] = {}
        for k, (t, m, v) in self.state.items():
            out[f"adam.{k}.t"] = torch.tensor(t, dtype=torch.int64)
            out[f"adam.{k}.m"], out[f"adam.{k}.v"] = m, v
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {}
        for k, p in enumerate(self.params):
            if f"adam.{k}.t" in state:
                m, v = (state[f"adam.{k}.{x}"].to(p.device, p.dtype).clone() for x in "mv")
                self.state[k] = (int(state[f"adam.{k}.t"]), m, v)

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for k, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            t, m, v = self.state.get(k) or (0, torch.zeros_like(p), torch.zeros_like(p))
            t += 1
            self.state[k] = (t, m, v)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step_size, c2 = self.lr / (1 - b1**t), math.sqrt(1 - b2**t)
            if not (p.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
                p.addcdiv_(m, v.sqrt().div_(c2).add_(self.eps), value=-step_size)
                continue
            pf, mf, vf = p.view(-1), m.view(-1), v.view(-1)
            size = pf.numel()
            # one slice-sized buffer a parameter, written in place (issue 11: a fresh
            # denominator a slice held two at once, the next made before the last was freed)
            buf = torch.empty(min(self.CHUNK, size), dtype=p.dtype, device=p.device)
            for s in range(0, size, self.CHUNK):
                e = min(s + self.CHUNK, size)
                denom = torch.sqrt(vf[s:e], out=buf[: e - s]).div_(c2).add_(self.eps)
                pf[s:e].addcdiv_(mf[s:e], denom, value=-step_size)


def make_first_order(obj: Objective, params: Params, solver: str, lr: float,
                     batch_size: int | None, gen: torch.Generator) -> Epoch:
    """The epoch of ``gd``, ``sgd`` or ``adam`` on ``params``."""
    plist = list(params.values())
    requested = batch_size
    full = batch_size is None or batch_size >= obj.nnz
    opt: _Descent
    if solver == "gd":
        opt, full = _Descent(plist, lr), True
    elif solver == "adam":
        opt = _Adam(plist, lr)
    elif solver == "sgd":
        opt = _Descent(plist, lr)
        if full:
            batch_size = 1024
            full = obj.nnz <= batch_size
    else:
        raise ValueError(f"solver must be 'gd', 'sgd' or 'adam', got {solver!r}")

    if obj.plan.world_size > 1 and solver != "gd" and (requested is not None or solver == "sgd"):
        # (decided on the settings alone, never on this process's count of ratings: every
        # process must take the same steps)
        return _shared_row_epoch(obj, params, opt, 1024 if requested is None else int(requested),
                                 gen)
    if full:
        def full_step() -> float:
            opt.zero_grad()
            value = obj.value_and_grad(params)
            check_finite(value, params)  # before the update: the parameters stay as they were
            hooks = this()
            if hooks is not None and hooks.on_start is not None:
                hooks.on_start(value)  # the guard verifies the start before it moves
            # issue 11: the gradient's freed workspace back to the system before the update
            # (Adam's first step allocates its moments), the update's before the next gradient
            # (a few ms each)
            release_freed_memory()
            opt.step()
            release_freed_memory()
            return value

        epoch = Epoch(full_step, at_start=True, verifies_start=True, **_state_of(opt))
        # issue 11: the step reaches its Epoch (for the guard's hook) through a weak reference:
        # a closure holding the Epoch that holds it is a reference cycle, which kept the
        # objective (its transposes), Adam's moments and the guard's copy alive after the fit
        # until the garbage collector ran (on rank 0, beside the gathered training pattern)
        this = weakref.ref(epoch)
        return epoch

    bs = int(batch_size)  # type: ignore[arg-type]
    if _RowBatches.applies(obj, params):
        rows = _RowBatches(obj, params)
        names = list(params)
        # issue 10: a step's operations are batch-sized, so they get the threads of a batch's
        # work (one at any usual batch), not those the fit chose by its ratings: with two
        # threads on a busy 2-core machine an epoch took 5x as long (each small operation
        # waiting for a descheduled thread); by sizes only, so seeded fits stay reproducible
        batch_work = min(bs, obj.nnz) * (params["P"].shape[1] + 1)

        def row_epoch() -> float:
            with limit_threads(threads_for(batch_work, torch.get_num_threads())):
                order = torch.randperm(obj.nnz, generator=gen).to(obj.device)
                total = rows.idle
                for s in range(0, obj.nnz, bs):
                    loss, touched = rows.loss(params, order[s : s + bs])
                    loss.backward()
                    opt.step_rows([(names.index(name), r, leaf) for name, r, leaf in touched])
                    total += float(loss.detach())
                return total

        return Epoch(row_epoch, at_start=False, **_state_of(opt))

    def minibatch_epoch() -> float:
        order = torch.randperm(obj.nnz, generator=gen).to(obj.device)
        total = 0.0
        for s in range(0, obj.nnz, bs):
            opt.zero_grad()
            loss = obj.batch_loss(params, order[s : s + bs])
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total

    return Epoch(minibatch_epoch, at_start=False, **_state_of(opt))


def _shared_row_epoch(obj: Objective, params: Params, opt: _Descent, bs: int,
                      gen: torch.Generator) -> Epoch:
    """Mini-batches shared by ``w`` processes (issue 11, item 2), users partitioned (every
    rating of a user on one process, its rows on that process only: ``params["P"]`` and ``bu``
    hold every user's rows or only this process's, in order). Each step every process takes its
    share of ``bs`` in proportion to its share of the ratings, ``ceil(bs N_r / N)`` (the epoch's
    steps: the most any process needs, the same on every process; a process whose ratings are
    used up takes an empty batch), so that a step's batches together are about ``bs`` ratings
    drawn evenly from all the data, however unevenly they are shared, and regularized as in one
    process (:class:`_RowBatches`: each row's share of its ratings, counted over every
    process). It updates its users' rows from its batch alone, and the items' rows from the
    gradient summed over the processes (one all-reduce of ``n (k + 2)`` values a step: the
    touched items' rows, a dense table, so that every process holds the same item rows and Adam
    moments). The epoch's value is summed over the processes."""
    if not _RowBatches.separable(obj, params):
        raise ValueError(
            "mini-batches shared by processes need a regularizer that is a sum over entries "
            "and no unobserved_weight; use batch_size=None (full batch) or solver='als'"
        )
    plan = obj.plan
    rows = _RowBatches(obj, params)
    names = list(params)
    total_nnz = int(plan.all_sum_float(float(obj.nnz)))
    local_bs = max(1, -(-bs * obj.nnz // total_nnz))
    sizes = torch.tensor([float(-(-obj.nnz // local_bs))], dtype=torch.float64)
    plan.all_max([sizes])
    steps = int(sizes[0])
    batch_work = min(local_bs, obj.nnz) * (params["P"].shape[1] + 1)
    item_names = [k for k in ("Q", "bi") if k in params]
    k1 = params["Q"].shape[1]
    n = obj.shape[1]

    def sum_items(touched: list[tuple[str, torch.Tensor, torch.Tensor]]
                  ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The items' touched rows and gradients, summed over the processes."""
        dense = torch.zeros(n, k1 + 2, dtype=params["Q"].dtype, device=params["Q"].device)
        mine = [t for t in touched if t[0] not in item_names]
        for name, r, leaf in touched:
            if name in item_names and leaf.grad is not None:
                g = leaf.grad if leaf.grad.dim() == 2 else leaf.grad[:, None]
                at = slice(0, k1) if name == "Q" else slice(k1, k1 + 1)
                dense[r, at] = g
                dense[r, k1 + 1] = 1.0
        plan.all_sum([dense])
        hit = torch.nonzero(dense[:, k1 + 1] > 0).flatten()
        out = []
        for name in item_names:
            leaf = params[name].detach().index_select(0, hit).requires_grad_()
            g = dense.index_select(0, hit)
            leaf.grad = g[:, :k1].contiguous() if name == "Q" else g[:, k1].contiguous()
            out.append((name, hit, leaf))
        return mine + out

    def epoch() -> float:
        order = torch.randperm(obj.nnz, generator=gen).to(obj.device)
        total = rows.idle
        # (a step's threads by a batch's work, as in one process: issue 10)
        with limit_threads(threads_for(batch_work, torch.get_num_threads())):
            for step in range(steps):
                idx = order[step * local_bs : (step + 1) * local_bs]
                touched: list[tuple[str, torch.Tensor, torch.Tensor]] = []
                if len(idx):
                    loss, touched = rows.loss(params, idx)
                    loss.backward()
                    total += float(loss.detach())
                opt.step_rows([(names.index(name), r, leaf)
                               for name, r, leaf in sum_items(touched) if len(r)])
        # this process's rows gone non-finite on its last step: every process must fail alike
        # (the value is summed), never this one alone while the others wait in a collective
        if not all(all_finite(params[k]) for k in ("P", "bu") if k in params):
            total = math.nan
        return plan.all_sum_float(total)

    @torch.no_grad()
    def value() -> float:
        """``J`` at the parameters as they are: this process's ratings' batches' objectives
        (their regularizer shares add up to its users' rows' and its share of the items'),
        summed over the processes (the divergence guard's measure)."""
        total = rows.idle
        for s in range(0, obj.nnz, 1 << 16):
            idx = torch.arange(s, min(s + (1 << 16), obj.nnz), device=obj.device)
            total += float(rows.loss(params, idx)[0])
        return plan.all_sum_float(total)

    return Epoch(epoch, at_start=False, value=value, **_state_of(opt))


def _state_of(opt: _Descent) -> dict[str, Any]:
    """The checkpoint hooks of :class:`Epoch` for ``opt`` (only Adam keeps a state)."""
    if isinstance(opt, _Adam):
        return {"state": opt.state_tensors, "load_state": opt.load_state_tensors}
    return {}


class _RowBatches:
    """Mini-batches at O(batch x rank) a step (issue 10, item 6): each step gathers the rows its
    ratings touch as leaves, regularizes only those rows, and updates only them.

    Row ``u``'s regularizer enters a batch weighted by its share of ``u``'s ratings in that
    batch, ``n_u(batch) / n_u``, so over an epoch (a partition of the ratings) the weights of
    every rated row sum to 1 and the batches sum to the full objective ``J``. A row with no
    rating is never in a batch and never moves; its constant share of ``J`` is added to the
    epoch's value. Only for a regularizer that is a sum over entries: it is evaluated entry by
    entry (``torch.func.vmap``, one call a step) and each entry weighted by its row's share.
    """

    @staticmethod
    def applies(obj: Objective, params: Params) -> bool:
        """One process, and :meth:`separable`."""
        return getattr(obj.plan, "world_size", 1) == 1 and _RowBatches.separable(obj, params)

    @staticmethod
    def separable(obj: Objective, params: Params) -> bool:
        """The usual parameters, no unobserved term (issue 12), and a regularizer that is a sum
        over entries whose value on single entries adds up to its value on a matrix."""
        from ..regularizers import separability

        if not (not obj.unobserved_weight
                and set(params) <= {"P", "Q", "bu", "bi"} and separability(obj.reg)[0]):
            return False  # the unobserved term couples every row: Objective.batch_loss has it
        x = (torch.arange(12, dtype=torch.float64).reshape(3, 4) * 0.37).sin()
        try:
            each = torch.func.vmap(obj.reg)(x.reshape(-1)).sum()
            return bool(torch.isclose(each, obj.reg(x).to(each.dtype), rtol=1e-6, atol=1e-9))
        except Exception:  # the user's code: it only means "not evaluable entry by entry"
            return False

    def __init__(self, obj: Objective, params: Params) -> None:
        self.obj = obj
        self.entry_reg = torch.func.vmap(obj.reg)
        m, n = obj.shape
        dt = params["P"].dtype
        counts_u = torch.bincount(obj.users.long(), minlength=m)
        counts_i = torch.bincount(obj.items.long(), minlength=n)
        plan = obj.plan
        #: Shared (issue 11): the users' row of each user code in ``P`` (``None``: the code).
        self.user_rows: torch.Tensor | None = None
        unrated_u = counts_u == 0
        if plan.world_size > 1:
            # every process's counts (a row's share of its ratings over all of them); users
            # partitioned, so a user's count is its owner's; the rows no process rates are
            # rank 0's (owned_rows), their constant regularizer counted there once
            owned = plan.owned_rows(obj.users, m)
            plan.all_sum([counts_i])
            unrated_u = (counts_u == 0) & owned
            if params["P"].shape[0] != m:  # this process's users' rows only, in order
                own = torch.nonzero(owned).flatten()
                self.user_rows = torch.full((m,), -1, dtype=torch.long, device=own.device)
                self.user_rows[own] = torch.arange(len(own), device=own.device)
                unrated_u = unrated_u[own]
        self.inv_u = 1.0 / counts_u.clamp_min(1).to(dt)
        self.inv_i = 1.0 / counts_i.clamp_min(1).to(dt)
        idle = 0.0
        with torch.no_grad():
            for name, p in params.items():
                unrated = unrated_u if name in ("P", "bu") else counts_i == 0
                if name not in ("P", "bu") and not plan.is_main:
                    continue  # (the items' constant once, on rank 0)
                if bool(unrated.any()):
                    idle += float(self.entry_reg(p[unrated].reshape(-1)).sum())
        self.idle = idle

    def loss(self, params: Params, idx: torch.Tensor
             ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor, torch.Tensor]]]:
        """The batch's objective and, per parameter, (name, the rows touched, their leaf)."""
        obj = self.obj
        # gathers from the (users + items)-sized tables by index_select: advanced indexing
        # (``p[ru]``) took 5-8x as long on a table of 51,200 rows as on one of 3,200, and with
        # two threads on a busy machine up to 10 ms a call (issue 10)
        u, i = obj.users.index_select(0, idx).long(), obj.items.index_select(0, idx).long()
        ru, iu = torch.unique(u, return_inverse=True)
        ri, ii = torch.unique(i, return_inverse=True)
        # (shared, issue 11: the users' rows in this process's table of its own users)
        pu = ru if self.user_rows is None else self.user_rows.index_select(0, ru)
        leaves = {name: p.detach().index_select(0, pu if name in ("P", "bu") else ri)
                  .requires_grad_() for name, p in params.items()}
        pred = (leaves["P"][iu] * leaves["Q"][ii]).sum(1) + obj.mu
        if "bu" in leaves:
            pred = pred + leaves["bu"][iu] + leaves["bi"][ii]
        out = obj.loss(pred, obj.values.index_select(0, idx))
        if obj.weights is not None:
            out = out * obj.weights.index_select(0, idx)
        # each touched row's share of its ratings in this batch, on each of its entries
        dt = pred.dtype
        share_u = torch.bincount(iu, minlength=len(ru)).to(dt) * self.inv_u.index_select(0, ru)
        share_i = torch.bincount(ii, minlength=len(ri)).to(dt) * self.inv_i.index_select(0, ri)
        entries, weights = [], []
        for name, leaf in leaves.items():
            share = share_u if name in ("P", "bu") else share_i
            entries.append(leaf.reshape(-1))
            weights.append(share[:, None].expand_as(leaf).reshape(-1) if leaf.dim() == 2
                           else share)
        reg = (self.entry_reg(torch.cat(entries)) * torch.cat(weights)).sum()
        touched = [(name, pu if name in ("P", "bu") else ri, leaf)
                   for name, leaf in leaves.items()]
        return out.sum() + reg, touched
