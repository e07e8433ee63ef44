"""``autofact recommend MODEL``: top-n items for a user, known or folded in."""

from __future__ import annotations

import argparse
from typing import Any

from . import options as o
from .common import ExitStatus, UsageError, load_model, print_json, resolve_ids, table
from .readers import read_item_ratings, read_titles


def register(sub: Any) -> None:
    p = sub.add_parser("recommend", help="top-n items for a user",
                       description="Top-n items for a user of the training data (--user) or for "
                       "a new user folded in from --ratings (item,rating per line).")
    p.add_argument("model", metavar="MODEL", type=o.existing_file, help="a saved model")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", "-u", metavar="U", help="user id from the training data")
    who.add_argument("--ratings", type=o.existing_file, metavar="FILE",
                     help="a new user's ratings, item,rating per line (folded in, no refit)")
    p.add_argument("-n", type=o.positive_int, default=10, help="how many items (10)")
    p.add_argument("--items", type=o.existing_file, metavar="FILE",
                   help="titles: MovieLens u.item or movies.csv (or id,title lines)")
    p.add_argument("--include-seen", action="store_true",
                   help="also recommend items the user already rated")
    p.add_argument("--fallback", action="store_true",
                   help="for a user not in the training data, show the most popular items")
    o.add_function_options(p)
    o.add_common(p)
    p.set_defaults(func=recommend)


def recommend(args: argparse.Namespace) -> ExitStatus:
    """Top-n items for a known user (--user) or a new one described by --ratings."""
    model = load_model(args.model, args)
    titles = read_titles(args.items) if args.items is not None else None
    if args.ratings is not None:
        rows = read_item_ratings(args.ratings)
        items = resolve_ids(model.item_index, [r[0] for r in rows])
        seen: dict[Any, int] = {}
        for item, (_, _, number) in zip(items, rows, strict=True):
            if item in seen:
                raise UsageError(
                    f"line {number} of {args.ratings}: item {item!r} is rated again "
                    f"(first on line {seen[item]}); give each item once"
                )
            seen[item] = number
        label = args.ratings.name
        who: Any = model.fold_in([(it, r[1]) for it, r in zip(items, rows, strict=True)],
                                 user=label)
        heading = f"top {args.n} for the new user in {label} ({len(rows)} ratings folded in)"
    else:
        user = resolve_ids(model.user_index, [args.user])[0]
        who = user
        heading = f"top {args.n} for user {user}"
    from ..errors import UnknownIdError

    try:
        recs = model.recommend(who, n=args.n, exclude_seen=not args.include_seen,
                               fallback=args.fallback)
    except UnknownIdError:
        raise UsageError(
            f"user {who!r} is not in the training data; pass --fallback for the most popular "
            "items, or --ratings FILE (item,rating per line) to fold in a new user"
        ) from None
    if recs.fallback:
        heading += f" (not in the training data: {recs.fallback} fallback)"
    rows_out = []
    for rank, (item, score) in enumerate(zip(recs.items.tolist(), recs.scores.tolist(),
                                             strict=True), start=1):
        row: dict[str, Any] = {"rank": rank, "item": item, "score": float(score)}
        if titles is not None:
            row["title"] = titles.get(item, titles.get(str(item), ""))
        rows_out.append(row)
    if args.json:
        print_json({"user": recs.user, "fallback": recs.fallback, "items": rows_out})
        return ExitStatus.OK
    print(heading)
    header = ["rank", "item", "score"] + (["title"] if titles is not None else [])
    right = [True, True, True, False]
    print(table(header, [[r[h] for h in header] for r in rows_out], right[: len(header)]))
    return ExitStatus.OK
