"""Ctrl-C during training (issue 8, item 3): the Python API keeps the model of the last finished
epoch, and ``autofact fit`` saves it to --out, says which epoch, and exits 130.

The in-process tests raise ``KeyboardInterrupt`` from inside an epoch (deterministic); one
subprocess test sends a real SIGINT once the progress bar shows a finished epoch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import autofact
import autofact.solvers as solvers
from autofact.objective import Objective

from .conftest import interrupt_at_call


def ratings(n_users: int = 40, n_items: int = 30, n: int = 500, seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_users * n_items, size=n, replace=False)
    users, items = np.divmod(flat, n_items)
    return autofact.Ratings.from_coo(users, items, rng.integers(1, 6, n).astype(float),
                                     shape=(n_users, n_items))


CASES = [  # solver, batch size, where the interrupt comes from
    ("als", None, "after-update"),
    ("lbfgs", None, "after-update"),
    ("adam", 64, "after-update"),
    ("sgd", 64, "after-update"),
    ("gd", None, "gradient"),
    ("adam", None, "gradient"),
]


@pytest.mark.parametrize(("solver", "batch_size", "where"), CASES,
                         ids=[f"{s}-{b or 'full'}" for s, b, _ in CASES])
def test_interrupted_fit_keeps_the_last_finished_epoch(solver, batch_size, where, monkeypatch):
    # issue 8: after KeyboardInterrupt escapes fit, the model is the one of the last finished
    # epoch (parameters, n_epochs_ and history_ agree), usable and savable
    data = ratings()
    settings = dict(rank=3, solver=solver, batch_size=batch_size, seed=1, beta=0.01,
                    lr=None if solver in ("als", "lbfgs") else 0.01)
    references = {e: autofact.MatrixFactorization(epochs=e, **settings).fit(data)
                  for e in (2, 3)}
    if where == "gradient":  # inside epoch 3, before its update
        patched = interrupt_at_call(monkeypatch, Objective, "value_and_grad", 3)
    else:  # epoch 3 has updated the parameters, and is not finished
        patched = interrupt_at_call(monkeypatch, solvers, "_project", 3)
    model = autofact.MatrixFactorization(epochs=10, **settings)
    with pytest.raises(KeyboardInterrupt):
        model.fit(data)
    monkeypatch.undo()
    assert patched.calls == 3
    assert model.n_epochs_ == len(model.history_) == 2
    assert [h["epoch"] for h in model.history_] == [1, 2]
    ref = references[model.n_epochs_]
    np.testing.assert_array_equal(model.user_factors_, ref.user_factors_)
    np.testing.assert_array_equal(model.item_factors_, ref.item_factors_)
    u, i = data.user_ids[data.users[:5]], data.item_ids[data.items[:5]]
    np.testing.assert_array_equal(model.predict(u, i), ref.predict(u, i))
    assert not np.array_equal(model.user_factors_, references[3].user_factors_)


def test_cli_ctrl_c_leaves_an_earlier_model_at_out_as_it_was(monkeypatch, tmp_path, capsys):
    # trust (never lost data): Ctrl-C used to replace the model an earlier run left at --out
    # with the part-trained one; it now goes beside it, and --out is left as it was
    from autofact import cli

    data = tmp_path / "r.csv"
    r = ratings()
    data.write_text("".join(f"{u},{i},{v}\n" for u, i, v in zip(r.users, r.items, r.values,
                                                                 strict=True)))
    out = tmp_path / "m.npz"
    assert cli.main(["fit", str(data), "--out", str(out), "--solver", "als", "--epochs", "5",
                     "--quiet"]) == 0
    before = out.read_bytes()
    interrupt_at_call(monkeypatch, solvers, "_project", 3)
    code = cli.main(["fit", str(data), "--out", str(out), "--solver", "als", "--epochs", "10",
                     "--quiet"])
    err = capsys.readouterr().err
    beside = tmp_path / "m.interrupted.npz"
    assert code == cli.ExitStatus.INTERRUPTED
    assert err.strip().splitlines()[-1] == (
        f"autofact: interrupted during epoch 3; saved the model of epoch 2 to {beside} "
        f"({out}, from an earlier run, is left as it was)")
    assert out.read_bytes() == before
    assert autofact.load(beside).n_epochs_ == 2 and autofact.load(out).n_epochs_ == 5


def test_interrupt_before_the_first_epoch_leaves_no_epochs(monkeypatch):
    def interrupting(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(solvers, "_project", interrupting)
    model = autofact.MatrixFactorization(rank=2, solver="als", epochs=5, seed=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(ratings())
    assert model.n_epochs_ == 0 and model.history_ == []


def test_cli_saves_the_last_finished_epoch_on_ctrl_c(monkeypatch, tmp_path, capsys):
    # issue 8: "autofact: interrupted" and nothing saved; now the last finished epoch is saved
    from autofact import cli

    data = tmp_path / "r.csv"
    r = ratings()
    data.write_text("".join(f"{u},{i},{v}\n" for u, i, v in zip(r.users, r.items, r.values,
                                                                 strict=True)))
    interrupt_at_call(monkeypatch, solvers, "_project", 4)
    out = tmp_path / "m.npz"
    code = cli.main(["fit", str(data), "--out", str(out), "--solver", "als", "--epochs", "10",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.ExitStatus.INTERRUPTED == 130
    assert err.strip().splitlines()[-1] == (
        f"autofact: interrupted during epoch 4; saved the model of epoch 3 to {out}"
    )
    saved = autofact.load(out)
    assert saved.n_epochs_ == len(saved.history_) == 3

    def at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(solvers, "_project", at_once)  # in the first epoch
    other = tmp_path / "none.npz"
    code = cli.main(["fit", str(data), "--out", str(other), "--solver", "als", "--quiet"])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        f"autofact: interrupted before the first epoch finished; nothing saved to {other}"
    )
    assert not other.exists()


def _write_big(path: Path) -> None:
    rng = np.random.default_rng(0)
    m, n, nnz = 1000, 500, 20_000
    flat = rng.choice(m * n, size=nnz, replace=False)
    u, i = np.divmod(flat, n)
    v = rng.integers(1, 6, nnz)
    path.write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in zip(u, i, v, strict=True)))


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_sigint_in_a_real_process(tmp_path):
    # issue 8: a real Ctrl-C (SIGINT) once the progress bar shows a finished epoch
    data, out = tmp_path / "big.tsv", tmp_path / "model.npz"
    _write_big(data)
    epochs = 100_000  # never reached: the test interrupts after the first epoch
    with subprocess.Popen(
        [sys.executable, "-m", "autofact", "fit", str(data), "--out", str(out), "--solver",
         "adam", "--batch-size", "4096", "--rank", "8", "--epochs", str(epochs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(fd, 4096), b"")),
                                  daemon=True)
        reader.start()
        deadline = time.monotonic() + 240
        try:
            while not re.search(rb"\b[1-9]\d*/%d\b" % epochs, b"".join(chunks)):
                assert proc.poll() is None, b"".join(chunks).decode()
                assert time.monotonic() < deadline, "no epoch finished in 240 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
    err = b"".join(chunks).decode()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"autofact: interrupted during epoch (\d+); saved the model of epoch "
                     rf"(\d+) to {re.escape(str(out))}", last)
    assert m, err
    finished = int(m.group(2))
    assert int(m.group(1)) == finished + 1 and finished >= 1
    saved = autofact.load(out)
    assert saved.n_epochs_ == len(saved.history_) == finished
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
