"""Argument types (checked by argparse, before any work) and the options that several verbs
share: how to read a ratings file, and which loss a loaded model needs."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import math
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .common import UsageError


# ------------------------------------------------------------------------------ argument types
def _number(parse: Callable[[str], Any], ok: Callable[[Any], bool],
            expected: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)``, refused with ``must be EXPECTED, got 'TEXT'`` when it
    does not parse or fails ``ok``."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return check


positive_int = _number(int, lambda v: v >= 1, "a positive int")
nonnegative_int = _number(int, lambda v: v >= 0, "an int >= 0")
rank = _number(lambda t: t if t == "auto" else int(t), lambda v: v == "auto" or v >= 1,
               "a positive int")  # --rank: also 'auto', as MatrixFactorization(rank=...) (issue 12)
finite = _number(float, math.isfinite, "a finite number")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 < v < 1,
                   "a number strictly between 0 and 1 (e.g. 0.2)")


def existing_file(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist; check the path")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file")
    return p


def existing_data(text: str) -> Path:
    """Ratings: a file, or a folder of part files (read by ``autofact.read``, issue 11).
    Trust: ``evaluate``, ``fit --test`` and ``tune`` refused the folder ``fit`` reads."""
    p = Path(text)
    if p.is_dir():
        return p
    return existing_file(text)


def output_path(text: str) -> Path:
    """An output path; checked against the inputs and the disk by :mod:`.paths`."""
    if not text:
        raise argparse.ArgumentTypeError("must be a file name, got ''")
    return Path(text)


def _name_or_path(text: str, names: Iterable[str], what: str) -> str:
    """A built-in name, or a 'module:function' path that imports (checked up front)."""
    if text in names:
        return text
    if ":" in text:
        from .._imports import import_object

        try:
            import_object(text, what=what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(sorted(names))} or a 'module:function' path, got {text!r}"
    )


def loss(text: str) -> str:
    from ..losses import LOSSES
    from ..ranking import PAIRWISE_LOSSES

    # the ranking task's pairwise losses are names too (--task ranking, issue 12), and listed
    # among the choices (trust: the message named every choice but those two)
    return _name_or_path(text, [*LOSSES, *PAIRWISE_LOSSES], "loss")


def regularization(text: str) -> str:
    from ..regularizers import REGULARIZERS

    return _name_or_path(text, REGULARIZERS, "regularization")


def encoding(text: str) -> str:
    try:
        return codecs.lookup(text).name
    except LookupError:
        raise argparse.ArgumentTypeError(
            f"unknown encoding {text!r}; try utf-8, latin-1 or cp1252"
        ) from None


_SEPARATORS = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
               "space": r"\s+", "whitespace": r"\s+"}


def separator(text: str) -> str:
    """A field separator: the character itself, or ``\\t``/``tab``, ``space`` (any run of
    whitespace), ``comma``, ``semicolon``, ``pipe``."""
    if not text:
        raise argparse.ArgumentTypeError(
            "must not be empty; give the character, or tab, space, comma, semicolon or pipe"
        )
    return _SEPARATORS.get(text.lower(), text)


# ------------------------------------------------------------------------------ reading ratings
def duplicate_choices() -> tuple[str, ...]:
    """What ``autofact.read(duplicates=...)`` accepts."""
    from ..data import Duplicates

    return tuple(typing.get_args(Duplicates))


# option dest -> keyword of autofact.read (only those given are passed)
READ_KEYWORDS = {
    "sep": "sep", "encoding": "encoding", "header": "header", "duplicates": "duplicates",
    "user_col": "user", "item_col": "item", "rating_col": "rating", "weight_col": "weight",
    "time_col": "timestamp",
}


def add_ratings_options(p: argparse.ArgumentParser) -> None:
    """The options that say how to read a ratings file (autofact.read's keywords)."""
    g = p.add_argument_group(
        "reading ratings files (detected from the content unless given; see autofact.read)"
    )
    g.add_argument("--sep", type=separator, metavar="SEP",
                   help="field separator: the character, or tab, space, comma, semicolon, pipe")
    g.add_argument("--encoding", type=encoding, metavar="ENC",
                   help="text encoding of the file (default utf-8), e.g. latin-1")
    g.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="the first line names the columns (default: detected)")
    g.add_argument("--duplicates", choices=duplicate_choices(),
                   help="what to do with a (user, item) pair rated more than once "
                   "(default error)")
    g.add_argument("--user-col", metavar="NAME", help="name of the user column (with a header)")
    g.add_argument("--item-col", metavar="NAME", help="name of the item column")
    g.add_argument("--rating-col", metavar="NAME", help="name of the rating column")
    g.add_argument("--weight-col", metavar="NAME",
                   help="name of a column of per-rating loss weights (used only when named)")
    times = g.add_mutually_exclusive_group()
    times.add_argument("--time-col", metavar="NAME", help="name of a timestamp column")
    times.add_argument("--no-time-col", dest="time_col", action="store_const", const=False,
                       help="ignore timestamps (MovieLens layouts have one; default: used)")


def read_ratings(path: Path, args: argparse.Namespace, reader: Any = None) -> Any:
    """``autofact.read(path, ...)`` (or ``reader(path, ...)``: issue 11, each process's share
    under torchrun) with the reading options given on the command line; every error names the
    file."""
    from ..reading import read

    with _file_errors(path, args):
        return (read if reader is None else reader)(path, **_read_keywords(args))


def read_later(path: Path, args: argparse.Namespace) -> Callable[[], Any]:
    """:func:`read_ratings` started now, parsing on another thread when the file is plain
    (issue 10, cold start: the caller imports torch meanwhile); the function returned waits
    for the ratings. Errors name the file, whether raised now or by the function."""
    from ..reading import read_in_background

    with _file_errors(path, args):
        wait = read_in_background(path, **_read_keywords(args))

    def ratings() -> Any:
        with _file_errors(path, args):
            return wait()

    return ratings


def _read_keywords(args: argparse.Namespace) -> dict[str, Any]:
    return {kw: getattr(args, dest) for dest, kw in READ_KEYWORDS.items()
            if getattr(args, dest, None) is not None}


@contextlib.contextmanager
def _file_errors(path: Path, args: argparse.Namespace) -> Iterator[None]:
    """A reading error as the command line says it: naming the file (and --encoding)."""
    try:
        yield
    except UnicodeDecodeError as exc:
        used = getattr(args, "encoding", None) or "utf-8"
        raise UsageError(
            f"{path}: not {used} text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); pass --encoding latin-1 (or the file's encoding)"
        ) from None
    except ValueError as exc:
        raise name_file(exc, path) from None
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def name_file(exc: ValueError, path: Path) -> ValueError:
    """``exc`` with the file's name in front when its message does not name it already."""
    text = str(exc)
    if path.name in text:
        return exc
    return ValueError(f"{path}: {text}")


def add_function_options(p: argparse.ArgumentParser) -> None:
    """--loss/--reg for the verbs that load a model: a model trained with a user's function
    names it but never imports it; the user gives it here when fold-in needs it."""
    g = p.add_argument_group("a model trained with your own loss or regularization")
    g.add_argument("--loss", type=loss, metavar="MODULE:FUNCTION",
                   help="the loss the model was trained with, when it is your own function "
                   "(the model file names it; it is never imported from the file)")
    g.add_argument("--reg", type=regularization, metavar="MODULE:FUNCTION",
                   help="likewise for a regularization of your own")


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")
