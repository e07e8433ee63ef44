"""Checkpoint and resume (issue 11, item 4): the whole training state, written atomically, and a
fit that goes on from it as if it had never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import checkpoint as ck
from autofact.cli import main
from autofact.objective import Objective

from .checkpoint_worker import settings
from .conftest import interrupt_at_call
from .dist_worker import planted

WORKER = Path(__file__).with_name("checkpoint_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def model(solver: str = "adam", epochs: int = 8, **kw):
    return autofact.MatrixFactorization(epochs=epochs, **{**settings(solver), **kw})


def same_factors(a, b, tol: float = 1e-6) -> None:
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=tol, atol=tol,
                                   err_msg=name)


def kill_after_first_checkpoint(proc: subprocess.Popen, folder: Path, then: float) -> None:
    """Wait (at most 120 s) until ``proc`` (started with ``start_new_session=True`` and stderr
    piped) has written ``folder``'s checkpoint, let it run ``then`` seconds more, SIGKILL its
    process group and reap it; the process group is killed whatever fails."""
    try:
        deadline = time.monotonic() + 120
        while not (folder / ck.FILE_NAME).exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(then)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


@pytest.mark.parametrize("solver", ["als", "adam"])
def test_a_fit_killed_by_sigkill_resumes_to_the_uninterrupted_factors(tmp_path, solver):
    # issue 11, item 4: SIGKILL after a checkpoint is written (each write pauses before its
    # rename, so the kill often lands mid-write), then the same command again
    folder, out = tmp_path / "ckpt", tmp_path / "out.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(WORKER), solver, "12", str(folder), str(out)]
    proc = subprocess.Popen([*cmd, "0.25"], env=env, start_new_session=True,
                            stderr=subprocess.PIPE)
    kill_after_first_checkpoint(proc, folder, 0.4)  # into the next epochs' writes
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    state = ck.read(folder / ck.FILE_NAME)  # whole, whatever the kill interrupted
    assert 1 <= state.epoch < 12 and not state.finished
    assert [h["epoch"] for h in state.history] == list(range(1, state.epoch + 1))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    want = model(solver, 12).fit(planted())
    assert int(got["epochs"]) == 12
    for key, name in (("P", "user_factors_"), ("Q", "item_factors_"), ("bu", "user_bias_"),
                      ("bi", "item_bias_")):
        np.testing.assert_allclose(got[key], getattr(want, name), rtol=1e-6, atol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize(("solver", "batch_size"),
                         [("als", None), ("adam", None), ("adam", 64), ("lbfgs", None),
                          ("gd", None), ("sgd", 64)])
def test_resuming_goes_on_as_if_never_stopped(tmp_path, solver, batch_size):
    # issue 11, item 4: optimizer state (Adam's moments, L-BFGS's history), the mini-batch
    # generator and history_ all come back: 4 epochs then 4 more equal 8 at once
    kw = dict(batch_size=batch_size, lr=0.01 if solver in ("sgd", "gd") else None)
    want = model(solver, 8, **kw).fit(planted())
    model(solver, 4, **kw).fit(planted(), checkpoint=tmp_path, checkpoint_every=3)
    assert ck.read(tmp_path / ck.FILE_NAME).epoch == 4  # the last epoch is always written
    got = model(solver, 8, **kw).fit(planted(), checkpoint=tmp_path, checkpoint_every=3)
    same_factors(got, want, 1e-12)
    assert [h["loss"] for h in got.history_] == pytest.approx(
        [h["loss"] for h in want.history_], rel=1e-12)
    assert got.n_epochs_ == 8 and ck.read(tmp_path / ck.FILE_NAME).epoch == 8


def test_a_finished_checkpoint_gives_back_the_model_without_training(tmp_path, monkeypatch):
    first = model("adam", 5).fit(planted(), checkpoint=tmp_path)
    monkeypatch.setattr(Objective, "value_and_grad",
                        lambda *a, **k: pytest.fail("trained again"))
    again = model("adam", 5).fit(planted(), checkpoint=tmp_path)
    same_factors(again, first, 0)
    assert again.history_ == first.history_ and again.n_epochs_ == 5


def test_early_stopping_state_is_resumed(tmp_path):
    # the best epoch's parameters and the patience count survive a resume
    train, val = planted(seed=0), planted(seed=3)
    kw = dict(patience=2, beta=5.0)
    want = model("adam", 40, **kw).fit(train, validation=val)
    assert want.n_epochs_ < 40  # it did stop early
    stop = want.best_epoch_ + 1
    model("adam", stop, **kw).fit(train, validation=val, checkpoint=tmp_path)
    got = model("adam", 40, **kw).fit(train, validation=val, checkpoint=tmp_path)
    assert got.best_epoch_ == want.best_epoch_ and got.n_epochs_ == want.n_epochs_
    same_factors(got, want, 1e-12)


def test_ctrl_c_writes_the_last_finished_epoch_first(tmp_path, monkeypatch):
    # issue 11: Ctrl-C inside epoch 4 with checkpoint_every=10 still leaves epoch 3 on disk
    original = interrupt_at_call(monkeypatch, Objective, "value_and_grad", 4).original
    with pytest.raises(KeyboardInterrupt):
        model("adam", 8).fit(planted(), checkpoint=tmp_path, checkpoint_every=10)
    monkeypatch.setattr(Objective, "value_and_grad", original)
    assert ck.read(tmp_path / ck.FILE_NAME).epoch == 3
    same_factors(model("adam", 8).fit(planted(), checkpoint=tmp_path), model("adam", 8).fit(
        planted()), 1e-12)


def test_a_resume_with_other_data_or_settings_is_refused(tmp_path):
    model("adam", 3).fit(planted(), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="written for other ratings .*fingerprint differs"):
        model("adam", 3).fit(planted(seed=5), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="other settings .*rank=3 there, 4 now"):
        model("adam", 3, rank=4).fit(planted(), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="solver 'adam' there, 'gd' now"):
        model("gd", 3).fit(planted(), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="at epoch 3, beyond epochs=2"):
        model("adam", 2).fit(planted(), checkpoint=tmp_path)


def test_bad_checkpoint_arguments_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int .*got 0"):
        model().fit(planted(), checkpoint=tmp_path, checkpoint_every=0)
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        model().fit(planted(), checkpoint=afile)
    with pytest.raises(TypeError, match="checkpoint must be a folder path, got int"):
        model().fit(planted(), checkpoint=3)
    with pytest.raises(ValueError, match="checkpoint= is not available for task='ranking'"):
        autofact.MatrixFactorization(task="ranking").fit(planted(), checkpoint=tmp_path)
    (tmp_path / ck.FILE_NAME).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an autofact checkpoint or is damaged"):
        model().fit(planted(), checkpoint=tmp_path)
    np.savez(tmp_path / ck.FILE_NAME, meta=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(ValueError, match="is not an autofact checkpoint"):
        model().fit(planted(), checkpoint=tmp_path)
    meta = {"format": ck.FORMAT_NAME, "format_version": ck.FORMAT_VERSION, "epoch": 1}
    np.savez(tmp_path / ck.FILE_NAME, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(ValueError, match="is damaged: it holds no factors"):
        model().fit(planted(), checkpoint=tmp_path)
    meta = {"format": ck.FORMAT_NAME, "format_version": 99, "autofact_version": "9"}
    np.savez(tmp_path / ck.FILE_NAME, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(ValueError, match="checkpoint format 99"):
        model().fit(planted(), checkpoint=tmp_path)


def test_the_file_is_npz_and_json_without_pickles(tmp_path):
    model("adam", 2).fit(planted(), checkpoint=tmp_path)
    with np.load(tmp_path / ck.FILE_NAME, allow_pickle=False) as npz:
        names = set(npz.files)
        meta = json.loads(npz["meta"].tobytes())
        assert all(npz[n].dtype != object for n in names)
    assert {"param.P", "param.Q", "param.bu", "param.bi", "generator",
            "optim.adam.0.m", "optim.adam.0.v", "optim.adam.0.t"} <= names
    assert meta["format"] == "autofact-checkpoint" and meta["epoch"] == 2
    assert meta["settings"]["rank"] == 3 and "epochs" not in meta["settings"]


def test_cli_resumes_with_the_same_command(tmp_path, capsys):
    r = planted(seed=1)
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(
        f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    folder = tmp_path / "ckpt"
    args = ["fit", str(data), "--out", str(tmp_path / "m.npz"), "--rank", "3", "--solver",
            "adam", "--dtype", "float64", "--device", "cpu", "--quiet", "--checkpoint",
            str(folder), "--checkpoint-every", "2"]
    assert main([*args, "--epochs", "3"]) == 0
    assert ck.read(folder / ck.FILE_NAME).epoch == 3
    assert main([*args, "--epochs", "6"]) == 0  # goes on from epoch 3
    resumed = autofact.load(tmp_path / "m.npz")
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()
    assert main([*args, "--epochs", "6", "--rank", "4"]) == 2
    assert "other settings (--rank 3 there, 4 now)" in capsys.readouterr().err
    assert main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--checkpoint-every",
                 "2"]) == 2
    assert "--checkpoint-every needs --checkpoint DIR" in capsys.readouterr().err
    assert main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--checkpoint",
                 str(data)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_cli_ctrl_c_says_where_to_resume_from(tmp_path, capsys, monkeypatch):
    # issue 11: Ctrl-C inside epoch 3 (checkpoints every 5 epochs): epoch 2 is written first
    r = planted(seed=1)
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(
        f"u{u},i{i},{float(v)!r}\n" for u, i, v in zip(r.users, r.items, r.values, strict=True)))
    interrupt_at_call(monkeypatch, Objective, "value_and_grad", 3)
    folder = tmp_path / "ckpt"
    assert main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--solver", "adam",
                 "--epochs", "9", "--quiet", "--checkpoint", str(folder),
                 "--checkpoint-every", "5"]) == 130
    err = capsys.readouterr().err
    assert f"the checkpoint in {folder} holds epoch 2; run the same command again" in err
    assert ck.read(folder / ck.FILE_NAME).epoch == 2
