"""First-order solvers, written out as torch.optim computes them: ``gd``, ``sgd`` and ``adam``.

``gd``    the post's fixed-step batch descent ``X -= lr * dJ/dX`` (torch.optim.SGD's rule), full
          batch
``sgd``   the same update on shuffled mini-batches (Funk-style stochastic descent; 1024 ratings a
          batch unless ``batch_size`` says otherwise)
``adam``  torch.optim.Adam's update, full batch (``batch_size=None``) or shuffled mini-batches

A mini-batch's objective is its ratings' loss plus the regularizer scaled by its share of the
ratings, so the batches of one epoch sum to the full objective ``J``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..objective import Objective, Params
from ._base import Epoch, check_finite

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


class _Adam(_Descent):
    """Adam as torch.optim.Adam computes it with its defaults (betas 0.9 and 0.999, eps 1e-8)::

        m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

    Written out rather than called through ``torch.optim``: its ``step`` imports
    ``torch._dynamo`` on first use (1.6 s and 69 MB resident, per process), which is most of a
    large fit's first epoch and over the memory budget of a 25M-rating fit. The square-root
    denominator is formed a slice at a time, so no parameter-sized temporary exists.
    """

    CHUNK = 1 << 20

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        self.betas, self.eps = betas, eps
        self.state: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

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
                p.addcdiv_(m, (v.sqrt() / c2).add_(self.eps), value=-step_size)
                continue
            pf, mf, vf = p.view(-1), m.view(-1), v.view(-1)
            for s in range(0, pf.numel(), self.CHUNK):
                sl = slice(s, s + self.CHUNK)
                denom = (vf[sl].sqrt() / c2).add_(self.eps)
                pf[sl].addcdiv_(mf[sl], denom, value=-step_size)


def make_first_order(obj: Objective, params: Params, solver: str, lr: float,
                     batch_size: int | None, gen: torch.Generator) -> Epoch:
    """The epoch of ``gd``, ``sgd`` or ``adam`` on ``params``."""
    plist = list(params.values())
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

    if full:
        def full_step() -> float:
            opt.zero_grad()
            value = obj.value_and_grad(params)
            check_finite(value, params)  # before the update: the parameters stay as they were
            opt.step()
            return value

        return Epoch(full_step, at_start=True, **_state_of(opt))

    bs = int(batch_size)  # type: ignore[arg-type]

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


def _state_of(opt: _Descent) -> dict[str, Any]:
    """The checkpoint hooks of :class:`Epoch` for ``opt`` (only Adam keeps a state)."""
    if isinstance(opt, _Adam):
        return {"state": opt.state_tensors, "load_state": opt.load_state_tensors}
    return {}
