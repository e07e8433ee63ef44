"""What every verb shares: exit codes, the usage error, printing, ids and loading a model."""

from __future__ import annotations

import gc
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

PROG = "autofact"


class ExitStatus(IntEnum):
    """Process exit codes (as httpie's)."""

    OK = 0
    ERROR = 1  # the run failed: training diverged, a file could not be written, a bug
    USAGE = 2  # the command line or one of its input files is wrong
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit status 2."""


def say(message: str) -> None:
    """One line for the user on stderr, prefixed ``autofact: ``."""
    print(f"{PROG}: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------ start-up
_PAUSED: list[bool] = []  # [True] while the program holds Python's garbage collector off


def pause_collection() -> None:
    """The program's start (issue 10, cold start): Python's cyclic garbage collector is off
    while a verb imports its modules, until :func:`imports_done`.

    ``import torch`` creates some 170,000 objects that live as long as the program, and the
    collector, counting them as they come, traversed all of them twice during the imports and
    once more early in the fit (where a profile showed it as threadpoolctl's import): measured
    for ``autofact fit`` on 1M ratings, 0.23 s of the main thread's CPU (3 full collections
    0.16 s, 32 of the middle generation 0.04 s, 343 of the young one 0.03 s) of about 2.5 s;
    0.02 s with the pause. Only :func:`autofact.cli.run` (the program) calls
    this; :func:`autofact.cli.main` called from Python leaves the collector as it is. Does
    nothing when the collector is already off."""
    if gc.isenabled():
        gc.disable()
        _PAUSED.append(True)


def imports_done() -> None:
    """End the pause of :func:`pause_collection`, if there is one: what was imported so far
    is moved out of the collector's reach (``gc.freeze``: the modules, their functions and
    tables live as long as the program anyway), then collection resumes, looking at new
    objects only. A verb calls it once its modules (torch's among them) are imported, before
    its work; :func:`autofact.cli.main` calls it before any other verb runs."""
    if _PAUSED:
        gc.freeze()
        resume_collection()


def resume_collection() -> None:
    """End the pause of :func:`pause_collection`, if there is one, freezing nothing: for the
    program's exits that come before a verb ends it (``--help``, ``--version``, a usage error
    while a thread still runs), so that the pause never outlives :func:`autofact.cli.run`."""
    if _PAUSED:
        _PAUSED.clear()
        gc.enable()


# ------------------------------------------------------------------------------ ids
def parse_id(text: str) -> int | str:
    """A command-line id: an int when it is written as one, canonically, in int64's range
    (MovieLens ``196``, ``-3``), else the string: the rule by which files are read
    (``autofact.read``).

    Trust: Python's ``int()`` also reads ``007``, ``+7``, `` 7`` and ``1_96``, so ``--user 1_96
    --item 2_42`` predicted for user 196 and item 242, and ``--user 007`` answered for user 7,
    whereas a file's ``007`` is another user than ``7``. The library's own rule:
    :func:`autofact.data.canonical_int`."""
    from ..data import canonical_int

    return canonical_int(text)


def resolve_ids(lookup: Callable[..., Any], texts: Sequence[str]) -> list[Any]:
    """Ids as the model knows them: the int form when the model has it, else the string form
    (so string ids such as ``'007'`` still match); unknown ids keep the int form."""
    import numpy as np

    first = [parse_id(t) for t in texts]
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


def load_model(path: Path, args: Any) -> Any:
    """``autofact.load(path)``, given the loss and regularization the user typed (``--loss``,
    ``--reg``) when they did: a model file's own functions are never imported from the file."""
    from .. import load

    imports_done()  # `load` brought the library and torch (issue 10)
    functions: dict[str, Any] = {}
    for option, keyword in (("loss", "loss"), ("reg", "regularization")):
        given = getattr(args, option, None)
        if given is not None:
            functions[keyword] = _function(given, keyword)
    return load(path, **functions) if functions else load(path)


def _function(text: str, what: str) -> Any:
    """A built-in name stays a name; a 'module:function' the user typed is imported."""
    from .._imports import import_object, is_path

    return import_object(text, what=what) if is_path(text) else text


# ------------------------------------------------------------------------------ printing
def fmt(value: Any) -> str:
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right,
                                                                     strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def metrics_table(metrics: dict[str, Any]) -> str:
    return table(("metric", "value"), list(metrics.items()), (False, True))


def jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(obj: Any) -> None:
    print(json.dumps(jsonable(obj), indent=2))


class Unclosed:
    """``with`` support for stdout that does not close it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """The learning curve (training objective, validation RMSE) as an image file."""
    from .._optional import optional_import

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
    buffer = io.BytesIO()  # drawn in full before the file is opened: a failure leaves it as it was
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or None)
    finally:
        plt.close(fig)
    path.write_bytes(buffer.getvalue())
