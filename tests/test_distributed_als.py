"""Sharded ALS (issue 11, item 2): users partitioned over gloo processes on 127.0.0.1, the item
half-step's normal equations summed over them; a 2- and a 4-process fit give the one-process
factors and history.

Run by pytest; its ``__main__`` is the worker the processes run under torchrun:

    torchrun --standalone --nproc-per-node N tests/test_distributed_als.py MODE OUT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact.sharding import ShardPlan, user_cuts

HERE = Path(__file__)
SRC = HERE.parent.parent / "src"
NAMES = ("P", "Q", "bu", "bi")


def planted(seed: int = 0, m: int = 160, n: int = 60, k: int = 3
            ) -> tuple[autofact.Ratings, autofact.Ratings]:
    """About 3,300 training and 550 validation ratings of a rank-3 matrix plus noise; users'
    counts vary (a few users with a single rating)."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.05, 0.7, size=(m, 1))
    mask = rng.random((m, n)) < density
    mask[:, 0] = True
    u, i = np.nonzero(mask)
    X = rng.normal(size=(m, k)) @ rng.normal(size=(k, n)) + 3 + 0.3 * rng.normal(size=(m, n))
    r = autofact.Ratings.from_coo(u, i, X[u, i], shape=(m, n))
    # held out: 12% of the ratings, and every rating of users 0 and 1 and of the last item
    # (the validation then scores unknown users and items by the mean known one)
    held = (rng.random(len(r)) < 0.12) | (r.users < 2) | (r.items == n - 1)
    return r.subset(~held), r.subset(held)


def model(loss: str = "squared", **kw) -> autofact.MatrixFactorization:
    settings = {"rank": 4, "solver": "als", "loss": loss, "epochs": 10, "seed": 0, "beta": 0.1,
                "bias": True, "dtype": "float32", "device": "cpu", "patience": 3, **kw}
    return autofact.MatrixFactorization(**settings)


#: Rank 20 in the smallest workspace: item ranges of 6 rows (65536 bytes // (24 x 21^2)), so
#: the item half-step's sums run over 10 ranges every process cuts alike
SMALL = {"rank": 20, "max_memory": 65536, "epochs": 3}


def factors(m: autofact.MatrixFactorization) -> dict[str, np.ndarray]:
    return {"P": m.user_factors_, "Q": m.item_factors_, "bu": m.user_bias_,
            "bi": m.item_bias_}


def torchrun(n: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                    "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(n), str(HERE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_same_fit(got: dict[str, np.ndarray], single: autofact.MatrixFactorization,
                    prefix: str = "") -> None:
    """The factors to 1e-4 relative (float32), and the same history."""
    for name, want in factors(single).items():
        have = got[prefix + name]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=prefix + name)
    np.testing.assert_allclose(got[prefix + "loss"], [h["loss"] for h in single.history_],
                               rtol=1e-5)
    np.testing.assert_allclose(got[prefix + "val"], [h["val_rmse"] for h in single.history_],
                               rtol=1e-5)


def test_user_cuts_move_each_cut_to_the_nearest_user_boundary():
    # issue 11: the share of TorchShardPlan(local=False) never splits a user
    users = np.repeat(np.arange(5), [3, 4, 1, 2, 2])  # 12 ratings: 0 0 0 1 1 1 1 2 3 3 4 4
    np.testing.assert_array_equal(user_cuts(users, 1), [0, 12])
    np.testing.assert_array_equal(user_cuts(users, 2), [0, 7, 12])  # 6 is inside user 1: 7
    np.testing.assert_array_equal(user_cuts(users, 3), [0, 3, 8, 12])  # 4 -> 3 (tie: earlier)
    for w in (1, 2, 3, 4):
        cuts = user_cuts(users, w)
        assert all(users[c - 1] != users[c] for c in cuts[1:-1])  # boundaries
        assert np.all(np.diff(cuts) > 0)
    with pytest.raises(ValueError, match="12 ratings of 5 users cannot be shared by 6 "
                                         r"processes .*rank \d would hold none"):
        user_cuts(users, 6)
    with pytest.raises(ValueError, match="needs the ratings sorted by user"):
        user_cuts(users[::-1], 2)


def test_one_process_plan_owns_every_row_and_gathers_nothing():
    import torch

    plan = ShardPlan()
    assert bool(plan.owned_rows(torch.tensor([0, 2], dtype=torch.int32), 4).all())
    t = torch.arange(6.0).reshape(3, 2)
    plan.gather_rows([t], torch.ones(3, dtype=torch.bool))
    np.testing.assert_array_equal(t.numpy(), np.arange(6.0).reshape(3, 2))


