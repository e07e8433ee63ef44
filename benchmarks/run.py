"""Run the autofact benchmarks and print one comparison table.

    python -m benchmarks.run [--quick] [--cases gradient,post,surprise,movielens,scale]
                             [--device cpu|cuda]

``--cases netflix`` adds the 100M-rating Netflix-shape scale case (heavy; never in the default set);
``--cases budget`` the default fit at the 25M shape against 15 ALS epochs (issue 9; ~10 minutes);
``--cases threads`` each of a few fits with the default thread count against ``n_threads=1``.
Results go to ``benchmarks/results/<date>_<machine>.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from benchmarks import autofact_side as af
from benchmarks import baselines as bl
from benchmarks import datasets as ds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_CASES = ["gradient", "post", "surprise", "movielens", "scale", "ttareal", "minibatch"]
#: Both sides of the gradient case report their best of this many calls (2-core cloud machines
#: are noisy; the best is the least disturbed).
GRADIENT_REPEATS = 20
ALL_CASES = DEFAULT_CASES + ["netflix", "accuracy", "sparse", "coldstart", "budget", "tta10m",
                             "threads"]


class Timer:
    """``with Timer() as t: ...; t.seconds``; ``Timer.best(fn, repeats, warmup)`` -> best s."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start

    @staticmethod
    def best(fn, repeats: int = 5, warmup: int = 1) -> tuple[float, Any]:
        for _ in range(warmup):
            out = fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out


# --------------------------------------------------------------------------------------------------
rows: list[dict[str, Any]] = []
details: dict[str, Any] = {}


def add_row(
    case: str,
    autofact_s: float | None,
    baseline: str,
    baseline_s: float | None,
    target: float | str | None = None,
    peak_mem: str = "",
    accuracy: str = "",
    note: str = "",
) -> None:
    ratio = (autofact_s / baseline_s) if autofact_s is not None and baseline_s else None
    passed = None
    if ratio is not None and isinstance(target, (int, float)):
        passed = ratio <= target
    rows.append({
        "case": case, "autofact_s": autofact_s, "baseline": baseline, "baseline_s": baseline_s,
        "ratio": ratio, "target": target, "pass": passed, "peak_mem": peak_mem,
        "accuracy": accuracy, "note": note,
    })  # fmt: skip


def _af_na(case: str) -> str:
    return f"autofact n/a: {af.REASON}" if not af.AVAILABLE else ""


