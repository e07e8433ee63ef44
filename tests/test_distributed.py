"""autofact.distributed: two gloo processes under torchrun give the single-process fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import autofact
from autofact import distributed
from autofact.evaluation import evaluate
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


def test_unsupported_settings_are_refused():
    # (issue 11, item 2: sgd and mini-batch adam are shared now: tests/test_distributed_minibatch)
    with pytest.raises(ValueError, match="distributed training runs these solvers: .*got "
                       "solver='newton'"):
        distributed.fit(autofact.MatrixFactorization(solver="newton"), planted())


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
    data = tmp_path / "ratings"  # three part files, each user's ratings spread over them
    data.mkdir()
    order = np.random.default_rng(0).permutation(len(r))
    for k, rows in enumerate(np.array_split(order, 3)):
        (data / f"part-{k}.csv").write_text("user,item,rating\n" + "".join(
            f"u{u},i{i},{float(v)!r}\n"
            for u, i, v in zip(r.users[rows], r.items[rows], r.values[rows], strict=True)))
    out = tmp_path / "model.npz"
    # issue 11: sharded ALS through the CLI (users partitioned, so the parts are read by user:
    # split by part, each user's ratings would be on both processes and ALS would refuse)
    # issue 11, item 3: --test's users' seen items are gathered for the top-k metrics (rank 0
    # holds no others'); the file has every user's, from distributed.save
    single = autofact.MatrixFactorization(rank=3, solver="als", epochs=5, seed=0,
                                          dtype="float64", device="cpu").fit(autofact.read(data))
    test = tmp_path / "test.csv"  # each test user's held-out item: its unseen 2nd choice
    test.write_text("user,item,rating\n" + "".join(
        f"u{u},{single.recommend(f'u{u}', n=2).items[1]},5.0\n" for u in range(0, 40, 3)))
    args = ["fit", str(data), "--out", str(out), "--epochs", "5", "--rank", "3", "--solver",
            "als", "--seed", "0", "--dtype", "float64", "--device", "cpu", "--test", str(test),
            "--json", "--k", "5"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parent.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "autofact", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one process reports (and saves)
    shared = autofact.load(out)
    assert shared.solver_ == "als"
    np.testing.assert_allclose(shared.user_factors_, single.user_factors_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(shared.item_factors_, single.item_factors_, rtol=1e-7, atol=1e-9)
    assert (shared.index_.seen != single.index_.seen).nnz == 0
    want = evaluate(single, autofact.read(test), k=5)
    assert want["precision@5"] == pytest.approx(0.2)  # every 2nd choice in the top 5
    for key, value in want.items():
        assert summary["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


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


def _launch_two(args: list[str], port: int, cwd: Path) -> list[subprocess.Popen]:
    """Two ranks of ``python -m autofact ARGS`` on 127.0.0.1 (the environment torchrun would
    set), each in its own session so that a finally can kill all it started."""
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent / "src"),
                                              os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-m", "autofact", *args], cwd=cwd,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    return procs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("signal_name", "victim"), [("SIGSTOP", 1), ("SIGKILL", 0)])
def test_a_frozen_or_killed_peer_ends_the_others_naming_it(tmp_path, signal_name, victim):
    # issue 11, item 5: a peer frozen (kill -STOP) or killed makes the other exit 1 within
    # --timeout, naming the rank, with the last checkpoint intact; then the same command resumes
    import signal as sig

    r = planted(seed=1)
    (tmp_path / "r.csv").write_text("user,item,rating\n" + "".join(
        f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    args = ["fit", "r.csv", "--out", "m.npz", "--epochs", "400", "--rank", "3", "--solver",
            "adam", "--seed", "0", "--dtype", "float64", "--device", "cpu", "--quiet",
            "--checkpoint", "ck", "--checkpoint-every", "1", "--timeout", "5"]
    ckpt = tmp_path / "ck" / "checkpoint.npz"
    procs = _launch_two(args, _free_port(), tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        hit = time.monotonic()
        os.killpg(procs[victim].pid, getattr(sig, signal_name))
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=60)
        waited = time.monotonic() - hit
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, sig.SIGKILL)
            p.communicate(timeout=30)
    assert survivor.returncode == 1, err
    assert f"error: rank {victim} stopped responding" in err, err
    assert "please report" not in err and "Traceback" not in err
    assert waited < 5 + 10, waited  # within --timeout (plus start-up slack on a busy machine)
    from autofact import checkpoint as ck

    state = ck.read(ckpt)  # intact
    assert 1 <= state.epoch < 400
    if victim == 1:  # the same command again resumes and finishes (rank 0 writes the model)
        procs = _launch_two(args, _free_port(), tmp_path)
        try:
            outs = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, sig.SIGKILL)
                    p.communicate(timeout=30)
        assert [p.returncode for p in procs] == [0, 0], outs
        model = autofact.load(tmp_path / "m.npz")
        assert [h["epoch"] for h in model.history_] == list(range(1, 401))
        single = autofact.MatrixFactorization(rank=3, solver="adam", epochs=400, seed=0,
                                              dtype="float64", device="cpu"
                                              ).fit(autofact.read(tmp_path / "r.csv"))
        np.testing.assert_allclose(model.user_factors_, single.user_factors_, rtol=1e-6,
                                   atol=1e-6)


def test_torch_plan_without_a_process_group_says_how_to_start_one():
    from autofact.sharding import TorchShardPlan

    with pytest.raises(RuntimeError, match=r"call autofact.distributed.init\(\) first"):
        TorchShardPlan()


def test_init_refuses_a_bad_timeout():
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        distributed.init(timeout=0)


def test_a_peer_that_never_joins_is_reported_within_the_timeout(tmp_path):
    # issue 11, item 5: rank 0 of 2 alone gives up after the timeout with a named error
    code = ("from autofact import distributed\n"
            "from autofact.sharding import PeerLostError\n"
            "try:\n    distributed.init(timeout=2)\n"
            "except PeerLostError as exc:\n    print(exc)\n    raise SystemExit(3)\n")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "RANK": "0",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "the 2 processes did not all join at 127.0.0.1" in proc.stdout


class _DisagreeingPlan(_TwoProcessPlan):
    """Says the other process found another checkpoint."""

    def agree(self, value: int) -> bool:
        return False


def test_processes_that_find_different_checkpoints_are_refused(tmp_path):
    model = autofact.MatrixFactorization(rank=2, solver="adam", epochs=1, device="cpu")
    with pytest.raises(ValueError, match="different checkpoints .*every process reads"):
        model.fit(planted(), plan=_DisagreeingPlan(), checkpoint=tmp_path)
