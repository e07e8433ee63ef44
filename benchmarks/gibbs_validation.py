"""Validation splits carved from the training data, for choosing the sampler's defaults (issue 9).

    .venv/bin/python -m benchmarks.gibbs_validation [--configs 'implicit=False' 'implicit=True'
        'sweeps=200' ...] [--api model|sampler] [--seeds 0 1]

Four splits, none of which touches a test split: 10% of ml-100k ``u1.base`` and ``u3.base``, and
10% of the ml-latest-small and filmtrust 90% training parts (the splits of
:mod:`benchmarks.accuracy`), each carved by ``numpy.random.default_rng(1).permutation``. A config
is a list of ``key=value`` settings (Python literals) for :func:`autofact.solvers.gibbs.gibbs_mf`
(``--api sampler``: its own unknown-id rule, predictions clipped to the training range) or for
``MatrixFactorization`` (``--api model``). Configs run interleaved per split and chain seed, so the
time ratios are fair on a shared machine. Prints RMSE and fit seconds per split and the means.
"""

from __future__ import annotations

import argparse
import ast
import time
import warnings
from typing import Any

import numpy as np

from benchmarks.accuracy import load, metrics

SPLITS = (("ml-100k", 1), ("ml-100k", 3), ("ml-latest-small", 0), ("filmtrust", 0))


def carve(d: dict[str, Any], fraction: float = 0.1, seed: int = 1) -> dict[str, Any]:
    """Replace ``d``'s test part by ``fraction`` of its training part (the rest trains)."""
    u, i, r = d["train"]
    perm = np.random.default_rng(seed).permutation(len(r))
    cut = int(round((1 - fraction) * len(r)))
    tr, va = np.sort(perm[:cut]), np.sort(perm[cut:])
    return {"name": d["name"] + " (val)", "shape": d["shape"],
            "train": (u[tr], i[tr], r[tr]), "test": (u[va], i[va], r[va])}


def parse(config: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in config.split():
        key, _, value = part.partition("=")
        out[key] = ast.literal_eval(value)
    return out


def run(d: dict[str, Any], api: str, kw: dict[str, Any]) -> tuple[float, float, float]:
    u, i, r = d["train"]
    tu, ti, tr = d["test"]
    if api == "sampler":
        from autofact.solvers.gibbs import gibbs_mf

        t0 = time.perf_counter()
        res = gibbs_mf(u, i, r, d["shape"], **kw)
        secs = time.perf_counter() - t0
        pred = np.clip(res.predict(tu, ti), r.min(), r.max())
    else:
        from autofact import MatrixFactorization, Ratings

        train = Ratings.from_coo(u, i, r, shape=d["shape"])
        t0 = time.perf_counter()
        model = MatrixFactorization(**kw).fit(train)
        secs = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = model.predict(tu, ti)
    rmse, mae = metrics(pred, tr)
    return rmse, mae, secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["", "implicit=True"])
    ap.add_argument("--api", choices=["model", "sampler"], default="sampler")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--splits", nargs="+", type=int, default=list(range(len(SPLITS))),
                    help="which of the four splits (0: ml-100k u1, 1: u3, 2: ml-latest-small, "
                    "3: filmtrust)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    configs = [parse(c) for c in args.configs]
    splits = [SPLITS[s] for s in args.splits]
    table = np.zeros((len(configs), len(splits), len(args.seeds), 3))
    for s, (name, fold) in enumerate(splits):
        d = carve(load(name, fold or 1))
        for j, seed in enumerate(args.seeds):
            for c, kw in enumerate(configs):
                table[c, s, j] = run(d, args.api, {"seed": seed, **kw})
            print(f"{d['name']:26s} seed {seed}: " + "  ".join(
                f"[{args.configs[c] or 'default'}] {table[c, s, j, 0]:.4f} {table[c, s, j, 2]:.2f}s"
                for c in range(len(configs))), flush=True)
    print("\n| config | " + " | ".join(f"{n} u{f}" if f else n for n, f in splits)
          + " | mean RMSE | mean s |")
    print("|---" * (len(splits) + 3) + "|")
    for c, text in enumerate(args.configs):
        m = table[c].mean(axis=1)
        print(f"| {text or 'default'} | " + " | ".join(f"{x:.4f}" for x in m[:, 0])
              + f" | {m[:, 0].mean():.4f} | {m[:, 2].mean():.2f} |")


if __name__ == "__main__":
    main()
