"""Rank-local data under torchrun (issue 11, item 3): per-process peak RSS and seconds per epoch
with 1, 2 and 4 processes reading their own Parquet part files::

    python -m benchmarks.shards --ratings 5e6                  # 1/2/4 processes, rank 32, 3 epochs
    python -m benchmarks.shards --ratings 25e6 --worlds 1,2,4  # the issue's case (ML-25M shape)
    python -m benchmarks.shards --ratings 25e6 --solvers adam,als   # both solvers, side by side
    MALLOC_MMAP_THRESHOLD_=131072 python -m benchmarks.shards ...   # glibc returns freed blocks

The data: ``datasets.synthetic_lowrank`` at the ML-25M density (162,541 x 59,047 x 25M shrunk by
``--ratings / 25M``: users and items by its square root), written once to ``--data`` (default
``/tmp/autofact-shards-<ratings>``) as ``--parts`` Parquet files, a user's ratings all in one part
(part ``user mod parts``: users partitioned, as the issue lays the data out), int64 ids, float64
ratings. Each world size runs ``torchrun --standalone --nproc-per-node W`` on this module's
worker: ``distributed.init`` (gloo), ``distributed.read_local(DATA)`` (each rank reads
``parts / W`` files), then ``--epochs`` epochs through ``distributed.fit(..., local=True)`` of
each solver of ``--solvers``: ``adam`` (full batch, ``SCALE_PARAMS``: every process holds every
factor and Adam's state), ``als`` (sharded: each process solves its own users; the item
half-step's normal equations summed over the processes) or ``gibbs`` (the default sampler,
sharded by user as ``als`` is; its state: the running posterior-mean sums), ``max_memory``
64 MiB, float32; then the model is saved as ``autofact fit`` saves it, part of the fit's peak
(``--gather-seen save``, the default: ``distributed.save``, every process, rank 0 writing every
user's seen items a range of users at a time; ``yes``: ``distributed.fit(gather_seen=True)``, rank
0 gathering every rating's pair, then the same save; ``no``: no save).

Per process (MiB): ``base`` = VmRSS after ``import torch, autofact, pandas, pyarrow.parquet`` and
joining the group; ``(warm)`` = VmRSS after the same process has then read a 2,000-rating Parquet
part and fitted it (same solver and rank, shared by the processes as the measured fit is: each
process its users' ratings, then ``distributed.save``) and freed them: the torch baseline the bound
adds, the libraries once used (code paged in, thread pools, allocator arenas), whatever the data
(a fit alone, as before, left 13 MiB of the sharded paths' code out of it); ``read
peak`` = VmHWM after reading (pandas' frames included); ``fit peak`` = VmHWM during the fit (reset
after reading: ``/proc/self/clear_refs``); ``peak`` = the larger of the two (and of ``ru_maxrss``).
The bound is the issue's: ``1.5 x (its ratings + user factors + item factors + optimizer state) +
warm base``. **A rating is what the process's** :class:`autofact.Ratings` **holds**: an int32 user
code, an int32 item code and the value, float32 by default (``--values``: ``read_local(DATA,
dtype="float32")``, the fit's own dtype, which the objective then shares instead of copying): 12
bytes, or 16 with ``--values float64`` (what ``autofact.read`` gives); factors and biases are
float32; Adam's state is 3 copies of the parameters (gradient, first and second moments), ALS's
none (its Hessian blocks are workspace, like the objective's blocks), the sampler's 1 (its
running posterior-mean sums); the divergence guard's copy of the parameters (one, for full-batch
gd/adam) is not counted: it comes out of the 1.5 x. Two bounds: ``bound held``
counts the user factors each process holds (all users': Adam's factors are replicated, and sharded
ALS gathers every user's rows at the end), ``bound own`` only its own users' (the issue's, for a
solver that keeps user rows where they live). ``B/rating`` = (fit peak - base - factors - state) /
ratings held: what a held rating costs during the fit, workspace and allocator slack included (the
bound allows 1.5 x 12 = 18 on this budget, plus half of the factors and state). ``allreduce`` times
one all-reduce of a tensor the size of the gradient (what one epoch of full-batch Adam sends),
after the fit. ``fit CPU s (system)``: the process's CPU seconds in the fit, and the system's
part of them (page faults; the JSON has their count), steadier than seconds on a shared
machine. ``file-backed +``: the file-backed RSS (libraries' code pages) the fit added beyond the
warm-up's.

Writes ``benchmarks/results/<date>_shards_<ratings>.md`` and ``.json``; every process runs
under ``nice``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
ML25M = (162_541, 59_047, 25_000_095)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_parts(folder: Path, n_ratings: int, n_parts: int, seed: int = 0) -> dict:
    """The synthetic set as ``n_parts`` Parquet files (a user's ratings in part ``user mod
    n_parts``); returns its shape."""
    import numpy as np
    import pandas as pd

    from benchmarks.datasets import synthetic_lowrank

    scale = n_ratings / ML25M[2]
    m, n = max(int(ML25M[0] * scale**0.5), 10), max(int(ML25M[1] * scale**0.5), 10)
    d = synthetic_lowrank(m=m, n=n, n_train=n_ratings, n_test=0, seed=seed)["train"]
    folder.mkdir(parents=True, exist_ok=True)
    part = d["users"] % n_parts
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
    for k in range(n_parts):
        rows = order[bounds[k] : bounds[k + 1]]
        pd.DataFrame({"user": d["users"][rows].astype(np.int64),
                      "item": d["items"][rows].astype(np.int64),
                      "rating": d["ratings"][rows].astype(np.float64)}
                     ).to_parquet(folder / f"part-{k:05d}.parquet", index=False)
    meta = {"users": m, "items": n, "ratings": int(len(d["users"])), "parts": n_parts}
    (folder / "_META.json").write_text(json.dumps(meta))
    return meta


#: Each solver's settings (beside rank, epochs, seed, max_memory, float32 on the CPU).
SOLVER_PARAMS = {"als": {"solver": "als", "beta": 25.0, "bias": True},
                 "gibbs": {"solver": "gibbs"}}
#: Copies of the parameters a solver keeps as optimizer state (for the bound): Adam's gradient
#: and two moments; the sampler's running posterior-mean sums.
STATE_COPIES = {"adam": 3, "als": 0, "gibbs": 1}


def worker(data: str, out: str, rank_k: int, epochs: int, solver: str = "adam",
           values: str = "float32", gather_seen: str = "save") -> None:
    """One process of a world: read its share, fit, report its memory and times."""
    import numpy as np
    import torch
    import torch.distributed as dist

    import autofact
    from autofact import distributed
    from autofact._memory import pin_heap_thresholds
    from benchmarks.autofact_side import SCALE_PARAMS

    pin_heap_thresholds()  # as the autofact program does (the library leaves it to the process)
    rank, world = distributed.init(timeout=3600)
    import pandas  # noqa: F401  (the readers' libraries belong to the baseline: a constant)
    import pyarrow.parquet  # noqa: F401

    base = _status_kb("VmRSS") / 1024
    params = SOLVER_PARAMS.get(solver, SCALE_PARAMS)
    warm = _warm_up(Path(out) / f"warm{rank}", rank_k, params, values)
    warm_file = _status_kb("RssFile") / 1024
    t0 = time.perf_counter()
    local = distributed.read_local(data, dtype=values)
    read_s = time.perf_counter() - t0
    gc.collect()
    read_peak = _status_kb("VmHWM") / 1024
    after_read = _status_kb("VmRSS") / 1024
    _reset_hwm()
    m, n = local.shape
    model = autofact.MatrixFactorization(rank=rank_k, epochs=epochs, seed=0, verbose=False,
                                         max_memory=64 * MiB, device="cpu", dtype="float32",
                                         **params)
    t0 = time.perf_counter()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    distributed.fit(model, local, local=True, gather_seen=gather_seen == "yes")
    before_save = _status_kb("VmHWM") / 1024
    if gather_seen != "no":  # as autofact fit does: every process, rank 0 writes
        distributed.save(model, Path(out, "model.npz"))
    fit_s = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fit_peak = _status_kb("VmHWM") / 1024
    fit_file = _status_kb("RssFile") / 1024
    # the process's own peak, before this worker's bookkeeping below allocates anything
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = [float(h["time"]) for h in model.history_]
    per_epoch = np.diff([0.0, *times])
    grad = torch.zeros((m + n) * (rank_k + 1), dtype=torch.float32)
    dist.barrier()  # rank 0 may still be building the gathered pattern
    t0 = time.perf_counter()
    dist.all_reduce(grad)
    allreduce_s = time.perf_counter() - t0
    seen = np.zeros(m, dtype=bool)
    seen[local.users] = True
    own_users = int(seen.sum())
    report = {
        "solver": solver, "world": world, "rank": rank, "ratings": len(local),
        "rating_bytes": 8 + local.values.itemsize, "users": m, "items": n,
        "own_users": own_users, "rank_k": rank_k, "epochs": epochs,
        "base_mib": base, "warm_base_mib": warm, "read_peak_mib": read_peak,
        "after_read_mib": after_read, "fit_peak_mib": fit_peak, "peak_mib": peak,
        "peak_before_save_mib": before_save, "file_after_warm_mib": warm_file,
        "file_after_fit_mib": fit_file,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "gather_seen": gather_seen,
        "read_s": read_s, "fit_s": fit_s, "epoch_s": [float(x) for x in per_epoch],
        "fit_user_s": usage.ru_utime - usage0.ru_utime,
        "fit_sys_s": usage.ru_stime - usage0.ru_stime,
        "fit_minor_faults": usage.ru_minflt - usage0.ru_minflt,
        "sec_per_epoch": float(statistics.median(per_epoch[1:])) if len(per_epoch) > 1
        else float(per_epoch[0]),
        "allreduce_s": allreduce_s, "threads": torch.get_num_threads(),
        "final_loss": float(model.history_[-1]["loss"]),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    distributed.shutdown()


def _state(r: dict) -> int:
    return STATE_COPIES[r.get("solver", "adam")]


def _warm_up(folder: Path, rank_k: int, params: dict, values: str) -> float:
    """The libraries once used (the torch baseline): read a tiny Parquet part and fit it in
    this process (same solver and rank, 2,000 ratings, shared by the processes as the measured
    fit is), free what that held, and return
    the RSS (MiB) then: code paged in, thread pools, allocator arenas, whatever the data."""
    import numpy as np
    import pandas as pd
    import torch.distributed as dist

    import autofact
    from autofact import distributed
    from autofact._memory import release_freed_memory
    from autofact.reading import read_parts

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 200 * 100, 2_000))
    pd.DataFrame({"user": keys // 100, "item": keys % 100, "rating": rng.normal(3, 1, len(keys))}
                 ).to_parquet(folder / "part-00000.parquet", index=False)
    tiny = read_parts([folder / "part-00000.parquet"], dtype=values)
    model = autofact.MatrixFactorization(rank=rank_k, epochs=2, seed=0, verbose=False,
                                         device="cpu", dtype="float32", max_memory=64 * MiB,
                                         **params)
    # shared as the measured fit is (its collectives', sharded solvers' and save's code paged
    # in: 13 MiB of file-backed pages that a fit alone left out of the baseline), each process
    # its users' ratings, the same id maps
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = tiny.subset(tiny.users % world == rank)
    distributed.fit(model, mine, local=True)
    distributed.save(model, folder / "warm.npz")
    del tiny, mine, model
    gc.collect()
    release_freed_memory()
    _reset_hwm()
    return _status_kb("VmRSS") / 1024


def bounds(r: dict) -> tuple[float, float]:
    """The issue's bound (MiB) with the user factors held (all), and with its own users'."""
    k1 = r["rank_k"] + 1
    ratings = r.get("rating_bytes", 16) * r["ratings"]
    items = 4 * r["items"] * k1

    def bound(users: int) -> float:
        params = 4 * users * k1 + items
        return (1.5 * (ratings + params * (1 + _state(r)))) / MiB + _base(r)

    return bound(r["users"]), bound(r["own_users"])


def per_rating(r: dict) -> float:
    """Bytes a held rating costs during the fit: the fit's peak less the baseline, the factors
    (all users' and items') and the optimizer state, over the ratings held."""
    params = 4 * (r["users"] + r["items"]) * (r["rank_k"] + 1)
    return (r["fit_peak_mib"] * MiB - _base(r) * MiB - params * (1 + _state(r))) / r["ratings"]


def _base(r: dict) -> float:
    """The torch baseline (MiB): after the warm-up, or (older results) after the imports."""
    return float(r.get("warm_base_mib", r["base_mib"]))


def run_world(data: Path, world: int, rank_k: int, epochs: int, timeout: float,
              solver: str = "adam", values: str = "float32", gather_seen: str = "save"
              ) -> list[dict]:
    out = data.parent / f"{data.name}-w{world}-{solver}"
    out.mkdir(exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = ["nice", "-n", "10", sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(world), "-m", "benchmarks.shards", "--worker", str(data),
           str(out), str(rank_k), str(epochs), solver, values, gather_seen]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"world {world} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def table(rows: list[dict]) -> str:
    head = ("| solver | processes | rank | ratings held | base (warm) | read peak | fit peak | peak "
            "| bound held | peak / bound held | bound own | B/rating (fit) | s / epoch "
            "| all-reduce s | fit CPU s (system) | file-backed + |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        held, own = bounds(r)
        # resetting VmHWM after reading resets ru_maxrss too: the process's peak is the larger
        peak = max(r["peak_mib"], r["read_peak_mib"], r["fit_peak_mib"])
        lines.append(
            f"| {r.get('solver', 'adam')} | {r['world']} | {r['rank']} | {r['ratings']:,} | "
            f"{r['base_mib']:.0f} ({_base(r):.0f}) | {r['read_peak_mib']:.0f} | {r['fit_peak_mib']:.0f} | "
            f"{peak:.0f} | {held:.0f} | {peak / held:.2f} | {own:.0f} | {per_rating(r):.1f} | "
            f"{r['sec_per_epoch']:.2f} | {r['allreduce_s']:.3f} | {_cpu(r)} | {_file(r)} |")
    return "\n".join(lines)


def _file(r: dict) -> str:
    """File-backed RSS (code pages) the fit added beyond the warm-up's, MiB, or ``-``."""
    if "file_after_fit_mib" not in r:
        return "-"
    return f"{r['file_after_fit_mib'] - r['file_after_warm_mib']:.0f}"


