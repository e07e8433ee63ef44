"""Run by tests/test_checkpoint.py in a subprocess that the test kills with SIGKILL.

    python tests/checkpoint_worker.py SOLVER EPOCHS CKPT_DIR OUT.npz [SLOW_SECONDS]
    python tests/checkpoint_worker.py cli SLOW_SECONDS ARGS...

Fits the planted ratings in float64 with a checkpoint every epoch and saves the factors to OUT.
With SLOW_SECONDS, each checkpoint write pauses that long after its data are written and before
the rename, so that a kill lands mid-run (often mid-write) rather than after the fit. ``cli``:
runs ``autofact ARGS`` with the writes slowed so.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import autofact
import autofact.io

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from dist_worker import planted  # noqa: E402


def settings(solver: str) -> dict:
    return dict(rank=3, solver=solver, seed=0, beta=0.5, dtype="float64", device="cpu")


def slow_writes(pause: float) -> None:
    """Each checkpoint write pauses ``pause`` seconds before its rename."""
    atomic_write = autofact.io.atomic_write

    def slow(path, write):
        def written_then_pause(fh):
            write(fh)
            time.sleep(pause)

        return atomic_write(path, written_then_pause)

    autofact.io.atomic_write = slow


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        from autofact.cli import main

        slow_writes(float(sys.argv[2]))
        raise SystemExit(main(sys.argv[3:]))
    solver, epochs, folder, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if len(sys.argv) > 5:
        slow_writes(float(sys.argv[5]))
    model = autofact.MatrixFactorization(epochs=epochs, **settings(solver))
    model.fit(planted(), checkpoint=folder, checkpoint_every=1)
    np.savez(out, P=model.user_factors_, Q=model.item_factors_, bu=model.user_bias_,
             bi=model.item_bias_, epochs=model.n_epochs_)
