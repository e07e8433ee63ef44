"""Checkpoint and resume of fits shared by processes that each hold only their own users' rows
(issue 11, item 4): the sampler and ALS on two gloo processes on 127.0.0.1. Rank 0 writes the
whole tables (gathered), each process takes its own rows back; a fit stopped after a written
epoch and resumed ends as the uninterrupted one.

Run by pytest; its ``__main__`` is the worker the processes run under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/test_distributed_checkpoint.py OUT_DIR
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

import autofact

HERE = Path(__file__)
SRC = HERE.parent.parent / "src"
NAMES = ("P", "Q", "bu", "bi")
#: name -> (stop after the checkpoint of this epoch, then resume)
CASES = {"gibbs": 30, "gibbs_local": 20, "als": 4}


def _launch(out: Path, world: int = 2, timeout: float = 240) -> tuple[int, str]:
    """The worker on ``world`` gloo processes (loopback, bounded time, every process ended)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                    "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(world), str(HERE), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out: end torchrun and the workers it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    return proc.returncode, err


def test_shared_sampler_and_als_resume_to_the_uninterrupted_fit(tmp_path):
    # issue 11, item 4: 2 processes; the sampler (users cut at boundaries, and rank-local
    # users with the sweep budget's pairs held per process) and ALS with early stopping, each
    # stopped after a written checkpoint and resumed: the same factors and history to 1e-6
    from autofact import checkpoint as ck

    from .dist_gibbs_worker import planted

    data = planted()
    # two part files, each with ratings of every user: the CLI must read them by user
    lines = [f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(data.users, data.items, data.values,
                                                            strict=True)]
    (tmp_path / "parts").mkdir()
    for k in (0, 1):
        (tmp_path / "parts" / f"part{k}.csv").write_text("user,item,rating\n"
                                                          + "".join(lines[k::2]))
    code, err = _launch(tmp_path)
    assert code == 0, err[-4000:]
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz", allow_pickle=False)) for r in (0, 1)]
    for got in ranks:
        for case, stop in CASES.items():
            assert int(got[f"{case}.stopped_at"]) == stop, case  # it was stopped there
            for name in (*NAMES, "loss", "pred"):
                np.testing.assert_allclose(got[f"{case}.resumed.{name}"],
                                           got[f"{case}.whole.{name}"], rtol=1e-6, atol=1e-6,
                                           err_msg=f"{case}.{name}")
            assert len(got[f"{case}.whole.loss"]) > stop  # it went on after the resume
            for name in ("gain", "val"):
                np.testing.assert_allclose(got[f"{case}.resumed.{name}"],
                                           got[f"{case}.whole.{name}"], rtol=1e-6,
                                           err_msg=f"{case}.{name}")
        assert str(got["gibbs.whole.solver"]) == str(got["gibbs.resumed.solver"]) == "gibbs"
    for case in CASES:  # the shared chain's whole model is the same on both processes
        np.testing.assert_array_equal(ranks[0][f"{case}.resumed.P"],
                                      ranks[1][f"{case}.resumed.P"])
    np.testing.assert_array_equal(ranks[0]["seedless.Q"], ranks[1]["seedless.Q"])
    np.testing.assert_array_equal(ranks[0]["seedless.direct.Q"], ranks[1]["seedless.direct.Q"])
    # autofact fit --checkpoint under torchrun keeps the default model (the sampler; the parts
    # read by user) instead of falling back to adam; its last checkpoint is the finished chain
    cli = autofact.load(tmp_path / "cli.npz")
    assert cli.solver_ == "gibbs"
    state = ck.read(tmp_path / "cli_ckpt" / ck.FILE_NAME)
    assert state.solver == "gibbs" and state.finished and state.epoch == cli.n_epochs_
    assert state.chain is not None and state.chain["processes"] == 2
    assert state.params["P"].shape == cli.user_factors_.shape
    assert [h["loss"] for h in state.history] == [h["loss"] for h in cli.history_]


