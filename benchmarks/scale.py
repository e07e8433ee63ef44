"""Scale case, one shape per process so peak RSS is clean::

    python -m benchmarks.scale --shape ml25m --rank 64 --epochs 2 [--scale 0.01] [--device cpu]
    python -m benchmarks.scale --shape ml25m --fit default     # MatrixFactorization(), issue 9
    python -m benchmarks.scale --shape ml25m --fit als         # solver='als', epochs=15

``--fit adam`` (the default) times full-batch Adam epochs at ``--rank``; ``--fit default`` fits
``MatrixFactorization()`` as a user gets it (the Gibbs sampler, its sweep budget adapting to the
data) and ``--fit als`` fits ``MatrixFactorization(solver='als', epochs=15)`` (``--epochs`` if
given), each reporting its fit wall and CPU time, test RMSE and peak RSS against the case's bound
(``--rank``, 64, sizes its factor term; ``bound_fit_rank_mib`` is the same formula at the rank the
model fitted, 10).

Prints one JSON object. Memory figures (MiB):

* ``rss_before_fit``: resident set after importing torch/autofact and generating the data.
* ``peak_rss_fit``: the high-water mark *during the fit* - VmHWM after resetting it through
  ``/proc/self/clear_refs`` once the data exists (the transient memory of the synthetic generator is
  thereby excluded; the data arrays themselves, torch's runtime and everything autofact allocates
  are included). Falls back to ``ru_maxrss`` where the reset is not available.
* ``peak_rss_process``: ``ru_maxrss`` of the whole process, generator included.
* ``bound``: 1.5 * (bytes of ratings + bytes of float32 factors) + 0.5 GiB;
  ``within_bound`` compares ``peak_rss_fit`` with it.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time

MiB = 1024 * 1024


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def copy_bandwidth(device: str, nbytes: int = 512 * MiB, repeats: int = 5) -> float:
    """Bytes per second of a large on-device copy (each byte read once and written once)."""
    import torch

    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        y.copy_(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del x, y
    return 2 * nbytes / best


def _bandwidth_bound(device: str, nnz: int, rank: int, factor_bytes: int, sec: float) -> dict:
    """The epoch's time against what the bytes it must move take at the measured copy bandwidth.

    Byte model of one full-batch epoch (documented in benchmarks/README.md): per rating, three
    gathers of a ``rank``-float row (the SDDMM's, and one in each SpMM of the backward) and
    28 bytes of indices, values and per-entry gradients; plus six passes over the factors
    (read, gradient, optimizer state and update).
    """
    bw = copy_bandwidth(device)
    moved = nnz * (12 * rank + 28) + 6 * factor_bytes
    bound = moved / bw
    return {"copy_gbps": bw / 1e9, "bytes_per_epoch_model": moved, "bandwidth_bound_s": bound,
            "epoch_over_bound": sec / bound}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="ml25m", choices=["ml1m", "ml25m", "netflix"])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink users/items/ratings (quick)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=None,
                    help="adam: epochs timed (2); als: epochs fitted (15); default: not used")
    ap.add_argument("--fit", default="adam", choices=["adam", "default", "als"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from benchmarks import autofact_side as af
    from benchmarks.datasets import nbytes, synthetic_shape

    t0 = time.perf_counter()
    data = synthetic_shape(args.shape, scale=args.scale, seed=args.seed)
    gen_s = time.perf_counter() - t0
    m, n = data["shape"]
    n_ratings = sum(len(data[p]["ratings"]) for p in ("train", "test"))
    rating_bytes = nbytes(data)
    if args.epochs is None:
        args.epochs = {"adam": 2, "als": 15, "default": None}[args.fit]
    factor_bytes = (m + n) * args.rank * 4
    bound = 1.5 * (rating_bytes + factor_bytes) + 0.5 * 1024 * MiB
    out = {
        "shape": args.shape, "scale": args.scale, "m": m, "n": n, "ratings": n_ratings,
        "fit": args.fit, "rank": args.rank, "epochs": args.epochs, "device": args.device,
        "gen_s": gen_s,
        "rating_bytes": rating_bytes, "factor_bytes": factor_bytes, "bound_mib": bound / MiB,
        "autofact": af.AVAILABLE, "reason": af.REASON,
    }  # fmt: skip
    out["peak_rss_process_gen_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prepared = af.scale_prepare(data) if af.AVAILABLE else None
    del data  # the generator's own (unsorted) arrays: the fit sees only the Ratings
    gc.collect()
    rss = _status_kb("VmRSS")
    out["rss_before_fit_mib"] = rss / 1024 if rss else None
    reset = _reset_hwm()
    out["hwm_reset"] = reset
    if prepared is not None:
        try:
            if args.fit == "adam":
                res = af.scale_case(*prepared, rank=args.rank, epochs=args.epochs,
                                    device=args.device)
            else:
                params = {} if args.fit == "default" else {"solver": "als", "epochs": args.epochs}
                res = af.scale_fit(*prepared, params, device=args.device)
                out["bound_fit_rank_mib"] = (1.5 * (rating_bytes + (m + n) * res["fit_rank"] * 4)
                                             + 0.5 * 1024 * MiB) / MiB
            out.update({k: v for k, v in res.items() if k != "history"})
            out["history"] = res["history"]
        except Exception as exc:  # report, don't crash the harness
            out["error"] = f"{type(exc).__name__}: {exc}"
    hwm = _status_kb("VmHWM") if reset else None  # before the bandwidth probe's buffers
    if prepared is not None and "sec_per_epoch" in out:
        out.update(_bandwidth_bound(args.device, n_ratings, args.rank, factor_bytes,
                                    out["sec_per_epoch"]))
    out["peak_rss_process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # (includes the bandwidth probe's 1 GiB of buffers when it ran)
    out["peak_rss_fit_mib"] = hwm / 1024 if hwm else out["peak_rss_process_mib"]
    out["within_bound"] = out["peak_rss_fit_mib"] <= out["bound_mib"]
    if args.device.startswith("cuda") and af.AVAILABLE:
        import torch

        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MiB
    json.dump(out, sys.stdout, default=float)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
