"""Training loops: first-order updates, ``torch.optim.LBFGS``, and an alternating Newton solver.

==========  ===============================================================================
``gd``      the post's fixed-step batch descent: ``X -= lr * dJ/dX`` (torch.optim.SGD's rule)
``adam``    Adam, the update torch.optim.Adam makes: full batch (``batch_size=None``) or
            shuffled mini-batches
``sgd``     plain SGD on shuffled mini-batches (Funk-style stochastic descent)
``lbfgs``   ``torch.optim.LBFGS`` with a strong-Wolfe line search, full batch; one epoch is
            one call of up to 10 iterations
``als``     alternating Newton: one exact Newton step for all user rows, then all item rows
==========  ===============================================================================

The ``als`` update for user ``u`` (items are symmetric), with ``x_u = [p_u, b_u]`` and
``y_i = [q_i, 1]``::

    g_u = sum_i  l'(r_hat_ui, r_ui) y_i + R'(x_u)
    H_u = sum_i  l''(r_hat_ui, r_ui) y_i y_i^T + diag(R''(x_u)) + eps I
    x_u <- x_u - H_u^{-1} g_u

where ``l'`` and ``l''`` are per-entry derivatives of the user's loss, taken by autograd (the loss
is elementwise, so its Hessian is diagonal), and ``R'``/``R''`` those of the regularizer (its
Hessian diagonal, exact for any regularizer that is a sum over entries). For the squared loss and
L2 this is exactly alternating least squares. ``H_u`` for every user at once is a sparse @ dense
product: ``vec(H) = C @ Z`` with ``C`` the CSR of ``l''`` and ``Z[i] = vec(y_i y_i^T)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from .errors import FitError
from .objective import Objective, Params
from .sparse import Pattern, build_patterns, gather_dot

__all__ = ["SOLVERS", "fit_params"]

SOLVERS = ("gd", "adam", "sgd", "lbfgs", "als")
DEFAULT_LR = {"gd": 0.0002, "adam": 0.01, "sgd": 0.01, "lbfgs": 1.0, "als": 1.0}
DEFAULT_EPOCHS = {"gd": 5000, "adam": 200, "sgd": 30, "lbfgs": 20, "als": 15}
# torch's LBFGS keeps its curvature pairs across calls only when each call runs several
# iterations (with max_iter=1 it stalls after the first step), so an lbfgs "epoch" is one call.
LBFGS_ITERS_PER_EPOCH = 10

EpochHook = Callable[[int, float, float], bool | None]


def _snapshot(params: Params) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in params.items()}


def _restore(params: Params, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(snap[k])


def _project(params: Params, nonnegative: bool) -> None:
    if nonnegative:
        with torch.no_grad():
            params["P"].clamp_(min=0)
            params["Q"].clamp_(min=0)


def fit_params(
    obj: Objective,
    params: Params,
    *,
    solver: str,
    epochs: int,
    lr: float,
    batch_size: int | None,
    seed: int | None,
    nonnegative: bool = False,
    on_epoch: EpochHook | None = None,
    start_time: float | None = None,
) -> int:
    """Run ``epochs`` epochs of ``solver`` on ``params`` in place; returns the epochs run.

    ``on_epoch(epoch, objective, seconds)`` is called after each epoch (seconds since
    ``start_time``, by default the call's start, so set-up counts) (objective at the start of
    the epoch for full-batch solvers, summed over batches for mini-batch ones); returning ``True``
    stops training. A non-finite objective restores the last finite parameters and raises
    :class:`FitError`; ``KeyboardInterrupt`` restores those of the last finished epoch and is
    re-raised.
    """
    t0 = time.perf_counter() if start_time is None else start_time
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed) + 1)
    step, checks_first = _make_step(obj, params, solver, lr, batch_size, gen, nonnegative)
    # Full-batch first-order steps check the objective and gradient before they touch the
    # parameters, so no copy is needed; the others keep a copy of the last finite parameters.
    good = None if checks_first else _snapshot(params)
    for epoch in range(1, epochs + 1):
        try:
            try:
                value = step()
            except _NonFinite as exc:
                value = exc.value
            else:
                _project(params, nonnegative)
            finite = math.isfinite(value) and all(
                bool(torch.isfinite(p).all()) for p in params.values()
            )
            if finite and good is not None:
                good = _snapshot(params)
        except KeyboardInterrupt:
            # Ctrl-C (issue 8): leave the parameters of the last finished epoch. A full-batch
            # first-order step computes everything before it updates, so it has no copy.
            if good is not None:
                _restore(params, good)
            raise
        if not finite:
            if good is not None:
                _restore(params, good)
            hint = (
                "als takes no learning rate: try a larger beta, ratings on a smaller scale, or "
                "solver='adam'" if solver == "als"
                else f"Try a smaller learning rate, e.g. lr={lr / 10:g}"
            )
            raise FitError(
                f"the objective became {value} at epoch {epoch} with solver={solver!r}"
                + ("" if solver == "als" else f", lr={lr!r}")
                + f"; the last finite parameters (epoch {epoch - 1}) are kept. {hint}",
                epoch=epoch,
            )
        if on_epoch is not None and on_epoch(epoch, value, time.perf_counter() - t0):
            return epoch
    return epochs


class _NonFinite(Exception):
    """Raised by a step that found a non-finite objective or gradient before updating."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def _make_step(
    obj: Objective,
    params: Params,
    solver: str,
    lr: float,
    batch_size: int | None,
    gen: torch.Generator,
    nonnegative: bool = False,
) -> tuple[Callable[[], float], bool]:
    """The epoch function, and whether it checks finiteness before updating the parameters."""
    plist = list(params.values())
    full = batch_size is None or batch_size >= obj.nnz
    if solver == "als":
        from .losses import squared

        reg_name = getattr(obj.reg, "__qualname__", "")
        quadratic = obj.loss is squared and reg_name.startswith(("l2(", "none("))
        return _AlternatingNewton(obj, params, exact_quadratic=quadratic,
                                  nonnegative=nonnegative), False
    if solver == "lbfgs":
        lbfgs = torch.optim.LBFGS(
            plist, lr=lr, max_iter=LBFGS_ITERS_PER_EPOCH, history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            return torch.tensor(obj.value_and_grad(params))

        def lbfgs_step() -> float:
            return float(lbfgs.step(closure))  # type: ignore[arg-type]

        return lbfgs_step, False
    opt: _Descent
    if solver == "gd":
        opt = _Descent(plist, lr)
        full = True
    elif solver == "adam":
        opt = _Adam(plist, lr)
    elif solver == "sgd":
        opt = _Descent(plist, lr)
        if full:
            batch_size = 1024
            full = obj.nnz <= batch_size
    else:  # guarded in the model; kept for direct callers
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

    if full:
        def full_step() -> float:
            opt.zero_grad()
            value = obj.value_and_grad(params)
            if not math.isfinite(value) or not all(
                bool(torch.isfinite(p.grad).all()) for p in plist if p.grad is not None
            ):
                raise _NonFinite(value if not math.isfinite(value) else math.nan)
            opt.step()
            return value

        return full_step, True

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

    return minibatch_epoch, False


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
        objT = obj.transposed(max_rows=max_rows)
        self.sides = [
            (obj, build_patterns(obj.users, obj.items, obj.shape, obj.max_nnz, max_rows=max_rows)),
            (objT, objT.patterns),
        ]
        self.obj = obj
        self.params = params
        self.checked = False
        self.exact_quadratic = exact_quadratic

    def __call__(self) -> float:
        """One epoch; returns the objective at its start (the loss comes from the first pass)."""
        p = self.params
        (users, ublocks), (items, iblocks) = self.sides
        with torch.no_grad():
            reg = float(self.obj.regularization(p))
            loss = self._side(users, ublocks, p["P"], p.get("bu"), p["Q"], p.get("bi"))
            self._side(items, iblocks, p["Q"], p.get("bi"), p["P"], p.get("bu"))
        return loss + reg

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
        loss = torch.zeros((), dtype=dt, device=dev)
        for pat in blocks:
            rows = slice(pat.row0, pat.row1)
            mb = pat.row1 - pat.row0
            Xv = torch.cat([X[rows], bx[rows, None]], 1) if bias else X[rows]  # type: ignore[index]
            pred = gather_dot(self._augment(Xv, bias), Ya, pat) + obj.mu
            g1, g2, block_loss = obj.entry_derivatives(pred, pat.start, pat.stop)
            loss += block_loss
            if not self.checked:
                if not bool((g2 != 0).any()):
                    raise ValueError(
                        "solver='als' needs a loss with a non-zero second derivative; this loss "
                        "has none (e.g. 'absolute'): use solver='adam' or 'sgd'"
                    )
                self.checked = True
            grad = pat.csr(g1) @ Yf
            # vec(H) = C @ Z with Z[i] = vec(y_i y_i^T) (upper triangle), in column slices that
            # keep Z and C @ Z within the memory budget
            C = pat.csr(g2)
            hess = torch.empty(mb, len(iu), dtype=dt, device=dev)
            max_cols = max(1, obj.max_nnz * 8 // max(Y.shape[0] + mb, 1))
            for c0 in range(0, len(iu), max_cols):
                a, b = iu[c0 : c0 + max_cols], ju[c0 : c0 + max_cols]
                hess[:, c0 : c0 + len(a)] = C @ (Yf[:, a] * Yf[:, b])
            H = torch.empty(mb, K, K, dtype=dt, device=dev)
            H[:, iu, ju] = hess
            H[:, ju, iu] = hess
            del hess
            rg, rh = obj.reg_derivatives(Xv)
            grad += rg
            diag = torch.diagonal(H, dim1=1, dim2=2)
            diag += rh
            diag += 1e-6 * diag.abs().mean(dim=1, keepdim=True).clamp_min(1.0)
            step = torch.nan_to_num(_spd_solve(H, grad), nan=0.0, posinf=0.0, neginf=0.0)
            del H
            if not self.exact_quadratic:
                step = step * self._backtrack(obj, pat, Xv, Ya, bias, step, grad)[:, None]
            X[rows] -= step[:, :k]
            if self.nonnegative:  # project now, so the other side is solved against it
                X[rows] = X[rows].clamp_min(0)
            if bias:
                bx[rows] -= step[:, k]  # type: ignore[index]
        return float(loss)

    def _row_objective(self, obj: Objective, pat: Pattern, Xv: torch.Tensor, Ya: torch.Tensor,
                       bias: bool) -> torch.Tensor:
        """Each of the block's rows' share of the objective: its losses and its regularization."""
        pred = gather_dot(self._augment(Xv, bias), Ya, pat) + obj.mu
        losses = obj.entry_loss(pred, pat.start, pat.stop)
        ones = torch.ones(Ya.shape[0], 1, dtype=Xv.dtype, device=Xv.device)
        out = (pat.csr(losses) @ ones)[:, 0]  # row sums
        k = Xv.shape[1] - (1 if bias else 0)
        out = out + torch.func.vmap(obj.reg)(Xv[:, :k])
        if bias:
            out = out + torch.func.vmap(obj.reg)(Xv[:, k])
        return out

    def _backtrack(self, obj: Objective, pat: Pattern, Xv: torch.Tensor, Ya: torch.Tensor,
                   bias: bool, step: torch.Tensor, grad: torch.Tensor, halvings: int = 10
                   ) -> torch.Tensor:
        """Per-row step sizes ``t`` in {1, 1/2, ...} meeting Armijo's condition (0 if none do)."""
        f0 = self._row_objective(obj, pat, Xv, Ya, bias)
        slope = (grad * step).sum(1)  # the decrease the linear model promises per unit of t
        t = torch.ones(Xv.shape[0], dtype=Xv.dtype, device=Xv.device)
        done = torch.zeros_like(t, dtype=torch.bool)
        for _ in range(halvings):
            f1 = self._row_objective(obj, pat, Xv - t[:, None] * step, Ya, bias)
            ok = torch.isfinite(f1) & (f1 <= f0 - 1e-4 * t * slope.clamp_min(0))
            done |= ok
            if bool(done.all()):
                return t
            t = torch.where(done, t, t / 2)
        return torch.where(done, t, torch.zeros_like(t))


def _spd_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve ``H x = g`` row-batch-wise; rows whose ``H`` is not positive definite fall back."""
    L, info = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(g[:, :, None], L)[:, :, 0]
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

