"""Training across processes and machines with ``torch.distributed`` (launched by ``torchrun``).

Data parallel over ratings: every process reads the same ratings, keeps its own contiguous share
of them (``1/world_size``), and holds a full copy of the factors. Each full-batch step sums the
objective and its gradient over the processes (one all-reduce), so every process takes the same
step and the result is the single-process fit's, up to the order of floating-point sums::

    # train.py -- torchrun --nproc-per-node 4 train.py   (add --nnodes/--rdzv-endpoint for
    # several machines; gloo on CPUs, nccl on GPUs)
    import autofact
    from autofact import distributed

    distributed.init()
    ratings = autofact.read("ratings.csv")
    model = autofact.MatrixFactorization(solver="adam", epochs=100, seed=0)
    distributed.fit(model, ratings)
    if distributed.is_main_process():
        model.save("model.npz")
    distributed.shutdown()

The full-batch solvers are supported: ``gd``, ``adam`` and ``lbfgs`` (``batch_size=None``).
The mean rating and the initial factors are global too (summed and broadcast), and the
regularizer is added once. ``autofact fit`` does all this itself when started by torchrun (its
solver then defaults to ``adam``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .data import Ratings, as_ratings
from .model import MatrixFactorization
from .objective import Objective, Params

__all__ = ["init", "fit", "is_main_process", "shutdown"]

SOLVERS = ("gd", "adam", "lbfgs")


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (its environment variables); returns
    ``(rank, world_size)``. ``backend`` defaults to ``'nccl'`` when CUDA is available, else
    ``'gloo'``; on CUDA each process takes the GPU numbered by its ``LOCAL_RANK``.
    Calling it again is harmless."""
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                   if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"autofact.distributed.init() needs the environment torchrun sets up "
                f"(missing: {', '.join(missing)}); start the script with "
                "'torchrun --nproc-per-node N script.py'"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group (each process, when it is done with collective work). Exiting
    without it can abort a gloo process ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, or when no process group is running."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def fit(model: MatrixFactorization, ratings: Any, validation: Any = None,
        group: Any = None) -> MatrixFactorization:
    """``model.fit(ratings, validation)`` with the work shared by the processes of ``group``
    (default: all of them). Every process must call it with the same ratings and model
    settings; every process ends with the same fitted model."""
    if model.solver not in SOLVERS:
        raise ValueError(
            f"distributed training runs full-batch gradient solvers: set solver to one of "
            f"{SOLVERS}, got solver={model.solver!r}"
        )
    if model.batch_size is not None:
        raise ValueError(
            f"distributed training is full batch: set batch_size=None, got {model.batch_size!r}"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "no torch.distributed process group: call autofact.distributed.init() first, in a "
            "script started by torchrun"
        )
    train = as_ratings(ratings, "ratings")
    world = dist.get_world_size(group)
    if len(train) < world:
        raise ValueError(f"{len(train)} ratings cannot be shared by {world} processes")
    model._objective_type = lambda r, **kw: _ShardObjective(r, group=group, **kw)  # type: ignore[attr-defined]
    try:
        return model.fit(train, validation=validation)
    finally:
        del model._objective_type  # type: ignore[attr-defined]


class _ShardObjective(Objective):
    """The objective over this process's share of the ratings, summed over the group."""

    def __init__(self, ratings: Ratings, *, group: Any = None, **kwargs: Any) -> None:
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n = len(ratings)
        shard = ratings.subset(np.arange(n * rank // world, n * (rank + 1) // world))
        self._owns_regularizer = rank == 0
        self._reduce_device = torch.device("cuda") if dist.get_backend(group) == "nccl" else None
        super().__init__(shard, **kwargs)

    def _collective(self, t: torch.Tensor, op: Any) -> None:
        """``op(tensor)`` in place on ``t``, through a CUDA copy when the backend (nccl) cannot
        take ``t``'s device."""
        if self._reduce_device is not None and t.device.type != "cuda":
            moved = t.detach().to(self._reduce_device)
            op(moved)
            with torch.no_grad():
                t.copy_(moved)
        else:
            op(t)

    def _all_sum(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            self._collective(t, lambda x: dist.all_reduce(x, group=self.group))

    def value_and_grad(self, params: Params) -> float:
        # the all-reduce must see this call's gradient alone: what .grad already held would be
        # summed over the processes too, so it is set aside and added back after
        held = {k: p.grad for k, p in params.items()}
        for p in params.values():
            p.grad = None
        value = super().value_and_grad(params)
        for k, p in params.items():
            old = held[k]
            if old is not None and p.grad is not None:
                p.grad = old.add_(p.grad)
        return value

    def init_params(self, rank: int, seed: int | None = 0, init_std: float = 0.1) -> Params:
        params = super().init_params(rank, seed=seed, init_std=init_std)
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        for p in params.values():  # the same start everywhere, seeded or not
            self._collective(p, lambda x: dist.broadcast(x, src=src, group=self.group))
        return params
