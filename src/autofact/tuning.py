"""Hyper-parameter search with Optuna, scored on a validation split carved from the training data.

:func:`tune` draws settings of :class:`~autofact.MatrixFactorization` (rank, regularization and its
strength, loss, solver) with Optuna's seeded TPE sampler, fits each on ``1 - validation_fraction``
of the ratings it is given and scores it on the rest. The first trial is the defaults
(``MatrixFactorization()``), so that the best settings are never worse on the validation split
than the defaults. The test data is never seen: pass only training ratings. The result prints
as a table of the best trials and saves the best settings as JSON that
``autofact fit --params FILE`` and :func:`read_params` accept.

>>> result = autofact.tune(train, n_trials=30)
>>> print(result.table())
>>> result.save("best.json")
>>> model = autofact.MatrixFactorization(**autofact.tuning.read_params("best.json")).fit(train)
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._optional import optional_import
from .data import as_ratings

__all__ = ["tune", "TuneResult", "TuneInterrupted", "read_params", "DEFAULT_SPACE",
           "PARAMS_FORMAT"]

PARAMS_FORMAT = "autofact.params"

# name -> ("int", low, high) / ("float", low, high): sampled on a log scale; a list: categorical
DEFAULT_SPACE: dict[str, Any] = {
    "rank": ("int", 2, 64),
    "beta": ("float", 0.1, 300.0),
    "regularization": ["l2", "l1"],
    "loss": ["squared", "huber"],
    "solver": ["auto", "lbfgs", "adam"],
}
_METRICS = ("rmse", "mae")
# the user attribute that marks the enqueued trial of the defaults (it suggests nothing)
_DEFAULTS_ATTR = "autofact_defaults"


@dataclass
class TuneResult:
    """What :func:`tune` found: the best settings, their validation score, and every trial.

    A trial is a dict: ``number``, ``params``, ``value``, ``state`` (``'complete'``, ``'failed'``
    or ``'interrupted'``), ``seconds``, ``defaults`` (whether it is the trial of the defaults) and,
    for a failed one, ``error``. ``interrupted``: the search was stopped by Ctrl-C (see
    :class:`TuneInterrupted`)."""

    best_params: dict[str, Any]
    best_value: float
    metric: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    def table(self, n: int = 10) -> str:
        """The ``n`` best finished trials as a plain-text table (best first)."""
        done = sorted((t for t in self.trials if t["state"] == "complete"),
                      key=lambda t: t["value"])[:n]
        names = sorted({k for t in done for k in t["params"]})
        header = ["trial", self.metric, "seconds", *names]
        rows = [["defaults" if t.get("defaults") else str(t["number"]), f"{t['value']:.4f}",
                 f"{t['seconds']:.1f}",
                 *(_fmt(t["params"].get(k)) for k in names)] for t in done]
        widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h)
                  for c, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        failed = sum(t["state"] == "failed" for t in self.trials)
        if failed:
            lines.append(f"({failed} of {len(self.trials)} trials did not finish: invalid "
                         "combination or training diverged)")
        if self.interrupted:
            finished = sum(t["state"] == "complete" for t in self.trials)
            lines.append(f"(interrupted (Ctrl-C) after {finished} finished trials; the best "
                         "so far is shown)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PARAMS_FORMAT, "format_version": 1, "params": dict(self.best_params),
                "metric": self.metric, "value": self.best_value}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the best settings as JSON (``autofact fit --params FILE`` reads it), atomically,
        as models are saved."""
        from .io import atomic_write

        target = Path(path)
        if not Path(os.path.realpath(target)).parent.is_dir():
            raise ValueError(
                f"cannot write {str(path)!r}: folder {str(target.parent)!r} does not exist; "
                "create it first"
            )
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(target, lambda fh: fh.write(text.encode("utf-8")))
        return target


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`tune` after at least one trial finished: the search stops, and the
    trials that finished are kept in :attr:`result` (a :class:`TuneResult` with
    ``interrupted=True``).

    It is a ``KeyboardInterrupt``, so that Ctrl-C still stops a program; catch it to use the best
    settings so far (in a notebook, after the interrupt: ``sys.last_value.result``)::

        try:
            result = autofact.tune(train, n_trials=100)
        except autofact.tuning.TuneInterrupted as stop:
            result = stop.result
    """

    def __init__(self, result: TuneResult, n_trials: int) -> None:
        done = sum(t["state"] == "complete" for t in result.trials)
        settings = ", ".join(f"{k}={v!r}" for k, v in sorted(result.best_params.items()))
        super().__init__(
            f"tuning interrupted (Ctrl-C) after {done} finished trials of {n_trials}; the best "
            f"so far has validation {result.metric} {result.best_value:.4f} with {settings}; "
            "this exception's .result holds every finished trial"
        )
        self.result = result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_space(space: dict[str, Any]) -> dict[str, Any]:
    from .model import MatrixFactorization

    valid = MatrixFactorization().get_params()
    for name, spec in space.items():
        if name not in valid:
            raise ValueError(
                f"search space names {name!r}, which is not a MatrixFactorization parameter; "
                f"valid ones are {sorted(valid)}"
            )
        ok = (isinstance(spec, list) and len(spec) > 0) or (
            isinstance(spec, tuple) and len(spec) == 3 and spec[0] in ("int", "float")
            and isinstance(spec[1], int | float) and isinstance(spec[2], int | float)
            and 0 < spec[1] <= spec[2]
        )
        if not ok:
            raise ValueError(
                f"search space entry {name}={spec!r} must be a non-empty list of choices or "
                "('int' | 'float', low, high) with 0 < low <= high (sampled on a log scale)"
            )
    return space


def tune(
    ratings: Any,
    *,
    n_trials: int = 30,
    validation_fraction: float = 0.1,
    metric: str = "rmse",
    space: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
    seed: int = 0,
    timeout: float | None = None,
    show_progress: bool = True,
    try_defaults: bool = True,
) -> TuneResult:
    """Search :class:`~autofact.MatrixFactorization` settings on a validation split.

    ``ratings`` is the training data (a :class:`~autofact.Ratings` or any form it is built from);
    ``validation_fraction`` of it is held out by :func:`autofact.evaluation.random_split` with
    ``seed``, and each trial is fitted on the rest and scored by ``metric`` (``'rmse'`` or
    ``'mae'``, lower is better) on the held-out part. ``space`` maps parameter names to a list of
    choices or ``('int' | 'float', low, high)`` (log scale); it defaults to
    :data:`DEFAULT_SPACE`. ``fixed`` holds parameters every trial shares (e.g. ``{"dtype":
    "float64"}``). A combination the model refuses (a solver that cannot run that loss) or a fit
    that diverges counts as a failed trial. ``timeout`` (seconds) stops the search early.

    The first of the ``n_trials`` is the defaults: ``MatrixFactorization(**fixed)``, every
    searched parameter at its default (e.g. ``rank='auto'``, which no range holds, and the
    Bayesian sampler that ``solver='auto'`` picks), so that the best trial is never worse on the
    validation split than the defaults; it suggests nothing, so the sampler's ranges stay as
    given. ``try_defaults=False`` leaves it out.

    Ctrl-C stops the search: with no trial finished the ``KeyboardInterrupt`` goes on as it came;
    otherwise :class:`TuneInterrupted` (a ``KeyboardInterrupt``) is raised, holding the finished
    trials and the best so far in its ``result``.
    """
    from .evaluation import mae, random_split, rmse
    from .model import MatrixFactorization

    train_all = as_ratings(ratings, "ratings")
    if not (isinstance(n_trials, int) and not isinstance(n_trials, bool) and n_trials >= 1):
        raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    space = _check_space(dict(DEFAULT_SPACE if space is None else space))
    fixed = dict(fixed or {})
    overlap = sorted(set(fixed) & set(space))
    if overlap:
        raise ValueError(f"parameters {overlap} are both fixed and searched; drop them from one")
    MatrixFactorization().set_params(**fixed)  # names checked here, values by each fit
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if not isinstance(try_defaults, bool):
        raise ValueError(f"try_defaults must be True or False, got {try_defaults!r}")
    defaults = MatrixFactorization().get_params()
    train, valid = random_split(train_all, validation_fraction, seed=seed)
    score = rmse if metric == "rmse" else mae
    vu, vi = valid.user_ids[valid.users], valid.item_ids[valid.items]

    optuna = optional_import("optuna", extra="tune", purpose="autofact.tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    trials: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = dict(fixed)
        is_defaults = bool(trial.user_attrs.get(_DEFAULTS_ATTR, False))
        for name, spec in space.items():
            if is_defaults:  # issue 9: defaults: shown and saved as the values they stand for
                params[name] = defaults[name]
            elif isinstance(spec, list):
                params[name] = trial.suggest_categorical(name, spec)
            elif spec[0] == "int":
                params[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]), log=True)
            else:
                params[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=True)
        params.setdefault("seed", seed)
        start = time.perf_counter()
        record: dict[str, Any] = {"number": trial.number, "params": params, "value": math.nan,
                                  "state": "failed", "seconds": 0.0, "defaults": is_defaults}
        trials.append(record)
        try:
            with warnings.catch_warnings():
                # unknown ids in the held-out part and non-converged fits are expected here
                warnings.simplefilter("ignore")
                model = MatrixFactorization(**params).fit(train)
                value = score(model.predict(vu, vi), valid.values)
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["seconds"] = time.perf_counter() - start
            raise optuna.TrialPruned(record["error"]) from None
        except KeyboardInterrupt:
            record.update(state="interrupted", seconds=time.perf_counter() - start)
            raise
        record.update(value=float(value), state="complete", seconds=time.perf_counter() - start)
        if not math.isfinite(value):
            record["state"] = "failed"
            raise optuna.TrialPruned("non-finite validation score")
        return float(value)

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    if try_defaults:
        # issue 9: defaults: every trial set beta, rank, ..., so MatrixFactorization() itself
        # (the Bayesian sampler) was never tried, and 4 trials on ml-100k u1.base scored a test
        # RMSE of 0.989 against 0.904 for the defaults
        study.enqueue_trial({}, user_attrs={_DEFAULTS_ATTR: True})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=n_trials, timeout=timeout,
                           show_progress_bar=show_progress, catch=())
    except KeyboardInterrupt:
        # trust: Ctrl-C lost every finished trial; keep them, as fit keeps its last epoch
        if not any(t["state"] == "complete" for t in trials):
            raise
        raise TuneInterrupted(_result(trials, metric, interrupted=True), n_trials) from None
    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        reasons = sorted({t.get("error", "non-finite score") for t in trials})
        raise ValueError(
            f"none of the {len(trials)} trials finished ({'; '.join(reasons[:3])}); widen the "
            "search space or fix the parameters that every trial shares"
        )
    return _result(trials, metric)


def _result(trials: list[dict[str, Any]], metric: str, interrupted: bool = False) -> TuneResult:
    """The result of ``trials``, at least one of them complete: the best is the first of the
    lowest score (the defaults on a tie, being trial 0)."""
    best = min((t for t in trials if t["state"] == "complete"), key=lambda t: t["value"])
    return TuneResult(best_params=dict(best["params"]), best_value=best["value"], metric=metric,
                      trials=trials, interrupted=interrupted)


def read_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a JSON file written by :meth:`TuneResult.save` (or by hand: a JSON object
    of ``MatrixFactorization`` parameters, optionally under ``"params"``).

    Only plain values are accepted, and a loss or regularization must be a built-in name: a
    settings file never names code to import.
    """
    from .losses import LOSSES
    from .model import MatrixFactorization
    from .ranking import PAIRWISE_LOSSES
    from .regularizers import REGULARIZERS

    p = Path(path)
    name = str(path)
    if not p.is_file():
        raise ValueError(f"params file {name!r} does not exist or is not a file")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name} is not a JSON settings file ({exc})") from None
    if isinstance(doc, dict) and "params" in doc:
        if doc.get("format", PARAMS_FORMAT) != PARAMS_FORMAT:
            raise ValueError(f"{name}: format is {doc.get('format')!r}, expected {PARAMS_FORMAT!r}")
        doc = doc["params"]
    if not isinstance(doc, dict):
        raise ValueError(f"{name} must hold a JSON object of parameters, got {type(doc).__name__}")
    valid = MatrixFactorization().get_params()
    unknown = sorted(set(doc) - set(valid))
    if unknown:
        raise ValueError(
            f"{name} sets {unknown}, which are not MatrixFactorization parameters; valid ones are "
            f"{sorted(valid)}"
        )
    for key, value in doc.items():
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise ValueError(f"{name}: {key}={value!r} must be a number, string, boolean or null")
    # the ranking task's pairwise losses ('bpr', 'warp') are built-in names too
    for key, names in (("loss", [*LOSSES, *PAIRWISE_LOSSES]), ("regularization", REGULARIZERS)):
        value = doc.get(key)
        if isinstance(value, str) and value not in names:
            raise ValueError(
                f"{name}: {key}={value!r} is not a built-in {key} ({sorted(names)}); a settings "
                f"file never names code to import: pass a custom {key} on the command line "
                f"(--{key} module:function) or in Python"
            )
    for key, value in doc.items():
        # trust: {"rank": "ten"} failed later as "rank must be a positive int or 'auto', got
        # 'ten'", naming neither the file nor that the value came from it
        try:
            _check_value(key, value)
        except ValueError as exc:
            raise ValueError(f"{name}: {key}={value!r} is refused: {exc}; fix it in the file "
                             "(or leave the key out for the default)") from None
    return dict(doc)


