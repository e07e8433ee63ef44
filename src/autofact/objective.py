"""The training objective, evaluated over the observed entries only, in bounded memory.

.. math::

    J(P, Q, b) = \\sum_{(u,i) \\in \\Omega} w_{ui}\\, \\ell(\\hat r_{ui}, r_{ui})
                 + R(P) + R(Q) + [R(b^u) + R(b^i)],
    \\qquad \\hat r_{ui} = \\mu + b^u_u + b^i_i + p_u \\cdot q_i

with ``ell`` the loss (elementwise, any torch code), ``R`` the regularizer and the bias terms only
when ``bias=True`` (``mu`` is then the constant that minimizes the weighted loss, held fixed:
the mean rating for the squared loss, the logit of the mean for the logistic, the log of the mean
for Poisson). With ``unobserved_weight = w0 > 0`` (issue 12) the objective also carries
implicit feedback's all-unobserved term (Hu, Koren and Volinsky 2008): every unrated pair is a
rating of 0 held with the small weight ``w0``,

.. math::

    + \\; w_0 \\sum_{(u,i) \\notin \\Omega} \\hat r_{ui}^2
    = w_0 \\Big(\\sum_{u,i} \\hat r_{ui}^2 - \\sum_{(u,i) \\in \\Omega} \\hat r_{ui}^2\\Big)

where the sum over all ``m x n`` pairs is never formed: with ``a_u = mu + b^u_u``,
``sum (a_u + b^i_i + p_u . q_i)^2 = <P^T P, Q^T Q> + 2 (a^T P) . (1^T Q) + 2 (1^T P) . (b^T Q)
+ n |a|^2 + 2 (1^T a)(1^T b) + m |b|^2`` (the Gram trick, ``O((m + n) k^2)``), so that the items a
user rated score above those they did not. Every derivative of ``ell``, ``R`` and the unobserved
term comes from autograd. The bilinear part ``p_u . q_i`` goes through
:func:`autofact.sparse.gather_dot` (SDDMM forward, SpMM backward), one row block at a time (on
the CPU cache-sized blocks, shared out to coarse workers: :meth:`Objective._runs`), so the extra
memory of a full gradient is bounded by ``max_memory`` whatever the number of ratings.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ._memory import randn_sliced, release_freed_memory
from ._newton import damped_newton
from .data import Ratings
from .losses import Loss, get_loss
from .ranking import all_unobserved
from .regularizers import Regularizer, get_regularizer
from .sharding import ShardPlan
from .sparse import build_patterns, csr_tensor, gather_dot, prepare_transposes
from .threads import max_threads, use_threads, workers_for

__all__ = ["Objective", "check_loss", "check_regularizer", "check_unobserved_weight",
           "default_max_memory", "diagonal_derivatives", "loss_probe", "resolve_device",
           "resolve_dtype"]

Params = dict[str, torch.Tensor]

# Bytes of temporaries per entry in one block: the prediction, the loss graph's intermediates
# (a handful of nnz-sized tensors for the built-in losses), their gradients, and index copies.
_BYTES_PER_ENTRY = 96
#: Entries in one block on the CPU at most (issue 10): the block's per-entry temporaries (the
#: prediction, the loss's intermediates and their gradients) then stay in the cache between one
#: operation and the next, and the blocks are what coarse workers share out
#: (:meth:`Objective._runs`). 2**17 rather than 2**18: two workers' blocks (``_BYTES_PER_ENTRY``
#: an entry, 12.6 MB each) and their column buffers (n x k floats, up to 4 MB) then fit in the
#: smallest default ``max_memory`` (32 MiB, up to 8M ratings), where a 2**18 block (25 MB) left
#: room for one worker only. Measured on 1M ratings, rank 32, 2 cores (best of 20): the gradient
#: 9-11.5 ms with two workers against 14-15.5 ms with one; beside one busy process about the
#: same (15.2-16.9 ms against 15.0-15.7 ms); and the same time as 2**18 blocks where memory
#: allowed two workers with either (256 MiB: 11.4 ms).
_CPU_BLOCK_NNZ = 2**17
#: Runs of blocks that several workers share out at most (:meth:`Objective._runs`): enough that
#: a descheduled worker's share is taken over by the others, few enough that the runs' column
#: gradient buffers stay small.
_RUNS = 8
#: Entries of a parameter regularized at a time on the CPU at most (:meth:`Objective._reg_slices`):
#: a slice's autograd temporaries (about four slice-sized tensors) then take ~4 MiB in float32;
#: slices of ``max_memory``'s share (699,050 entries at 64 MiB) took 11 MiB, on the process that
#: adds the regularizer only (issue 11: rank 0's peak above the others'), and were no faster
#: (the 25M-rating tables at rank 32, one thread: 11 ms in slices of 2**18 against 14 ms).
_CPU_REG_SLICE = 2**18
_POOL_LOCK = threading.Lock()  # creates an objective's worker threads once (:meth:`Objective._pool`)


#: The workspace of an objective built with ``max_memory=None``: 4 bytes a rating it holds
#: (a third of a float32 rating's 12), at least 32 MiB and at most 256 MiB (issue 11: each
#: process's workspace follows its share, so the per-process memory falls with it).
_MEMORY_PER_RATING = 4
_MEMORY_FLOOR = 32 * 2**20
_MEMORY_CAP = 256 * 2**20


def default_max_memory(nnz: int) -> int:
    """``max_memory`` for an objective over ``nnz`` ratings when none is given: 4 bytes a
    rating, within [32 MiB, 256 MiB] (issue 11: proportional to this process's share)."""
    return int(min(_MEMORY_CAP, max(_MEMORY_FLOOR, _MEMORY_PER_RATING * int(nnz))))


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` is CUDA when available, else CPU; anything else must name an available device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def resolve_dtype(dtype: Any) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64,
             torch.float32: torch.float32, torch.float64: torch.float64,
             np.float32: torch.float32, np.float64: torch.float64}
    try:
        return table[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``arr``'s memory when it can (a read-only array is copied)."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


# An 8-entry probe for a loss: targets in {0, 1} (valid for every built-in), predictions off
# them by assorted amounts, none of them zero (where |r| has its kink).
_PROBE_TARGET = (1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)
_PROBE_OFFSET = (0.3, -0.7, 1.3, -0.2, 0.05, -1.5, 2.5, -0.01)


def _loss_name(loss: Loss) -> str:
    return getattr(loss, "__qualname__", None) or repr(loss)


#: :func:`loss_probe`'s answers for the built-in losses (:mod:`autofact.losses`: pure functions
#: of their arguments), by loss and dtype: the probe's autograd Jacobian took 1.2 ms of every
#: fit (issue 10: a third of a 100k-rating default fit's time to its first sweeps). A user's
#: loss is probed every time (its code may change between fits).
_BUILTIN_PROBES: weakref.WeakKeyDictionary[Any, dict[torch.dtype, tuple[bool, bool]]] = (
    weakref.WeakKeyDictionary())


def _builtin(loss: Loss) -> bool:
    return getattr(loss, "__module__", None) == "autofact.losses"


def check_loss(loss: Loss, dtype: torch.dtype) -> None:
    """Call the loss on tiny inputs; a clear error if it is not elementwise torch code.

    Elementwise means entry ``j``'s value depends on ``pred[j]`` and ``target[j]`` only: checked
    on an 8-entry probe, where the Jacobian of the output in ``pred`` (by autograd, float64)
    must be diagonal. The library sums a loss over blocks and mini-batches of ratings, so a loss
    that mixes entries (a mean, a sort, a softmax over ``pred``) would give a fit that depends
    on ``max_memory`` and ``batch_size``.
    """
    if _builtin(loss) and _BUILTIN_PROBES.get(loss, {}).get(dtype, (False,))[0]:
        return  # a built-in loss already probed, and found elementwise, in this dtype
    pred = torch.tensor([0.5, -0.25, 1.0], dtype=dtype, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0], dtype=dtype)
    name = _loss_name(loss)
    try:
        out = loss(pred, target)
    except Exception as exc:  # the user's code: report, don't bury
        raise ValueError(f"loss {name} failed on a test input: {exc!r}") from exc
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"loss {name} must return a torch.Tensor with one value per entry, "
            f"got {type(out).__name__}; write it with torch operations"
        )
    if out.shape != pred.shape:
        raise ValueError(
            f"loss {name} must be elementwise (one value per entry, shape {tuple(pred.shape)}), "
            f"got shape {tuple(out.shape)}; do not reduce: the library sums and weights"
        )
    if not out.requires_grad:
        raise ValueError(
            f"loss {name} is not differentiable in pred (no autograd graph): write it with torch "
            "operations on pred, not numpy or .item()"
        )
    if not loss_probe(loss, dtype)[0]:
        raise ValueError(
            f"loss {name} is not elementwise: an entry's value depends on other entries' "
            "predictions (its Jacobian on an 8-entry probe is not diagonal). autofact sums a loss "
            "over blocks and mini-batches of ratings, so the fit would depend on max_memory and "
            "batch_size; write it per entry, with no mean, sum or sort over pred"
        )


def loss_probe(loss: Loss, dtype: torch.dtype = torch.float64) -> tuple[bool, bool]:
    """``(elementwise, curved)`` for ``loss`` on the 8-entry probe, by autograd.

    ``elementwise``: the Jacobian of ``loss(pred, target)`` in ``pred`` is diagonal (an
    off-diagonal NaN, which an elementwise loss can produce as ``0 * inf``, counts as zero).
    ``curved``: some entry has a non-zero second derivative (``absolute`` has none, so Newton
    steps are undefined for it). Run in float64, or ``dtype`` if the loss fails in float64.
    A built-in loss's answer is kept (:data:`_BUILTIN_PROBES`).
    """
    kept = _BUILTIN_PROBES.get(loss) if _builtin(loss) else None
    if kept is not None and dtype in kept:
        return kept[dtype]
    answer = _probe(loss, dtype)
    if _builtin(loss):
        _BUILTIN_PROBES.setdefault(loss, {})[dtype] = answer
    return answer


def _probe(loss: Loss, dtype: torch.dtype) -> tuple[bool, bool]:
    for dt in dict.fromkeys((torch.float64, dtype)):
        target = torch.tensor(_PROBE_TARGET, dtype=dt)
        pred = target + torch.tensor(_PROBE_OFFSET, dtype=dt)
        def entries(p: torch.Tensor, t: torch.Tensor = target) -> torch.Tensor:
            return loss(p, t)

        try:
            jac = torch.autograd.functional.jacobian(entries, pred)
            _, d2, _ = diagonal_derivatives(lambda p: entries(p).sum(), pred.clone())
        except Exception:  # the user's code, in float64: try the fit's own dtype
            if dt == dtype:
                raise
            continue
        diag = torch.diagonal(jac)
        off = torch.nan_to_num(jac - torch.diag(diag), nan=0.0)
        scale = 1.0 + float(torch.nan_to_num(diag, nan=0.0, posinf=0.0, neginf=0.0).abs().max())
        elementwise = not bool((off.abs() > 1e-10 * scale).any())
        curved = bool((torch.nan_to_num(d2) != 0).any())
        return elementwise, curved
    raise AssertionError("unreachable")  # pragma: no cover


def check_loss_on_block(loss: Loss, target: torch.Tensor, center: float) -> None:
    """Run the loss on one real block of ratings (``target``, with predictions scattered around
    ``center`` by the targets' spread): it must give one value per entry, and a gradient that
    is non-zero on more than 1% of them (a piecewise-constant or detached loss cannot train)."""
    n = len(target)
    if n == 0:
        return
    name = _loss_name(loss)
    spread = float(target.double().std()) if n > 1 else 1.0
    if not (math.isfinite(spread) and spread > 0):
        spread = 1.0
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    pred = (center + spread * noise).to(target.device, target.dtype).requires_grad_()
    with torch.enable_grad():
        try:
            out = loss(pred, target)
        except Exception as exc:
            raise ValueError(f"loss {name} failed on the first block of {n} ratings: "
                             f"{exc!r}") from exc
        if not isinstance(out, torch.Tensor) or out.shape != pred.shape:
            raise ValueError(
                f"loss {name} must be elementwise (one value per entry): on the first block of "
                f"{n} ratings it returned shape {tuple(getattr(out, 'shape', ()))}, not ({n},)"
            )
        grad = None
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out.sum(), pred, allow_unused=True)
    if grad is not None:
        # issue 8: a NaN gradient was counted as zero and blamed on round/detach
        bad = float((~torch.isfinite(grad)).double().mean())
        if bad > 0.99:
            raise ValueError(
                f"loss {name} has a non-finite gradient (nan or inf) on {bad:.0%} of the first "
                f"block's {n} entries, at predictions around {center:.4g}: check it for a nan "
                "constant, or a log, sqrt or division that is undefined there"
            )
    zero = 1.0 if grad is None else float((torch.nan_to_num(grad) == 0).double().mean())
    if zero > 0.99:
        raise ValueError(
            f"loss {name} has zero gradient on {zero:.0%} of the first block's {n} entries: is it "
            "piecewise constant (round, floor, sign) or detached? autograd cannot train it"
        )


def check_unobserved_weight(value: Any) -> float:
    """``unobserved_weight`` as a float: a finite number ``>= 0`` (``0``: no unobserved term)."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_)
    if not (ok and math.isfinite(value) and value >= 0):
        raise ValueError(
            f"unobserved_weight must be a finite number >= 0 (0: rating loss only; e.g. 0.05 to "
            f"also learn from which items were not rated), got {value!r}"
        )
    return float(value)


def check_regularizer(reg: Regularizer, dtype: torch.dtype) -> None:
    x = torch.full((3, 2), 0.5, dtype=dtype, requires_grad=True)
    name = getattr(reg, "__qualname__", repr(reg))
    try:
        out = reg(x)
    except Exception as exc:
        raise ValueError(f"regularization {name} failed on a test input: {exc!r}") from exc
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError(
            f"regularization {name} must return a scalar tensor, got "
            f"{type(out).__name__}{tuple(getattr(out, 'shape', ()))}"
        )


class Objective:
    """The objective ``J`` above for one :class:`Ratings`, on one device and dtype.

    ``max_memory`` bounds the workspace of one evaluation (bytes); ``None`` (the default) scales
    it with the ratings this process holds (:func:`default_max_memory`: 4 bytes a rating,
    within 32-256 MiB; issue 11).

    ``plan`` (:mod:`autofact.sharding`) says which of the ratings this process holds and how
    the sums over processes are taken; ``None`` is one process (every rating, sums the
    identity). With several processes every value and gradient is the sum over all of them.

    ``unobserved_weight`` (``w0 >= 0``, issue 12) adds ``w0 * sum over the unobserved (u, i) of
    r_hat_ui^2`` (module docstring): every unrated pair counts as a rating of 0 with weight
    ``w0``, on the whole prediction ``mu + b_u + b_i + p_u . q_i``. On the interaction part
    ``p_u . q_i`` alone (an unrated pair pulled to its baseline ``mu + b_u + b_i``) the term does
    not separate rated from unrated items, whose ``p_u . q_i`` average 0 alike: measured on the
    validation splits of MovieLens 100K u1 and ml-latest-small, it raised NDCG@10 by at most
    0.001 and lowered it at larger weights (benchmarks/ranking.py ``--combined``). The sum over
    all pairs is added once, by the process that adds the regularizer (:meth:`unobserved_total`,
    in float64), and each observed entry carries the correction ``-w0 r_hat_ui^2``, unweighted
    (``w0`` is the weight of every unobserved entry, whatever the observed entries' weights).

    On the CPU a large objective's blocks are shared out to worker threads (issue 10,
    :meth:`_runs`; as many as :func:`autofact.threads.workers_for` allows): the loss is then
    called from several threads at once, each time on a block of its own, and the value and
    gradient are the same whichever thread took which block.

    >>> obj = Objective(ratings, loss="squared", regularization="l2", beta=0.02)
    >>> params = obj.init_params(rank=8, seed=0)
    >>> value = obj.value_and_grad(params)   # fills params[...].grad
    """

    def __init__(
        self,
        ratings: Ratings,
        *,
        loss: str | Loss = "squared",
        regularization: str | Regularizer | None = "l2",
        beta: float = 0.02,
        bias: bool = False,
        device: str | torch.device = "cpu",
        dtype: Any = torch.float32,
        max_memory: int | None = None,
        global_mean: float | None = None,
        plan: ShardPlan | None = None,
        unobserved_weight: float = 0.0,
        implicit: bool = False,
    ) -> None:
        if not isinstance(ratings, Ratings):
            raise TypeError(
                f"ratings must be an autofact.Ratings, got {type(ratings).__name__}; "
                "build one with Ratings.from_frame / from_sparse / from_dense / autofact.read"
            )
        if not (max_memory is None or (isinstance(max_memory, int | float)
                                       and not isinstance(max_memory, bool)
                                       and max_memory >= 2**16)):
            raise ValueError(f"max_memory must be at least 65536 bytes, got {max_memory!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.loss = get_loss(loss)
        self.reg = get_regularizer(regularization, beta)
        check_loss(self.loss, self.dtype)
        check_regularizer(self.reg, self.dtype)
        self.bias = bool(bias)
        self.unobserved_weight = check_unobserved_weight(unobserved_weight)
        self.implicit = bool(implicit)
        self.shape = ratings.shape
        # which ratings this process holds and how sums over processes are taken
        # (autofact.sharding; one process: all of them, and the identity)
        self.plan = ShardPlan() if plan is None else plan
        ratings = self.plan.share(ratings)
        self.nnz = len(ratings)
        dev, dt = self.device, self.dtype
        self.users = _tensor(ratings.users).to(dev)
        self.items = _tensor(ratings.items).to(dev)
        self.values = _tensor(ratings.values).to(dev, dt)
        self.weights = None if ratings.weights is None else _tensor(ratings.weights).to(dev, dt)
        self.max_memory = default_max_memory(self.nnz) if max_memory is None else int(max_memory)
        self.max_nnz = max(1024, self.max_memory // _BYTES_PER_ENTRY)
        if global_mean is not None:
            self.mu = float(global_mean)
        elif self.bias:
            self.mu = self.best_constant()
        else:
            self.mu = 0.0
        # the backward's transposes keep 4 bytes an entry, or 8 (faster) while that stays within
        # half of max_memory
        self.keep_rows = 8 * self.nnz <= self.max_memory // 2
        self.patterns = build_patterns(self.users, self.items, self.shape, self._block_nnz(),
                                       keep_rows=self.keep_rows)
        self.design: torch.Tensor | None = None
        if self.implicit:
            if self.plan.world_size > 1:
                raise ValueError(
                    f"implicit=True needs every rating of a user in one process; this plan "
                    f"shares the ratings between {self.plan.world_size} processes: fit in one "
                    "process, or implicit=False"
                )
            self.design = self._implicit_design()
        if self.patterns:
            first = self.patterns[0]
            check_loss_on_block(self.loss, self.values[first.start : first.stop], self.mu)
        # the best constant's and the checks' temporaries, freed but kept by the heap: ~60 MB
        # at any number of ratings (issue 11, memory per process)
        release_freed_memory()

    def best_constant(self, iters: int = 100) -> float:
        """The constant prediction that minimizes the weighted loss: the mean rating for the
        squared loss, the logit of the mean for the logistic, the log of the mean for Poisson.

        Found by damped Newton steps on the scalar with autograd's derivatives (the loss stays
        the user's own), over the ratings in slices so its memory stays small.
        """
        w = self.weights
        y = self.values
        step = max(1024, self.max_nnz)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # sum wy, sum w, sum y
        for s in range(0, len(y), step):  # the (weighted) mean, in slices
            yy = y[s : s + step].double()
            ww = w[s : s + step].double() if w is not None else torch.ones_like(yy)
            sums += torch.stack([(yy * ww).sum(), ww.sum(), yy.sum()])
        self.plan.all_sum([sums])
        num, den, plain = (float(v) for v in sums)
        mean = num / den if den > 0 else plain / self.plan.all_sum_float(float(len(y)))

        def part(x: torch.Tensor, s: int) -> torch.Tensor:
            yy = y[s : s + step]
            out = self.loss(x.to(self.dtype).expand_as(yy), yy).double()
            return (out * w[s : s + step].double()).sum() if w is not None else out.sum()

        def f(c: float) -> float:
            x = torch.tensor(c, dtype=torch.float64, device=self.device)
            with torch.no_grad():
                local = sum(float(part(x, s)) for s in range(0, len(y), step))
                return self.plan.all_sum_float(local)

        def derivatives(c: float) -> tuple[float, float]:
            g = h = 0.0
            for s in range(0, len(y), step):
                x = torch.tensor(c, dtype=torch.float64, device=self.device)
                d1, d2, _ = diagonal_derivatives(functools.partial(part, s=s), x)
                g, h = g + float(d1), h + float(d2)
            gh = torch.tensor([g, h], dtype=torch.float64, device=self.device)
            self.plan.all_sum([gh])
            return float(gh[0]), float(gh[1])

        # start from the better of the mean and zero (for a log link the mean is far off)
        starts = [(x, f(x)) for x in (mean, 0.0)]
        c, start_value = min(starts, key=lambda t: t[1] if math.isfinite(t[1]) else math.inf)
        if not math.isfinite(start_value):
            return mean
        x = torch.tensor([c], dtype=torch.float64)
        damped_newton(lambda z: f(float(z[0])), lambda z: _as_newton(derivatives(float(z[0]))),
                      x, iters, damping=1e-9, rtol=1e-12)
        c = float(x[0])
        return c if math.isfinite(c) else mean

    # ------------------------------------------------------------------ parameters
    def init_params(
        self, rank: int, seed: int | None = 0, init_std: float = 0.1
    ) -> Params:
        """Leaf tensors ``P (m x k)``, ``Q (n x k)`` and, with bias, ``bu (m)``, ``bi (n)``;
        with ``implicit=True`` also ``Y (n x k)``, the items' implicit factors."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        m, n = self.shape
        # the float64 draws, scaled, a slice at a time into the tables (issue 11: the same
        # numbers without a float64 table of every entry)
        def draw(rows: int) -> torch.Tensor:
            return randn_sliced((rows, rank), g, init_std, self.dtype, self.device)

        out = {"P": draw(m), "Q": draw(n)}
        if self.bias:
            out["bu"] = torch.zeros(m, dtype=self.dtype, device=self.device)
            out["bi"] = torch.zeros(n, dtype=self.dtype, device=self.device)
        if self.implicit:
            out["Y"] = draw(n)
        self.plan.broadcast(list(out.values()))  # rank 0's start everywhere, seeded or not
        return {k: v.requires_grad_() for k, v in out.items()}

    def regularization(self, params: Params, scale: float = 1.0) -> torch.Tensor:
        total = sum(self.reg(p) for p in params.values())
        return total * scale if scale != 1.0 else total  # type: ignore[return-value]

    @torch.no_grad()
    def regularization_value(self, p: torch.Tensor) -> torch.Tensor:
        """The regularizer's value on the table ``p``, without its gradient, a row slice at a
        time when it is separable (:meth:`_reg_slices`): its temporaries stay within a slice
        rather than a table's size (issue 11, item 3: sharded ALS's rank 0 took the items'
        regularization whole at every epoch, its peak above the other processes')."""
        slices = self._reg_slices(p)
        if len(slices) == 1:
            return self.reg(p).reshape(())
        total = torch.zeros((), dtype=p.dtype, device=p.device)
        for rows in slices:
            total += self.reg(p[rows]).reshape(())
        return total

    def _reg_slices(self, p: torch.Tensor) -> list[slice]:
        """Row slices of ``p`` for the regularizer: several when it is separable (a sum over
        entries, as the built-ins declare with ``reg.separable = True``) and ``p`` is large, so
        that its autograd temporaries stay within ``max_memory`` rather than ~3x ``p``; on the
        CPU at most :data:`_CPU_REG_SLICE` entries a slice (issue 11)."""
        per_row = max(1, p[0].numel()) if p.dim() else 1
        cap = self.max_nnz if self.device.type != "cpu" else min(self.max_nnz, _CPU_REG_SLICE)
        rows = max(1, cap // per_row)
        if not getattr(self.reg, "separable", False) or p.dim() == 0 or p.shape[0] <= rows:
            return [slice(None)]
        return [slice(s, s + rows) for s in range(0, p.shape[0], rows)]

    def _regularize_into(self, params: Params, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """The regularizer's value; its gradient is added to ``grads`` (by autograd, a slice at a
        time for a separable regularizer)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for name, p in params.items():
            for rows in self._reg_slices(p):
                leaf = p[rows].detach().requires_grad_()
                with torch.enable_grad():
                    r = self.reg(leaf)
                if r.requires_grad:
                    (g,) = torch.autograd.grad(r, leaf, allow_unused=True)
                    if g is not None:
                        grads[name][rows] += g
                total += r.detach().reshape(())
        return total

    # ------------------------------------------------------------------ per-entry pieces
    def entry_loss(self, pred: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        out = self.loss(pred, self.values[start:stop])
        if self.weights is not None:
            out = out * self.weights[start:stop]
        return out

    def value_and_grad(self, params: Params) -> float:
        """``J(params)``; its gradient is accumulated into each ``params[name].grad``."""
        with use_threads(self._work(params), unless_decided=True):  # issue 10
            return float(self._accumulate(params, backward=True))

    def value(self, params: Params) -> float:
        """``J(params)`` without gradients."""
        with torch.no_grad(), use_threads(self._work(params), unless_decided=True):
            return float(self._accumulate(params, backward=False))

    def _block_nnz(self) -> int:
        """Entries in one block of :attr:`patterns` at most: ``max_memory``'s share, and on the
        CPU :data:`_CPU_BLOCK_NNZ` (cache-sized blocks; issue 10)."""
        return self.max_nnz if self.device.type != "cpu" else min(self.max_nnz, _CPU_BLOCK_NNZ)

    def _work(self, params: Params) -> int:
        """Multiply-adds of one block's operations, for the thread policy when called outside a
        fit (inside one the fit has decided: :func:`autofact.threads.use_threads`)."""
        k = params["P"].shape[-1] if "P" in params else 1
        return min(self.nnz, self._block_nnz()) * (k + 1)

    def _block_pred(self, params: Params, pat: Any,
                    into: tuple[torch.Tensor | None, ...] | None = None) -> torch.Tensor:
        """Predictions of one block (``into``: see :func:`gather_dot`)."""
        rows = slice(pat.row0, pat.row1)
        bu, bi = params.get("bu"), params.get("bi")
        pred = gather_dot(params["P"][rows], params["Q"], pat, None if bu is None else bu[rows], bi,
                          into=into)
        return pred + self.mu if self.mu else pred

    def _block_terms(self, params: Params, pat: Any,
                     into: tuple[torch.Tensor | None, ...] | None = None) -> torch.Tensor:
        """One block's per-entry share of ``J``: the weighted loss, and with the unobserved term
        the correction ``-w0 r_hat^2`` (``into``: see :func:`gather_dot`)."""
        pred = self._block_pred(params, pat, into=into)
        out = self.entry_loss(pred, pat.start, pat.stop)
        return out - self.unobserved_weight * pred * pred if self.unobserved_weight else out

    def unobserved_total(self, params: Params) -> torch.Tensor:
        """``w0`` times the sum of ``r_hat_ui^2`` over ALL ``m x n`` pairs, by the Gram trick
        (module docstring), in float64; differentiable in every parameter."""
        f64 = torch.float64
        P, Q = params["P"].to(f64), params["Q"].to(f64)
        m, n = P.shape[0], Q.shape[0]
        a = params["bu"].to(f64) + self.mu if "bu" in params else P.new_full((m,), self.mu)
        b = params["bi"].to(f64) if "bi" in params else P.new_zeros(n)
        total = (all_unobserved(P, Q) + 2 * ((a @ P) @ Q.sum(0) + P.sum(0) @ (b @ Q))
                 + n * (a * a).sum() + 2 * a.sum() * b.sum() + m * (b * b).sum())
        return self.unobserved_weight * total

    def _unobserved_into(self, params: Params, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`unobserved_total`; its gradient (by autograd) is added to ``grads``."""
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            value = self.unobserved_total(leaves)
            names = [k for k in ("P", "Q", "bu", "bi") if k in leaves]
            for k, g in zip(names, torch.autograd.grad(value, [leaves[k] for k in names]),
                            strict=True):
                grads[k] += g.to(grads[k].dtype)
        return value.detach().to(self.dtype)

    # ------------------------------------------------------------------ the implicit term
    def _implicit_design(self) -> torch.Tensor:
        """``X`` (m x n, torch CSR): the user-item indicator with row ``u`` scaled by
        ``|N(u)|^-1/2``, so that ``X @ Y`` is each user's implicit part."""

        m, n = self.shape
        users = self.users.long()
        counts = torch.bincount(users, minlength=m)
        crow = torch.zeros(m + 1, dtype=torch.int64, device=self.device)
        crow[1:] = torch.cumsum(counts, 0)
        values = counts.clamp(min=1).to(self.dtype).rsqrt()[users]
        return csr_tensor(crow, self.items.long(), values, (m, n))

    def effective(self, params: Params) -> Params:
        """The parameters as the predictions use them: with ``implicit=True`` the user factors
        are ``P + X Y`` (SVD++: ``p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j``) and ``Y`` is dropped;
        otherwise ``params`` itself. Detached."""
        if self.design is None or "Y" not in params:
            return params
        with torch.no_grad():
            P = params["P"].detach() + self.design @ params["Y"].detach()
        return {"P": P, **{k: v.detach() for k, v in params.items() if k not in ("P", "Y")}}

    def _accumulate_implicit(self, params: Params, backward: bool) -> torch.Tensor:
        """``J`` (and with ``backward`` its gradient) with the implicit term: the loss (and the
        unobserved term) see the effective user factors ``P + X Y`` (:meth:`effective`), the
        regularizer ``P`` and ``Y`` themselves; the gradient reaches ``P`` and ``Y`` from the
        effective factors' by autograd through ``P + X Y``."""
        P, Y = params["P"], params["Y"]
        eff = {k: (v if k == "P" else params[k]) for k, v in self.effective(params).items()}
        eff["P"].requires_grad_(backward)
        total = self._accumulate(eff, backward, regularize=False)
        if not backward:
            for p in params.values():
                for rows in self._reg_slices(p):
                    total += self.reg(p[rows]).reshape(())
            return total
        grad_eff = eff["P"].grad
        assert grad_eff is not None and self.design is not None
        leaf_P, leaf_Y = P.detach().requires_grad_(), Y.detach().requires_grad_()
        with torch.enable_grad():
            gP, gY = torch.autograd.grad(leaf_P + self.design @ leaf_Y, (leaf_P, leaf_Y),
                                         grad_eff)
        grads = {"P": gP, "Y": gY}
        grads.update({k: v.grad for k, v in params.items() if k not in grads})  # type: ignore
        total += self._regularize_into(params, grads)
        P.grad = gP if P.grad is None else P.grad.add_(gP)
        Y.grad = gY if Y.grad is None else Y.grad.add_(gY)
        return total

    def _accumulate(self, params: Params, backward: bool, regularize: bool = True
                    ) -> torch.Tensor:
        if self.design is not None and "Y" in params:
            return self._accumulate_implicit(params, backward)
        runs, workers = self._runs(params, backward)
        if not backward:
            total = self._sum_runs(len(runs), workers,
                                   lambda j: self._run_value(params, runs[j]))
            if self.plan.owns_regularizer:
                for p in params.values() if regularize else ():
                    for rows in self._reg_slices(p):
                        total += self.reg(p[rows]).reshape(())
                if self.unobserved_weight:
                    total += self.unobserved_total(params).to(self.dtype)
            self.plan.all_sum([total])
            return total
        # Each block's backward adds its gradients straight into the full gradient buffers
        # (gather_dot's ``into``): its rows' slice for P and bu, the whole of Q and bi. The block
        # works on detached leaves, so autograd itself allocates no gradient tensors.
        if "Q" in params and params["Q"].requires_grad:
            prepare_transposes(self.patterns)
        # with several processes the sum must see this call's gradient alone: what .grad held
        # would be summed over the processes too, so it is added after the sum; a .grad that
        # holds zeros (an optimizer zeroed it) is the buffer itself (issue 11: no second
        # parameter-sized gradient)
        shared = self.plan.world_size > 1
        held = {k: v.grad for k, v in params.items()
                if shared and v.grad is not None and bool(v.grad.any())}
        grads: dict[str, torch.Tensor] = {
            k: torch.zeros_like(v) if v.grad is None or k in held else v.grad
            for k, v in params.items()
        }
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        # the column sides (Q, bi) are summed by every block: each further run adds into a
        # buffer, added to the first run's in run order (the same sum every call), at most one
        # buffer a worker at a time (issue 11: not one per run)
        sums = _ColumnSums(grads, [k for k in ("Q", "bi") if k in grads], workers)

        def work(j: int) -> torch.Tensor:
            columns = sums.take(j)
            if columns is None:  # another run failed: its error is raised
                return torch.zeros((), dtype=self.dtype, device=self.device)
            try:
                value = self._run_backward(leaves, runs[j], grads, columns)
            except BaseException:
                sums.abort()
                raise
            sums.finish(j, columns)
            return value

        total = self._sum_runs(len(runs), workers, work)
        if self.plan.owns_regularizer:
            if regularize:
                total += self._regularize_into(params, grads)
            if self.unobserved_weight:
                total += self._unobserved_into(params, grads)
        self.plan.all_sum([total, *grads.values()])
        for name, param in params.items():
            old = held.get(name)
            param.grad = grads[name] if old is None else old.add_(grads[name])
        return total

    def _runs(self, params: Params, backward: bool) -> tuple[list[list[Any]], int]:
        """``(runs, workers)``: the blocks cut into consecutive runs of about equal entries, and
        how many workers (Python threads; torch releases the GIL) share them out.

        Issue 10: a block's operations run on one thread each and the workers take whole runs,
        rather than torch's threads splitting every operation (on a busy machine a descheduled
        thread stalls each of them). A worker takes the next run not yet taken, so a worker
        that the machine deschedules delays only the run it holds; each run sums its column
        gradients (Q, bi) into a buffer (:class:`_ColumnSums`), added up in run order, so the
        numbers never depend on which worker took which run.
        :func:`~autofact.threads.workers_for` decides the workers from the work's size (``k``
        multiply-adds an entry for the predictions, with ``backward`` another ``2 k`` for the
        two sparse products) and the thread cap, less one core left to the rest of the machine
        where the cap is the machine's own (``spare_core=True``: on 2 cores, one worker), and
        shared by the plan's processes on this machine (``plan.local_processes``), never
        from the load; only on the CPU and where torch's operations themselves run on one
        thread (no oversubscription). With several workers there are up to :data:`_RUNS` runs
        (one block at least each): the sizes alone decide them. Memory bounds both counts: the
        workers' blocks in flight (:data:`_BYTES_PER_ENTRY` an entry) and their column buffers
        (``n x k`` each, one a worker at most: :class:`_ColumnSums`) stay within
        ``max_memory`` together, and the runs are at most one more than the column buffers
        that fit in half of it (issue 11).
        """
        blocks = self.patterns
        n_runs = workers = 1
        if self.device.type == "cpu" and len(blocks) > 1 and torch.get_num_threads() == 1:
            k = params["P"].shape[-1] if "P" in params else 1
            column_bytes = sum(v.numel() * v.element_size() for name, v in params.items()
                               if name in ("Q", "bi")) if backward else 0
            # issue 11: a worker holds one block's temporaries and, backward, at most one
            # column buffer (_ColumnSums): together within max_memory
            each = max(p.nnz for p in blocks) * _BYTES_PER_ENTRY + column_bytes
            workers = min(len(blocks),
                          workers_for(self.nnz * k * (3 if backward else 1), spare_core=True),
                          self.max_memory // each)
            if workers > 1:
                # processes on one machine share its cores: each its share of the workers
                # (issue 11: 4 processes on 2 cores ran 8 workers, each holding a block); asked
                # only here (it reads the cgroup files: 0.13 ms, 1% of a 1M-rating gradient)
                workers = min(workers, max(1, max_threads() // max(1, self.plan.local_processes)))
            if workers > 1:
                n_runs = min(len(blocks), max(_RUNS, workers),
                             1 + (self.max_memory // 2) // max(1, column_bytes))
                workers = min(workers, n_runs)
        if n_runs == 1:
            return [list(blocks)], 1
        ends = [p.stop for p in blocks]  # run i ends with the first block reaching i * nnz / n_runs
        cuts = (bisect.bisect_left(ends, i * (self.nnz / n_runs)) for i in range(1, n_runs))
        bounds = [0, *sorted({c + 1 for c in cuts} - {0, len(blocks)}), len(blocks)]
        return [list(blocks[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], workers

    def _sum_runs(self, n: int, workers: int, work: Callable[[int], torch.Tensor]
                  ) -> torch.Tensor:
        """``work(j)`` for ``j < n``, by ``workers`` threads (this one and ``workers - 1`` of
        :meth:`_pool`), each taking the next ``j`` not yet taken; the values summed in order
        of ``j``."""
        values: list[torch.Tensor | None] = [None] * n
        if workers == 1:
            values = [work(j) for j in range(n)]
        else:
            lock, taken, failed = threading.Lock(), [0], threading.Event()

            def worker() -> None:
                while not failed.is_set():
                    with lock:
                        j = taken[0]
                        taken[0] += 1
                    if j >= n:
                        return
                    try:
                        values[j] = work(j)
                    except BaseException:
                        failed.set()  # the others stop at their next run
                        raise

            others = [self._pool(workers - 1).submit(worker) for _ in range(workers - 1)]
            try:
                worker()
            finally:
                for future in others:
                    # one still queued (the pool busy with another call) has nothing left to do
                    if not future.cancel():
                        future.result()  # re-raises a worker's error
        done = [v for v in values if v is not None]
        assert len(done) == n  # every run ran (or its error was raised above)
        total = done[0]
        for v in done[1:]:
            total += v
        return total

    def _pool(self, size: int) -> ThreadPoolExecutor:
        """This objective's worker threads (at least ``size``), kept between calls: starting
        threads at each call costs more than the calls' parallel share on a busy machine. Shut
        down when the objective is collected; idle meanwhile."""
        with _POOL_LOCK:
            # keyed by the owner: a copy of this objective's __dict__ (transposed()) makes its own
            pool, have, owner = self.__dict__.get("_workers", (None, 0, None))
            if pool is None or have < size or owner != id(self):
                if pool is not None and owner == id(self):
                    pool.shutdown(wait=False)
                pool = ThreadPoolExecutor(size, thread_name_prefix="autofact-gradient")
                weakref.finalize(self, pool.shutdown, wait=False)
                self.__dict__["_workers"] = (pool, size, id(self))
            return pool

    def _run_value(self, params: Params, run: list[Any]) -> torch.Tensor:
        """The loss terms of a run of blocks."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.no_grad():  # grad mode is per thread
            for pat in run:
                total += self._block_terms(params, pat).sum()
        return total

    def _run_backward(self, leaves: Params, run: list[Any], grads: dict[str, torch.Tensor],
                      columns: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss terms of a run of blocks; their gradients are added to ``grads`` (the row
        sides, P and bu) and ``columns`` (Q and bi)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            for pat in run:
                rows = slice(pat.row0, pat.row1)
                into = (grads["P"][rows] if "P" in grads else None, columns.get("Q"),
                        grads["bu"][rows] if "bu" in grads else None, columns.get("bi"))
                s = self._block_terms(leaves, pat, into=into).sum()
                s.backward()
                total += s.detach()
        return total

    # ------------------------------------------------------------------ mini-batches
    def batch_loss(self, params: Params, idx: torch.Tensor) -> torch.Tensor:
        """Loss over the entries ``idx`` plus the regularizer scaled by ``len(idx)/nnz``.

        Summed over a partition of the entries this is ``J``, so a mini-batch gradient is an
        unbiased piece of the full one. With the unobserved term, the batch's entries carry
        their correction ``-w0 r_hat^2`` and :meth:`unobserved_total` (every row's factors:
        ``O((m + n) k^2)`` a batch) enters scaled like the regularizer.
        """
        if self.implicit:
            raise ValueError(
                "implicit=True trains on full batches (each user's factor sums over all of their "
                "items); use batch_size=None with solver 'adam', 'gd' or 'lbfgs'"
            )
        u, i = self.users[idx].long(), self.items[idx].long()
        pred = (params["P"][u] * params["Q"][i]).sum(1) + self.mu
        if self.bias:
            pred = pred + params["bu"][u] + params["bi"][i]
        out = self.loss(pred, self.values[idx])
        if self.weights is not None:
            out = out * self.weights[idx]
        total = out.sum() + self.regularization(params, scale=len(idx) / self.nnz)
        if self.unobserved_weight:
            total = total - self.unobserved_weight * (pred * pred).sum() \
                + self.unobserved_total(params).to(total.dtype) * (len(idx) / self.nnz)
        return total

    def entry_derivatives(
        self, pred: torch.Tensor, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First and second derivatives of each entry's weighted loss in its prediction, and the
        block's summed loss.

        Both from autograd: the loss is elementwise, so its Hessian is diagonal and equals the
        gradient of ``sum(dl/dpred)``.
        """
        x = pred.detach()
        return diagonal_derivatives(lambda z: self.entry_loss(z, start, stop).sum(), x)

    def reg_derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and Hessian diagonal of the regularizer at ``x`` (exact when separable)."""
        g1, g2, _ = diagonal_derivatives(self.reg, x.detach())
        return g1, g2

    def transposed(self, max_rows: int | None = None) -> Objective:
        """The same objective with users and items swapped (for alternating solvers), its row
        blocks capped at ``max_rows`` rows."""
        # entries are sorted by (user, item): a stable sort by item gives (item, user) order;
        # the sorted items are the new rows as they are (no gather of them), and the order is
        # narrowed to int32 before the gathers (issue 11: the set-up's peak 16 bytes a rating
        # with the 12 kept, was 20)
        rows, order = torch.sort(self.items, stable=True)
        if self.nnz < 2**31 and order.device.type == "cpu":
            order = order.to(torch.int32)
        t = object.__new__(Objective)
        t.__dict__.update(self.__dict__)
        t.users, t.items = rows, torch.index_select(self.users, 0, order)
        t.values = torch.index_select(self.values, 0, order)
        t.weights = None if self.weights is None else torch.index_select(self.weights, 0, order)
        del order
        t.shape = (self.shape[1], self.shape[0])
        t.patterns = build_patterns(t.users, t.items, t.shape, self.max_nnz,
                                    keep_rows=self.keep_rows, max_rows=max_rows)
        return t


class _ColumnSums:
    """The column sides' gradients (``Q``, ``bi``) of a backward's runs (issue 10,
    :meth:`Objective._runs`), added up in run order with at most ``limit`` buffers at once.

    Run 0 adds into ``grads`` itself; each further run into a buffer (:meth:`take`), which is
    added to ``grads`` once every earlier run has been (:meth:`finish`: by whichever worker
    finds the next run in order done), then zeroed and handed to the next run. The additions
    are those of one buffer a run added in run order, so the numbers never depend on which
    worker took which run; the buffers are at most ``limit`` (the workers), not one a run
    (issue 11: a worker that runs ahead of a slower one waits for a buffer instead), and one
    more when the next run in order was overtaken before it got its buffer (it never waits:
    every later run waits for it).
    """

    def __init__(self, grads: dict[str, torch.Tensor], names: list[str], limit: int) -> None:
        self.grads, self.names, self.limit = grads, names, max(1, limit)
        self.cond = threading.Condition()
        self.free: list[dict[str, torch.Tensor]] = []
        self.made = 0
        self.done: dict[int, dict[str, torch.Tensor]] = {}
        self.next = 0  # the next run whose column gradient is added to grads
        self.adding = False  # whether a worker is adding (one at a time, in run order)
        self.failed = False

    def take(self, j: int) -> dict[str, torch.Tensor] | None:
        """Where run ``j`` adds its column gradients; ``None`` when a run failed."""
        if j == 0:
            return self.grads
        with self.cond:
            # the next run to add never waits (the runs after it wait for it): overtaken
            # between taking its index and its buffer, it gets one more than the limit
            while not self.free and self.made >= self.limit and not self.failed \
                    and j != self.next:
                self.cond.wait()
            if self.failed:
                return None
            if self.free:
                return self.free.pop()
            self.made += 1
        return {k: torch.zeros_like(self.grads[k]) for k in self.names}

    def finish(self, j: int, columns: dict[str, torch.Tensor]) -> None:
        """Run ``j`` is done: add every run done in order so far (unless another worker is)."""
        with self.cond:
            self.done[j] = columns
            if self.adding:
                return
            self.adding = True
        while True:
            with self.cond:
                buf = self.done.pop(self.next, None)
                if buf is None:
                    self.adding = False
                    return
                first = self.next == 0
                self.next += 1
                self.cond.notify_all()  # the run now next may be waiting for a buffer
            if not first:
                for k, g in buf.items():
                    self.grads[k] += g
                    g.zero_()
                with self.cond:
                    self.free.append(buf)
                    self.cond.notify_all()

    def abort(self) -> None:
        """A run failed: wake the workers waiting for a buffer (they take no more runs)."""
        with self.cond:
            self.failed = True
            self.cond.notify_all()


def _as_newton(gh: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    g, h = gh
    return (torch.tensor([g], dtype=torch.float64), torch.tensor([[h]], dtype=torch.float64))


def diagonal_derivatives(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(df/dx, d2f/dx2 diagonal, f(x))`` by autograd, for an ``f`` that is a sum of
    elementwise terms (its Hessian is then diagonal and equals the gradient of ``sum(df/dx)``).
    A term that does not depend on ``x`` gives zeros."""
    with torch.enable_grad():
        y = x.requires_grad_()
        value = f(y)
        zeros = torch.zeros_like(y)
        if not value.requires_grad:  # a constant (e.g. the 'none' regularizer)
            return zeros, zeros.clone(), value.detach()
        (g1,) = torch.autograd.grad(value, y, create_graph=True, allow_unused=True)
        if g1 is None:
            return zeros, zeros.clone(), value.detach()
        g2 = None
        if g1.requires_grad:
            (g2,) = torch.autograd.grad(g1.sum(), y, allow_unused=True)
    return g1.detach(), zeros if g2 is None else g2.detach(), value.detach()
