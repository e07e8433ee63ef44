"""Training loops: first-order updates, ``torch.optim.LBFGS``, and an alternating Newton solver.

==========  ===============================================================================
``gd``      the post's fixed-step batch descent: ``X -= lr * dJ/dX`` (torch.optim.SGD's rule)
``adam``    Adam, the update torch.optim.Adam makes: full batch (``batch_size=None``) or
            shuffled mini-batches
``sgd``     plain SGD on shuffled mini-batches (Funk-style stochastic descent)
``lbfgs``   ``torch.optim.LBFGS`` with a strong-Wolfe line search, full batch; one epoch is
            one call of up to 10 iterations
``als``     alternating Newton: one exact Newton step for all user rows, then all item rows
            (only for an elementwise loss with curvature and a smooth separable regularizer)
==========  ===============================================================================

One module each: :mod:`.first_order` (gd, sgd, adam), :mod:`.lbfgs`, :mod:`.als`; which solver
may run which loss and regularizer, and what ``solver='auto'`` picks, is :mod:`.contract`.

**Divergence.** :func:`fit_params` stops with :class:`~autofact.FitError` (the epoch, the value,
and a smaller learning rate to try) when the objective or a gradient turns non-finite, or when
the objective grows without bound, taken as: ``J - J0 > 1000 * max(|J0|, 1)`` where ``J0`` is the
objective at the starting parameters. A fit that is merely slow or noisy never comes near that;
one that diverges passes it within a few epochs. The parameters are then put back to the last
ones whose objective was seen finite and below that bound: for the full-batch solvers (whose
epoch value is the objective at the epoch's start) those the failing epoch's predecessor started
from, for mini-batch epochs those the failing epoch started from. The parameters the last epoch
leaves are checked the same way (one more pass over the ratings), so a fit never ends diverged.
Ctrl-C (``KeyboardInterrupt``) puts back the parameters of the last finished epoch and re-raises.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..errors import FitError
from ..objective import Objective, Params
from ._base import Epoch, NonFinite, all_finite
from .als import make_als
from .contract import SOLVERS, choose_solver
from .first_order import make_first_order
from .lbfgs import ITERS_PER_EPOCH, make_lbfgs

__all__ = ["SOLVERS", "DEFAULT_LR", "DEFAULT_EPOCHS", "RANK_DEFAULTS", "fit_params",
           "choose_solver", "GROWTH"]

DEFAULT_LR = {"gd": 0.0002, "adam": 0.01, "sgd": 0.01, "lbfgs": 1.0, "als": 1.0, "gibbs": 1.0}
#: ``gibbs``: sweeps of the sampler (:mod:`.gibbs`), the first tenth discarded as burn-in; 130
#: (issue 9): on the validation splits 0.0005 lower mean RMSE than 100, 150 only 0.0001 more
DEFAULT_EPOCHS = {"gd": 5000, "adam": 200, "sgd": 30, "lbfgs": 20, "als": 15, "gibbs": 130}
LBFGS_ITERS_PER_EPOCH = ITERS_PER_EPOCH
#: the number of factors ``MatrixFactorization(rank='auto')`` gives each task. Rating: 10 (every
#: rating default was chosen at 10; the Gibbs sampler averages over the posterior, so more factors
#: cost time but not accuracy). Ranking: 64, implicit's and the ranking benchmark's rank: on validation splits
#: carved from ml-100k u1 and ml-latest-small training data (benchmarks/ranking.py's
#: ``validation_split``), NDCG@10 went 0.218 / 0.237 / 0.238 / 0.238 on ml-100k and 0.151 /
#: 0.179 / 0.185 / 0.189 on ml-latest-small at rank 10 / 32 / 64 / 128 (issue 12).
RANK_DEFAULTS: dict[str, int] = {"rating": 10, "ranking": 64}
#: The objective has diverged once ``J - J0 > GROWTH * max(|J0|, 1)`` (``J0``: at the start).
GROWTH = 1000.0

EpochHook = Callable[[int, float, float], bool | None]
#: ``on_state(epoch, state, last)``: after ``on_epoch``; ``state()`` gives the solver's state
#: (see :func:`fit_params`), ``last`` is whether training stops after this epoch.
StateHook = Callable[[int, Callable[[], dict[str, Any]], bool], None]


def _project(params: Params, nonnegative: bool) -> None:
    if nonnegative:
        with torch.no_grad():
            params["P"].clamp_(min=0)
            params["Q"].clamp_(min=0)


def _make_epoch(obj: Objective, params: Params, solver: str, lr: float, batch_size: int | None,
                gen: torch.Generator, nonnegative: bool) -> Epoch:
    if solver == "als":
        return make_als(obj, params, nonnegative=nonnegative)
    if solver == "lbfgs":
        return make_lbfgs(obj, params, lr)
    if solver in ("gd", "adam", "sgd"):
        return make_first_order(obj, params, solver, lr, batch_size, gen)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")  # guarded in the model


def _warn_rank(obj: Objective, params: Params, solver: str) -> None:
    m, n = obj.shape
    k = params["P"].shape[1]
    if k <= min(m, n):
        return
    cost = (f"; als solves a {k}x{k} system for every row (cost ~ rank^3 per row)"
            if solver == "als" else "")
    warnings.warn(
        f"rank={k} exceeds min(users, items) = min({m}, {n}) = {min(m, n)}: a rank above it adds "
        f"nothing the model can express and only costs time and memory{cost}; try "
        f"rank <= {min(m, n)}",
        UserWarning,
        stacklevel=3,
    )


class _Guard:
    """Keeps the last verified parameters and applies the divergence rule (module docstring)."""

    def __init__(self, obj: Objective, params: Params, solver: str, lr: float,
                 at_start: bool, start: float | None = None,
                 value: Callable[[], float] | None = None, verifies_start: bool = False) -> None:
        self.obj, self.params, self.solver, self.lr = obj, params, solver, lr
        self.value = value  # the objective now (None: obj.value(params))
        self.at_start = at_start
        self.trial = {k: v.detach().clone() for k, v in params.items()}  # this epoch's start
        # full batch: the parameters the previous epoch started from, verified by its value;
        # an epoch that verifies its start before moving (verified()) keeps that one copy only:
        # its start, once verified, is the copy (issue 11: a parameter-sized copy less)
        self.verifies_start = verifies_start and at_start
        self.good = self.trial if not at_start or self.verifies_start else {
            k: v.clone() for k, v in self.trial.items()}
        self.start: float | None = start  # J0: given when resuming a checkpointed fit
        self.running = False
        self.moved = False  # (verifies_start) whether this epoch's parameters moved
        self.epoch = 0
        if not at_start and start is None:  # a mini-batch epoch's value is no J: measure J0
            self.start = obj.value(params) if value is None else value()
            if not math.isfinite(self.start):
                self._fail(1, self.start, self.trial, 0, initial=True)

    def begin(self, epoch: int) -> None:
        self.epoch = epoch
        if not self.verifies_start:
            with torch.no_grad():
                for k, v in self.params.items():
                    self.trial[k].copy_(v)
        self.moved = False
        self.running = True  # the parameters are mid-update until the epoch returns

    def verified(self, value: float) -> None:
        """(``verifies_start``) ``value``, the objective at the epoch's start, before the
        parameters move: the check :meth:`check` makes of it, and the start becomes the copy
        kept (the last verified parameters)."""
        if self.start is None:
            self.start = value
        if self._bad(value):  # the parameters this epoch started from are bad
            self._fail(self.epoch, value, self.good, self.epoch - 2, initial=self.epoch == 1)
        with torch.no_grad():
            for k, v in self.params.items():
                self.good[k].copy_(v)
        self.moved = True

    def ended(self) -> None:
        self.running = False

    def _bad(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        assert self.start is not None
        return value - self.start > GROWTH * max(abs(self.start), 1.0)

    def check(self, epoch: int, value: float, midway: bool = False) -> None:
        """After ``epoch`` returned ``value``: raise :class:`FitError` (having put back the last
        verified parameters) if the run has failed. ``midway``: ``value`` is the epoch's start
        and the parameters are where a later point of the epoch failed (the message says so)."""
        if self.start is None:
            self.start = value
        finite_params = all(all_finite(p.detach()) for p in self.params.values())
        if self.at_start:
            if self._bad(value):  # the parameters this epoch started from are bad
                self._fail(epoch, value, self.good, epoch - 2, initial=epoch == 1)
            if not finite_params:  # (verifies_start: trial is good, this epoch's start)
                self._fail(epoch, math.nan, self.trial, epoch - 1, midway=midway)
            if not self.verifies_start:
                self.good, self.trial = self.trial, self.good  # the epoch's start is verified
        elif self._bad(value) or not finite_params:
            self._fail(epoch, value if finite_params else math.nan, self.trial, epoch - 1)

    def fail_midway(self, epoch: int, value: float) -> None:
        """The epoch met ``value`` after its start, which :meth:`check` has just verified."""
        self._fail(epoch, value, self.good, epoch - 1, midway=True)

    def finish(self, epoch: int) -> None:
        """Check the parameters the last epoch left (one pass over the ratings)."""
        value = self.obj.value(self.params) if self.value is None else self.value()
        if self.start is None:  # no epoch ran
            self.start = value
        if self._bad(value):
            self._fail(epoch, value, self.good if self.at_start else self.trial, epoch - 1,
                       after=True)

    def interrupted(self) -> None:
        """Ctrl-C: inside an epoch, put back where it started (the last finished epoch's end);
        between epochs the parameters are already those of the last finished one."""
        if self.running and (self.moved or not self.verifies_start):
            self._restore(self.trial)
        self.running = False

    def _restore(self, snap: Params) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(snap[k])

    def _fail(self, epoch: int, value: float, keep: Params, kept: int,
              after: bool = False, midway: bool = False, initial: bool = False) -> None:
        self._restore(keep)
        kept = max(kept, 0)
        where = f"after epoch {epoch}" if after else f"at epoch {epoch}"
        settings = f"solver={self.solver!r}" + ("" if self.solver == "als" else f", lr={self.lr!r}")
        kept_text = ("the initial parameters are kept" if kept == 0
                     else f"the parameters after epoch {kept} are kept")
        if self.solver == "als":
            hint = ("als takes no learning rate: try a larger beta, ratings on a smaller scale, "
                    "or solver='lbfgs'")
        else:
            hint = f"Try a smaller learning rate, e.g. lr={self.lr / 10:g}"
        if initial:
            raise FitError(
                f"the objective is {value} at the initial parameters, before any step "
                f"({settings}): the loss or the regularizer is not finite on these ratings at "
                "the starting factors (a log or division outside its domain?)",
                epoch=epoch,
            )
        if math.isfinite(value):
            assert self.start is not None
            what = (f"the objective grew from {self.start:.6g} to {value:.6g} {where} with "
                    f"{settings}, over {GROWTH:g} times its starting size: the fit diverged")
        else:
            what = f"the objective (or its gradient) became {value} {where} with {settings}"
            if midway and self.solver == "als":  # sharded als, after its users' half-step
                what += (" (in the epoch's user half-step: a user row's Newton step became "
                         "non-finite, so no item row was updated)")
            elif midway:
                what += " (at a line-search trial point)"
        raise FitError(f"{what}; {kept_text}. {hint}", epoch=epoch)


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
    on_state: StateHook | None = None,
    resume: dict[str, Any] | None = None,
) -> int:
    """Run ``epochs`` epochs of ``solver`` on ``params`` in place; returns the epochs run.

    ``on_epoch(epoch, objective, seconds)`` is called after each epoch (seconds since
    ``start_time``, by default the call's start, so set-up counts) (objective at the start of
    the epoch for full-batch solvers, summed over batches for mini-batch ones); returning ``True``
    stops training. A non-finite or diverging objective puts back the last verified parameters
    and raises :class:`FitError` (see the module docstring). Warns when the rank exceeds the
    number of users or items.

    Checkpoints: ``on_state(epoch, state, last)`` is called after ``on_epoch``; ``state()``
    returns ``{"epoch", "optimizer" (named tensors: Adam's moments, L-BFGS's history),
    "generator" (the mini-batch generator's state), "start_value" (the objective the divergence
    rule measures from)}``, the live tensors. ``resume=`` such a dict (with ``params`` already
    holding that epoch's values) continues from the epoch after it, as if never stopped.
    """
    t0 = time.perf_counter() if start_time is None else start_time
    _warn_rank(obj, params, solver)
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed) + 1)
    step = _make_epoch(obj, params, solver, lr, batch_size, gen, nonnegative)
    first = 1
    if resume is not None:
        first = int(resume["epoch"]) + 1
        step.load_state(resume["optimizer"])
        gen.set_state(resume["generator"])
    guard = _Guard(obj, params, solver, lr, at_start=step.at_start,
                   start=None if resume is None else resume["start_value"], value=step.value,
                   verifies_start=step.verifies_start)
    if guard.verifies_start:
        step.on_start = guard.verified

    def state_now() -> dict[str, Any]:
        return {"epoch": epoch, "optimizer": step.state(), "generator": gen.get_state(),
                "start_value": guard.start}

    epoch = first - 1
    try:
        for epoch in range(first, epochs + 1):
            guard.begin(epoch)
            try:
                value = step.run()
            except NonFinite as exc:
                guard.ended()
                if exc.start is not None:  # the epoch's start checked out; a later point did not
                    guard.check(epoch, exc.start, midway=True)
                    guard.fail_midway(epoch, exc.value)
                value = exc.value
            else:
                _project(params, nonnegative)
                guard.ended()
            guard.check(epoch, value)
            stop = bool(on_epoch is not None
                        and on_epoch(epoch, value, time.perf_counter() - t0))
            if on_state is not None:
                on_state(epoch, state_now, stop or epoch == epochs)
            if stop:
                break
    except KeyboardInterrupt:
        guard.interrupted()
        raise
    guard.finish(epoch)
    return epoch