def _count(value: Any) -> bool:
    """A positive int (a boolean is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    """A finite int or float (a boolean is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# what a settings file's value must be, for the parameters checked on their own (the model
# checks them again at fit, with the others); the message reads "{key} must be {what}"
_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rank": (lambda v: v == "auto" or _count(v), "a positive int or 'auto'"),
    "beta": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "alpha": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "init_std": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "lr": (lambda v: v is None or (_number(v) and v > 0), "a positive number or null"),
    "epochs": (lambda v: v is None or _count(v), "a positive int or null"),
    "batch_size": (lambda v: v is None or _count(v), "a positive int or null"),
    "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                     and 0 <= v < 2**63),
             "a non-negative int below 2**63 or null"),
    "patience": (lambda v: v is None or v == "auto" or _count(v),
                 "a positive int, 'auto' or None"),
    "validation_fraction": (lambda v: v is None or (_number(v) and 0 < v < 1),
                            "a number strictly between 0 and 1 or None"),
    "max_memory": (lambda v: _count(v) and v >= 2**16, "an int of at least 65536 bytes"),
    "task": (lambda v: v in ("rating", "ranking"), "'rating' or 'ranking'"),
    "device": (lambda v: isinstance(v, str), "'auto', 'cpu' or 'cuda[:N]'"),
    "loss": (lambda v: isinstance(v, str), "a built-in name"),
    "regularization": (lambda v: v is None or isinstance(v, str), "a built-in name or null"),
}


def _check_value(key: str, value: Any) -> None:
    """Check one parameter of a settings file on its own (``ValueError`` naming it): what does
    not depend on the others, which the command line may still override."""
    from .model import MatrixFactorization
    from .objective import check_unobserved_weight, resolve_dtype
    from .solvers import SOLVERS
    from .threads import check_n_threads

    default = MatrixFactorization().get_params()[key]
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if isinstance(value, bool) and not isinstance(default, bool):
        raise ValueError(f"{key} must be a number or a name, not a boolean, got {value!r}")
    ok, what = _VALUE_RULES.get(key, (lambda v: True, ""))
    if not ok(value):
        raise ValueError(f"{key} must be {what}, got {value!r}")
    # 'cg': the ranking task's conjugate-gradient solve (MatrixFactorization(task='ranking',
    # solver='cg'), as the command line's --solver takes it)
    if key == "solver" and not (value in ("auto", "cg") or value in SOLVERS):
        raise ValueError(f"solver must be 'auto', one of {SOLVERS} or 'cg' (task 'ranking'), "
                         f"got {value!r}")
    if key == "unobserved_weight":
        check_unobserved_weight(value)
    elif key == "dtype":
        resolve_dtype(value)
    elif key == "n_threads":
        check_n_threads(value)
