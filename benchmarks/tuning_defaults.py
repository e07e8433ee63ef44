"""Tuning against the defaults (issue 9: the most accurate defaults): ``autofact.tune`` with a few
trials on MovieLens 100K u1.base, against ``MatrixFactorization()``, on the search's own
validation split and on u1.test (each refit on all of u1.base)::

    python -m benchmarks.tuning_defaults            # 4 trials
    python -m benchmarks.tuning_defaults --trials 30

Reads ``../shared/datasets/ml-100k`` (``benchmarks.datasets.datasets_dir``); prints one line each.
"""

from __future__ import annotations

import argparse
import time
import warnings

import autofact
from autofact import MatrixFactorization
from autofact.evaluation import random_split, rmse
from autofact.tuning import tune

from .datasets import datasets_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    folder = datasets_dir() / "ml-100k"
    train, test = autofact.read(folder / "u1.base"), autofact.read(folder / "u1.test")
    warnings.simplefilter("ignore")

    def test_rmse(params: dict) -> float:
        model = MatrixFactorization(**params).fit(train)
        return rmse(model.predict(test.user_ids[test.users], test.item_ids[test.items]),
                    test.values)

    t0 = time.perf_counter()
    result = tune(train, n_trials=args.trials, show_progress=False)
    print(f"{args.trials} trials in {time.perf_counter() - t0:.0f} s")
    print(result.table())
    # the search's own split (tune's default: 10%, seed 0)
    tr, va = random_split(train, 0.1, seed=0)
    defaults = MatrixFactorization().fit(tr)
    val = rmse(defaults.predict(va.user_ids[va.users], va.item_ids[va.items]), va.values)
    print(f"validation RMSE: tuned {result.best_value:.4f}, defaults {val:.4f}")
    print(f"u1.test RMSE (refit on all of u1.base): tuned {test_rmse(result.best_params):.4f}, "
          f"defaults {test_rmse({}):.4f}")
    print("best settings:", result.best_params)


if __name__ == "__main__":
    main()
