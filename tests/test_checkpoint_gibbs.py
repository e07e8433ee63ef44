"""Checkpoint and resume of the default model, the Bayesian sampler (issue 11, item 4): a chain
stopped after sweep k and resumed draws what the uninterrupted chain draws, so the fit ends with
the same posterior means, predictions and history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import checkpoint as ck
from autofact.cli import main
from autofact.sharding import ShardPlan
from autofact.solvers import gibbs

from .conftest import interrupt_at_call
from .dist_gibbs_worker import RATED, planted
from .test_checkpoint import kill_after_first_checkpoint

WORKER = Path(__file__).with_name("checkpoint_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def model(**kw) -> autofact.MatrixFactorization:
    """The default model (solver 'auto', sweeps by the budget) at rank 3."""
    return autofact.MatrixFactorization(**{"rank": 3, "seed": 0, **kw})


def assert_same_fit(got: autofact.MatrixFactorization, want: autofact.MatrixFactorization
                    ) -> None:
    """The posterior means, predictions and history (all but the times) to 1e-6."""
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-6,
                                   atol=1e-6, err_msg=name)
    users, items = want.user_ids_[RATED], want.item_ids_[:9]
    np.testing.assert_allclose(got.predict(users, items), want.predict(users, items),
                               rtol=1e-6, atol=1e-6)
    def untimed(m: autofact.MatrixFactorization) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "time"} for h in m.history_]

    assert untimed(got) == untimed(want)
    assert got.n_epochs_ == want.n_epochs_ and got.solver_ == want.solver_ == "gibbs"


@pytest.mark.parametrize(
    ("kw", "sweep"),
    [({}, 30),  # the default: the sweep budget stops the chain (at 51); resumed after burn-in
     ({}, 6),  # resumed during burn-in (the provisional mean's restarts)
     ({"epochs": 24, "validation_fraction": 0.2, "patience": 3}, 10),  # early stopping's best
     ({"epochs": 16, "implicit": True}, 9)],  # SVD++'s Y, its running mean and X @ Y
)
def test_a_chain_stopped_by_ctrl_c_resumes_to_the_uninterrupted_fit(tmp_path, monkeypatch, kw,
                                                                    sweep):
    # issue 11, item 4: the default model checkpoints (issue 8: 'auto' picks the sampler as
    # without checkpoint=); Ctrl-C inside sweep k+1 (checkpoints every 7) writes sweep k first
    r = planted()
    want = model(**kw).fit(r)
    calls = interrupt_at_call(monkeypatch, gibbs, "_sample_rows", 2 * sweep + 1)
    with pytest.raises(KeyboardInterrupt):
        model(**kw).fit(r, checkpoint=tmp_path, checkpoint_every=7)
    monkeypatch.setattr(gibbs, "_sample_rows", calls.original)
    state = ck.read(tmp_path / ck.FILE_NAME)
    assert state.epoch == sweep and state.solver == "gibbs" and not state.finished
    got = model(**kw).fit(r, checkpoint=tmp_path, checkpoint_every=7)
    assert_same_fit(got, want)
    state = ck.read(tmp_path / ck.FILE_NAME)
    assert state.finished and state.epoch == want.n_epochs_


def test_a_chain_without_a_seed_resumes_with_the_budgets_own_pairs(tmp_path, monkeypatch):
    # issue 11, item 4: without a seed the sweep budget samples other pairs each fit; the
    # resumed budget compares its predictions on the pairs it kept (scored on other pairs,
    # the estimated gain was ~36 instead of ~0.002, and the chain never stopped)
    r = planted()
    calls = interrupt_at_call(monkeypatch, gibbs, "_sample_rows", 2 * 30 + 1)
    with pytest.raises(KeyboardInterrupt):
        model(seed=None).fit(r, checkpoint=tmp_path)
    monkeypatch.setattr(gibbs, "_sample_rows", calls.original)
    got = model(seed=None).fit(r, checkpoint=tmp_path)
    gains = [h["gain"] for h in got.history_ if h["epoch"] > 30]
    assert gains and max(gains) < 0.05
    assert got.n_epochs_ < 130 and got.history_[-1]["stopped"].startswith("converged")


def test_a_finished_chain_gives_back_the_model_without_sampling(tmp_path, monkeypatch):
    r = planted()
    first = model().fit(r, checkpoint=tmp_path, checkpoint_every=10)
    assert first.n_epochs_ < 130  # the budget stopped it, and the stop was written
    monkeypatch.setattr(gibbs, "_sample_rows", lambda *a, **k: pytest.fail("sampled again"))
    assert_same_fit(model().fit(r, checkpoint=tmp_path), first)


def test_the_chain_state_is_npz_and_json_with_the_generator_state(tmp_path):
    model(epochs=5).fit(planted(), checkpoint=tmp_path)
    with np.load(tmp_path / ck.FILE_NAME, allow_pickle=False) as npz:
        names = set(npz.files)
        meta = json.loads(npz["meta"].tobytes())
        assert all(npz[n].dtype != object for n in names)
    assert {"param.P", "param.bu", "param.Q", "param.bi", "optim.rows.sum", "optim.rows.tau",
            "optim.chain.sum", "optim.chain.tau", "optim.chain.hyp_u.prec"} <= names
    chain = meta["chain"]
    assert chain["sweeps"] == 5 and chain["burn_in"] == 0 and chain["processes"] == 1
    rng = chain["values"]["rng"]  # bit_generator.state, as JSON
    assert rng["bit_generator"] == "PCG64" and isinstance(rng["state"]["state"], int)
    assert len(chain["values"]["rmse"]) == 5 and chain["values"]["n_avg"] == 5


class _TwoProcesses(ShardPlan):
    """Says two processes share the fit (every sum the identity: one process's chain)."""

    world_size = 2


def test_a_chain_from_other_data_or_settings_is_refused(tmp_path):
    # issue 11, item 4: each with the message that names what differs and the fix
    r = planted()
    model(epochs=6).fit(r, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="written for other ratings .*fingerprint differs"):
        model(epochs=6).fit(planted(seed=1), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="other settings .*rank=3 there, 4 now"):
        autofact.MatrixFactorization(rank=4, seed=0, epochs=6).fit(r, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="solver 'gibbs' there, 'als' now"):
        model(epochs=6, solver="als").fit(r, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"holds a chain of 6 sweeps \(burn-in 0\), got "
                                         "epochs=12 now: .*ask for 6 to resume"):
        model(epochs=12).fit(r, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"written by 1 process\(es\) sharing the chain, got 2 "
                                         "now; resume with 1"):
        model(epochs=6).fit(r, checkpoint=tmp_path, plan=_TwoProcesses())
    with pytest.raises(ValueError, match="loss='huber' samples by Laplace-MH, which keeps no "
                                         "checkpoint yet"):
        model(epochs=6, solver="gibbs", loss="huber").fit(r, checkpoint=tmp_path / "other")


def test_a_chain_checkpoint_missing_an_array_is_damaged(tmp_path):
    model(epochs=4).fit(planted(), checkpoint=tmp_path)
    path = tmp_path / ck.FILE_NAME
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "param.bu"}
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"checkpoint\.npz is damaged: its chain lacks 'bu'; "
                                         "delete it to start over"):
        model(epochs=4).fit(planted(), checkpoint=tmp_path)


