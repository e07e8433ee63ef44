"""Which solver may run which loss and regularizer, and the one ``solver='auto'`` picks.

Newton's method (``als``) holds only where its assumptions do:

- the loss is elementwise, so its Hessian in the predictions is diagonal. Every solver needs
  this (the library sums a loss over blocks and mini-batches), so a loss that is not is refused
  by all of them (:func:`autofact.objective.check_loss`, which probes the Jacobian);
- the loss has curvature somewhere (a non-zero second derivative on the probe; ``absolute`` has
  none);
- the regularizer is a sum over entries (its Hessian diagonal): declared by the built-ins with
  ``reg.separable = True``, checked on a probe for a user's
  (:func:`~autofact.regularizers.separability`), or declared by the user;
- and it is not piecewise linear (``l1``: no curvature anywhere and a kink at 0, where Newton
  steps stall well above the optimum).

``solver='auto'`` picks, in this order: ``adam`` when ``batch_size`` asks for mini-batches;
``als`` where the assumptions above hold; otherwise ``lbfgs``, or ``adam`` with
``nonnegative=True`` (a projection breaks L-BFGS's curvature pairs). Measured on small planted
problems (every built-in loss x ``l2``/``l1``/``none``), ``lbfgs`` at its default epochs comes
closer to the optimum than ``adam`` at its defaults on all but one non-smooth case (absolute with
``l1``), and ``als`` with ``l1`` stopped 6-7% above it (huber, logistic, poisson). An explicit
``solver='als'`` whose assumptions fail raises a ``ValueError`` naming the fix.

The unobserved term (``unobserved_weight > 0``, issue 12) is exact in ``als`` (the Gram trick in
each row's Newton system) and differentiated by autograd for the others; the sampler does not
carry it, so ``auto`` does not pick ``gibbs`` then, and an explicit ``gibbs`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._imports import NotLoaded
from ..losses import Loss, get_loss
from ..objective import check_loss, check_regularizer, diagonal_derivatives, loss_probe
from ..regularizers import Regularizer, get_regularizer, separability

__all__ = ["Assumptions", "assess", "choose_solver", "SOLVERS"]

SOLVERS = ("gd", "adam", "sgd", "lbfgs", "als", "gibbs")


@dataclass(frozen=True)
class Assumptions:
    """What the probes found about a loss and a regularizer."""

    loss_name: str
    reg_name: str
    curved: bool  #: the loss has a non-zero second derivative on the probe
    separable: bool  #: the regularizer is a sum over entries
    separable_why: str
    piecewise_linear: bool  #: the regularizer has no curvature but a gradient that jumps (l1)

    @property
    def newton(self) -> bool:
        """Whether ``als`` may run this loss and regularizer."""
        return self.curved and self.separable and not self.piecewise_linear


def _name(f: Any) -> str:
    return getattr(f, "__qualname__", None) or repr(f)


def assess(loss: Loss, reg: Regularizer) -> Assumptions:
    """Probe ``loss`` (already checked elementwise) and ``reg``, in float64, by autograd."""
    _, curved = loss_probe(loss)
    separable, why = separability(reg)
    X = (torch.arange(12, dtype=torch.float64).reshape(4, 3) * 0.37).sin() + 0.1
    try:
        g1, g2, _ = diagonal_derivatives(lambda x: reg(x).reshape(()), X)
    except Exception:  # a probe failure says nothing about kinks; separability has said "no"
        kinked = False
    else:
        g1, g2 = torch.nan_to_num(g1), torch.nan_to_num(g2)
        kinked = bool((g2 == 0).all()) and bool((g1 != g1.flatten()[0]).any())
    return Assumptions(_name(loss), _name(reg), curved, separable, why, kinked)


def choose_solver(
    solver: str,
    loss: str | Loss,
    regularization: str | Regularizer | None,
    *,
    beta: float,
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    nonnegative: bool = False,
    sampler: bool = True,
    unobserved_weight: float = 0.0,
) -> str:
    """The solver to run: ``solver`` itself, checked, or the one ``'auto'`` stands for.

    Checks the loss and the regularizer first (:func:`~autofact.objective.check_loss`, which
    refuses a loss that is not elementwise, and :func:`~autofact.objective.check_regularizer`).
    Raises ``ValueError`` for an unknown solver name and for ``'als'`` where Newton's
    assumptions fail (see the module docstring).

    ``'gibbs'`` (issue 9: Bayesian MF by Gibbs sampling, :mod:`autofact.solvers.gibbs`) is exact
    for the squared loss with ``l2``, the Gaussian likelihood and prior it samples; with ``l2`` and
    any other elementwise loss with finite, not all zero, second derivatives it runs the
    Laplace-MH sampler (:mod:`autofact.solvers.laplace`; the loss as the negative
    log-likelihood). ``auto`` picks the sampler for the squared loss with ``l2`` only (for huber
    and logistic on ml-100k validation splits the Laplace-MH sampler was more accurate than
    ``als`` but 5-26x slower; for Poisson less accurate: ``benchmarks/laplace_validation.py``),
    and there unless ``sampler`` is False (the caller's data or settings rule it out: weights,
    no biases, a regularization strength set by hand) or mini-batches or ``nonnegative`` are
    asked for.
    """
    if not isinstance(solver, str) or (solver != "auto" and solver not in SOLVERS):
        raise ValueError(f"solver must be 'auto' or one of {SOLVERS}, got {solver!r}"
                         + ("; 'cg' is for task='ranking'" if solver == "cg" else ""))
    for given in (loss, regularization):
        if isinstance(given, NotLoaded):  # a loaded model's function, not imported: ask for it
            raise ValueError(given.message)
    loss_fn = get_loss(loss)
    reg_fn = get_regularizer(regularization, beta)
    check_loss(loss_fn, dtype)
    check_regularizer(reg_fn, dtype)
    gaussian = _name(loss_fn) == "squared" and _name(reg_fn).startswith("l2(")
    if solver == "gibbs":
        if not _name(reg_fn).startswith("l2("):
            raise ValueError(
                f"solver='gibbs' samples the squared loss with 'l2' regularization (a Gaussian "
                f"likelihood and prior), and other twice-differentiable losses with 'l2' by "
                f"Laplace-MH; got loss {_name(loss_fn)} with regularization {_name(reg_fn)}: "
                "use solver='als', 'lbfgs' or 'adam' for it"
            )
        if not gaussian:  # issue 9: the Laplace-MH sampler (autofact.solvers.laplace)
            from .laplace import check_sampler_loss

            check_sampler_loss(loss_fn)
        if unobserved_weight:
            raise ValueError(
                f"solver='gibbs' does not sample the unobserved term; got "
                f"unobserved_weight={unobserved_weight!r}: use solver='als' (exact for it) or "
                "'auto', or unobserved_weight=0"
            )
        return solver
    if solver == "auto" and gaussian and sampler and batch_size is None and not nonnegative \
            and not unobserved_weight:
        return "gibbs"
    facts = assess(loss_fn, reg_fn)
    if solver == "als":
        _check_newton(facts)
        return solver
    if solver != "auto":
        return solver
    if batch_size is not None:
        return "adam"
    if facts.newton:
        return "als"
    return "adam" if nonnegative else "lbfgs"


def _check_newton(facts: Assumptions) -> None:
    others = "use solver='lbfgs' or 'adam'"
    if not facts.curved:
        raise ValueError(
            f"solver='als' needs a loss with a non-zero second derivative; loss "
            f"{facts.loss_name} has none on a probe (as 'absolute'): {others}"
        )
    if not facts.separable:
        raise ValueError(
            f"solver='als' needs a separable regularizer (a sum over entries); regularization "
            f"{facts.reg_name} is not ({facts.separable_why}): {others}, or declare "
            "reg.separable = True if it is"
        )
    if facts.piecewise_linear:
        raise ValueError(
            f"solver='als' needs a regularizer with curvature; regularization {facts.reg_name} "
            f"is piecewise linear (as 'l1', kinked at 0, where Newton steps stall above the "
            f"optimum): {others}"
        )
