"""The ``autofact`` command line: ``fit``, ``evaluate``, ``predict``, ``recommend``, ``demo``.

One function per verb (``fit``, ``evaluate``, ...), each taking the parsed arguments and returning
an :class:`ExitStatus`. Argument checks live in the argument types (``_positive_int``,
``_existing_file``, ...). A user error prints one line ``autofact: error: ...`` on stderr and
exits with 2; a traceback appears only with ``--traceback``; Ctrl-C exits with 130. Results go to
stdout (``--json`` for machine-readable output); progress bars, warnings and errors to stderr.

::

    autofact fit u1.base --test u1.test --out model.npz
    autofact evaluate model.npz u1.test
    autofact recommend model.npz --user 196 -n 10 --items u.item
    autofact demo
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

__all__ = ["main", "ExitStatus"]

PROG = "autofact"


class ExitStatus(IntEnum):
    """Process exit codes (as httpie's)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit status 2."""


# ------------------------------------------------------------------------------ argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a number strictly between 0 and 1 (e.g. 0.2), got {text!r}"
        )
    return value


def _existing_file(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist; check the path")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file")
    return p


def _new_file(text: str) -> Path:
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write {text!r}: folder {str(parent)!r} does not exist; create it first"
        )
    return p


def _directory(text: str) -> Path:
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return p


def _name_or_path(text: str, names: Iterable[str], what: str) -> str:
    """A built-in name, or a 'module:function' path that imports (checked up front)."""
    if text in names:
        return text
    if ":" in text:
        from ._imports import import_object

        try:
            import_object(text, what=what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(sorted(names))} or a 'module:function' path, got {text!r}"
    )


def _loss(text: str) -> str:
    from .losses import LOSSES

    return _name_or_path(text, LOSSES, "loss")


def _regularization(text: str) -> str:
    from .regularizers import REGULARIZERS

    return _name_or_path(text, REGULARIZERS, "regularization")


def _parse_id(text: str) -> int | str:
    """A command-line id: an int when it reads as one (MovieLens ``196``), else the string."""
    try:
        return int(text)
    except ValueError:
        return text


def _resolve_ids(lookup: Callable[..., Any], texts: Sequence[str]) -> list[Any]:
    """Ids as the model knows them: the int form when the model has it, else the string form
    (so string ids such as ``'007'`` still match); unknown ids keep the int form."""
    import numpy as np

    first = [_parse_id(t) for t in texts]
    arr = np.empty(len(first), dtype=object)
    arr[:] = first
    found = lookup(arr, strict=False) >= 0
    out = list(first)
    retry = [k for k, ok in enumerate(found) if not ok and not isinstance(first[k], str)]
    if retry:
        alt = np.empty(len(retry), dtype=object)
        alt[:] = [texts[k] for k in retry]
        for k, ok in zip(retry, lookup(alt, strict=False) >= 0, strict=True):
            if ok:
                out[k] = texts[k]
    return out


# ------------------------------------------------------------------------------ file readers
def _read_ratings(path: Path) -> Any:
    from .reading import read

    return read(path)


def _open_text(path: Path) -> TextIO:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # MovieLens u.item
    import io

    return io.StringIO(text)


def _sniff_sep(line: str) -> str | None:
    for sep in ("\t", ",", ";", "|"):
        if sep in line:
            return sep
    return None  # whitespace


def _split(line: str, sep: str | None) -> list[str]:
    if sep == ",":
        return next(csv.reader([line]))
    return [f.strip() for f in (line.split(sep) if sep else line.split())]


def _rows(path: Path, wanted: int, what: str, header_names: tuple[str, ...]) -> list[
    tuple[int, list[str]]
]:
    """``(line number, fields)`` of the non-blank lines of a small delimited text file; a first
    line whose first field is one of ``header_names`` is skipped."""
    out: list[tuple[int, list[str]]] = []
    sep: str | None = None
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not out and sep is None:
                sep = _sniff_sep(line)
                fields = _split(line, sep)
                if fields and fields[0].strip().strip('"').lower() in header_names:
                    out.append((number, []))  # header marker, dropped below
                    continue
            fields = _split(line, sep)
            if len(fields) < wanted or any(not f.strip() for f in fields[:wanted]):
                got = len([f for f in fields if f.strip()])
                raise UsageError(
                    f"line {number} of {path.name}: expected {wanted} fields ({what}), got {got}"
                )
            out.append((number, [f.strip() for f in fields]))
    rows = [r for r in out if r[1]]
    if not rows:
        raise UsageError(f"{path.name}: no lines of {what}")
    return rows


