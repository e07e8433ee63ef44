"""``autofact evaluate MODEL DATA``: error and ranking metrics of a saved model."""

from __future__ import annotations

import argparse
from typing import Any

from . import options as o
from .common import ExitStatus, load_model, metrics_table, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a saved model on a ratings file",
                       description="RMSE, MAE and precision/recall/nDCG/MAP@k of MODEL on DATA.")
    p.add_argument("model", metavar="MODEL", type=o.existing_file, help="a saved model")
    p.add_argument("data", metavar="DATA", type=o.existing_data,
                   help="ratings to score: a file, or a folder of part files")
    p.add_argument("--k", type=o.positive_int, default=10, help="k of the @k metrics (10)")
    p.add_argument("--threshold", type=o.finite, default=4.0,
                   help="a rating >= this is relevant for the @k metrics (4)")
    o.add_ratings_options(p)
    o.add_function_options(p)
    o.add_common(p)
    # load_model ends the start-up pause once torch is imported (issue 10)
    p.set_defaults(func=evaluate, imports_done_by_verb=True)


def evaluate(args: argparse.Namespace) -> ExitStatus:
    """Error and ranking metrics of a saved model on DATA."""
    from ..evaluation import evaluate as evaluate_model

    model = load_model(args.model, args)
    # trust: DATA's ids are matched to the model's by their text by the model itself
    # (ModelIndex: an int 60 matches a model's '60', '007' only '007')
    test = o.read_ratings(args.data, args)
    metrics = evaluate_model(model, test, k=args.k, threshold=args.threshold)
    if args.json:
        print_json(metrics)
    else:
        print(metrics_table(metrics))
    return ExitStatus.OK
