"""Run by tests/test_distributed.py under torchrun: fit on shared ratings, rank 0 saves the result.

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py OUT.npz SOLVER
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import autofact
from autofact import distributed
from autofact.objective import Objective
from autofact.sharding import TorchShardPlan


def planted(seed: int = 0, m: int = 60, n: int = 40, k: int = 3):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < 0.4
    u, i = np.nonzero(mask)
    X = rng.normal(size=(m, k)) @ rng.normal(size=(k, n)) + 3
    return autofact.Ratings.from_coo(u, i, X[u, i], shape=(m, n))


def model(solver: str) -> autofact.MatrixFactorization:
    return autofact.MatrixFactorization(rank=3, solver=solver, epochs=15, seed=0, beta=0.5,
                                        bias=True, dtype="float64", device="cpu")


def gradient_on_held_grads(objective_type):
    """The gradient ``value_and_grad`` accumulates onto ``.grad`` tensors that already hold ones."""
    obj = objective_type(planted(), bias=True, beta=0.5, dtype="float64")
    params = obj.init_params(3, seed=0)
    for p in params.values():
        p.grad = torch.ones_like(p)
    obj.value_and_grad(params)
    return {f"grad_{k}": p.grad.numpy() for k, p in params.items()}


def mean_with_zero_weights(objective_type):
    """mu when every weight is 0 (the plain mean of all ratings, the same on every process)."""
    r = planted()
    r = autofact.Ratings.from_coo(r.users, r.items, r.values, shape=r.shape,
                                  weights=np.zeros(len(r)))
    return objective_type(r, bias=True, dtype="float64").mu


if __name__ == "__main__":
    out, solver = sys.argv[1], sys.argv[2]
    rank, world = distributed.init()
    fitted = distributed.fit(model(solver), planted())
    # the objective built with the torch.distributed plan (issue 11, item 7: no private hooks)
    def sharded(r, **kw):
        return Objective(r, plan=TorchShardPlan(), **kw)

    grads = gradient_on_held_grads(sharded)
    grads["mu_zero_weights"] = mean_with_zero_weights(sharded)
    if distributed.is_main_process():
        np.savez(out, P=fitted.user_factors_, Q=fitted.item_factors_, bu=fitted.user_bias_,
                 bi=fitted.item_bias_, loss=[h["loss"] for h in fitted.history_], world=world,
                 mu=fitted.global_mean_, **grads)
    distributed.shutdown()