def _read_pairs(path: Path) -> tuple[list[str], list[str]]:
    rows = _rows(path, 2, "user, item", ("user", "userid", "user_id", "uid"))
    return [f[0] for _, f in rows], [f[1] for _, f in rows]


def _read_item_ratings(path: Path) -> list[tuple[str, float, int]]:
    out = []
    for number, f in _rows(path, 2, "item, rating", ("item", "itemid", "item_id", "movieid")):
        try:
            value = float(f[1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(f"line {number} of {path.name}: rating {f[1]!r} is not a number")
        out.append((f[0], value, number))
    return out


def _read_titles(path: Path) -> dict[Any, str]:
    """Item titles from MovieLens ``u.item`` (``id|title|...``, latin-1) or ``movies.csv``
    (header ``movieId,title,genres``), or any ``id,title`` file."""
    titles: dict[Any, str] = {}
    with _open_text(path) as fh:
        lines = [ln.rstrip("\r\n") for ln in fh]
    nonblank = [(k, ln) for k, ln in enumerate(lines, start=1) if ln.strip()]
    if not nonblank:
        raise UsageError(f"{path.name}: the items file is empty; expected lines of id, title")
    first = nonblank[0][1]
    sep = "|" if "|" in first else _sniff_sep(first)
    id_col, title_col = 0, 1
    head = _split(first, sep)
    lowered = [h.strip().lower() for h in head]
    if "title" in lowered:  # a header such as movieId,title,genres
        title_col = lowered.index("title")
        for name in ("movieid", "itemid", "item_id", "item", "id"):
            if name in lowered:
                id_col = lowered.index(name)
                break
        nonblank = nonblank[1:]
    for number, line in nonblank:
        fields = _split(line, sep)
        if len(fields) <= max(id_col, title_col):
            raise UsageError(
                f"line {number} of {path.name}: expected at least {max(id_col, title_col) + 1} "
                f"fields (id, title), got {len(fields)}"
            )
        titles[_parse_id(fields[id_col].strip())] = fields[title_col].strip()
    return titles


# ------------------------------------------------------------------------------ output helpers
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right,
                                                                     strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _metrics_table(metrics: dict[str, Any]) -> str:
    return _table(("metric", "value"), list(metrics.items()), (False, True))


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _print_json(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), indent=2))


