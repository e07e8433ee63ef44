"""What every solver's epoch function shares: its shape, and how it reports a non-finite value."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..objective import Params


@dataclass
class Epoch:
    """One solver's epoch function and what its returned value means.

    ``run()`` performs one epoch on the parameters in place and returns an objective value:
    with ``at_start`` the full objective at the parameters the epoch started from (full-batch
    solvers: gd, full-batch adam, lbfgs, als), otherwise the sum of the mini-batch objectives
    met during the epoch (sgd, mini-batch adam).
    """

    run: Callable[[], float]
    at_start: bool
    #: The optimizer's state between epochs as named tensors (Adam's moments and step counts,
    #: L-BFGS's history), for a checkpoint; ``{}`` for a solver that keeps none (gd, sgd, als).
    state: Callable[[], dict[str, torch.Tensor]] = dict
    #: Put back a ``state()`` taken after an earlier epoch (resuming from a checkpoint).
    load_state: Callable[[dict[str, torch.Tensor]], None] = lambda state: None
    #: The objective at the parameters now, when the solver knows it better than
    #: ``Objective.value`` (a solver whose processes each hold only their own users' rows:
    #: sharded ``als``); ``None``: ``Objective.value``.
    value: Callable[[], float] | None = None
    #: Whether ``run()`` calls :attr:`on_start` with the objective at the epoch's start before
    #: the parameters move (the full-batch first-order steps): the divergence guard then
    #: verifies the start there and keeps one copy of the parameters instead of two (issue 11).
    verifies_start: bool = False
    #: Set by the guard when ``verifies_start``; may raise to stop before the update.
    on_start: Callable[[float], None] | None = None


class NonFinite(Exception):
    """Raised by an epoch that met a non-finite objective or gradient (before updating, for the
    full-batch first-order steps). ``start``: the epoch's (finite) objective at its start, when
    the failure came later in the epoch (an L-BFGS line-search trial)."""

    def __init__(self, value: float, start: float | None = None) -> None:
        super().__init__(value)
        self.value = value
        self.start = start


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite. A NaN or an infinity makes the sum non-finite, so a
    finite sum answers at the cost of one reduction (an element-wise ``isfinite`` writes a mask
    the size of ``t``: 10x the time on 100k-row tables, issue 10); a non-finite sum (which finite
    but huge entries can also give) is checked entry by entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(value: float, params: Params) -> None:
    """Raise :class:`NonFinite` unless ``value`` and every gradient held are finite."""
    if not math.isfinite(value):
        raise NonFinite(value)
    if not all(all_finite(p.grad) for p in params.values() if p.grad is not None):
        raise NonFinite(math.nan)