def test_cli_default_fit_killed_by_sigkill_resumes_to_the_uninterrupted_model(tmp_path):
    # issue 11, item 4: `autofact fit DATA --checkpoint DIR` with the default solver, killed
    # mid-fit (each write pauses before its rename: the kill often lands mid-write), then the
    # same command again: the model file predicts as an uninterrupted run's
    r = planted()
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(
        f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    folder, out = tmp_path / "ckpt", tmp_path / "m.npz"
    args = ["fit", str(data), "--out", str(out), "--rank", "3", "--quiet", "--checkpoint",
            str(folder)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(WORKER), "cli", "0.1", *args], env=env,
                            start_new_session=True, stderr=subprocess.PIPE)
    kill_after_first_checkpoint(proc, folder, 0.3)  # into the next sweeps' writes
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    state = ck.read(folder / ck.FILE_NAME)
    assert state.solver == "gibbs" and 1 <= state.epoch and not state.finished
    done = subprocess.run([sys.executable, "-m", "autofact", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = autofact.load(out)
    assert main([*args[:3], str(tmp_path / "whole.npz"), *args[4:-2]]) == 0  # uninterrupted
    whole = autofact.load(tmp_path / "whole.npz")
    assert resumed.solver_ == whole.solver_ == "gibbs"
    assert resumed.n_epochs_ == whole.n_epochs_
    users, items = whole.user_ids_[RATED], whole.item_ids_[:9]
    np.testing.assert_allclose(resumed.predict(users, items), whole.predict(users, items),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["auto", "als"])
def test_ctrl_c_during_a_checkpoint_write_writes_that_epoch_again(tmp_path, monkeypatch, solver):
    # issue 11, item 4 (review): Ctrl-C while the write of epoch 6 was under way left the
    # checkpoint of epoch 3 (the state of epoch 6 was dropped before its write finished), though
    # the model kept epoch 6 and the CLI said the checkpoint held it
    r = planted()
    calls = interrupt_at_call(monkeypatch, ck, "write", 2)  # the write of epoch 6
    with pytest.raises(KeyboardInterrupt):
        model(epochs=12, solver=solver).fit(r, checkpoint=tmp_path, checkpoint_every=3)
    assert calls.calls == 3  # the interrupted write, then Ctrl-C's own
    monkeypatch.setattr(ck, "write", calls.original)
    assert ck.read(tmp_path / ck.FILE_NAME).epoch == 6


def test_a_fixed_length_chain_is_not_resumed_by_the_sweep_budget(tmp_path):
    # issue 11, item 4 (review): a chain checkpointed with epochs=130 (no sweep budget) and
    # resumed with epochs=None (the budget, also 130 sweeps here) was called damaged, with the
    # advice to delete it; the budget needs the predictions it keeps from the first kept sweep
    r = planted()
    model(epochs=130).fit(r, checkpoint=tmp_path, checkpoint_every=5)
    with pytest.raises(ValueError, match=r"ran with epochs=130 \(no sweep budget\), got "
                                         r"epochs=None now: .*pass epochs=130 to resume"):
        model().fit(r, checkpoint=tmp_path)
    assert ck.read(tmp_path / ck.FILE_NAME).epoch == 130  # kept


def test_a_resumed_chain_does_not_redo_its_start(tmp_path, monkeypatch):
    # issue 11, item 4 (review): the spectral start (issue 10) is the chain's first state; a
    # resumed chain takes its draws from the checkpoint instead of computing a start again
    r = planted()
    calls = interrupt_at_call(monkeypatch, gibbs, "_sample_rows", 2 * 4 + 1)
    with pytest.raises(KeyboardInterrupt):
        model(epochs=8).fit(r, checkpoint=tmp_path)
    monkeypatch.setattr(gibbs, "_sample_rows", calls.original)
    monkeypatch.setattr(gibbs, "_spectral_start",
                        lambda *a, **k: pytest.fail("the start was computed again"))
    assert model(epochs=8).fit(r, checkpoint=tmp_path).n_epochs_ == 8