def _plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    from ._optional import optional_import

    matplotlib = optional_import("matplotlib", extra="plot", purpose="plotting")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training objective", color="tab:blue")
    ax.set_title(title)
    if any("val_rmse" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in history if "val_rmse" in h],
                 [h["val_rmse"] for h in history if "val_rmse" in h],
                 "s-", color="tab:orange", label="validation RMSE")
        ax2.set_ylabel("validation RMSE", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load_model(path: Path) -> Any:
    from .io import load

    return load(path)


# ------------------------------------------------------------------------------ verbs
def fit(args: argparse.Namespace) -> ExitStatus:
    """Fit a model on DATA, save it to --out, report metrics on a test set if one is given."""
    from .evaluation import evaluate, random_split
    from .model import MatrixFactorization

    train = _read_ratings(args.data)
    test = None
    if args.test is not None:
        test = _read_ratings(args.test)
    elif args.test_fraction is not None:
        seed = 0 if args.seed is None else args.seed
        train, test = random_split(train, args.test_fraction, seed=seed)
    given = {
        "rank": args.rank, "loss": args.loss, "regularization": args.reg, "beta": args.beta,
        "solver": args.solver, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "bias": args.bias, "seed": args.seed,
        "device": args.device, "dtype": args.dtype,
    }
    params = {k: v for k, v in given.items() if v is not None}
    shared = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun
    main_process = True
    if shared:
        from . import distributed

        params.setdefault("solver", "adam")  # the full-batch solvers are the distributed ones
        distributed.init()
        main_process = distributed.is_main_process()
    model = MatrixFactorization(verbose=not args.quiet and main_process, **params)
    start = time.perf_counter()
    if shared:
        try:
            distributed.fit(model, train, validation=test)
        finally:
            distributed.shutdown()  # no collective work follows
    else:
        model.fit(train, validation=test)
    seconds = time.perf_counter() - start
    if not main_process:  # every process holds the same model; the first one reports it
        return ExitStatus.OK
    model.set_params(verbose=False)  # a loaded model stays quiet unless asked
    model.save(args.out)
    metrics = evaluate(model, test, k=args.k, threshold=args.threshold) if test is not None \
        else None
    train_rmse = model.score(train)
    if args.plot is not None:
        _plot_history(model.history_, args.plot, f"autofact fit {Path(args.data).name}")
    summary = {
        "model": str(args.out),
        "train": {"users": train.n_users, "items": train.n_items, "ratings": len(train)},
        "rank": model.rank,
        "solver": model.solver_,
        "epochs": model.n_epochs_,
        "seconds": round(seconds, 3),
        "history": model.history_,
        "train_rmse": train_rmse,
        "metrics": metrics,
        "plot": None if args.plot is None else str(args.plot),
    }
    if args.json:
        _print_json(summary)
        return ExitStatus.OK
    print(
        f"fitted rank {model.rank} ({model.solver_}, {model.n_epochs_} epochs, {seconds:.1f} s) "
        f"on {len(train)} ratings ({train.n_users} users x {train.n_items} items)"
    )
    print(f"saved model to {args.out}")
    if args.plot is not None:
        print(f"wrote learning curve to {args.plot}")
    if metrics is None:
        print(f"training RMSE {train_rmse:.4f}; for held-out metrics pass --test FILE or "
              "--test-fraction 0.2")
    else:
        print()
        print(_metrics_table(metrics))
    return ExitStatus.OK


def evaluate(args: argparse.Namespace) -> ExitStatus:
    """Error and ranking metrics of a saved model on DATA."""
    from .evaluation import evaluate as evaluate_model

    model = _load_model(args.model)
    test = _read_ratings(args.data)
    metrics = evaluate_model(model, test, k=args.k, threshold=args.threshold)
    if args.json:
        _print_json(metrics)
    else:
        print(_metrics_table(metrics))
    return ExitStatus.OK


def predict(args: argparse.Namespace) -> ExitStatus:
    """Predicted ratings for one (--user, --item) pair or every pair in --pairs."""
    import numpy as np

    model = _load_model(args.model)
    if args.pairs is None:
        if args.user is None or args.item is None:
            raise UsageError(
                "predict needs both --user and --item, or --pairs FILE with one user,item per line"
            )
        user = _resolve_ids(model.user_index, [args.user])[0]
        item = _resolve_ids(model.item_index, [args.item])[0]
        model.user_index([user], strict=True)  # an unknown id is an error here, not a fallback
        model.item_index([item], strict=True)
        value = float(model.predict([user], [item])[0])
        if args.json:
            _print_json({"user": user, "item": item, "prediction": value})
        else:
            print(f"{value:.4f}")
        return ExitStatus.OK
    if args.user is not None or args.item is not None:
        raise UsageError("give either --pairs FILE or --user and --item, not both")
    users_txt, items_txt = _read_pairs(args.pairs)
    users = _resolve_ids(model.user_index, users_txt)
    items = _resolve_ids(model.item_index, items_txt)
    u = np.empty(len(users), dtype=object)
    u[:] = users
    i = np.empty(len(items), dtype=object)
    i[:] = items
    pred = model.predict(u, i)
    if args.json:
        _print_json([{"user": a, "item": b, "prediction": float(p)}
                     for a, b, p in zip(users, items, pred, strict=True)])
        return ExitStatus.OK
    out: TextIO
    with (open(args.out, "w", newline="", encoding="utf-8") if args.out is not None
          else _Unclosed(sys.stdout)) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["user", "item", "prediction"])
        for a, b, p in zip(users, items, pred, strict=True):
            writer.writerow([a, b, repr(float(p))])
    if args.out is not None:
        print(f"wrote {len(pred)} predictions to {args.out}", file=sys.stderr)
    return ExitStatus.OK


