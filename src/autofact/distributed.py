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
regularizer is added once. How the sums are taken and which ratings each process holds is a
:class:`~autofact.sharding.TorchShardPlan`, passed to ``model.fit(..., plan=)``. ``autofact fit``
does all this itself when started by torchrun (its solver then defaults to ``adam``).

**Faults.** Every collective waits at most ``timeout`` (:func:`init`, default
:data:`DEFAULT_TIMEOUT` seconds; ``autofact fit --timeout``). A peer that is killed, frozen
(``kill -STOP``) or cut off makes the others raise :class:`~autofact.sharding.PeerLostError`
("rank N stopped responding ...") within that time; ``autofact fit`` then exits with status 1.
A checkpoint (``fit(..., checkpoint=DIR)``) is written atomically by rank 0, so the last one
stays intact: run the same command again to resume.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .data import as_ratings
from .sharding import PeerLostError, TorchShardPlan

if TYPE_CHECKING:
    from .model import MatrixFactorization

__all__ = ["init", "fit", "is_main_process", "shutdown", "DEFAULT_TIMEOUT"]

SOLVERS = ("gd", "adam", "lbfgs")
#: Seconds a collective waits for the other processes before the fit gives up on them.
DEFAULT_TIMEOUT = 300.0
#: Seconds of the timeout kept back to find out which rank stopped answering.
_DIAGNOSIS = 3.0


def init(backend: str | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (its environment variables); returns
    ``(rank, world_size)``. ``backend`` defaults to ``'nccl'`` when CUDA is available, else
    ``'gloo'``; on CUDA each process takes the GPU numbered by its ``LOCAL_RANK``.
    ``timeout``: seconds a collective (a sum, a broadcast) waits for a peer before the fit
    fails naming it (default :data:`DEFAULT_TIMEOUT`). Calling it again is harmless."""
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    seconds = DEFAULT_TIMEOUT if timeout is None else timeout
    if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
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
        # the collectives' own limit, less the few seconds the survivors take to find out which
        # rank is gone (sharding.TorchShardPlan), so that they give up within `timeout`
        wait = max(seconds - _DIAGNOSIS, seconds / 2)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=wait))
        except (RuntimeError, ConnectionError) as exc:  # a peer that never came, or went
            detail = " ".join(str(exc).split())[:300]
            raise PeerLostError(
                f"the {os.environ['WORLD_SIZE']} processes did not all join at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {wait:g} s "
                f"(rank {os.environ['RANK']} gave up: {type(exc).__name__}: {detail}); start "
                "every process, or raise the timeout"
            ) from exc
    return dist.get_rank(), dist.get_world_size()


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group (each process, when it is done with collective work). Exiting
    without it can abort a gloo process ("terminate called without an active exception").

    ``wait=True`` first waits at a barrier until every process is here, so none tears the group
    down while another still talks to it (that too can abort a gloo process); a barrier that
    fails (a peer gone: it ends within the group's timeout) is ignored. After a failure, pass
    ``wait=False`` to leave at once."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            try:
                dist.barrier()
            except Exception:  # a peer is gone: leave anyway, the error was or will be reported
                pass
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, or when no process group is running."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def fit(model: MatrixFactorization, ratings: Any, validation: Any = None,
        group: Any = None, **fit_kwargs: Any) -> MatrixFactorization:
    """``model.fit(ratings, validation=validation, plan=TorchShardPlan(group), **fit_kwargs)``:
    the work shared by the processes of ``group`` (default: all of them). Every process must
    call it with the same ratings and model settings; every process ends with the same fitted
    model. ``fit_kwargs``: ``checkpoint=`` and ``checkpoint_every=`` (rank 0 writes; the
    folder must be one every process can read, to resume)."""
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
    plan = TorchShardPlan(group)
    if len(train) < plan.world_size:
        raise ValueError(f"{len(train)} ratings cannot be shared by {plan.world_size} processes")
    return model.fit(train, validation=validation, plan=plan, **fit_kwargs)
