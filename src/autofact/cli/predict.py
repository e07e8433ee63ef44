"""``autofact predict MODEL``: predicted ratings for one pair or a file of pairs."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from typing import Any, TextIO

from . import options as o
from .common import ExitStatus, Unclosed, UsageError, load_model, print_json, resolve_ids
from .paths import PREDICTIONS_HEADER, check_output
from .readers import read_pairs


def register(sub: Any) -> None:
    p = sub.add_parser("predict", help="predicted ratings for user/item pairs",
                       description="Predict one rating (--user and --item) or one per line of "
                       "--pairs (user,item; a CSV with a prediction column is written).")
    p.add_argument("model", metavar="MODEL", type=o.existing_file, help="a saved model")
    p.add_argument("--user", "-u", metavar="U", help="user id")
    p.add_argument("--item", "-i", metavar="I", help="item id")
    p.add_argument("--pairs", type=o.existing_file, metavar="FILE",
                   help="file of user,item lines; a header line may name the columns in any "
                   "order (user/userId, item/movieId); more fields are ignored")
    p.add_argument("--out", "-o", type=o.output_path, metavar="FILE",
                   help=f"write the CSV here instead of stdout (an existing file is replaced "
                   f"only if it starts with {PREDICTIONS_HEADER})")
    o.add_function_options(p)
    o.add_common(p)
    # load_model ends the start-up pause once torch is imported (issue 10)
    p.set_defaults(func=predict, imports_done_by_verb=True)


def predict(args: argparse.Namespace) -> ExitStatus:
    """Predicted ratings for one (--user, --item) pair or every pair in --pairs."""
    import numpy as np

    if args.pairs is None:
        if args.user is None or args.item is None:
            raise UsageError(
                "predict needs both --user and --item, or --pairs FILE with one user,item per line"
            )
    elif args.user is not None or args.item is not None:
        raise UsageError("give either --pairs FILE or --user and --item, not both")
    if args.out is not None:
        if args.pairs is None:
            raise UsageError("--out writes the predictions of --pairs FILE; give --pairs")
        check_output(args.out, "--out", "csv", {"MODEL": args.model, "--pairs": args.pairs})
    model = load_model(args.model, args)
    if args.pairs is None:
        user = resolve_ids(model.user_index, [str(args.user)])[0]
        item = resolve_ids(model.item_index, [str(args.item)])[0]
        model.user_index([user], strict=True)  # an unknown id is an error here, not a fallback
        model.item_index([item], strict=True)
        value = float(model.predict([user], [item])[0])
        if args.json:
            print_json({"user": user, "item": item, "prediction": value})
        else:
            print(f"{value:.4f}")
        return ExitStatus.OK
    users_txt, items_txt = read_pairs(args.pairs)
    users = resolve_ids(model.user_index, users_txt)
    items = resolve_ids(model.item_index, items_txt)
    u = np.empty(len(users), dtype=object)
    u[:] = users
    i = np.empty(len(items), dtype=object)
    i[:] = items
    pred = model.predict(u, i)
    if args.json:
        print_json([{"user": a, "item": b, "prediction": float(p)}
                    for a, b, p in zip(users, items, pred, strict=True)])
        return ExitStatus.OK
    def write(out: TextIO) -> None:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(PREDICTIONS_HEADER.split(","))
        for a, b, p in zip(users, items, pred, strict=True):
            writer.writerow([a, b, repr(float(p))])

    if args.out is None:
        with Unclosed(sys.stdout) as stdout:
            write(stdout)
        return ExitStatus.OK

    def write_file(fh: Any) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()  # atomic_write syncs and closes fh

    from ..io import atomic_write

    # issue 8: as model saves, an interrupted write leaves the earlier file whole
    atomic_write(args.out, write_file)
    print(f"wrote {len(pred)} predictions to {args.out}", file=sys.stderr)
    return ExitStatus.OK