class _Unclosed:
    """``with`` support for stdout that does not close it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


def recommend(args: argparse.Namespace) -> ExitStatus:
    """Top-n items for a known user (--user) or a new one described by --ratings."""
    model = _load_model(args.model)
    titles = _read_titles(args.items) if args.items is not None else None
    if args.ratings is not None:
        rows = _read_item_ratings(args.ratings)
        items = _resolve_ids(model.item_index, [r[0] for r in rows])
        seen: dict[Any, int] = {}
        for item, (_, _, number) in zip(items, rows, strict=True):
            if item in seen:
                raise UsageError(
                    f"line {number} of {args.ratings.name}: item {item!r} is rated again "
                    f"(first on line {seen[item]}); give each item once"
                )
            seen[item] = number
        label = args.ratings.name
        who: Any = model.fold_in([(it, r[1]) for it, r in zip(items, rows, strict=True)],
                                 user=label)
        heading = f"top {args.n} for the new user in {label} ({len(rows)} ratings folded in)"
    else:
        user = _resolve_ids(model.user_index, [args.user])[0]
        who = user
        heading = f"top {args.n} for user {user}"
    from .errors import UnknownIdError

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
        _print_json({"user": recs.user, "fallback": recs.fallback, "items": rows_out})
        return ExitStatus.OK
    print(heading)
    header = ["rank", "item", "score"] + (["title"] if titles is not None else [])
    right = [True, True, True, False]
    print(_table(header, [[r[h] for h in header] for r in rows_out], right[: len(header)]))
    return ExitStatus.OK


# the quuxlabs post's example (0 = missing)
_POST_R = [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]]


def demo(args: argparse.Namespace) -> ExitStatus:
    """A tour without downloads: the post's 5x4 example, then a synthetic 3000 x 2000 problem."""
    import numpy as np
    import torch

    from .data import Ratings
    from .evaluation import evaluate as evaluate_model
    from .evaluation import random_split
    from .functional import matrix_factorization_bgd
    from .model import MatrixFactorization

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    np.set_printoptions(precision=2, suppress=True)

    print("1. The post's example: R (0 = missing), k = 2, 5000 steps of gradient descent\n")
    R = np.array(_POST_R, dtype=float)
    print(R)
    rng = np.random.default_rng(args.seed)
    P0, Q0 = rng.random((5, 2)), rng.random((2, 4))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 5x4 problem: threads would cost more than they save
    try:
        P, Q = matrix_factorization_bgd(np.ma.masked_equal(R, 0), P0, Q0, steps=5000,
                                        alpha=0.0002, beta=0.02)
    finally:
        torch.set_num_threads(threads)
    print("\nreconstructed P @ Q (the zeros are now predictions):\n")
    print(P @ Q)

    m, n, k, density = 3000, 2000, 5, 0.03
    print(f"\n2. A synthetic problem: {m} users x {n} items, rank {k} + noise, "
          f"{density:.0%} observed\n")
    Pt = rng.normal(0.0, 0.7, (m, k))
    Qt = rng.normal(0.0, 0.7, (n, k))
    bu, bi = rng.normal(0.0, 0.3, m), rng.normal(0.0, 0.4, n)
    nnz = int(density * m * n)
    flat = rng.choice(m * n, size=nnz, replace=False)
    users, items = np.divmod(flat, n)
    truth = 3.5 + bu[users] + bi[items] + np.einsum("ij,ij->i", Pt[users], Qt[items])
    values = np.clip(np.rint(truth + rng.normal(0.0, 0.5, nnz)), 1, 5)
    ratings = Ratings.from_coo(users, items, values, shape=(m, n))
    train, test = random_split(ratings, test_fraction=0.1, seed=args.seed)
    baseline = float(np.sqrt(np.mean((test.values - train.values.mean()) ** 2)))
    print(f"{len(train)} training ratings (1-5 stars), {len(test)} held out; predicting the "
          f"mean rating for all of them has RMSE {baseline:.4f}\n")
    model = MatrixFactorization(rank=k, beta=10.0, epochs=args.epochs, seed=args.seed,
                                verbose=True)
    model.fit(train, validation=test)
    metrics = evaluate_model(model, test, k=10, threshold=4.0)
    print(f"\nheld-out metrics (relevant = rated >= 4; with ~{nnz // m // 10} test ratings per "
          f"user among {n} items, top-10 hits are rare):\n")
    print(_metrics_table(metrics))
    user = 0
    recs = model.recommend(user, n=5)
    expected = 3.5 + bu[user] + bi[recs.items] + Qt[recs.items] @ Pt[user]
    print(f"\ntop 5 for user {user} (who rated {int(model._seen()[user].sum())} items), beside "
          "the noise-free score of the model that generated the data:\n")
    print(_table(("rank", "item", "score", "planted score"),
                 [[r + 1, int(i), float(s), float(e)] for r, (i, s, e)
                  in enumerate(zip(recs.items, recs.scores, expected, strict=True))],
                 (True, True, True, True)))
    liked = [(int(i), 5.0) for i in np.argsort(-Qt[:, 0])[:5]]
    new = model.fold_in(liked, user="newcomer")
    recs = model.recommend(new, n=5)
    print(f"\na new user who gave 5 stars to items {[i for i, _ in liked]} (folded in, no refit):")
    print("recommended:", ", ".join(str(int(i)) for i in recs.items))
    curve = out_dir / "autofact-demo-curve.png"
    _plot_history(model.history_, curve, f"autofact demo: {m} x {n}, rank {k}")
    print(f"\nwrote the learning curve to {curve}")
    return ExitStatus.OK


