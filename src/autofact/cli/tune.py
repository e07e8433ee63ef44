"""``autofact tune DATA --trials N --out best.json``: search settings on a validation split."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from . import options as o
from .common import ExitStatus, print_json, say
from .paths import check_output


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tune", help="search model settings with Optuna",
        description="Search rank, regularization, loss and solver with Optuna on a validation "
        "split carved from DATA (pass training data only), print the best trials and write the "
        "best settings as JSON for 'autofact fit --params FILE'. Needs autofact[tune].")
    p.add_argument("data", metavar="DATA", type=o.existing_data,
                   help="training ratings: CSV/TSV/Parquet/MovieLens (user, item, rating[, time]), "
                   "or a folder of such part files")
    p.add_argument("--trials", type=o.positive_int, default=30, help="settings to try (30)")
    p.add_argument("--out", "-o", type=o.output_path, metavar="JSON",
                   help="write the best settings here (e.g. best.json)")
    p.add_argument("--metric", choices=("rmse", "mae"), default="rmse",
                   help="what the validation split is scored by (rmse)")
    p.add_argument("--validation-fraction", type=o.fraction, default=0.1, metavar="F",
                   help="the fraction of DATA held out to score each trial (0.1)")
    p.add_argument("--timeout", type=o.positive_float, metavar="SECONDS",
                   help="stop starting new trials after this many seconds")
    p.add_argument("--seed", type=o.nonnegative_int, default=0,
                   help="seeds the split, the search and every fit (0)")
    p.add_argument("--top", type=o.positive_int, default=10, help="trials shown in the table (10)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    o.add_ratings_options(p)
    o.add_common(p)
    p.set_defaults(func=tune)


@contextlib.contextmanager
def _optuna_quiet(quiet: bool) -> Iterator[None]:
    """Optuna's own log lines off while the search runs (unless ``--traceback``).

    Trust: Ctrl-C during a trial printed Optuna's warning with the whole traceback of the
    interrupted fit (30 lines) before ``autofact: interrupted``. At the level autofact.tune
    leaves Optuna (warnings), Optuna logs only a trial that raised an error it was not asked
    to catch: Ctrl-C, or an error that ends the command anyway and is reported as its one
    line. Failed settings are pruned by autofact.tune and listed with their reasons in the
    trials."""
    if not quiet:
        yield
        return
    from .._optional import optional_import

    optuna = optional_import("optuna", extra="tune", purpose="autofact tune")
    logger = logging.getLogger("optuna")
    sink = logging.NullHandler()  # without a handler, Python's last resort would print them
    optuna.logging.disable_default_handler()
    logger.addHandler(sink)
    try:
        yield
    finally:
        logger.removeHandler(sink)
        optuna.logging.enable_default_handler()


def tune(args: argparse.Namespace) -> ExitStatus:
    """Search settings on DATA and report (and save) the best."""
    if args.out is not None:
        check_output(args.out, "--out", "params", {"DATA": args.data})
    from ..tuning import TuneInterrupted
    from ..tuning import tune as run_tune

    ratings = o.read_ratings(args.data, args)  # read once, shared by every trial
    interrupted = False
    with _optuna_quiet(not getattr(args, "traceback", False)):
        try:
            result = run_tune(ratings, n_trials=args.trials,
                              validation_fraction=args.validation_fraction, metric=args.metric,
                              seed=args.seed, timeout=args.timeout,
                              show_progress=not args.quiet and not args.json)
        except TuneInterrupted as stop:
            # trust (never lost work): Ctrl-C after some trials finished keeps them, as fit
            # keeps its last finished epoch: the best so far is reported and saved
            result, interrupted = stop.result, True
    done = ExitStatus.INTERRUPTED if interrupted else ExitStatus.OK
    if args.out is not None:
        result.save(args.out)
    if args.json:
        print_json(result.to_dict() | {"trials": result.trials, "interrupted": interrupted,
                                       "out": None if args.out is None else str(args.out)})
        return done
    print(result.table(n=args.top))
    print()
    print(f"best validation {result.metric} {result.best_value:.4f} with "
          + ", ".join(f"{k}={v}" for k, v in sorted(result.best_params.items())))
    if args.out is not None:
        print(f"wrote the best settings{' so far' if interrupted else ''} to {args.out}; use "
              f"them with: autofact fit DATA --params {args.out} --out model.npz")
    if interrupted:
        finished = sum(t["state"] == "complete" for t in result.trials)
        say(f"interrupted after {finished} finished trials; the best so far is above")
    return done