def _try_af(case: str, fn, *a, **kw) -> dict | None:
    if not af.AVAILABLE:
        return None
    try:
        return fn(*a, **kw)
    except Exception as exc:
        details.setdefault("errors", {})[case] = traceback.format_exc()
        print(f"[{case}] autofact side failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------------------------------
def case_gradient(quick: bool, device: str) -> None:
    n_train = 100_000 if quick else 1_000_000
    rank, beta = 32, 0.02
    data = ds.synthetic_lowrank(n_train=n_train, n_test=1000)
    m, n = data["shape"]
    tr = data["train"]
    pat = bl.prepare_numpy_gradient(tr["users"], tr["items"], tr["ratings"], (m, n))
    rng = np.random.default_rng(0)
    P0 = (rng.standard_normal((m, rank)) * 0.1).astype(np.float32)
    Q0 = (rng.standard_normal((rank, n)) * 0.1).astype(np.float32)
    # the NumPy gradient timed between autofact's calls, one of each in turn (issue 10)
    res = _try_af("gradient", af.gradient_case, data, rank=rank, beta=beta, device=device,
                  repeats=GRADIENT_REPEATS,
                  baseline=lambda: bl.numpy_gradient(None, None, None, P0, Q0, beta, pattern=pat))
    P, Q = (res["P"], res["Q"]) if res and "P" in res else (P0, Q0)
    if res and "baseline_seconds" in res:
        base_s = res["baseline_seconds"]
        loss = bl.numpy_gradient(None, None, None, P, Q, beta, pattern=pat)[0]
    else:  # autofact's side failed: the baseline timed alone
        base_s, (loss, _, _) = Timer.best(
            lambda: bl.numpy_gradient(None, None, None, P, Q, beta, pattern=pat),
            repeats=GRADIENT_REPEATS, warmup=1,
        )
    acc = ""
    af_s = None
    if res and "error" not in res:
        af_s = res["seconds"]
        if "P" in res:
            acc = f"loss rel. diff vs numpy {abs(res['value'] - loss) / abs(loss):.1e}"
    details["gradient"] = {
        "ratings": n_train,
        "rank": rank,
        "numpy_loss": loss,
        "autofact": {k: v for k, v in (res or {}).items() if k not in "PQ"},
    }
    add_row(
        f"gradient {n_train:,} r{rank}",
        af_s,
        "numpy+scipy (hand grad)",
        base_s,
        0.3,
        accuracy=acc,
        note=_af_na("gradient") or (res or {}).get("error", ""),
    )


def case_post(quick: bool, device: str) -> None:
    R = ds.quuxlabs_example()
    rng = np.random.default_rng(0)
    P0 = rng.random((R.shape[0], 2))
    Q0 = rng.random((2, R.shape[1]))
    steps = 5000
    with Timer() as t:
        Pn, Qn = bl.post_numpy(R, P0, Q0, steps=steps)
    numpy_s = t.seconds
    pt: dict[str, dict] = {}
    modes = (
        [("cold", "default")]
        if quick
        else [("cold", "default"), ("cold", "c"), ("warm", "default"), ("warm", "c")]
    )
    for temp, mode in modes:
        try:
            if temp == "warm":  # populate the persistent cache, then time a warm run
                bl.post_pytensor(R, P0, Q0, steps=10, cold=False, mode=mode)
            _, _, info = bl.post_pytensor(R, P0, Q0, steps=steps, cold=(temp == "cold"), mode=mode)
            pt[f"{temp}-{mode}"] = info
        except Exception as exc:
            details.setdefault("errors", {})[f"pytensor {temp} {mode}"] = str(exc)
    res = _try_af("post", af.post_case, R, P0, Q0, steps=steps, device=device)
    af_s, acc = None, ""
    if res and "error" not in res:
        af_s = res["seconds"]
        d = max(np.abs(res["P"] - Pn).max(), np.abs(res["Q"] - Qn).max())
        acc = f"max abs diff vs numpy {d:.1e}; loss {bl.post_loss(R, res['P'], res['Q']):.4f}"
    note = _af_na("post") or (res or {}).get("error", "")
    names = {"default": "numba", "c": "C"}
    for key, info in pt.items():
        temp, mode = key.split("-")
        add_row(
            "post 5x4 k2, 5000 steps",
            af_s,
            f"pytensor {temp} ({names[mode]} backend)",
            info["seconds"],
            0.1 if temp == "cold" else None,
            accuracy=acc,
            note=note,
        )
    add_row(
        "post 5x4 k2, 5000 steps",
        af_s,
        "numpy dense (post)",
        numpy_s,
        None,
        accuracy=f"numpy loss {bl.post_loss(R, Pn, Qn):.4f}",
        note=note,
    )
    details["post"] = {
        "numpy_s": numpy_s,
        "pytensor": pt,
        "autofact": {k: v for k, v in (res or {}).items() if k not in "PQ"},
    }


#: Surprise's RMSE per case, for machines without scikit-surprise (``--surprise-rmse``).
GIVEN_TARGETS: dict[str, float] = {}


def _tta(case: str, data: dict, target_ratio: float, params: dict, device: str) -> None:
    try:
        sres = bl.surprise_svd(data["train"], data["test"])
    except ImportError:
        if case not in GIVEN_TARGETS:
            raise
        # no Surprise here (e.g. the GPU machine): the target RMSE comes from a CPU run
        sres = {"rmse": GIVEN_TARGETS[case], "fit_s": None, "given": True}
    target_rmse = sres["rmse"]
    res = _try_af(case, af.time_to_accuracy, data, target_rmse, params, device=device)
    af_s, acc = None, f"surprise RMSE {target_rmse:.4f}"
    note = _af_na(case) or (res or {}).get("error", "")
    if res and "error" not in res:
        af_s = res["seconds"]
        acc += f"; autofact best {res['best_val_rmse']:.4f}"
        if af_s is None:
            note = f"autofact never reached the target in {len(res['history'])} epochs"
        else:
            acc += f" (target hit at epoch {res['epoch']})"
    add_row(
        f"time-to-accuracy {data['name']}",
        af_s,
        "surprise SVD (defaults)",
        sres["fit_s"],
        target_ratio,
        accuracy=acc,
        note=note,
    )
    details[case] = {"surprise": sres, "autofact": res, "params": params}


def case_surprise(quick: bool, device: str) -> None:
    if quick:
        data = ds.synthetic_lowrank(m=3000, n=1800, n_train=100_000, n_test=10_000)
    else:
        data = ds.synthetic_lowrank()
    _tta("surprise", data, 0.05, af.TTA_PARAMS["synthetic"], device)


def case_movielens(quick: bool, device: str) -> None:
    try:
        data = ds.movielens_100k(1)
    except FileNotFoundError as exc:
        add_row(
            "time-to-accuracy MovieLens 100K u1",
            None,
            "surprise SVD (defaults)",
            None,
            0.25,
            note=str(exc),
        )
        return
    _tta("movielens", data, 0.25, af.TTA_PARAMS["movielens"], device)


def _scale(name: str, shape: str, quick: bool, device: str, epochs: int, timeout: int,
           env: dict[str, str] | None = None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--shape",
        shape,
        "--rank",
        "64",
        "--epochs",
        str(epochs),
        "--device",
        device,
    ]
    if quick:
        cmd += ["--scale", "0.01"]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:
        err = getattr(locals().get("proc"), "stderr", "") or ""
        add_row(
            f"scale {name}",
            None,
            "RSS bound",
            None,
            "RSS <= bound",
            note=f"{type(exc).__name__}: {exc} {err[-300:]}",
        )
        return
    details[f"scale-{name}" + ("-" + "-".join(env) if env else "")] = res
    label = f"scale {name} {res['m']:,}x{res['n']:,} {res['ratings']:,} r64 (s/epoch)"
    if env:
        label += " " + " ".join(f"{k}={v}" for k, v in env.items())
    mem = (
        f"{res['peak_rss_fit_mib'] / 1024:.2f} GiB fit / bound {res['bound_mib'] / 1024:.2f} GiB"
        f" ({'ok' if res['within_bound'] else 'OVER'})"
    )
    acc = f"val RMSE {res['val_rmse']:.4f}" if res.get("val_rmse") is not None else ""
    note = res.get("error") or ("" if res["autofact"] else f"autofact n/a: {res['reason']}")
    if res.get("epoch_over_bound") is not None:
        note = (f"{note} epoch = {res['epoch_over_bound']:.1f}x the bandwidth bound "
                f"({res['bandwidth_bound_s']:.3f} s at {res['copy_gbps']:.0f} GB/s copy)").strip()
    if res.get("cuda_peak_mib") is not None:
        note = f"{note}; GPU peak {res['cuda_peak_mib'] / 1024:.2f} GiB"
    add_row(
        label,
        res.get("sec_per_epoch"),
        "RSS bound",
        None,
        "RSS <= bound",
        peak_mem=mem if res["autofact"] else "",
        accuracy=acc,
        note=note,
    )
    rows[-1]["pass"] = bool(res["within_bound"]) if res["autofact"] and "error" not in res else None


def case_scale(quick: bool, device: str) -> None:
    # enough epochs for a steady per-epoch figure (the first ones carry set-up and warm-up)
    _scale("ml25m-shape", "ml25m", quick, device, epochs=8 if device == "cuda" else 3, timeout=3600)
    if device == "cpu":
        # the same with glibc returning freed blocks to the system at once (see README)
        _scale("ml25m-shape", "ml25m", quick, device, epochs=3, timeout=3600,
               env={"MALLOC_MMAP_THRESHOLD_": "65536"})


def _scale_fit(shape: str, fit: str, quick: bool, device: str, timeout: int) -> dict:
    """One ``benchmarks.scale --fit`` process (its JSON), or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--shape", shape, "--fit", fit,
           "--device", device] + (["--scale", "0.01"] if quick else [])
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True,
                              timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:
        err = getattr(locals().get("proc"), "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {exc} {err[-300:]}"}


def case_budget(quick: bool, device: str) -> None:
    """Issue 9, items 2 and 4: ``MatrixFactorization()`` (the Gibbs sampler with its sweep
    budget) at the ML-25M shape against ``MatrixFactorization(solver='als', epochs=15)``, each in
    its own process (ALS first): fit wall time (target ratio <= 3), CPU seconds, test RMSE, and
    the default fit's peak RSS against the scale case's bound (rank 64 factors, as ``scale``)."""
    als = _scale_fit("ml25m", "als", quick, device, timeout=3600)
    dflt = _scale_fit("ml25m", "default", quick, device, timeout=3600)
    details.setdefault("budget", []).append({"als": als, "default": dflt})
    bad = dflt.get("error") or als.get("error")
    shape = f"{dflt['m']:,}x{dflt['n']:,} {dflt['ratings']:,}" if "m" in dflt else ""
    label = f"scale ml25m-shape {shape} default fit vs 15 ALS epochs".replace("  ", " ")
    if bad:
        add_row(label, dflt.get("fit_wall_s"), "autofact ALS 15 epochs", als.get("fit_wall_s"),
                3.0, note=str(bad))
        return
    mem = (f"{dflt['peak_rss_fit_mib']:.0f} MiB fit / bound {dflt['bound_mib']:.0f} MiB "
           f"({'ok' if dflt['within_bound'] else 'OVER'}; {dflt['bound_fit_rank_mib']:.0f} MiB "
           f"at the fitted rank {dflt['fit_rank']}); ALS {als['peak_rss_fit_mib']:.0f} MiB")
    acc = (f"test RMSE {dflt['test_rmse']:.4f} ({dflt['epochs_run']} sweeps) vs ALS "
           f"{als['test_rmse']:.4f}")
    note = (f"CPU s {dflt['fit_cpu_s']:.0f} vs {als['fit_cpu_s']:.0f} "
            f"(x{dflt['fit_cpu_s'] / als['fit_cpu_s']:.2f}); stopped: {dflt['stopped']}")
    add_row(label, dflt["fit_wall_s"], "autofact ALS 15 epochs", als["fit_wall_s"], 3.0,
            peak_mem=mem, accuracy=acc, note=note)
    rows[-1]["pass"] = bool(rows[-1]["pass"]) and bool(dflt["within_bound"])


def case_netflix(quick: bool, device: str) -> None:
    _scale("netflix-shape", "netflix", quick, device, epochs=8 if device == "cuda" else 2,
           timeout=4 * 3600)


#: Issue 9's accuracy targets (RMSE, and MAE on ml-100k) for the defaults.
ACCURACY_TARGETS = {"ml-100k": (0.895, 0.705), "ml-latest-small": (0.848, None),
                    "filmtrust": (0.765, None)}
#: Printed after the main table (method x dataset: RMSE, MAE, fit seconds).
extra_tables: list[str] = []


def _accuracy_data(quick: bool) -> list[tuple[str, list[dict]]]:
    folds = [1] if quick else [1, 2, 3, 4, 5]
    out: list[tuple[str, list[dict]]] = []
    for name, load in (("ml-100k", lambda: [ds.movielens_100k(k) for k in folds]),
                       ("ml-latest-small", lambda: [ds.ml_latest_small()]),
                       ("filmtrust", lambda: [ds.filmtrust()])):
        try:
            out.append((name, load()))
        except FileNotFoundError as exc:
            add_row(f"accuracy {name}", None, "", None, note=str(exc))
    return out


def case_accuracy(quick: bool, device: str) -> None:
    """Defaults against the peers on real data: RMSE, MAE and fit time, every method on the same
    splits in this process (ml-100k: mean over the canonical folds u1..u5)."""
    sweeps = 50 if quick else 200
    methods = {
        "autofact defaults": lambda d: _try_af("accuracy", af.default_fit, d, device=device),
        "myFM BMF r10": lambda d: bl.myfm_bmf(d["train"], d["test"], d["shape"], sweeps=sweeps),
        "cmfrec ALS k40": lambda d: bl.cmfrec_als(d["train"], d["test"]),
        "Surprise SVD": lambda d: bl.surprise_svd(d["train"], d["test"]),
        "LIBMF k32": lambda d: bl.libmf_cli(d["train"], d["test"]),
    }
    results: dict[str, dict[str, dict]] = {}
    for name, splits in _accuracy_data(quick):
        for method, run in methods.items():
            per: list[dict] = []
            for d in splits:
                try:
                    r = run(d)
                except ImportError as exc:
                    r = {"error": f"not installed: {exc}"}
                except Exception as exc:
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                if r is None:
                    r = {"error": "not available"}
                per.append(r)
            ok = [r for r in per if "error" not in r]
            if len(ok) == len(per):
                results.setdefault(name, {})[method] = {
                    k: float(np.mean([r[k] for r in ok])) for k in ("rmse", "mae", "fit_s")
                } | ({"solver": ok[0]["solver"]} if "solver" in ok[0] else {})
            else:
                results.setdefault(name, {})[method] = {"error": per[0].get("error", "failed")}
        res = results[name]
        af_r, peer = res.get("autofact defaults", {}), res.get("myFM BMF r10", {})
        t_rmse, t_mae = ACCURACY_TARGETS[name]
        acc = note = ""
        if "rmse" in af_r:
            ok_rmse = af_r["rmse"] <= t_rmse and (t_mae is None or af_r["mae"] <= t_mae)
            acc = (f"autofact RMSE {af_r['rmse']:.4f} MAE {af_r['mae']:.4f} "
                   f"({af_r.get('solver', '?')}); target <= {t_rmse}"
                   + (f" / MAE <= {t_mae}" if t_mae else "")
                   + f": {'met' if ok_rmse else 'NOT met'}")
        else:
            note = af_r.get("error", "")
        if "rmse" in peer:
            acc += f"; myFM {peer['rmse']:.4f} / {peer['mae']:.4f}"
        add_row(f"accuracy {name}" + (" (5 folds)" if name == "ml-100k" and not quick else ""),
                af_r.get("fit_s"), "myFM BMF r10, " + str(sweeps) + " sweeps", peer.get("fit_s"),
                0.25 if name == "ml-100k" else None, accuracy=acc, note=note)
    lines = ["| method | " + " | ".join(f"{n} RMSE / MAE / fit s" for n in results) + " |",
             "|---|" + "---|" * len(results)]
    for method in methods:
        cells = []
        for n in results:
            r = results[n].get(method, {})
            cells.append(f"{r['rmse']:.4f} / {r['mae']:.4f} / {r['fit_s']:.2f}" if "rmse" in r
                         else r.get("error", "n/a"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    extra_tables.append("\n".join(lines))
    details["accuracy"] = results


def case_sparse(quick: bool, device: str) -> None:
    """Issue 10, item 3: a review site's shape (17,615 users x 16,121 items, 72,345 ratings,
    power-law counts, 90/10). LIBMF k=32 (20 iterations, 2 threads) against autofact's default
    fit (whatever solver it picks): the time until its held-out RMSE reaches LIBMF's; and 15
    epochs of ``solver='als'``, defaults otherwise."""
    data = ds.sparse_reviews()
    lib = bl.libmf_cli(data["train"], data["test"])
    label = f"sparse {data['shape'][0]:,}x{data['shape'][1]:,} {len(data['train']['users']):,}"
    if lib is None:
        for what in ("default fit to LIBMF's RMSE", "15 ALS epochs"):
            add_row(f"{label} {what}", None, "LIBMF k32", None, 1.0,
                    note="LIBMF not built (../shared/baselines/libmf and make)")
        return
    target = lib["rmse"]
    params = {"rank": 10, "solver": "auto", "epochs": None, "beta": 25.0, "bias": True,
              "patience": None}  # MatrixFactorization()'s defaults, validated every epoch
    tta = _try_af("sparse", af.time_to_accuracy, data, target, params, device=device)
    fit = _try_af("sparse", af.als_fit, data, epochs=15, device=device)
    note = _af_na("sparse")
    acc = f"LIBMF RMSE {target:.4f}"
    if tta and "error" not in tta:
        acc += f"; autofact best {tta['best_val_rmse']:.4f}"
        if tta["seconds"] is None:
            note = f"autofact never reached LIBMF's RMSE in {len(tta['history'])} epochs"
        else:
            acc += f" (reached at epoch {tta['epoch']})"
    add_row(f"{label} default fit to LIBMF's RMSE", (tta or {}).get("seconds"), "LIBMF k32",
            lib["fit_s"], 1.0, accuracy=acc, note=note or (tta or {}).get("error", ""))
    acc = ""
    if fit and "error" not in fit:
        acc = f"autofact RMSE {fit['rmse']:.4f} ({fit['solver']}); LIBMF {target:.4f}"
    add_row(f"{label} 15 ALS epochs", (fit or {}).get("fit_s"), "LIBMF k32",
            lib["fit_s"], 1.0, accuracy=acc, note=_af_na("sparse") or (fit or {}).get("error", ""))
    details.setdefault("sparse", []).append({"libmf": lib, "autofact_tta": tta,
                                             "autofact_fit": fit})


#: Timed runs of each program in the cold-start case (the medians are reported).
COLDSTART_REPEATS = 5


def case_coldstart(quick: bool, device: str) -> None:
    """Issue 10, item 5: ``autofact fit FILE --solver als --epochs 15`` end to end in a new
    process on 1M ratings (0.1M with --quick) against LIBMF's ``mf-train -k 32 -t 20 -s 2`` on
    the same file, wall time and peak RSS of each process; the note gives a fresh process's
    ``import autofact`` and ``import torch`` alone. Each program runs :data:`COLDSTART_REPEATS`
    times, alternately, after one untimed ``import torch, autofact.model`` (new processes, a warm
    disk cache); the medians are compared."""
    import shutil
    import tempfile

    n = 100_000 if quick else 1_000_000
    data = ds.synthetic_lowrank(n_train=n, n_test=1000) if not quick else ds.synthetic_lowrank(
        m=3000, n=1800, n_train=n, n_test=1000)
    tmp = Path(tempfile.mkdtemp(prefix="coldstart-"))

    cpu: dict[str, float] = {}

    def run(cmd: list[str]) -> tuple[float, float | None]:
        """Wall seconds and peak RSS (MiB) of one child process; its CPU seconds (user + system,
        from the children's rusage) in ``cpu['last']``. The RSS comes from GNU time
        (``/usr/bin/time -f %M``): a child forked from this process would report this process's
        RSS as its own peak."""
        import resource

        gnu_time = shutil.which("time")
        wrap = [gnu_time, "-f", "%M", "-o", str(tmp / "rss.txt")] if gnu_time else []
        with open(tmp / "stderr.txt", "w+b") as err:
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([*wrap, *cmd],
                                  cwd=tmp, stdout=subprocess.DEVNULL, stderr=err, check=False)
            seconds = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["last"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            err.seek(0)
            if proc.returncode != 0:
                tail = err.read().decode(errors="replace")[-300:]
                raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {tail}")
        rss = int((tmp / "rss.txt").read_text().split()[-1]) / 1024 if gnu_time else None
        return seconds, rss

    try:
        # time autofact as installed (pip compiles its .pyc files): with
        # PYTHONDONTWRITEBYTECODE=1 (as on these machines) every new process recompiled each
        # module edited since its .pyc was written (0.1-0.3 s of a cold start)
        import compileall
        import importlib.util

        spec = importlib.util.find_spec("autofact")
        if spec is not None and spec.origin is not None:
            compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)
        tr = data["train"]
        np.savetxt(tmp / "ratings.tsv", np.column_stack([tr["users"], tr["items"], tr["ratings"]]),
                   fmt="%d\t%d\t%.4g")
        autofact_cli = [sys.executable, "-m", "autofact", "fit", "ratings.tsv", "--solver", "als",
                        "--epochs", "15", "--out", "model.npz", "--quiet"]
        af_s = af_mem = lib_s = lib_mem = None
        note = _af_na("coldstart")
        binaries = bl.libmf_binaries()
        libmf_cmd = None if binaries is None else [
            str(binaries / "mf-train"), "-s", "2", "-k", "32", "-t", "20", "--quiet",
            "ratings.tsv", "libmf.model"]
        if binaries is None:
            note = (note + " LIBMF not built").strip()
        # a new process each time, but not a cold disk cache: one untimed import first (the
        # first process after other work read torch's ~1 GB of libraries from disk: 2.6 s
        # instead of 1.0-1.6), then the two programs alternately, REPEATS times each, medians
        if af.AVAILABLE:
            run([sys.executable, "-c", "import torch, autofact.model"])
        af_runs: list[tuple[float, float | None]] = []
        lib_runs: list[tuple[float, float | None]] = []
        af_cpu: list[float] = []
        lib_cpu: list[float] = []
        for _ in range(1 if quick else COLDSTART_REPEATS):
            if af.AVAILABLE:
                try:
                    af_runs.append(run(autofact_cli))
                    af_cpu.append(cpu["last"])
                except Exception as exc:
                    note = f"{type(exc).__name__}: {exc}"
            if libmf_cmd is not None:
                lib_runs.append(run(libmf_cmd))
                lib_cpu.append(cpu["last"])
        if af_runs:
            af_s = float(np.median([t for t, _ in af_runs]))
            af_mem = max((r for _, r in af_runs if r is not None), default=None)
        if lib_runs:
            lib_s = float(np.median([t for t, _ in lib_runs]))
            lib_mem = max((r for _, r in lib_runs if r is not None), default=None)
        imports = {}
        # `import autofact` is lazy (issue 10): autofact.model brings torch and the library
        for what, module in (("torch", "torch"), ("autofact", "autofact.model")):
            imports[what], _ = run([sys.executable, "-c", f"import {module}"])
        bare, _ = run([sys.executable, "-c", "pass"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mem = (f"{af_mem:.0f} MiB vs {lib_mem:.0f} MiB" if af_mem is not None and lib_mem is not None
           else "")
    note = (f"{note} new process: python {bare:.2f} s, import torch {imports['torch']:.2f} s, "
            f"import autofact.model {imports['autofact']:.2f} s").strip()
    if af_cpu and lib_cpu:  # CPU seconds move less with the load than wall time
        a, b = float(np.median(af_cpu)), float(np.median(lib_cpu))
        note += f"; CPU (user+sys) medians {a:.2f} s vs {b:.2f} s, ratio {a / b:.2f}"
    add_row(f"cold start: autofact fit {n:,} ratings --solver als --epochs 15", af_s,
            "LIBMF mf-train k32 t20 s2", lib_s, 3.0, peak_mem=mem, note=note)
    details.setdefault("coldstart", []).append({"autofact_s": af_s, "autofact_rss_mib": af_mem,
                                                "libmf_s": lib_s, "libmf_rss_mib": lib_mem,
                                                "imports_s": imports, "python_s": bare,
                                                "autofact_runs_s": [t for t, _ in af_runs],
                                                "libmf_runs_s": [t for t, _ in lib_runs],
                                                "autofact_cpu_s": af_cpu, "libmf_cpu_s": lib_cpu})


#: Issue 10, item 4: autofact's default fit's time to a peer's held-out RMSE over the peer's
#: own fit time, against LIBMF k=32 (20 iterations, 2 threads) and cmfrec's CMF with its defaults.
TTA_PEER_TARGETS = {"libmf": 0.5, "cmfrec": 1.0}


def _libmf_peer(data: dict) -> dict:
    try:
        lib = bl.libmf_cli(data["train"], data["test"])
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return lib if lib is not None else {"error": "LIBMF not built (../shared/baselines/libmf)"}


def _cmfrec_peer(data: dict) -> dict:
    try:
        return bl.cmfrec_als(data["train"], data["test"])
    except Exception as exc:  # ImportError included: cmfrec is optional
        return {"error": f"{type(exc).__name__}: {exc}"}


def _peer_rows(case: str, data: dict, device: str, repeats: int = 1) -> None:
    """Issue 10, item 4: LIBMF's ``mf-train -k 32 -t 20 -s 2`` and cmfrec's ``CMF()`` (its
    defaults: k=40, lambda=10, user and item biases, ALS) fitted on ``data``'s train part; then
    one fit of ``MatrixFactorization()`` with the test part as validation, and for each peer the
    seconds from the start of that fit to the first sweep whose held-out RMSE reaches the peer's
    (``af.reached_at`` on its ``history_``). The three run interleaved ``repeats`` times and each
    keeps its fastest (the chain is seeded: every run hits a target at the same sweep). One row
    per peer; a default fit that never reaches a peer's RMSE says so, with its best RMSE and the
    time of the whole fit."""
    label = f"time-to-accuracy {data['name']}: default fit"
    runs: dict[str, list[dict]] = {"libmf": [], "cmfrec": [], "autofact": []}
    for _ in range(repeats):
        runs["libmf"].append(_libmf_peer(data))
        # the fit is the same whatever its target: the history holds every sweep's RMSE
        runs["autofact"].append(_try_af(case, af.time_to_accuracy, data, float("inf"),
                                        dict(af.DEFAULT_FIT_PARAMS), device=device) or {})
        # cmfrec last: its fit (30-77 s at 10M) no longer sits between LIBMF's and autofact's,
        # so the two whose ratio is the target see the same load
        runs["cmfrec"].append(_cmfrec_peer(data))

    def fastest(rs: list[dict], key: str) -> dict:
        ok = [r for r in rs if key in r]
        return min(ok, key=lambda r: r[key]) if ok else rs[0]

    peers = {name: fastest(runs[name], "fit_s") for name in ("libmf", "cmfrec")}
    fits = [r for r in runs["autofact"] if "history" in r]
    res = fastest(fits, "fit_wall_s") if fits else (runs["autofact"][0] or None)
    names = {"libmf": ("LIBMF k32's RMSE", "LIBMF mf-train k32 t20 s2"),
             "cmfrec": ("cmfrec's RMSE", "cmfrec CMF defaults (k40, lambda 10, biases)")}
    for peer, (what, baseline) in names.items():
        p = peers[peer]
        note = _af_na(case) or (res or {}).get("error", "") or p.get("error", "")
        af_s, acc = None, ""
        if "rmse" in p:
            acc = f"{peer} RMSE {p['rmse']:.4f}"
            if fits and res is not None:
                hits = [h for h in (af.reached_at(r["history"], p["rmse"]) for r in fits) if h]
                tail = (f"best {res['best_val_rmse']:.4f}; full fit {res['fit_wall_s']:.2f} s, "
                        f"{res['epochs_run']} sweeps ({res['solver']})")
                if not hits:
                    note = (f"autofact's default fit never reached {peer}'s RMSE "
                            f"{p['rmse']:.4f}: {tail}")
                else:
                    hit = min(hits, key=lambda h: float(h["time"]))
                    af_s = float(hit["time"])
                    acc += f"; autofact reached it at sweep {hit['epoch']}; {tail}"
        add_row(f"{label} to {what}", af_s, baseline, p.get("fit_s"), TTA_PEER_TARGETS[peer],
                accuracy=acc, note=note)
        if fits and res is not None:
            rows[-1]["autofact_fit_s"] = res["fit_wall_s"]  # the contended slowdown's fallback
    details.setdefault(case, []).append({"data": data["name"], "repeats": repeats,
                                         "peers": runs | {"autofact": [
                                             {k: v for k, v in r.items() if k != "history"}
                                             for r in runs["autofact"]]},
                                         "autofact_fastest": res})


def case_ttareal(quick: bool, device: str) -> None:
    """Issue 10, item 4 on real data: MovieLens 100K ``u1`` and ml-latest-small (90/10 seeded);
    see :func:`_peer_rows`: the fastest of 3 interleaved runs of each side (of 1 with
    ``--quick``)."""
    for name, load in (("MovieLens 100K u1", lambda: ds.movielens_100k(1)),
                       ("ml-latest-small 90/10", ds.ml_latest_small)):
        try:
            data = load()
        except FileNotFoundError as exc:
            for what in ("LIBMF k32's RMSE", "cmfrec's RMSE"):
                add_row(f"time-to-accuracy {name}: default fit to {what}", None, "", None,
                        note=str(exc))
            continue
        _peer_rows("ttareal", data, device, repeats=1 if quick else 3)


def case_tta10m(quick: bool, device: str) -> None:
    """Issue 10, item 4 on a generated set: 10M ratings at the ML-25M density (102,799 x 37,344,
    seeded, 9M train / 1M test; 100k ratings with ``--quick``); see :func:`_peer_rows`."""
    _peer_rows("tta10m", ds.movielens_like(100_000 if quick else 10_000_000), device)


#: Issue 10, item 6: users = items at these sizes, so users + items grow 1x, 4x, 16x
#: (6,400 -> 25,600 -> 102,400) at a fixed number of ratings.
MINIBATCH_SIDES = (3_200, 12_800, 51_200)
#: (name, MatrixFactorization arguments, target for the largest/smallest seconds per epoch)
MINIBATCH_FITS: tuple[tuple[str, dict[str, Any], float | None], ...] = (
    ("sgd batch 1024", {"solver": "sgd", "batch_size": 1024}, 1.5),
    ("adam batch 1024", {"solver": "adam", "batch_size": 1024}, 1.5),
    ("adam full batch (reference)", {"solver": "adam"}, None),
)


def minibatch_floor(data: dict, batch: int = 1024, rank: int = 10, repeats: int = 3
                    ) -> float | None:
    """The hardware's part (issue 10, item 6): seconds per epoch, best of ``repeats``, of what
    any O(batch x rank) mini-batch step does with the tables, on plain torch tensors on one
    thread (as the fit runs at these sizes): the batch's users and items, their distinct rows
    (``torch.unique``), those rows gathered from ``P``, ``Q`` and the two biases
    (``index_select``) and written back (``index_copy_``). No loss, no autograd: what stays of
    the growth with users + items is random row access in bigger tables (cache misses)."""
    try:
        import torch
    except ImportError:
        return None
    m, n = data["shape"]
    users = torch.from_numpy(np.asarray(data["train"]["users"], dtype=np.int64))
    items = torch.from_numpy(np.asarray(data["train"]["items"], dtype=np.int64))
    tables = [(torch.randn(m, rank), 0), (torch.randn(n, rank), 1), (torch.randn(m), 0),
              (torch.randn(n), 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for r in range(repeats):
            order = torch.randperm(len(users), generator=torch.Generator().manual_seed(r))
            t0 = time.perf_counter()
            for s in range(0, len(users), batch):
                idx = order[s : s + batch]
                side = (torch.unique(users.index_select(0, idx)),
                        torch.unique(items.index_select(0, idx)))
                for t, k in tables:
                    t.index_copy_(0, side[k], t.index_select(0, side[k]).mul_(0.999))
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best


def case_minibatch(quick: bool, device: str) -> None:
    """Issue 10, item 6: seconds per epoch of mini-batch ``sgd`` and ``adam`` (batch 1024) at a
    fixed 100k ratings (20k with ``--quick``) as users + items grow 16x, and full-batch Adam
    beside them. Each fit runs 6 epochs without validation data; the fits are interleaved over
    the sizes twice and a size's figure is its fastest epoch after the first (which carries the
    set-up), of the 10: on a shared machine the least disturbed epoch, as the gradient case takes
    its best call (the medians, which swung 0.96-1.35 run to run on a loaded 2-core machine, are
    in the accuracy column). Ratio = largest size / smallest (target <= 1.5). The note gives
    :func:`minibatch_floor` at each size: the growth the hardware alone shows."""
    n = 20_000 if quick else 100_000
    datas = [ds.synthetic_lowrank(m=s, n=s, n_train=n, n_test=n // 10) for s in MINIBATCH_SIDES]
    best: dict[str, list[dict | None]] = {name: [None] * len(datas) for name, _, _ in
                                          MINIBATCH_FITS}
    for _ in range(2):
        for name, params, _ in MINIBATCH_FITS:
            for k, d in enumerate(datas):
                res = _try_af("minibatch", af.epoch_seconds, d, params, epochs=6, device=device)
                if res is not None and "error" not in res:
                    res["best_epoch_s"] = min(res["epochs_s"][1:] or res["epochs_s"])
                prev = best[name][k]
                if res is not None and (prev is None or "error" in prev or (
                        "error" not in res and res["best_epoch_s"] < prev["best_epoch_s"])):
                    best[name][k] = res
    sizes = " / ".join(f"{2 * s:,}" for s in MINIBATCH_SIDES)
    found = [minibatch_floor(d) for d in datas]
    floors = [x for x in found if x is not None] if None not in found else []
    for name, _, target in MINIBATCH_FITS:
        got = best[name]
        err = next((r["error"] for r in got if r is not None and "error" in r), "")
        label = f"minibatch {name}, {n:,} ratings: s/epoch at users+items x16 vs x1"
        if err or any(r is None for r in got):
            add_row(label, None, f"same at {2 * MINIBATCH_SIDES[0]:,} users+items", None, target,
                    note=_af_na("minibatch") or err)
            continue
        done = [r for r in got if r is not None]
        secs = [r["best_epoch_s"] for r in done]
        medians = [r["sec_per_epoch"] for r in done]
        rmses = [r["test_rmse"] for r in done]
        cpus = [r["cpu_s_per_epoch"] for r in done]
        acc = (f"s/epoch {' / '.join(f'{x:.3f}' for x in secs)} at users+items {sizes} "
               f"(median of that fit's epochs {' / '.join(f'{x:.3f}' for x in medians)}, "
               f"x{medians[-1] / medians[0]:.2f}); "
               f"CPU s/epoch (whole fit / 6) {' / '.join(f'{x:.3f}' for x in cpus)} "
               f"(x{cpus[-1] / cpus[0]:.2f}); test RMSE {' / '.join(f'{x:.3f}' for x in rmses)}")
        note = f"solver {done[-1]['solver']}"
        if floors and target is not None:
            # how much of the growth is the hardware's: the floor's own growth, in seconds
            grow, fgrow = secs[-1] - secs[0], floors[-1] - floors[0]
            note += (f"; hardware floor (unique + gather + index_copy_ of the touched rows on "
                     f"plain tensors, 1 thread) {' / '.join(f'{x:.4f}' for x in floors)} s/epoch "
                     f"(x{floors[-1] / floors[0]:.2f}, {fgrow:+.4f} s of the fit's "
                     f"{grow:+.4f} s)")
        add_row(label, secs[-1], f"same at {2 * MINIBATCH_SIDES[0]:,} users+items", secs[0],
                target, accuracy=acc, note=note)
    details.setdefault("minibatch", []).append({"ratings": n, "sides": MINIBATCH_SIDES,
                                                "fits": best, "floor_s": floors})


#: (label, data maker, MatrixFactorization arguments) of the threads case (issue 10, item 2).
THREAD_FITS: list[tuple[str, Any, dict[str, Any]]] = [
    ("sparse review-site shape, 15 ALS epochs", lambda q: ds.sparse_reviews(),
     {"solver": "als", "epochs": 15}),
    ("1M ratings, 15 ALS epochs", lambda q: ds.synthetic_lowrank(
        n_train=100_000 if q else 1_000_000, n_test=1000), {"solver": "als", "epochs": 15}),
    ("1M ratings, full-batch adam, 30 epochs", lambda q: ds.synthetic_lowrank(
        n_train=100_000 if q else 1_000_000, n_test=1000),
     {"solver": "adam", "epochs": 30, "rank": 32}),
    ("ml-100k u1, default fit", lambda q: ds.movielens_100k(1), {}),
    ("100k ratings, sgd batch 1024, 3 epochs", lambda q: ds.synthetic_lowrank(
        n_train=100_000, n_test=1000), {"solver": "sgd", "epochs": 3, "batch_size": 1024}),
]
#: Fits of each side in the threads case, alternating; each side's median is reported.
THREAD_REPEATS = 3


def case_threads(quick: bool, device: str) -> None:
    """Issue 10, item 2: two threads are never slower than one. Each fit of :data:`THREAD_FITS`
    runs with ``n_threads=1`` (the baseline column) and with the default thread count (this
    machine's cores), :data:`THREAD_REPEATS` times each, alternately, seeded; ratio = default /
    one thread (target <= 1). The note says whether the default's repeated fits gave the same
    factors bit for bit (the policy depends on sizes and cores, never on the load)."""
    if not af.AVAILABLE:
        for label, _, _ in THREAD_FITS:
            add_row(f"threads: {label}", None, "n_threads=1", None, 1.0, note=_af_na("threads"))
        return
    import torch

    for label, make, params in THREAD_FITS:
        data = make(quick)
        times: dict[str | int, list[float]] = {1: [], "default": []}
        factors: list[np.ndarray] = []
        note = ""
        try:
            for _ in range(1 if quick else THREAD_REPEATS):
                for n in (1, "default"):
                    res = af.threads_fit(data, params, n_threads=1 if n == 1 else None)
                    times[n].append(res["fit_s"])
                    if n == "default":
                        factors.append(res["user_factors"])
        except Exception as exc:
            details.setdefault("errors", {})["threads"] = traceback.format_exc()
            add_row(f"threads: {label}", None, "n_threads=1", None, 1.0,
                    note=f"{type(exc).__name__}: {exc}")
            continue
        same = (None if len(factors) < 2
                else all(np.array_equal(factors[0], f) for f in factors[1:]))
        note = (f"default = {torch.get_num_threads()} torch threads available; fits "
                f"{' / '.join(f'{t:.3f}' for t in times['default'])} s vs one thread "
                f"{' / '.join(f'{t:.3f}' for t in times[1])} s; repeated default fits "
                + ("n/a (one fit)" if same is None else "identical" if same else "DIFFER"))
        add_row(f"threads: {label}", float(np.median(times["default"])),
                "same fit, n_threads=1", float(np.median(times[1])), 1.0, note=note)
        details.setdefault("threads", []).append({"case": label, "params": params,
                                                  "default_s": times["default"],
                                                  "one_thread_s": times[1],
                                                  "identical": same})


CASES = {
    "threads": case_threads,
    "gradient": case_gradient,
    "post": case_post,
    "surprise": case_surprise,
    "movielens": case_movielens,
    "scale": case_scale,
    "netflix": case_netflix,
    "accuracy": case_accuracy,
    "sparse": case_sparse,
    "coldstart": case_coldstart,
    "budget": case_budget,
    "ttareal": case_ttareal,
    "tta10m": case_tta10m,
    "minibatch": case_minibatch,
}


# --------------------------------------------------------------------------------------------------
# contention: every case again beside a busy process (issue 10)
# --------------------------------------------------------------------------------------------------
#: Busy processes started for the contended run: one, i.e. one of two cores lost on a 2-core box.
BUSY_PROCESSES = 1


class busy:
    """``with busy(n):`` runs ``n`` processes spinning in pure Python (one core each), started
    before and killed after the block, so a case measures what it gets on a shared machine."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> busy:
        code = "while True:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.2)  # let them reach the loop
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _run_case(c: str, quick: bool, device: str) -> None:
    try:
        CASES[c](quick, device)
    except Exception as exc:
        details.setdefault("errors", {})[c] = traceback.format_exc()
        add_row(c, None, "", None, note=f"case failed: {type(exc).__name__}: {exc}")


def _merge_contended(start: int, mid: int) -> None:
    """Fold the contended rows ``rows[mid:]`` into their quiet twins ``rows[start:mid]`` (same
    case label) as ``c_autofact_s``/``c_baseline_s``/``c_ratio`` and autofact's slowdown; a
    contended row without a quiet twin stays a row of its own, marked in its label."""
    quiet = {r["case"]: r for r in rows[start:mid]}
    extra = rows[mid:]
    del rows[mid:]
    for r in extra:
        twin = quiet.get(r["case"])
        if twin is None:
            r["case"] += " [contended]"
            r["c_autofact_s"], r["c_baseline_s"], r["c_ratio"] = (
                r.pop("autofact_s"), r.pop("baseline_s"), r.pop("ratio"))
            r.update(autofact_s=None, baseline_s=None, ratio=None)
            rows.append(r)
            continue
        twin["c_autofact_s"], twin["c_baseline_s"], twin["c_ratio"] = (
            r["autofact_s"], r["baseline_s"], r["ratio"])
        if twin["autofact_s"] and r["autofact_s"]:
            twin["slowdown"] = r["autofact_s"] / twin["autofact_s"]
        elif twin.get("autofact_fit_s") and r.get("autofact_fit_s"):
            # no time to a target on one side (never reached): the whole fits' times instead
            twin["slowdown"] = r["autofact_fit_s"] / twin["autofact_fit_s"]
            twin["slowdown_of"] = "full fit"
        if r.get("note") and r["note"] != twin.get("note"):
            twin["note"] = (twin.get("note", "") + f" [contended: {r['note']}]").strip()


# --------------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev_name = cpu
    if device.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(0)
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "autofact": af.version(), "device": device, "device_name": dev_name,
    }  # fmt: skip


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e-3 else f"{x:.{nd}f}" if x < 10 else f"{x:.1f}"
    return str(x)