# ------------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .solvers import SOLVERS

    parser = _Parser(
        prog=PROG,
        description="Matrix factorization of ratings with missing entries: fit, evaluate, "
        "predict, recommend.",
        epilog="Run 'autofact VERB --help' for a verb's options; 'autofact demo' for a tour.",
    )
    parser.add_argument("--version", action="version", version=f"autofact {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="VERB", parser_class=_Parser)

    p = sub.add_parser("fit", help="fit a model and save it",
                       description="Fit a model on DATA and save it to --out; with a test set, "
                       "report RMSE, MAE and top-k ranking metrics.")
    p.add_argument("data", metavar="DATA", type=_existing_file,
                   help="ratings file: CSV/TSV/Parquet/MovieLens (user, item, rating[, time])")
    test = p.add_mutually_exclusive_group()
    test.add_argument("--test", type=_existing_file, metavar="FILE",
                      help="held-out ratings: validation RMSE per epoch and final metrics")
    test.add_argument("--test-fraction", type=_fraction, metavar="F",
                      help="hold out this fraction of DATA (seeded by --seed) as the test set")
    p.add_argument("--out", "-o", type=_new_file, required=True, metavar="MODEL",
                   help="where to save the fitted model (e.g. model.npz)")
    hp = p.add_argument_group("model (defaults: those of autofact.MatrixFactorization)")
    hp.add_argument("--rank", type=_positive_int, help="number of latent factors (default 10)")
    hp.add_argument("--loss", type=_loss,
                    help="squared, absolute, huber, logistic, poisson, or module:function")
    hp.add_argument("--reg", type=_regularization, metavar="REG",
                    help="regularization: l2, l1, none, or module:function (default l2)")
    hp.add_argument("--beta", type=_nonnegative_float, help="regularization strength")
    hp.add_argument("--solver", choices=("auto",) + tuple(SOLVERS),
                    help="training algorithm (default auto)")
    hp.add_argument("--epochs", type=_positive_int, help="passes over the data")
    hp.add_argument("--lr", type=_positive_float, help="learning rate (first-order solvers)")
    hp.add_argument("--batch-size", type=_positive_int, help="mini-batch size (adam, sgd)")
    hp.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                    help="learn a global mean and user/item biases (default: yes)")
    hp.add_argument("--seed", type=_nonnegative_int, help="random seed (default 0)")
    hp.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    hp.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    p.add_argument("--k", type=_positive_int, default=10, help="k of the @k metrics (10)")
    p.add_argument("--threshold", type=_finite, default=4.0,
                   help="a test rating >= this is relevant for the @k metrics (4)")
    p.add_argument("--plot", type=_new_file, metavar="PNG",
                   help="write the learning curve (loss, validation RMSE) to this PNG")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=fit)

    p = sub.add_parser("evaluate", help="metrics of a saved model on a ratings file",
                       description="RMSE, MAE and precision/recall/nDCG/MAP@k of MODEL on DATA.")
    p.add_argument("model", metavar="MODEL", type=_existing_file, help="a saved model")
    p.add_argument("data", metavar="DATA", type=_existing_file, help="ratings file to score")
    p.add_argument("--k", type=_positive_int, default=10, help="k of the @k metrics (10)")
    p.add_argument("--threshold", type=_finite, default=4.0,
                   help="a rating >= this is relevant for the @k metrics (4)")
    _add_common(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("predict", help="predicted ratings for user/item pairs",
                       description="Predict one rating (--user and --item) or one per line of "
                       "--pairs (user,item; a CSV with a prediction column is written).")
    p.add_argument("model", metavar="MODEL", type=_existing_file, help="a saved model")
    p.add_argument("--user", "-u", metavar="U", help="user id")
    p.add_argument("--item", "-i", metavar="I", help="item id")
    p.add_argument("--pairs", type=_existing_file, metavar="FILE",
                   help="file of user,item lines (a header line is allowed; more fields ignored)")
    p.add_argument("--out", "-o", type=_new_file, metavar="FILE",
                   help="write the CSV here instead of stdout")
    _add_common(p)
    p.set_defaults(func=predict)

    p = sub.add_parser("recommend", help="top-n items for a user",
                       description="Top-n items for a user of the training data (--user) or for "
                       "a new user folded in from --ratings (item,rating per line).")
    p.add_argument("model", metavar="MODEL", type=_existing_file, help="a saved model")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", "-u", metavar="U", help="user id from the training data")
    who.add_argument("--ratings", type=_existing_file, metavar="FILE",
                     help="a new user's ratings, item,rating per line (folded in, no refit)")
    p.add_argument("-n", type=_positive_int, default=10, help="how many items (10)")
    p.add_argument("--items", type=_existing_file, metavar="FILE",
                   help="titles: MovieLens u.item or movies.csv (or id,title lines)")
    p.add_argument("--include-seen", action="store_true",
                   help="also recommend items the user already rated")
    p.add_argument("--fallback", action="store_true",
                   help="for a user not in the training data, show the most popular items")
    _add_common(p)
    p.set_defaults(func=recommend)

    p = sub.add_parser("demo", help="a tour on built-in data (no download)",
                       description="The post's 5x4 example, then a synthetic 3000 x 2000 "
                       "problem: fit with validation, metrics, recommendations, learning curve.")
    p.add_argument("--out", "-o", type=_directory, default=Path("."), metavar="DIR",
                   help="folder for autofact-demo-curve.png (default: current folder)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="epochs for part 2 (10)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (0)")
    _add_common(p, json_flag=False)
    p.set_defaults(func=demo)
    return parser


# ------------------------------------------------------------------------------ entry point
def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    text = str(message).replace(" (pass strict=True to raise instead)", "")
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :class:`ExitStatus`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args_list
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            parser = build_parser()
            args = parser.parse_args(args_list)
            if args.command is None:
                parser.print_help(sys.stderr)
                return ExitStatus.USAGE
            return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # e.g. `autofact predict ... | head`
        _silence_stdout()
        return ExitStatus.OK
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        if show_tb:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return ExitStatus.USAGE
    except Exception as exc:
        from .errors import FitError

        if show_tb:
            traceback.print_exc()
        if isinstance(exc, FitError):
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        else:
            print(
                f"{PROG}: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
                f"(rerun with --traceback for details, and please report it)",
                file=sys.stderr,
            )
        return ExitStatus.ERROR


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
