"""Every call the benchmarks make into autofact lives here, one function per case.

Adapt this module (and only this module) when the library's API moves. If autofact cannot be
imported, ``AVAILABLE`` is False, ``REASON`` says why, and the harness prints "n/a" for the autofact
column.

All functions take/return plain NumPy data and floats; timings use ``time.perf_counter``
and, on CUDA, synchronise before reading the clock.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_SRC = Path(__file__).resolve().parent.parent / "src"

try:
    import torch

    try:
        import autofact
    except ImportError:  # not installed into the venv: fall back to the source tree
        if str(_SRC) not in sys.path:
            sys.path.insert(0, str(_SRC))
        import autofact
    from autofact import MatrixFactorization, Ratings, matrix_factorization_bgd
    from autofact.objective import Objective

    AVAILABLE = True
    REASON = ""
except Exception as exc:  # ImportError, AttributeError, anything half-written
    AVAILABLE = False
    REASON = f"{type(exc).__name__}: {exc}"

#: Hyper-parameters for the time-to-accuracy runs (ALS). Tune here, not in run.py.
TTA_PARAMS: dict[str, dict[str, Any]] = {
    "synthetic": {"rank": 10, "solver": "als", "epochs": 8, "beta": 25.0, "bias": True},
    "movielens": {"rank": 10, "solver": "als", "epochs": 8, "beta": 25.0, "bias": True},
}
#: Scale case: full-batch Adam at rank 64 (epochs set by the caller); the step's extra memory is
#: bounded by ``max_memory``.
SCALE_PARAMS: dict[str, Any] = {"solver": "adam", "lr": 0.01, "beta": 25.0, "bias": True}
#: The step's memory budget: small on the CPU (the RSS bound), larger on a GPU, where each block
#: costs kernel launches and the device has the room.
SCALE_MAX_MEMORY = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}


def version() -> str:
    return getattr(autofact, "__version__", "?") if AVAILABLE else "n/a"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ratings(part: dict, shape) -> Any:
    return Ratings.from_coo(part["users"], part["items"], part["ratings"], shape=tuple(shape))


# ---------------------------------------------------------------------------------------------
# gradient: one full-batch gradient of the post's loss through autograd
# ---------------------------------------------------------------------------------------------
def gradient_case(
    data: dict,
    rank: int = 32,
    beta: float = 0.02,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    baseline: Any = None,
) -> dict:
    """Best-of-``repeats`` seconds for ``obj.value_and_grad(params)`` after ``warmup`` calls.

    ``baseline`` (a no-argument callable) is timed between autofact's calls, one call of each in
    turn, so that a change of the machine's load hits both sides alike (issue 10: timed one side
    after the other, the ratio swung 0.35-0.93 from run to run on a shared machine); its
    best-of-``repeats`` seconds come back as ``baseline_seconds``. Also returns the loss value
    and, where the parameter layout can be recognised, ``P`` (m x k) and ``Q`` (k x n) as NumPy
    so the harness can check the value against the NumPy baseline."""
    r = _ratings(data["train"], data["shape"])
    obj = Objective(
        r,
        loss="squared",
        regularization="l2",
        beta=beta,
        bias=False,
        device=device,
        dtype=torch.float32,
    )
    params = obj.init_params(rank=rank, seed=0)

    def clear() -> None:
        for p in params.values():
            p.grad = None

    for _ in range(warmup):
        clear()
        obj.value_and_grad(params)
    _sync(device)
    best = base_best = float("inf")
    value = float("nan")
    if baseline is not None:
        baseline()  # its warm-up
    for _ in range(repeats):
        clear()
        _sync(device)
        t0 = time.perf_counter()
        value = obj.value_and_grad(params)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        if baseline is not None:
            t0 = time.perf_counter()
            baseline()
            base_best = min(base_best, time.perf_counter() - t0)
    out: dict[str, Any] = {"seconds": best, "value": float(value)}
    if baseline is not None:
        out["baseline_seconds"] = base_best
    out.update(_factors_as_numpy(params, data["shape"], rank))
    return out


def _factors_as_numpy(params: dict, shape, rank: int) -> dict:
    """Find P (m x k) and Q (k x n) among ``params`` by shape; empty dict if ambiguous."""
    m, n = shape
    P = Q = None
    for t in params.values():
        a = t.detach().cpu().numpy()
        if a.shape == (m, rank) and P is None:
            P = a
        elif a.shape == (rank, n) and Q is None:
            Q = a
        elif a.shape == (n, rank) and Q is None and m != n:
            Q = a.T
    return {"P": P, "Q": np.ascontiguousarray(Q)} if P is not None and Q is not None else {}


# ---------------------------------------------------------------------------------------------
# post: the 2016 post's batch gradient descent, 5000 steps
# ---------------------------------------------------------------------------------------------
def post_case(
    R: np.ndarray,
    P0: np.ndarray,
    Q0: np.ndarray,
    steps: int = 5000,
    alpha: float = 0.0002,
    beta: float = 0.02,
    device: str = "cpu",
) -> dict:
    """Seconds for ``matrix_factorization_bgd`` (whole call), and the final P, Q as NumPy."""
    D_masked = np.ma.masked_equal(np.asarray(R, dtype=np.float64), 0)
    _sync(device)
    t0 = time.perf_counter()
    P, Q = matrix_factorization_bgd(
        D_masked, P0.copy(), Q0.copy(), steps=steps, alpha=alpha, beta=beta
    )
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "P": _np(P), "Q": _np(Q)}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# time to accuracy: ALS until held-out RMSE <= target
# ---------------------------------------------------------------------------------------------
#: ``MatrixFactorization()`` as a user fits it, for the time-to-accuracy cases on real data
#: (issue 10, item 4). ``patience`` only acts on validation data, which a user's default fit does
#: not have; it is off here so that the validation RMSE recorded every sweep (to read the time to
#: a target from ``history_``) changes nothing about the fit.
DEFAULT_FIT_PARAMS: dict[str, Any] = {"patience": None}


def reached_at(history: list[dict], target_rmse: float) -> dict | None:
    """The first record of ``history`` whose ``val_rmse`` <= ``target_rmse`` (None if none):
    its ``time`` is the seconds since ``fit`` was called, set-up included."""
    return next((h for h in history
                 if h.get("val_rmse") is not None and h["val_rmse"] <= target_rmse), None)


def time_to_accuracy(
    data: dict, target_rmse: float, params: dict[str, Any], device: str = "cpu"
) -> dict:
    """Fit ``MatrixFactorization(**params)`` (seed 0 unless given) with the test part as
    validation; seconds = ``history_[k]['time']`` at the first epoch whose ``val_rmse`` <=
    ``target_rmse`` (None if never reached). The history is returned, so further targets can be
    read from the same fit with :func:`reached_at`. Also the fit's CPU seconds and the load
    average before and after it."""
    train = _ratings(data["train"], data["shape"])
    test = _ratings(data["test"], data["shape"])
    model = MatrixFactorization(**{"seed": 0, **params}, **_dev(device))
    load_before = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(train, validation=test)
    _sync(device)
    fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = [dict(h) for h in model.history_]
    reached = reached_at(hist, target_rmse)
    pred = np.asarray(model.predict_indices(data["test"]["users"], data["test"]["items"]))
    rmse = float(np.sqrt(np.mean((pred - data["test"]["ratings"]) ** 2)))
    return {
        "seconds": float(reached["time"]) if reached else None,
        "epoch": int(reached["epoch"]) if reached else None,
        "fit_wall_s": fit_wall,
        # issue 10, item 4: on a shared machine the wall time of a fit follows the others'
        # load (1.2-4x its CPU at load 3-8 on 2 cores): its CPU seconds (all threads) and the
        # 1-minute load average before and after say how much
        "fit_cpu_s": fit_cpu,
        "load_before_after": [load_before, os.getloadavg()[0]],
        "final_rmse": rmse,
        "best_val_rmse": min(
            (h["val_rmse"] for h in hist if h.get("val_rmse") is not None), default=None
        ),
        "solver": str(model.solver_),
        "epochs_run": len(hist),
        "stopped": hist[-1].get("stopped") if hist else None,
        "history": hist,
    }


def _dev(device: str) -> dict:
    # CPU is the library default; only pass the argument when it matters
    return {} if device == "cpu" else {"device": device}


# ---------------------------------------------------------------------------------------------
# scale: seconds per ALS epoch at rank 64 (run inside benchmarks.scale's subprocess)
# ---------------------------------------------------------------------------------------------
def scale_prepare(data: dict) -> tuple[Any, Any]:
    """The Ratings for the scale case (sorting happens here, before the measured fit)."""
    return _ratings(data["train"], data["shape"]), _ratings(data["test"], data["shape"])


def scale_case(train: Any, test: Any, rank: int = 64, epochs: int = 2, device: str = "cpu") -> dict:
    model = MatrixFactorization(rank=rank, epochs=epochs, seed=0, **SCALE_PARAMS, **_dev(device),
                                max_memory=SCALE_MAX_MEMORY[device.split(":")[0]])
    t0 = time.perf_counter()
    model.fit(train, validation=test)
    _sync(device)
    wall = time.perf_counter() - t0
    hist = [dict(h) for h in model.history_]
    times = [float(h["time"]) for h in hist]
    per_epoch = np.diff([0.0] + times)
    return {
        "fit_wall_s": wall,
        "sec_per_epoch": float(np.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)),
        "first_epoch_s": float(per_epoch[0]) if len(per_epoch) else None,
        "val_rmse": hist[-1].get("val_rmse") if hist else None,
        "solver": model.solver_,
        "max_memory_mib": model.max_memory / 2**20,
        "history": hist,
    }


def scale_fit(train: Any, test: Any, params: dict[str, Any], device: str = "cpu") -> dict:
    """``MatrixFactorization(**params)`` on the scale case's Ratings (issue 9, item 4: the
    default fit, ``{}``, against ``{'solver': 'als', 'epochs': 15}``): fit wall and CPU
    seconds (all threads; steadier than wall time on a shared machine), test RMSE, the solver,
    the sweeps or epochs run, why a sampled fit stopped, the rank."""
    model = MatrixFactorization(**params, **_dev(device))
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(train)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pred = np.asarray(model.predict_indices(test.users, test.items), dtype=np.float64)
    last = dict(model.history_[-1]) if model.history_ else {}
    return {"fit_wall_s": wall, "fit_cpu_s": cpu,
            "test_rmse": float(np.sqrt(np.mean((pred - test.values) ** 2))),
            "solver": str(model.solver_), "epochs_run": int(model.n_epochs_),
            "stopped": last.get("stopped"), "gain": last.get("gain"),
            "fit_rank": int(model.user_factors_.shape[1]),
            "history": [dict(h) for h in model.history_]}


# ---------------------------------------------------------------------------------------------
# accuracy with defaults (issue 9): MatrixFactorization() and nothing else
# ---------------------------------------------------------------------------------------------
def _fit_and_score(data: dict, params: dict[str, Any], device: str) -> dict:
    """``MatrixFactorization(**params)`` fitted on the train part: fit seconds, RMSE and MAE of
    ``predict`` on the test part (unknown ids get the model's own fallback), solver and epochs."""
    import warnings

    train = _ratings(data["train"], data["shape"])
    model = MatrixFactorization(**params, **_dev(device))
    t0 = time.perf_counter()
    model.fit(train)
    _sync(device)
    fit_s = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown users/items in the test part
        pred = np.asarray(model.predict(data["test"]["users"], data["test"]["items"]),
                          dtype=np.float64)
    err = pred - data["test"]["ratings"].astype(np.float64)
    return {"fit_s": fit_s, "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))), "solver": str(model.solver_),
            "epochs": int(model.n_epochs_)}


def default_fit(data: dict, device: str = "cpu") -> dict:
    """``MatrixFactorization()`` with every argument at its default (issue 9's accuracy case)."""
    return _fit_and_score(data, {}, device)


# ---------------------------------------------------------------------------------------------
# sparse (issue 10): a fixed number of ALS epochs, defaults otherwise
# ---------------------------------------------------------------------------------------------
def als_fit(data: dict, epochs: int = 15, device: str = "cpu") -> dict:
    """``MatrixFactorization(solver='als', epochs=epochs)``, every other argument at its default."""
    return _fit_and_score(data, {"solver": "als", "epochs": epochs}, device)


def threads_fit(data: dict, params: dict[str, Any], n_threads: int | None) -> dict:
    """``MatrixFactorization(seed=0, **params, n_threads=n_threads)`` fitted on the train part
    (issue 10, item 2: the threads case): wall seconds of ``fit`` and the user factors (float64
    NumPy), to check that repeated fits give the same numbers."""
    train = _ratings(data["train"], data["shape"])
    model = MatrixFactorization(**{"seed": 0, **params}, n_threads=n_threads)
    t0 = time.perf_counter()
    model.fit(train)
    return {"fit_s": time.perf_counter() - t0,
            "user_factors": np.asarray(model.user_factors_, dtype=np.float64)}


# ---------------------------------------------------------------------------------------------
# mini-batch epochs (issue 10, item 6): seconds per epoch as users + items grow
# ---------------------------------------------------------------------------------------------
def epoch_seconds(data: dict, params: dict[str, Any], epochs: int = 6,
                  device: str = "cpu") -> dict:
    """``MatrixFactorization(**params, epochs=epochs, patience=None)`` without validation data:
    the seconds of each epoch (differences of ``history_[k]['time']``), their median over the
    epochs after the first (which carries the set-up), the solver and the test RMSE; and the
    process's CPU seconds for the whole fit over ``epochs`` (all threads, set-up included: on a
    loaded machine steadier than wall time)."""
    train = _ratings(data["train"], data["shape"])
    model = MatrixFactorization(**{"seed": 0, **params}, epochs=epochs, patience=None,
                                **_dev(device))
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(train)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_epoch = np.diff([0.0] + [float(h["time"]) for h in model.history_])
    pred = np.asarray(model.predict_indices(data["test"]["users"], data["test"]["items"]),
                      dtype=np.float64)
    return {"sec_per_epoch": float(np.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)),
            "epochs_s": per_epoch.tolist(), "fit_wall_s": wall, "fit_cpu_s": cpu,
            "cpu_s_per_epoch": cpu / max(len(per_epoch), 1), "solver": str(model.solver_),
            "test_rmse": float(np.sqrt(np.mean((pred - data["test"]["ratings"]) ** 2)))}
