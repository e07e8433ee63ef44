"""An unseeded shared fit holds out the same ratings on every process (never silently wrong)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("dist_split_worker.py")


def test_an_unseeded_validation_fraction_holds_out_the_same_ratings_on_every_process(tmp_path):
    # issue 11 (trust): with seed=None each process drew its own split of the ratings it was
    # given (local=False: all of them), so the processes summed gradients of different training
    # sets and scored different validation sets; rank 0's seed now splits them alike
    root = WORKER.parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    assert len(a["valid"]) == 5
    np.testing.assert_array_equal(a["valid"], b["valid"])  # the same held-out ratings
    np.testing.assert_array_equal(a["Q"], b["Q"])
