"""The small text files the verbs read besides ratings: ``user,item`` pairs (predict),
``item,rating`` lines (recommend --ratings) and item titles (recommend --items).

Columns are found by name when the first line is a header (``item,user`` works), else by
position. Every error names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from .common import UsageError, parse_id

USER_NAMES = ("user", "userid", "user_id", "uid", "u")
ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "iid", "i", "id")
RATING_NAMES = ("rating", "ratings", "score", "value", "r")


def _text(path: Path, what: str) -> str:
    """The file's text: UTF-8, else Latin-1 (MovieLens u.item); binary files are refused."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if b"\0" in raw[:4096]:
        raise UsageError(f"{path}: this looks like a binary file, not a text file of {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _sniff_sep(line: str) -> str | None:
    for sep in ("\t", ",", ";", "|"):
        if sep in line:
            return sep
    return None  # whitespace


def _split(line: str, sep: str | None) -> list[str]:
    if sep == ",":
        return [f.strip() for f in next(csv.reader([line]))]
    return [f.strip() for f in (line.split(sep) if sep else line.split())]


def _columns(
    path: Path, columns: tuple[tuple[str, tuple[str, ...]], ...], what: str
) -> list[tuple[int, list[str]]]:
    """``(line number, [field of each column])`` for the non-blank lines of ``path``.

    ``columns`` are ``(name, header names)`` in positional order. When the first line holds a
    header name of any column, it is a header: each column is found by name there.
    """
    lines = [(k, ln) for k, ln in enumerate(io.StringIO(_text(path, what)), start=1)
             if ln.strip()]
    if not lines:
        raise UsageError(f"{path}: the file is empty; expected lines of {what}")
    first = lines[0][1].rstrip("\r\n")
    sep = _sniff_sep(first)
    head = [f.strip('"').lower() for f in _split(first, sep)]
    positions = list(range(len(columns)))
    if any(h in names for h in head for _, names in columns):
        for j, (name, names) in enumerate(columns):
            found = [k for k, h in enumerate(head) if h in names]
            if not found:
                raise UsageError(
                    f"line 1 of {path}: the header {first.strip()!r} names no {name} column; "
                    f"call it {names[0]!r} (or drop the header line to read {what} by position)"
                )
            positions[j] = found[0]
        lines = lines[1:]
        if not lines:
            raise UsageError(f"{path}: only a header line; expected lines of {what}")
    wanted = max(positions) + 1
    out = []
    for number, line in lines:
        fields = _split(line.rstrip("\r\n"), sep)
        if len(fields) < wanted or any(not fields[p] for p in positions):
            got = len([f for f in fields if f])
            raise UsageError(
                f"line {number} of {path}: expected {wanted} fields ({what}), got {got}"
            )
        out.append((number, [fields[p] for p in positions]))
    return out


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    """The user and item ids of a ``user,item`` file (a header may name them in any order)."""
    rows = _columns(path, (("user", USER_NAMES), ("item", ITEM_NAMES[:-1])), "user, item")
    return [f[0] for _, f in rows], [f[1] for _, f in rows]


def read_item_ratings(path: Path) -> list[tuple[str, float, int]]:
    """``(item, rating, line number)`` of an ``item,rating`` file."""
    out = []
    for number, f in _columns(path, (("item", ITEM_NAMES), ("rating", RATING_NAMES)),
                              "item, rating"):
        try:
            value = float(f[1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(f"line {number} of {path}: rating {f[1]!r} is not a number")
        out.append((f[0], value, number))
    return out


def read_titles(path: Path) -> dict[Any, str]:
    """Item titles from MovieLens ``u.item`` (``id|title|...``, latin-1) or ``movies.csv``
    (header ``movieId,title,genres``), or any ``id,title`` file."""
    titles: dict[Any, str] = {}
    nonblank = [(k, ln.rstrip("\r\n")) for k, ln in
                enumerate(io.StringIO(_text(path, "id, title")), start=1) if ln.strip()]
    if not nonblank:
        raise UsageError(f"{path}: the items file is empty; expected lines of id, title")
    first = nonblank[0][1]
    sep = "|" if "|" in first else _sniff_sep(first)
    id_col, title_col = 0, 1
    lowered = [h.strip('"').lower() for h in _split(first, sep)]
    if "title" in lowered:  # a header such as movieId,title,genres
        title_col = lowered.index("title")
        for name in ITEM_NAMES:
            if name in lowered:
                id_col = lowered.index(name)
                break
        nonblank = nonblank[1:]
    first_line: dict[Any, int] = {}
    for number, line in nonblank:
        fields = _split(line, sep)
        if len(fields) <= max(id_col, title_col):
            raise UsageError(
                f"line {number} of {path}: expected at least {max(id_col, title_col) + 1} "
                f"fields (id, title), got {len(fields)}"
            )
        key = parse_id(fields[id_col])
        if key in first_line:
            # trust: a ratings file given as --items (u1.base) was read as id,title lines, its
            # user ids as item ids and its item ids as titles: wrong titles, no error
            raise UsageError(
                f"line {number} of {path}: item {fields[id_col]!r} is listed again (first on "
                f"line {first_line[key]}); a titles file lists each item once: is it a ratings "
                "file? give MovieLens u.item, movies.csv or id,title lines"
            )
        first_line[key] = number
        titles[key] = fields[title_col]
    return titles
