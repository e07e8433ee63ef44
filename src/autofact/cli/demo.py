"""``autofact demo``: a tour on built-in data, no download."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import options as o
from .common import ExitStatus, metrics_table, plot_history, table
from .paths import check_folder, check_output

CURVE = "autofact-demo-curve.png"
# the quuxlabs post's example (0 = missing)
_POST_R = [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]]


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="a tour on built-in data (no download)",
                       description="The post's 5x4 example, then a synthetic 3000 x 2000 "
                       "problem: fit with validation, metrics, recommendations, learning curve.")
    p.add_argument("--out", "-o", type=o.output_path, default=Path("."), metavar="DIR",
                   help=f"an existing folder for {CURVE} (default: the current folder)")
    p.add_argument("--epochs", type=o.positive_int, default=10, help="epochs for part 2 (10)")
    p.add_argument("--seed", type=o.nonnegative_int, default=0, help="random seed (0)")
    o.add_common(p, json_flag=False)
    p.set_defaults(func=demo)


def _check_out(folder: Path) -> Path | None:
    """Where the learning curve goes; None without matplotlib (the tour runs without it)."""
    check_folder(folder, "--out")
    try:
        return check_output(folder / CURVE, "--out", "plot", {})
    except ImportError:
        return None


def demo(args: argparse.Namespace) -> ExitStatus:
    """A tour without downloads: the post's 5x4 example, then a synthetic 3000 x 2000 problem."""
    import numpy as np

    from ..data import Ratings
    from ..evaluation import evaluate as evaluate_model
    from ..evaluation import random_split
    from ..functional import matrix_factorization_bgd
    from ..model import MatrixFactorization
    from ..threads import limit_threads

    curve = _check_out(args.out)
    np.set_printoptions(precision=2, suppress=True)

    print("1. The post's example: R (0 = missing), k = 2, 5000 steps of gradient descent\n")
    R = np.array(_POST_R, dtype=float)
    print(R)
    rng = np.random.default_rng(args.seed)
    P0, Q0 = rng.random((5, 2)), rng.random((2, 4))
    with limit_threads(1):  # a 5x4 problem: threads would cost more than they save
        P, Q = matrix_factorization_bgd(np.ma.masked_equal(R, 0), P0, Q0, steps=5000,
                                        alpha=0.0002, beta=0.02)
    print("\nreconstructed P @ Q (the zeros are now predictions):\n")
    print(P @ Q)

    m, n, k, density = 3000, 2000, 5, 0.03
    print(f"\n2. A synthetic problem: {m} users x {n} items, rank {k} + noise, "
          f"{density:.0%} observed\n")
    Pt = rng.normal(0.0, 0.7, (m, k))
    Qt = rng.normal(0.0, 0.7, (n, k))
    bu, bi = rng.normal(0.0, 0.3, m), rng.normal(0.0, 0.4, n)
    nnz = int(density * m * n)
    flat = rng.choice(m * n, size=nnz, replace=False)
    users, items = np.divmod(flat, n)
    truth = 3.5 + bu[users] + bi[items] + np.einsum("ij,ij->i", Pt[users], Qt[items])
    values = np.clip(np.rint(truth + rng.normal(0.0, 0.5, nnz)), 1, 5)
    ratings = Ratings.from_coo(users, items, values, shape=(m, n))
    train, test = random_split(ratings, test_fraction=0.1, seed=args.seed)
    baseline = float(np.sqrt(np.mean((test.values - train.values.mean()) ** 2)))
    print(f"{len(train)} training ratings (1-5 stars), {len(test)} held out; predicting the "
          f"mean rating for all of them has RMSE {baseline:.4f}\n")
    model = MatrixFactorization(rank=k, beta=10.0, epochs=args.epochs, seed=args.seed,
                                verbose=True)
    model.fit(train, validation=test)
    metrics = evaluate_model(model, test, k=10, threshold=4.0)
    print(f"\nheld-out metrics (relevant = rated >= 4; with ~{nnz // m // 10} test ratings per "
          f"user among {n} items, top-10 hits are rare):\n")
    print(metrics_table(metrics))
    user = 0
    recs = model.recommend(user, n=5)
    expected = 3.5 + bu[user] + bi[recs.items] + Qt[recs.items] @ Pt[user]
    # trust: the scores recommend returns are clipped to the 1-5 stars, so the top 5 all read
    # 5.0000 beside planted scores of 5.8-6.2; the raw scores compare like with like
    raw = model.predict(np.full(len(recs.items), user), recs.items, kind="link")
    print(f"\ntop 5 for user {user} (who rated {int((train.users == user).sum())} items): the "
          "model's raw score (recommend clips it to 1-5 stars) beside the noise-free score of "
          "the model that generated the data:\n")
    print(table(("rank", "item", "raw score", "planted score"),
                 [[r + 1, int(i), float(s), float(e)] for r, (i, s, e)
                  in enumerate(zip(recs.items, raw, expected, strict=True))],
                 (True, True, True, True)))
    liked = [(int(i), 5.0) for i in np.argsort(-Qt[:, 0])[:5]]
    new = model.fold_in(liked, user="newcomer")
    recs = model.recommend(new, n=5)
    print(f"\na new user who gave 5 stars to items {[i for i, _ in liked]} (folded in, no refit):")
    print("recommended:", ", ".join(str(int(i)) for i in recs.items))
    if curve is None:
        print("\n(drawing the learning curve needs matplotlib: pip install 'autofact[plot]')")
    else:
        plot_history(model.history_, curve, f"autofact demo: {m} x {n}, rank {k}")
        print(f"\nwrote the learning curve to {curve}")
    return ExitStatus.OK