# issue 11, item 4: a shared ALS checkpoints (its users' rows gathered onto rank 0) and resumes
# to the uninterrupted fit: tests/test_distributed_checkpoint.py


def test_two_processes_give_the_one_process_fit(tmp_path):
    # issue 11, item 2: squared (exact steps) and huber (backtracking summed over processes),
    # ratings cut at user boundaries (local=False) and hashed by user (local=True), the
    # unobserved term (its Gram sums over every process's users)
    proc = torchrun(2, "two", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    train, val = planted()
    squared = model().fit(train, validation=val)
    huber = model("huber", epochs=6).fit(train, validation=val)
    small = model(**SMALL).fit(train, validation=val)
    unobs = model("huber", epochs=6, unobserved_weight=0.05).fit(train, validation=val)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz", allow_pickle=False)) for r in (0, 1)]
    for got in ranks:  # every process ends with the whole model
        assert_same_fit(got, squared)
        assert_same_fit(got, squared, prefix="local_")
        assert_same_fit(got, huber, prefix="huber_")
        assert_same_fit(got, small, prefix="small_")
        assert_same_fit(got, unobs, prefix="unobs_")  # the Gram terms summed over users
    for name in NAMES:  # and the same one, bit for bit
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])
    assert squared.history_[-1]["loss"] < squared.history_[0]["loss"]  # it trained
    # rank 0's saved model predicts as the one-process model
    shared = autofact.load(tmp_path / "model.npz")
    pairs = (val.user_ids[val.users], val.item_ids[val.items])
    with pytest.warns(UserWarning, match="not in the training data"):  # the cold pairs
        want = squared.predict(*pairs)
    with pytest.warns(UserWarning, match="not in the training data"):
        have = shared.predict(*pairs)
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the shares of local=False: whole users, disjoint, covering every rating
    held = [set(ranks[r]["share_users"].tolist()) for r in (0, 1)]
    assert not held[0] & held[1] and len(held[0]) + len(held[1]) == len(np.unique(train.users))
    assert int(ranks[0]["share_n"]) + int(ranks[1]["share_n"]) == len(train)
    # the refusals every process makes alike (issue 11)
    errors = json.loads(str(ranks[0]["errors"]))
    assert {k: v for k, v in errors.items() if k != "nan"} == \
        {k: v for k, v in json.loads(str(ranks[1]["errors"])).items() if k != "nan"}
    assert "users have ratings on several processes" in errors["split"]
    assert "read_local(split='users')" in errors["split"]
    # in float64: the epochs' values and the objective after them, as one process has them
    for got in ranks:
        np.testing.assert_allclose(got["two_epochs"], two_epochs(train), rtol=1e-10)
    for got in ranks:  # issue 10: l'' and L2's curvature kept from the first epoch (sharded)
        np.testing.assert_allclose(got["kept_on"], got["kept_off"], rtol=0, atol=1e-12)
        assert bool(got["kept_any"])
    for got in ranks:  # a NaN on one process stopped both, each keeping epoch 1's factors
        message = json.loads(str(got["errors"]))["nan"]
        assert "became nan at epoch 2 with solver='als'" in message
        # in als's terms, not a line search's (issue 10)
        assert "(in the epoch's user half-step: a user row's Newton step became non-finite, " \
            "so no item row was updated); the parameters after epoch 1 are kept" in message
        assert bool(got["nan_finite"])


