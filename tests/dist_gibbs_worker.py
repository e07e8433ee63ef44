"""Run by tests/test_distributed_gibbs.py under torchrun: the Bayesian sampler sharded by user.

    torchrun --standalone --nproc-per-node 2 tests/dist_gibbs_worker.py OUT_PREFIX [CASE ...]

Each process writes ``OUT_PREFIX.RANK.npz``: the fits of :func:`cases` (those named, or all),
every process's whole model and history, to compare with one process and with each other; and
the error of a fit whose users' ratings are split over the processes. With ``OUT_PREFIX.csv``
present, ``autofact fit`` of it (no ``--solver``: the default model) saves
``OUT_PREFIX.cli.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import autofact
from autofact import distributed
from autofact.sharding import TorchShardPlan


def planted(seed: int = 0, m: int = 200, n: int = 80, k: int = 3) -> autofact.Ratings:
    """A rank-3 matrix plus noise, 25% observed (the sweep budget stops the default chain at
    sweep 51 of 130); user 7 has no ratings (drawn from its prior)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < 0.25
    mask[7] = False
    u, i = np.nonzero(mask)
    X = rng.normal(size=(m, k)) @ rng.normal(size=(k, n)) + 3
    return autofact.Ratings.from_coo(u, i, X[u, i] + 0.3 * rng.normal(size=len(u)),
                                     shape=(m, n))


RATED = [0, 1, 2, 3, 4, 5, 6, 8, 9]  # users with ratings, whose predictions are compared


def model(**kw) -> autofact.MatrixFactorization:
    """Fixed sweeps (``epochs=25``) unless ``epochs=None`` (the sweep budget) is given."""
    return autofact.MatrixFactorization(**{"rank": 3, "solver": "gibbs", "epochs": 25,
                                           "seed": 0, **kw})


def cases() -> dict[str, dict]:
    """name -> (model settings, whether each process gets only its own users' ratings)."""
    return {
        "fixed": {"kw": {}, "local": False},
        "budget": {"kw": {"solver": "auto", "epochs": None}, "local": False},
        "validation": {"kw": {"validation_fraction": 0.2, "patience": 3}, "local": False},
        "local": {"kw": {}, "local": True},
    }


def own_users(r: autofact.Ratings, rank: int, world: int) -> autofact.Ratings:
    """Users dealt round robin: this process's, with the id maps of all the ratings."""
    return r.subset(r.users % world == rank)


def record(fitted: autofact.MatrixFactorization) -> dict[str, np.ndarray]:
    h = fitted.history_
    return {"P": fitted.user_factors_, "Q": fitted.item_factors_, "bu": fitted.user_bias_,
            "bi": fitted.item_bias_, "mu": np.float64(fitted.global_mean_),
            "loss": np.array([x["loss"] for x in h]),
            "gain": np.array([x.get("gain", np.nan) for x in h]),
            "val": np.array([x.get("val_rmse", np.nan) for x in h]),
            "solver": np.array(fitted.solver_), "stopped": np.array(h[-1].get("stopped", "")),
            "pred": fitted.predict(fitted.user_ids_[RATED], fitted.item_ids_[:9])}


if __name__ == "__main__":
    prefix, names = sys.argv[1], sys.argv[2:]
    rank, world = distributed.init(timeout=60)
    out: dict[str, np.ndarray] = {"world": np.int64(world)}
    data = planted()
    for name, case in cases().items():
        if names and name not in names:
            continue
        if case["local"]:
            fitted = model(**case["kw"]).fit(own_users(data, rank, world),
                                              plan=TorchShardPlan(local=True))
        else:
            fitted = model(**case["kw"]).fit(data, plan=TorchShardPlan())
        out.update({f"{name}.{k}": v for k, v in record(fitted).items()})
    if not names or "saved" in names:  # distributed.fit, rank-local users; distributed.save
        fitted = distributed.fit(model(), own_users(data, rank, world), local=True)
        distributed.save(fitted, f"{prefix}.model.npz")  # every process: rank 0 writes
    try:  # ratings not split by user: a user's ratings on several processes
        model().fit(data.subset(np.arange(len(data)) % world == rank),
                    plan=TorchShardPlan(local=True))
    except ValueError as exc:
        out["split_user_error"] = np.array(str(exc))
    np.savez(f"{prefix}.{rank}.npz", **out)
    if Path(f"{prefix}.csv").exists():  # last: autofact fit leaves the process group itself
        from autofact.cli import main

        code = main(["fit", f"{prefix}.csv", "--out", f"{prefix}.cli.npz", "--rank", "3",
                     "--seed", "0", "--quiet"])
        if code:
            raise SystemExit(code)
    distributed.shutdown()
