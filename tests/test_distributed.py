"""autofact.distributed: two gloo processes under torchrun give the single-process fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import autofact
from autofact import distributed
from autofact.objective import Objective
from autofact.sharding import ShardPlan

from .dist_worker import gradient_on_held_grads, mean_with_zero_weights, model, planted

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_two_processes_give_the_single_process_fit(tmp_path, solver):
    out = tmp_path / "fit.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parent.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(out), solver],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    assert int(got["world"]) == 2
    single = model(solver).fit(planted())
    assert float(got["mu"]) == pytest.approx(single.global_mean_, rel=1e-12)
    np.testing.assert_allclose(got["loss"], [h["loss"] for h in single.history_], rtol=1e-9)
    for name, want in (("P", single.user_factors_), ("Q", single.item_factors_),
                       ("bu", single.user_bias_), ("bi", single.item_bias_)):
        np.testing.assert_allclose(got[name], want, rtol=1e-7, atol=1e-9, err_msg=name)
    assert got["loss"][-1] < got["loss"][0]  # it trained
    # value_and_grad adds to what .grad held, once (not once per process)
    for name, want in gradient_on_held_grads(Objective).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-10, atol=1e-10, err_msg=name)
    # with every weight 0, mu falls back to the mean of all ratings, not of a process's share
    assert float(got["mu_zero_weights"]) == pytest.approx(mean_with_zero_weights(Objective),
                                                         rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"solver": "als"}, "full-batch gradient solvers.*got solver='als'"),
     ({"solver": "auto"}, "set solver to one of"),
     ({"solver": "adam", "batch_size": 64}, "set batch_size=None, got 64")],
)
def test_unsupported_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.fit(autofact.MatrixFactorization(**kwargs), planted())


def test_fit_without_a_process_group_says_how_to_start_one():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"call autofact.distributed.init\(\) first"):
        distributed.fit(autofact.MatrixFactorization(solver="adam"), planted())
    assert distributed.is_main_process()


def test_init_outside_torchrun_names_the_launcher(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node N"):
        distributed.init()


def test_cli_fit_under_torchrun_saves_the_single_process_model(tmp_path):
    r = planted(seed=1)
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(
        f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    out = tmp_path / "model.npz"
    # no --solver: under torchrun the CLI defaults to adam (als is not distributed)
    args = ["fit", str(data), "--out", str(out), "--epochs", "5", "--rank", "3",
            "--seed", "0", "--dtype", "float64", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parent.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "autofact", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved model to") == 1, proc.stdout  # one process reports and saves
    shared = autofact.load(out)
    single = autofact.MatrixFactorization(rank=3, solver="adam", epochs=5, seed=0,
                                          dtype="float64", device="cpu").fit(autofact.read(data))
    np.testing.assert_allclose(shared.user_factors_, single.user_factors_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(shared.item_factors_, single.item_factors_, rtol=1e-7, atol=1e-9)


class _TwoProcessPlan(ShardPlan):
    """A stand-in plan that says two processes share the fit (no collectives are called)."""

    world_size = 2


def test_objective_built_with_the_one_process_plan_is_the_plain_objective():
    # issue 11, item 7: the objective takes an explicit plan; None is the one-process identity
    r = planted()
    plain = Objective(r, bias=True, beta=0.5, dtype="float64")
    planned = Objective(r, bias=True, beta=0.5, dtype="float64", plan=ShardPlan())
    assert plain.plan.world_size == 1 and plain.plan.is_main and plain.plan.owns_regularizer
    p1, p2 = plain.init_params(3, seed=0), planned.init_params(3, seed=0)
    assert plain.value_and_grad(p1) == planned.value_and_grad(p2)
    assert ShardPlan().all_sum_float(2.5) == 2.5
    assert not hasattr(autofact.MatrixFactorization(), "_objective_type")


def test_ranking_task_refuses_a_shared_plan():
    model = autofact.MatrixFactorization(task="ranking", epochs=1)
    with pytest.raises(ValueError, match="task='ranking' trains in one process.*2 processes"):
        model.fit(planted(), plan=_TwoProcessPlan())