COLUMNS = [
    "case",
    "autofact (s)",
    "baseline",
    "baseline (s)",
    "ratio",
    "target ratio",
    "pass",
    "peak memory",
    "accuracy",
    "note",
]


#: Contended columns, present when some row was also run beside a busy process.
CONTENDED_COLUMNS = ["contended autofact (s)", "contended baseline (s)", "contended ratio",
                     "autofact slowdown (target <= 2)"]


def table(rows: list[dict]) -> str:
    contended = any("c_autofact_s" in r or "c_baseline_s" in r for r in rows)
    columns = COLUMNS + (CONTENDED_COLUMNS if contended else [])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [
            r["case"],
            _fmt(r["autofact_s"]),
            r["baseline"],
            _fmt(r["baseline_s"]),
            _fmt(r["ratio"]),
            _fmt(r["target"]) if r["target"] is not None else "",
            {True: "yes", False: "NO", None: ""}[r["pass"]],
            r["peak_mem"],
            r["accuracy"],
            r["note"],
        ]
        if contended:
            slow = r.get("slowdown")
            cells += [_fmt(r.get("c_autofact_s")), _fmt(r.get("c_baseline_s")),
                      _fmt(r.get("c_ratio")),
                      "" if slow is None else
                      f"{slow:.2f} ({'ok' if slow <= 2 else 'OVER'}"
                      + (f"; {r['slowdown_of']})" if r.get("slowdown_of") else ")")]
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shrink every case (< 1 minute total)")
    ap.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated subset of {','.join(ALL_CASES)}",
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--surprise-rmse", default="",
        help="case=rmse,... : Surprise's RMSE where scikit-surprise is not installed "
             "(e.g. surprise=0.6205,movielens=0.9513 from a CPU run)",
    )
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--load", default="both", choices=["quiet", "contended", "both"],
        help="run each case quiet, beside a busy process this script starts and stops itself, "
             "or both (default; the table then has the contended columns and the slowdown)",
    )
    args = ap.parse_args(argv)
    for item in filter(None, args.surprise_rmse.split(",")):
        key, _, val = item.partition("=")
        GIVEN_TARGETS[key.strip()] = float(val)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {ALL_CASES}")
    if not af.AVAILABLE:
        print(
            f"note: autofact not importable ({af.REASON}); its column will read n/a",
            file=sys.stderr,
        )
    info = machine_info(args.device)
    t_all = time.perf_counter()
    for c in cases:
        t0 = time.perf_counter()
        print(f"[{c}] running...", file=sys.stderr, flush=True)
        start = len(rows)
        if args.load in ("quiet", "both"):
            _run_case(c, args.quick, args.device)
        if args.load in ("contended", "both"):
            mid = len(rows)
            print(f"[{c}] again beside {BUSY_PROCESSES} busy process(es)...", file=sys.stderr,
                  flush=True)
            with busy(BUSY_PROCESSES):
                _run_case(c, args.quick, args.device)
            _merge_contended(start, mid)
        print(f"[{c}] {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    md = "\n\n".join([table(rows), *extra_tables])
    print(md)
    print(
        f"\n{info['device_name']} ({info['cpu_count']} cpus), torch {info['torch']}, "
        f"numpy {info['numpy']}, scipy {info['scipy']}; total {total:.1f} s"
        + (" [quick]" if args.quick else "")
    )
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M")
        dev = "".join(ch if ch.isalnum() else "-" for ch in info["device_name"]).strip("-")[:40]
        stem = (
            f"{stamp}_{platform.system().lower()}-{info['machine']}-{info['cpu_count']}cpu-"
            f"{args.device}-{dev}" + ("_quick" if args.quick else "")
        )
        header = (
            f"# autofact benchmarks {stamp}{' (quick)' if args.quick else ''}\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in info.items())
            + f"\n- cases: {','.join(cases)}\n- total: {total:.1f} s\n\n"
        )
        (RESULTS / f"{stem}.md").write_text(header + md + "\n")
        payload = {
            "machine": info,
            "quick": args.quick,
            "cases": cases,
            "total_s": total,
            "rows": rows,
            "details": details,
        }
        (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=_json_default))
        print(f"saved {RESULTS / stem}.md/.json", file=sys.stderr)
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
