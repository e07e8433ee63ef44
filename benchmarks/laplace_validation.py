"""Should ``solver='auto'`` pick the Laplace-MH sampler for huber, logistic and poisson? (issue 9)

    .venv/bin/python -m benchmarks.laplace_validation [--cases huber logistic poisson]
        [--splits 1 3] [--sweeps 100] [--betas 25] [--n-threads 1]

Validation splits carved from training data only: 10% of ml-100k ``u{k}.base``
(``numpy.random.default_rng(1).permutation``), the rest trains; no test split is touched.
``huber``: the ratings; ``logistic``: liked = rating >= 4; ``poisson``: the rating as a count.
Each case fits ``MatrixFactorization(loss=...)`` with ``solver='auto'`` (today's choice, at the
default ``beta`` and any others given by ``--betas``) and with ``solver='gibbs'`` (the sampler),
interleaved on the same split, and prints fit seconds and held-out metrics: RMSE and MAE of the
predicted response (rating, rate or probability), and for logistic also the log loss and the
accuracy at 0.5. ``--n-threads 1`` runs both with one thread (fairer time ratios on a shared
machine).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np

from benchmarks.accuracy import load
from benchmarks.gibbs_validation import carve


def targets(case: str, r: np.ndarray) -> np.ndarray:
    return (r >= 4).astype(np.float64) if case == "logistic" else r


def fit_and_score(d: dict[str, Any], case: str, **kw: Any) -> dict[str, float]:
    from autofact import MatrixFactorization, Ratings

    u, i, r = d["train"]
    tu, ti, tr = d["test"]
    y, ty = targets(case, r), targets(case, tr)
    train = Ratings.from_coo(u, i, y, shape=d["shape"])
    t0 = time.perf_counter()
    model = MatrixFactorization(loss=case, **kw).fit(train)
    seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # validation ids absent from training: the fallback
        pred = model.predict(tu, ti)
    err = pred - ty
    out = {"seconds": seconds, "rmse": float(np.sqrt(np.mean(err * err))),
           "mae": float(np.mean(np.abs(err)))}
    if case == "logistic":
        p = np.clip(pred, 1e-12, 1 - 1e-12)
        out["logloss"] = float(-np.mean(ty * np.log(p) + (1 - ty) * np.log(1 - p)))
        out["accuracy"] = float(np.mean((pred >= 0.5) == (ty > 0.5)))
    out["solver"] = model.solver_  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["huber", "logistic", "poisson"])
    ap.add_argument("--splits", nargs="+", type=int, default=[1])
    ap.add_argument("--sweeps", type=int, default=100)
    ap.add_argument("--betas", nargs="*", type=float, default=[])
    ap.add_argument("--n-threads", type=int, default=None)
    args = ap.parse_args(argv)
    for case in args.cases:
        for k in args.splits:
            d = carve(load("ml-100k", k))
            common = {"n_threads": args.n_threads}
            configs: list[tuple[str, dict[str, Any]]] = [("auto", {})]
            configs += [(f"auto beta={b:g}", {"beta": b}) for b in args.betas]
            configs.append((f"gibbs {args.sweeps} sweeps",
                            {"solver": "gibbs", "epochs": args.sweeps}))
            for label, kw in configs:
                res = fit_and_score(d, case, **common, **kw)
                shown = "  ".join(f"{key} {v:.4f}" if isinstance(v, float) else f"{key} {v}"
                                  for key, v in res.items())
                print(f"{case:8s} {d['name']:18s} {label:22s} {shown}", flush=True)


if __name__ == "__main__":
    main()
