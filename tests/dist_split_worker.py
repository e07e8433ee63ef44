"""Run by tests/test_distributed_split.py under torchrun: an unseeded shared fit with a
validation fraction; every process saves what it held out and its fitted model.

    torchrun --standalone --nproc-per-node 2 tests/dist_split_worker.py OUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import autofact
from autofact import distributed
from tests.dist_worker import planted

if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank, world = distributed.init()
    m = autofact.MatrixFactorization(rank=3, solver="adam", epochs=5, seed=None, beta=0.5,
                                     validation_fraction=0.25, dtype="float64", device="cpu")
    fitted = distributed.fit(m, planted())
    np.savez(out / f"rank{rank}.npz", Q=fitted.item_factors_,
             valid=np.array([h["val_rmse"] for h in fitted.history_]))
    distributed.shutdown()