# ---------------------------------------------------------------------------- the worker
class _Killed(Exception):
    """Stands for a kill right after a checkpoint was written (on every process alike)."""


def _record(m: autofact.MatrixFactorization) -> dict[str, np.ndarray]:
    from .dist_gibbs_worker import RATED

    h = m.history_
    with warnings.catch_warnings():  # the held-out users of ALS's data are unknown
        warnings.simplefilter("ignore", UserWarning)
        pred = m.predict(m.user_ids_[RATED], m.item_ids_[:9])
    return {"P": m.user_factors_, "Q": m.item_factors_, "bu": m.user_bias_,
            "bi": m.item_bias_, "loss": np.array([x["loss"] for x in h]),
            "gain": np.array([x.get("gain", np.nan) for x in h]),
            "val": np.array([x.get("val_rmse", np.nan) for x in h]),
            "solver": np.array(m.solver_),
            "pred": pred}


def _worker(out: Path) -> None:
    import torch

    from autofact import checkpoint as ck
    from autofact import distributed
    from autofact.cli import main

    from .dist_gibbs_worker import own_users, planted
    from .test_distributed_als import model as als_model
    from .test_distributed_als import planted as als_planted

    rank, world = distributed.init(timeout=60)
    data = planted()
    train, val = als_planted()
    fits = {  # name -> (model maker, fit arguments)
        "gibbs": (lambda: autofact.MatrixFactorization(rank=3, seed=0), {"X": data}),
        "gibbs_local": (lambda: autofact.MatrixFactorization(rank=3, seed=0),
                        {"X": own_users(data, rank, world), "local": True}),
        "als": (als_model, {"X": train, "validation": val}),
    }
    saved: dict[str, np.ndarray] = {}
    write = ck.Checkpointer._write
    for name, (make, kw) in fits.items():
        stop = CASES[name]
        saved.update({f"{name}.whole.{k}": v for k, v in _record(
            distributed.fit(make(), kw["X"], **{k: v for k, v in kw.items() if k != "X"})
        ).items()})
        folder = out / f"{name}_ckpt"
        args = {k: v for k, v in kw.items() if k != "X"}

        def write_then_die(self, state, stop=stop):
            write(self, state)
            if state.epoch == stop:
                raise _Killed

        ck.Checkpointer._write = write_then_die
        try:
            distributed.fit(make(), kw["X"], checkpoint=folder, checkpoint_every=2, **args)
        except _Killed:
            pass
        finally:
            ck.Checkpointer._write = write
        torch.distributed.barrier()  # rank 0 has written it
        saved[f"{name}.stopped_at"] = np.array(ck.read(folder / ck.FILE_NAME).epoch)
        resumed = distributed.fit(make(), kw["X"], checkpoint=folder, checkpoint_every=2,
                                  **args)
        saved.update({f"{name}.resumed.{k}": v for k, v in _record(resumed).items()})
    # issue 11 (review): an unseeded shared chain is one random stream on every process (each
    # drew its own seed: the processes' item rows differed by ~3e-3 after 10 sweeps)
    seedless = distributed.fit(autofact.MatrixFactorization(rank=3, seed=None, epochs=8), data)
    saved["seedless.Q"] = seedless.item_factors_
    # ... also when gibbs_mf itself is called with a plan and no seed
    from autofact.sharding import TorchShardPlan
    from autofact.solvers.gibbs import gibbs_mf

    plan = TorchShardPlan()
    direct = gibbs_mf(plan.share(data), rank=3, sweeps=4, seed=None, plan=plan)
    saved["seedless.direct.Q"] = direct.Q
    np.savez(out / f"rank{rank}.npz", **saved)
    torch.distributed.barrier()
    # last: autofact fit leaves the process group itself
    code = main(["fit", str(out / "parts"), "--out", str(out / "cli.npz"), "--rank", "3",
                 "--seed", "0", "--quiet", "--checkpoint", str(out / "cli_ckpt")])
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    __package__ = "tests"
    _worker(Path(sys.argv[1]))
