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

    key = lbfgs.param_groups[0]["params"][0]  # torch keeps LBFGS's state under its first tensor

    def state() -> dict[str, torch.Tensor]:
        """LBFGS's history as named tensors: a list as one stacked tensor (``name[]``), a number
        as a 0-d tensor (``name#``); ``al`` is scratch space, refilled before every use."""
        out: dict[str, torch.Tensor] = {}
        for name, v in lbfgs.state.get(key, {}).items():
            if name == "al" or v is None:
                continue
            if isinstance(v, list):
                ref = lbfgs.state[key]["d"]
                out[f"lbfgs.{name}[]"] = (torch.stack(v) if v else
                                          ref.new_empty((0, *ref.shape) if name != "ro" else 0))
            elif isinstance(v, torch.Tensor):
                out[f"lbfgs.{name}"] = v
            else:
                out[f"lbfgs.{name}#"] = torch.tensor(v, dtype=torch.float64
                                                     if isinstance(v, float) else torch.int64)
        return out

    def load_state(saved: dict[str, torch.Tensor]) -> None:
        st: dict[str, object] = {}
        for name, v in saved.items():
            if not name.startswith("lbfgs."):
                continue
            name = name[len("lbfgs."):]
            if name.endswith("[]"):
                st[name[:-2]] = [x.to(key.device).clone() for x in v]
            elif name.endswith("#"):
                st[name[:-1]] = v.item()
            else:
                st[name] = v.to(key.device).clone()
        if st:
            st["al"] = [None] * int(lbfgs.param_groups[0]["history_size"])
            lbfgs.state[key] = st

    return Epoch(epoch, at_start=True, state=state, load_state=load_state)