def test_four_processes_give_the_one_process_fit(tmp_path):
    # issue 11, item 2: four processes (on a 2-core machine: slow, still exact); nonnegative
    # projects each process's users and the shared item rows alike
    proc = torchrun(4, "four", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    train, val = planted()
    single = model().fit(train, validation=val)
    got = dict(np.load(tmp_path / "rank3.npz", allow_pickle=False))
    assert_same_fit(got, single)
    nonneg = model(nonnegative=True).fit(train, validation=val)
    assert_same_fit(got, nonneg, prefix="nonneg_")
    assert float(got["nonneg_P"].min()) >= 0 and float(got["nonneg_Q"].min()) >= 0


# ---------------------------------------------------------------------------- the worker
def two_epochs(train: autofact.Ratings, plan=None) -> np.ndarray:
    """Two epochs of ALS on the objective itself (float64, huber, the unobserved term): each
    epoch's value and the objective after them (the sharded epoch's own ``value``, which the
    divergence guard checks last; one process: ``Objective.value``)."""
    from autofact.objective import Objective
    from autofact.solvers.als import make_als

    obj = Objective(train, loss="huber", bias=True, beta=0.1, dtype="float64", plan=plan,
                    unobserved_weight=0.05)
    params = obj.init_params(4, seed=0)
    epoch = make_als(obj, params)
    values = [epoch.run(), epoch.run()]
    return np.array([*values, obj.value(params) if epoch.value is None else epoch.value()])


def kept_and_computed(train: autofact.Ratings, plan) -> dict[str, np.ndarray]:
    """Three sharded epochs (float64, squared loss, the unobserved term) with the second
    derivatives kept from the first epoch and computed every epoch (issue 10): the
    parameters of each, and whether anything was kept."""
    from autofact.objective import Objective
    from autofact.solvers import als
    from autofact.solvers.als import make_als

    out: dict[str, np.ndarray] = {}
    for keep in (True, False):
        als.CACHE_CURVATURE = keep
        try:
            obj = Objective(train, loss="squared", bias=True, beta=0.1, dtype="float64",
                            plan=plan, unobserved_weight=0.05)
            params = obj.init_params(4, seed=0)
            epoch = make_als(obj, params)
            for _ in range(3):
                epoch.run()
        finally:
            als.CACHE_CURVATURE = True
        out["kept_on" if keep else "kept_off"] = np.concatenate(
            [params[name].detach().numpy().ravel() for name in ("Q", "bi")])
        if keep:
            out["kept_any"] = np.array(any(v is not None for v in epoch.run.curv.kept.values()))
    return out


def _history(m: autofact.MatrixFactorization) -> dict[str, np.ndarray]:
    return {"loss": np.array([h["loss"] for h in m.history_]),
            "val": np.array([h["val_rmse"] for h in m.history_])}


def _worker(mode: str, out: Path) -> None:
    import torch

    from autofact import distributed
    from autofact.sharding import TorchShardPlan

    rank, world = distributed.init(timeout=60)
    train, val = planted()
    saved: dict[str, np.ndarray] = {}
    fitted = distributed.fit(model(), train, validation=val)  # local=False: cut by user
    saved.update(factors(fitted), **_history(fitted))
    if mode == "four":
        nonneg = distributed.fit(model(nonnegative=True), train, validation=val)
        saved.update({f"nonneg_{k}": v for k, v in {**factors(nonneg),
                                                     **_history(nonneg)}.items()})
    if mode == "two":
        saved["two_epochs"] = two_epochs(train, TorchShardPlan())
        saved.update(kept_and_computed(train, TorchShardPlan()))
        if rank == 0:
            fitted.save(out / "model.npz")
        share = TorchShardPlan().share(train)
        saved["share_users"], saved["share_n"] = np.unique(share.users), np.array(len(share))
        huber = distributed.fit(model("huber", epochs=6), train, validation=val)
        small = distributed.fit(model(**SMALL), train, validation=val)
        saved.update({f"small_{k}": v for k, v in {**factors(small), **_history(small)}.items()})
        saved.update({f"huber_{k}": v for k, v in {**factors(huber), **_history(huber)}.items()})
        # local=True: users hashed to processes, as read_local(split="users") does
        mine = train.subset(train.users % world == rank)
        local = distributed.fit(model(), mine, validation=val, local=True)
        saved.update({f"local_{k}": v for k, v in {**factors(local), **_history(local)}.items()})
        errors = {}
        try:  # a user's ratings on both processes
            distributed.fit(model(), train.subset(np.arange(len(train)) % world == rank),
                            local=True)
        except ValueError as exc:
            errors["split"] = str(exc)
        unobs = distributed.fit(model("huber", epochs=6, unobserved_weight=0.05), train,
                                validation=val)
        saved.update({f"unobs_{k}": v for k, v in {**factors(unobs), **_history(unobs)}.items()})
        # a user row of rank 1 turns NaN in epoch 2: both processes stop with FitError (none
        # waits for the other), keeping epoch 1's parameters, gathered
        from autofact.solvers import als

        side, calls = als._AlternatingNewton._side, []

        def poisoned(self, obj, blocks, X, *args):
            out = side(self, obj, blocks, X, *args)
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                X[0, 0] = float("nan")
            return out

        als._AlternatingNewton._side = poisoned
        broken = model(epochs=4)
        try:
            distributed.fit(broken, train)
        except autofact.FitError as exc:
            errors["nan"] = str(exc)
            saved["nan_finite"] = np.array(bool(np.isfinite(broken.user_factors_).all()))
        finally:
            als._AlternatingNewton._side = side
        saved["errors"] = np.array(json.dumps(errors))
    np.savez(out / f"rank{rank}.npz", **saved)
    torch.distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
