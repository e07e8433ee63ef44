"""Top-10 recommendation quality (issue 12): autofact's ranking task against implicit's ALS and BPR
and most-popular, on MovieLens 100K u1 and ml-latest-small 90/10, in one run.

    python -m benchmarks.ranking                  # both data sets, quiet
    python -m benchmarks.ranking --load both      # and again beside one busy process
    python -m benchmarks.ranking --validation     # the same table on a validation split carved
                                                  # from each training set (test data untouched)
    python -m benchmarks.ranking --data "" --epoch 10000000   # seconds per ALS epoch, 10M
                                                  # generated interactions, vs implicit's
    python -m benchmarks.ranking --combined       # the rating model with the unobserved term:
                                                  # test RMSE and top-10 against the default
                                                  # rating model and task='ranking'

Protocol (the issues' own): every method is fitted on the training ratings; for each user with at
least one test rating >= 4 ("relevant"), its top 10 is taken over every item with a training
interaction except the user's own training items; precision@10, NDCG@10 and MAP@10 come from
``autofact.evaluation``'s metric functions for every row, from one top-N routine for every row
(:func:`top_n`). Fit time is wall-clock seconds of the fit alone, one thread for implicit and torch
(``--threads``). ``--validation`` replaces the test set by a seeded 10% of the training ratings
(``default_rng(1)``), the split the defaults were chosen on.

Baselines: implicit (``pip install implicit``) ALS with factors 64, regularization 0.05, 15
iterations on binary interactions, and BPR with factors 64, 100 iterations (its defaults
otherwise), as in the issue's table.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets as D

RESULTS = Path(__file__).resolve().parent / "results"

Scores = Callable[[], np.ndarray]


def top_n(S: np.ndarray, train: dict[str, np.ndarray], n: int = 10) -> np.ndarray:
    """Top ``n`` item indices per row of the score matrix ``S``, training items and items without
    a training interaction never ranked."""
    S = np.array(S, dtype=np.float64, copy=True)
    S[train["users"], train["items"]] = -np.inf
    S[:, np.bincount(train["items"], minlength=S.shape[1]) == 0] = -np.inf
    idx = np.argpartition(-S, n, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(S, idx, 1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1)


def ranking_metrics(S: np.ndarray, train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    k: int = 10, threshold: float = 4.0) -> dict[str, float]:
    from autofact.evaluation import map_at_k, ndcg_at_k, precision_at_k

    top = top_n(S, train, k)
    rel: dict[int, set[int]] = {}
    for u, i, r in zip(test["users"], test["items"], test["ratings"], strict=True):
        if r >= threshold:
            rel.setdefault(int(u), set()).add(int(i))
    users = sorted(rel)
    ranked = [top[u].tolist() for u in users]
    relevant = [rel[u] for u in users]
    return {f"precision@{k}": precision_at_k(ranked, relevant, k),
            f"ndcg@{k}": ndcg_at_k(ranked, relevant, k),
            f"map@{k}": map_at_k(ranked, relevant, k), "users": len(users)}


def validation_split(d: dict[str, Any], fraction: float = 0.1, seed: int = 1) -> dict[str, Any]:
    """``d`` with its test set replaced by a seeded ``fraction`` of its training ratings."""
    tr = d["train"]
    order = np.random.default_rng(seed).permutation(len(tr["ratings"]))
    cut = int((1 - fraction) * len(order))
    return {**d, "name": d["name"] + " (validation)",
            "train": {k: v[order[:cut]] for k, v in tr.items()},
            "test": {k: v[order[cut:]] for k, v in tr.items()}}


# ---------------------------------------------------------------------------- the methods
def most_popular(d: dict[str, Any]) -> np.ndarray:
    m, n = d["shape"]
    pop = np.bincount(d["train"]["items"], minlength=n).astype(np.float64)
    return np.broadcast_to(pop, (m, n))


def _csr(d: dict[str, Any]) -> Any:
    import scipy.sparse as sp

    tr = d["train"]
    return sp.csr_matrix((np.ones(len(tr["users"]), np.float32), (tr["users"], tr["items"])),
                         shape=d["shape"])


def implicit_als(d: dict[str, Any], threads: int) -> np.ndarray:
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15,
                                    random_state=0, num_threads=threads)
    model.fit(_csr(d), show_progress=False)
    return model.user_factors @ model.item_factors.T


def implicit_bpr(d: dict[str, Any], threads: int) -> np.ndarray:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(factors=64, iterations=100, random_state=0,
                                        num_threads=threads)
    model.fit(_csr(d), show_progress=False)
    return model.user_factors @ model.item_factors.T


def _ratings(d: dict[str, Any]) -> Any:
    from autofact import Ratings

    tr = d["train"]
    return Ratings(tr["users"], tr["items"], tr["ratings"], shape=d["shape"])


def autofact_ranking(d: dict[str, Any], threads: int, **params: Any) -> np.ndarray:
    """``MatrixFactorization(task="ranking")`` with its defaults (or ``params``)."""
    from autofact import MatrixFactorization

    model = MatrixFactorization(task="ranking", **params).fit(_ratings(d))
    return model.user_factors_ @ model.item_factors_.T + model.item_bias_[None, :]


def autofact_als_core(d: dict[str, Any], threads: int) -> np.ndarray:
    """``autofact.ranking.implicit_als`` with the ranking task's defaults (before the model
    wiring: the same solver the model calls)."""
    from autofact import ranking

    P, Q = ranking.implicit_als(_ratings(d), **ranking.RANKING_DEFAULTS)
    return (P @ Q.T).numpy()


def autofact_bpr(d: dict[str, Any], threads: int) -> np.ndarray:
    """``MatrixFactorization(task="ranking", loss="bpr")`` (rank 64, 30 epochs of Adam)."""
    return autofact_ranking(d, threads, loss="bpr")


def _methods(threads: int) -> list[tuple[str, Callable[[dict[str, Any]], np.ndarray]]]:
    def has_model_task() -> bool:
        import inspect

        from autofact import MatrixFactorization
        return "task" in inspect.signature(MatrixFactorization).parameters

    af: Callable[[dict[str, Any]], np.ndarray]
    if has_model_task():
        af_name = "autofact MatrixFactorization(task='ranking') (rank 64, CG)"
        af = lambda d: autofact_ranking(d, threads)  # noqa: E731
    else:
        af_name = "autofact ranking.implicit_als (task defaults)"
        af = lambda d: autofact_als_core(d, threads)  # noqa: E731
    return [
        ("most popular unseen", most_popular),
        ("implicit ALS (64, reg 0.05, 15 it, binary)", lambda d: implicit_als(d, threads)),
        ("implicit BPR (64, 100 it)", lambda d: implicit_bpr(d, threads)),
        (af_name, af),
        ("autofact task='ranking', solver='als' (exact, 64)",
         lambda d: autofact_ranking(d, threads, solver="als")),
        ("autofact task='ranking', loss='bpr' (64, 30 epochs)",
         lambda d: autofact_bpr(d, threads)),
    ]


def run(datasets: list[dict[str, Any]], threads: int, label: str = "") -> list[dict[str, Any]]:
    rows = []
    for d in datasets:
        for name, fn in _methods(threads):
            start = time.perf_counter()
            try:
                S = fn(d)
            except Exception as exc:  # a missing baseline still lets the others run
                rows.append({"data": d["name"], "method": name, "error": repr(exc)[:200]})
                print(f"{d['name']:<32} {name:<48} error: {exc!r}"[:200], flush=True)
                continue
            seconds = time.perf_counter() - start
            row = {"data": d["name"], "method": name + label, "fit_s": seconds,
                   **ranking_metrics(S, d["train"], d["test"])}
            rows.append(row)
            print(f"{d['name']:<32} {row['method']:<48} P@10 {row['precision@10']:.3f}  "
                  f"NDCG@10 {row['ndcg@10']:.3f}  MAP@10 {row['map@10']:.3f}  {seconds:7.2f} s",
                  flush=True)
    return rows


@functools.lru_cache(maxsize=1)
def synthetic_implicit(n_ratings: int, seed: int = 0) -> dict[str, Any]:
    """``n_ratings`` distinct (user, item) interactions with values 1..5: ``n_ratings / 50``
    users and ``n_ratings / 200`` items, item popularity Zipf-like (weight ``1 / (rank + 10)``).
    Cached: the quiet and the contended epoch case share one set."""
    rng = np.random.default_rng(seed)
    m, n = max(n_ratings // 50, 10), max(n_ratings // 200, 10)
    w = 1.0 / (np.arange(n) + 10.0)
    cdf = np.cumsum(w / w.sum())
    users = rng.integers(0, m, int(n_ratings * 1.1))
    items = np.minimum(np.searchsorted(cdf, rng.random(len(users))), n - 1)
    keys = np.unique(users.astype(np.int64) * n + items)[:n_ratings]
    rng.shuffle(keys)
    keys = keys[:n_ratings]
    return {"name": f"synthetic {len(keys) / 1e6:.1f}M interactions", "shape": (m, n),
            "train": {"users": (keys // n).astype(np.int32), "items": (keys % n).astype(np.int32),
                      "ratings": rng.integers(1, 6, len(keys)).astype(np.float32)}}


#: rounds of the epoch case (a round: one implicit fit, then one autofact CG fit) and sweeps a
#: fit; the exact solver is fitted once after them (its epoch is several times longer)
EPOCH_ROUNDS, EPOCH_SWEEPS = 3, 3


def epoch_case(n_ratings: int, threads: int, label: str = "") -> list[dict[str, Any]]:
    """Seconds per ALS epoch (both sides once) at factors 64: implicit's CPU ALS (conjugate
    gradient, 3 steps, its default) against autofact's ``ranking.implicit_als`` with 3 CG steps
    (``solver='cg'``) and exact.

    An epoch is the wall time between the ends of two consecutive sweeps of one fit (implicit's
    own per-iteration time from its callback; the time between ``implicit_als``'s callbacks),
    so set-up is counted on neither side; the first sweep of each fit is left out (autofact's
    includes building its CSR matrices). :data:`EPOCH_ROUNDS` rounds of one implicit fit and
    one autofact CG fit of :data:`EPOCH_SWEEPS` sweeps each, then one exact fit of 2 sweeps.
    The CG ratio is the median over rounds of the round's ratio (median epoch of the CG fit over
    the median epoch of the implicit fit just before it: on a shared machine the load moves
    between minutes, and a round's two fits share theirs); the exact ratio is against implicit's
    median epoch over all rounds."""
    import torch

    from autofact import ranking

    d = synthetic_implicit(n_ratings)
    X = _csr(d)
    R = ranking.InteractionMatrix.from_ratings(_ratings(d), ranking.confidence(
        d["train"]["ratings"], ranking.RANKING_DEFAULTS["alpha"]))

    def implicit_epochs(sweeps: int) -> list[float]:
        from implicit.cpu.als import AlternatingLeastSquares

        times: list[float] = []
        model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=sweeps,
                                        random_state=0, num_threads=threads)
        model.fit(X, show_progress=False, callback=lambda it, elapsed, loss: times.append(elapsed))
        return times[1:]

    def autofact_epochs(sweeps: int, cg: int) -> list[float]:
        ends: list[float] = []
        ranking.implicit_als(R, 64, weight=0.5, regularization=25.0, iterations=sweeps,
                             cg_steps=cg, dtype=torch.float32,
                             callback=lambda it, P, Q: ends.append(time.perf_counter()))
        return [float(e) for e in np.diff(ends)]

    rounds = [(implicit_epochs(EPOCH_SWEEPS), autofact_epochs(EPOCH_SWEEPS, 3))
              for _ in range(EPOCH_ROUNDS)]
    exact = autofact_epochs(2, 0)
    base_all = [e for imp, _ in rounds for e in imp]
    base = float(np.median(base_all))
    ratios = [float(np.median(cg) / np.median(imp)) for imp, cg in rounds]
    rows: list[dict[str, Any]] = [
        {"data": d["name"], "method": "implicit ALS epoch (CG, 64)" + label, "epoch_s": base,
         "epochs_s": base_all},
        {"data": d["name"], "method": "autofact implicit_als epoch (3 CG steps, 64)" + label,
         "epoch_s": float(np.median([e for _, cg in rounds for e in cg])),
         "epochs_s": [e for _, cg in rounds for e in cg], "ratio": float(np.median(ratios)),
         "round_ratios": ratios},
        {"data": d["name"], "method": "autofact implicit_als epoch (exact, 64)" + label,
         "epoch_s": float(np.median(exact)), "epochs_s": exact,
         "ratio": float(np.median(exact)) / base},
    ]
    for row in rows:
        row["threads"] = threads
        print(f"{row['data']:<32} {row['method']:<58} {row['epoch_s']:8.2f} s"
              + (f"  x{row['ratio']:.2f} implicit" if "ratio" in row else "")
              + f"   epochs {[round(e, 2) for e in row['epochs_s']]}"
              + (f"  round ratios {[round(r, 2) for r in ratios]}" if "round_ratios" in row
                 else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------- the combined model
#: ``unobserved_weight`` grid of the combined case, searched on the validation split
COMBINED_GRID = (0.0, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
#: the "cheap" pick of the combined case: validation RMSE at most this much above w = 0's
COMBINED_RMSE_SLACK = 0.02


def _rating_scores(d: dict[str, Any], **params: Any) -> tuple[np.ndarray, float, str, float]:
    """A rating model fitted on ``d``'s training part: its score matrix (the raw scores
    ``recommend`` ranks by), its test RMSE (``predict``, clipped, as ``evaluate`` scores it),
    its solver and fit seconds."""
    import warnings

    from autofact import MatrixFactorization

    start = time.perf_counter()
    model = MatrixFactorization(**params).fit(_ratings(d))
    seconds = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown users/items: the model's own fallback
        pred = np.asarray(model.predict(d["test"]["users"], d["test"]["items"]), np.float64)
    rmse = float(np.sqrt(np.mean((pred - d["test"]["ratings"].astype(np.float64)) ** 2)))
    S = (model.global_mean_ + model.user_bias_[:, None] + model.item_bias_[None, :]
         + model.user_factors_ @ model.item_factors_.T)
    return S, rmse, str(model.solver_), seconds


def _combined_row(d: dict[str, Any], method: str, **params: Any) -> dict[str, Any]:
    S, rmse, solver, seconds = _rating_scores(d, **params)
    row = {"data": d["name"], "method": method, "solver": solver, "rmse": rmse,
           "fit_s": seconds, **ranking_metrics(S, d["train"], d["test"])}
    print(f"{d['name']:<34} {method:<58} RMSE {rmse:.4f}  P@10 {row['precision@10']:.3f}  "
          f"NDCG@10 {row['ndcg@10']:.3f}  {seconds:6.2f} s", flush=True)
    return row


def combined_case(datasets: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """Issue 12, item 3: what the all-unobserved term costs a rating model in RMSE and buys it
    in top-10, against the default rating model and ``task='ranking'``.

    On the validation split carved from the training data (:func:`validation_split`) every
    :data:`COMBINED_GRID` weight is fitted (``MatrixFactorization(unobserved_weight=w,
    solver='als')``, defaults otherwise; rows marked ``[validation]``) and two are picked: the
    best NDCG@10, and the best NDCG@10 whose RMSE is within :data:`COMBINED_RMSE_SLACK` of
    ``w = 0``'s. On the test split: the default ``MatrixFactorization()``, the same at
    ``solver='als'`` (``w = 0``, the solver the term runs with), the two picks, and
    ``task='ranking'`` (its predictions are scores, so no RMSE)."""
    rows: list[dict[str, Any]] = []
    for d in datasets:
        val = validation_split(d)
        grid = [_combined_row(val, f"unobserved_weight={w:g}", solver="als", unobserved_weight=w)
                for w in COMBINED_GRID]
        for r in grid:
            r["split"] = "validation"
        rows += grid
        best = max(range(len(grid)), key=lambda j: grid[j]["ndcg@10"])
        limit = grid[0]["rmse"] * (1 + COMBINED_RMSE_SLACK)
        cheap = max((j for j in range(len(grid)) if grid[j]["rmse"] <= limit),
                    key=lambda j: grid[j]["ndcg@10"])
        rows.append(_combined_row(d, "MatrixFactorization() (the default)"))
        rows.append(_combined_row(d, "MatrixFactorization(solver='als')", solver="als"))
        for j, why in ((cheap, f"best validation NDCG@10 within +{COMBINED_RMSE_SLACK:.0%} RMSE"),
                       (best, "best validation NDCG@10")):
            w = COMBINED_GRID[j]
            rows.append(_combined_row(d, f"unobserved_weight={w:g} ({why})",
                                      unobserved_weight=w, solver="als"))
        start = time.perf_counter()
        S = autofact_ranking(d, threads)
        seconds = time.perf_counter() - start
        row = {"data": d["name"], "method": "MatrixFactorization(task='ranking', rank=64)",
               "solver": "als", "rmse": None, "fit_s": seconds,
               **ranking_metrics(S, d["train"], d["test"])}
        print(f"{d['name']:<34} {row['method']:<58} RMSE   --    P@10 {row['precision@10']:.3f}  "
              f"NDCG@10 {row['ndcg@10']:.3f}  {seconds:6.2f} s", flush=True)
        rows.append(row)
    return rows


def combined_table(rows: list[dict[str, Any]]) -> str:
    out = ["| data | model | test RMSE | precision@10 | NDCG@10 | fit (s) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "rmse" not in r:
            continue
        rmse = "--" if r["rmse"] is None else f"{r['rmse']:.4f}"
        where = " [validation]" if r.get("split") == "validation" else ""
        out.append(f"| {r['data']}{where} | {r['method']} | {rmse} | {r['precision@10']:.3f} | "
                   f"{r['ndcg@10']:.3f} | {r['fit_s']:.2f} |")
    return "\n".join(out)


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| data | method | precision@10 | NDCG@10 | MAP@10 | fit (s) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "rmse" in r:  # the combined case's rows: combined_table
            continue
        if "epoch_s" in r:
            ratio = f" (x{r['ratio']:.2f} implicit's epoch; target <= 2)" if "ratio" in r else ""
            out.append(f"| {r['data']} | {r['method']} | | | | {r['epoch_s']:.2f} a sweep"
                       f"{ratio} |")
            continue
        if "error" in r:
            out.append(f"| {r['data']} | {r['method']} | error: {r['error']} | | | |")
            continue
        out.append(f"| {r['data']} | {r['method']} | {r['precision@10']:.3f} | "
                   f"{r['ndcg@10']:.3f} | {r['map@10']:.3f} | {r['fit_s']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="ml100k,mls", help="comma-separated: ml100k, mls")
    ap.add_argument("--load", choices=["quiet", "both"], default="quiet")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--validation", action="store_true",
                    help="score on a validation split of the training data instead of the test")
    ap.add_argument("--save", action="store_true", help="write the table to benchmarks/results/")
    ap.add_argument("--combined", action="store_true",
                    help="the rating model with the unobserved term (issue 12, item 3) instead "
                    "of the methods table: test RMSE and top-10, w chosen on validation")
    ap.add_argument("--epoch", type=int, default=0, metavar="N",
                    help="also time an ALS epoch on N generated interactions (issue 12: "
                    "10000000; autofact's epoch at most 2x implicit's)")
    args = ap.parse_args(argv)
    import warnings

    import torch
    from threadpoolctl import threadpool_limits

    # implicit checks the BLAS pool at fit time; threadpool_limits below already holds it to
    # --threads
    warnings.filterwarnings("ignore", message="OpenBLAS is configured to use")

    torch.set_num_threads(args.threads)
    loaders = {"ml100k": lambda: D.movielens_100k(1), "mls": D.ml_latest_small}
    data = [loaders[name]() for name in args.data.split(",") if name]
    if args.validation:
        data = [validation_split(d) for d in data]
    with threadpool_limits(args.threads):
        if args.combined:
            rows = combined_case(data, args.threads)
        else:
            rows = run(data, args.threads) if data else []
        if args.epoch:
            rows += epoch_case(args.epoch, args.threads)
        if args.load == "both":
            from .run import busy

            with busy(1):
                rows += run(data, args.threads, " [contended]")
                if args.epoch:
                    rows += epoch_case(args.epoch, args.threads, " [contended]")
    text = combined_table(rows) if args.combined else table(rows)
    print(text)
    if args.save:
        import implicit

        from .run import machine_info

        info = {**machine_info("cpu"), "implicit": implicit.__version__,
                "threads": args.threads, "command": " ".join(["python -m benchmarks.ranking",
                                                                *(argv or sys.argv[1:])])}
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y-%m-%d_%H%M")
        head = "\n".join(f"- {k}: {v}" for k, v in info.items())
        (RESULTS / f"{stamp}_ranking.md").write_text(f"# Ranking benchmark\n\n{head}\n\n{text}\n")
        (RESULTS / f"{stamp}_ranking.json").write_text(
            json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
