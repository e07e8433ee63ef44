"""``autofact recommend MODEL``: top-n items for a user, known or folded in, or for every user
written to a file (``--all --out recs.csv``)."""

from __future__ import annotations

import argparse
import io
import os
import warnings
from pathlib import Path
from typing import Any

from . import options as o
from .common import (
    ExitStatus,
    UsageError,
    load_model,
    print_json,
    resolve_ids,
    say,
    table,
)
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
    who.add_argument("--all", action="store_true",
                     help="every user of the training data, written to --out")
    p.add_argument("--out", "-o", type=o.output_path, metavar="FILE",
                   help="with --all: write user,rank,item,score rows to this .csv or .parquet "
                   "(a block of users at a time)")
    p.add_argument("-n", type=o.positive_int, default=10, help="how many items (10)")
    p.add_argument("--items", type=o.existing_file, metavar="FILE",
                   help="titles: MovieLens u.item or movies.csv (or id,title lines)")
    p.add_argument("--include-seen", action="store_true",
                   help="also recommend items the user already rated")
    p.add_argument("--fallback", action="store_true",
                   help="for a user not in the training data, show the most popular items")
    o.add_function_options(p)
    o.add_common(p)
    # load_model ends the start-up pause once torch is imported (issue 10)
    p.set_defaults(func=recommend, imports_done_by_verb=True)


def recommend(args: argparse.Namespace) -> ExitStatus:
    """Top-n items for a known user (--user) or a new one described by --ratings."""
    if args.all or args.out is not None:
        return _recommend_all(args)
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
        from ..recommend import off_scale

        low, high = model.rating_range_
        off = off_scale([value for _, value, _ in rows], (low, high)).tolist()
        outside = [(value, number) for (_, value, number), o in zip(rows, off, strict=True) if o]
        if outside and model.task == "rating":
            # trust: ratings on another scale (50 for a 1-5 model) were folded in silently,
            # every score then clipped to the top of the range
            value, number = outside[0]
            say(f"warning: {len(outside)} of the {len(rows)} ratings in {args.ratings} lie "
                f"outside the training ratings' range [{low:g}, {high:g}] (first: {value:g} on "
                f"line {number}); give them on the scale the model was fitted on")
        label = args.ratings.name
        with warnings.catch_warnings():
            # said above, with the line number: not again in the library's words
            warnings.filterwarnings("ignore", message=r".*lie outside the training ratings' range")
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
    if titles is not None and rows_out and not any(r["title"] for r in rows_out):
        # trust: an items file of another data set showed an empty title column, silently
        say(f"warning: none of the {len(rows_out)} recommended items has a title in --items "
            f"{args.items}; is it the items file of the data this model was fitted on?")
    if args.json:
        print_json({"user": recs.user, "fallback": recs.fallback, "items": rows_out})
        return ExitStatus.OK
    print(heading)
    header = ["rank", "item", "score"] + (["title"] if titles is not None else [])
    right = [True, True, True, False]
    print(table(header, [[r[h] for h in header] for r in rows_out], right[: len(header)]))
    return ExitStatus.OK


#: first line of a recommendations CSV written by ``--all`` (what may be replaced)
RECOMMENDATIONS_HEADER = "user,rank,item,score"
# users whose top-n lists are computed and written at once (each block: one matrix product of
# at most 2**23 scores inside top_items, and block * n rows in memory)
_USERS_PER_BLOCK = 4096


