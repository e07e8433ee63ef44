"""``lbfgs``: ``torch.optim.LBFGS`` with a strong-Wolfe line search, full batch.

One epoch is one call of up to :data:`ITERS_PER_EPOCH` iterations: torch's LBFGS keeps its
curvature pairs across calls only when each call runs several iterations (with ``max_iter=1`` it
stalls after the first step). The objective is handed to LBFGS as a float64 scalar, so a float64
fit reports its objective unrounded. A non-finite objective or gradient at any evaluation,
line-search trials included, stops the epoch (torch's line search cannot bracket a NaN).
"""

from __future__ import annotations

import torch

from ..objective import Objective, Params
from ._base import Epoch, NonFinite, check_finite

__all__ = ["make_lbfgs", "ITERS_PER_EPOCH"]

ITERS_PER_EPOCH = 10


def make_lbfgs(obj: Objective, params: Params, lr: float) -> Epoch:
    """The epoch of ``lbfgs`` on ``params``; its value is the objective at the epoch's start."""
    lbfgs = torch.optim.LBFGS(
        list(params.values()), lr=lr, max_iter=ITERS_PER_EPOCH, history_size=10,
        line_search_fn="strong_wolfe",
    )

    first: list[float] = []  # the epoch's first evaluation: the objective at its start

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        value = obj.value_and_grad(params)
        try:
            check_finite(value, params)
        except NonFinite as exc:
            raise NonFinite(exc.value, first[0] if first else None) from None
        first.append(value)
        return torch.tensor(value, dtype=torch.float64)

    def epoch() -> float:
        first.clear()
        return float(lbfgs.step(closure))  # type: ignore[arg-type]

    return Epoch(epoch, at_start=True)