def _cpu(r: dict) -> str:
    """The fit's CPU seconds, user + system, and the system's share (page faults: a fit whose
    temporaries are mapped afresh each time spends it there), or ``-`` (older results)."""
    if "fit_user_s" not in r:
        return "-"
    return f"{r['fit_user_s'] + r['fit_sys_s']:.1f} ({r['fit_sys_s']:.1f})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], argv[2], int(argv[3]), int(argv[4]), *argv[5:8])
        return 0
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=float, default=5e6)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--solvers", default="adam", help="comma-separated: adam, als, gibbs")
    ap.add_argument("--values", default="float32", choices=("float32", "float64"),
                    help="read_local(dtype=): the values as the Ratings hold them")
    ap.add_argument("--gather-seen", default="save", choices=("save", "yes", "no"),
                    help="save: distributed.save after the fit (autofact fit's way); yes: "
                    "distributed.fit(gather_seen=True) then the save; no: no save")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args(argv)
    n_ratings = int(args.ratings)
    data = args.data or Path(f"/tmp/autofact-shards-{n_ratings}")
    meta_file = data / "_META.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
    else:
        t0 = time.perf_counter()
        meta = write_parts(data, n_ratings, args.parts)
        print(f"wrote {meta} to {data} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    load = os.getloadavg()
    rows: list[dict] = []
    solvers = args.solvers.split(",")
    for solver in solvers:
        if solver not in STATE_COPIES:
            ap.error(f"--solvers: {solver!r} is not one of {sorted(STATE_COPIES)}")
    for solver in solvers:
        for world in (int(w) for w in args.worlds.split(",")):
            got = run_world(data, world, args.rank, args.epochs, args.timeout, solver,
                            args.values, args.gather_seen)
            rows.extend(got)
            print("\n".join(table(got).splitlines()[-world:]), file=sys.stderr)
    after = os.getloadavg()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d_%H%M")
    header = (f"# Rank-local data: per-process memory and epoch time (issue 11)\n\n"
              f"`python -m benchmarks.shards --ratings {args.ratings:g} --worlds {args.worlds} "
              f"--rank {args.rank} --epochs {args.epochs} --solvers {args.solvers} "
              f"--values {args.values} --gather-seen {args.gather_seen}` on "
              f"{platform.platform()}, {os.cpu_count()} CPUs, load average before "
              f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, after {after[0]:.1f} / "
              f"{after[1]:.1f} / {after[2]:.1f}; data {meta}; MALLOC_MMAP_THRESHOLD_="
              f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}. MiB; bounds and B/rating "
              "as in `benchmarks/shards.py`.\n\n")
    text = header + table(rows) + "\n"
    print(text)
    results = ROOT / "benchmarks" / "results"
    (results / f"{stamp}_shards_{n_ratings}.md").write_text(text)
    (results / f"{stamp}_shards_{n_ratings}.json").write_text(
        json.dumps({"meta": meta, "load": load, "load_after": after, "rows": rows},
                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