def _recommend_all(args: argparse.Namespace) -> ExitStatus:
    """``--all --out FILE``: the top n of every training user, a block of users at a time."""
    if not args.all or args.out is None:
        raise UsageError("--all and --out go together: --all --out recs.csv (or recs.parquet)")
    out: Path = args.out
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("csv", "parquet"):
        raise UsageError(f"--out {str(out)!r}: give a file name ending in .csv or .parquet")
    _check_recommendations_out(out, fmt, args.model)
    if args.fallback:
        raise UsageError("--fallback has no meaning with --all: every user is in the training data")
    import numpy as np

    from ..io import atomic_write
    from ..recommend import top_items

    model = load_model(args.model, args)
    index = model.index_
    users = np.flatnonzero(index.user_counts > 0)
    rows = 0

    def write(fh: Any) -> None:
        # issue 8: through io.atomic_write, as model saves: a symbolic link is written through,
        # leftovers of a killed run are removed, the file gets 0666 minus the umask
        nonlocal rows
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="") if fmt == "csv" else None
        writer: Any = None
        if text is not None:
            text.write(RECOMMENDATIONS_HEADER + "\n")
        for start in range(0, len(users), _USERS_PER_BLOCK):
            block = users[start:start + _USERS_PER_BLOCK]
            items, scores = top_items(model, block, args.n, exclude_seen=not args.include_seen)
            counts = np.array([len(x) for x in items], dtype=np.int64)
            u = np.repeat(index.user_ids[block], counts)
            rank = np.concatenate([np.arange(1, c + 1) for c in counts]) if len(counts) else \
                np.zeros(0, np.int64)
            it = index.item_ids[np.concatenate(items)] if items else np.zeros(0)
            sc = index.response(np.concatenate(scores)) if scores else np.zeros(0)
            if text is not None:
                import csv

                csv.writer(text).writerows(zip(u.tolist(), rank.tolist(), it.tolist(),
                                               sc.tolist(), strict=True))
            else:
                writer = _write_parquet_block(writer, fh, u, rank, it, sc)
            rows += len(u)
        if text is not None:
            text.flush()
            text.detach()  # atomic_write flushes, syncs and closes fh itself
        elif writer is not None:
            writer.close()
        else:  # no user at all: an empty table with the columns
            _write_parquet_block(None, fh, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                 np.zeros(0, np.int64), np.zeros(0)).close()

    atomic_write(out, write)
    if args.json:
        print_json({"out": str(out), "users": int(len(users)), "rows": rows, "n": args.n})
    else:
        print(f"wrote the top {args.n} of {len(users)} users ({rows} rows) to {out}")
    return ExitStatus.OK


def _write_parquet_block(writer: Any, sink: Any, u: Any, rank: Any, it: Any, sc: Any) -> Any:
    from .._optional import optional_import

    pa = optional_import("pyarrow", extra="parquet", purpose="writing Parquet")
    pq = optional_import("pyarrow.parquet", extra="parquet", purpose="writing Parquet")

    def column(x: Any) -> Any:
        try:
            return pa.array(x)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed id types: written as text
            return pa.array([str(v) for v in x])

    table = pa.table({"user": column(u), "rank": pa.array(rank, pa.int32()),
                      "item": column(it), "score": pa.array(sc, pa.float64())})
    if writer is None:
        writer = pq.ParquetWriter(sink, table.schema)
    writer.write_table(table.cast(writer.schema))
    return writer


def _check_recommendations_out(out: Path, fmt: str, model: Path) -> None:
    """Refuse a folder, a missing folder, the model itself, or an existing file that is not a
    recommendations file of this format (a Parquet file only with exactly the columns --all
    writes: a user's Parquet ratings are never replaced; issue 8)."""
    from .paths import check_output, check_writable

    if out.exists() and out.stat().st_size > 0 and not out.is_dir():
        check_writable(Path(os.path.realpath(out)).parent, "--out", str(out))
        if os.path.realpath(out) == os.path.realpath(model) or os.path.samefile(out, model):
            raise UsageError(f"--out {str(out)!r} is the input MODEL; choose another name")
        if not _is_recommendations_file(out, fmt):
            raise UsageError(
                f"--out {str(out)!r} exists and is not a recommendations {fmt} file (columns "
                f"{RECOMMENDATIONS_HEADER}); refusing to replace it: remove it first or choose "
                "another name"
            )
        return
    check_output(out, "--out", "csv", {"MODEL": model})


def _is_recommendations_file(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a file ``--all`` wrote: a CSV starting with its header line, or a
    Parquet file whose columns are exactly user, rank, item, score."""
    with open(path, "rb") as fh:
        head = fh.read(len(RECOMMENDATIONS_HEADER))
    if fmt == "csv":
        return head == RECOMMENDATIONS_HEADER.encode()
    if not head.startswith(b"PAR1"):
        return False
    from .._optional import optional_import

    pq = optional_import("pyarrow.parquet", extra="parquet", purpose="writing Parquet")
    try:
        names = pq.read_schema(str(path)).names
    except Exception:  # noqa: BLE001 - damaged or foreign: not ours, never replaced
        return False
    return bool(names == RECOMMENDATIONS_HEADER.split(","))
