"""The ``autofact`` command line: ``fit``, ``evaluate``, ``predict``, ``recommend``, ``tune``,
``demo``.

One module per verb (:mod:`.fit`, :mod:`.evaluate`, ...), each with ``register`` (its
arguments) and one function taking the parsed arguments and returning an :class:`ExitStatus`.
Argument checks live in the argument types (:mod:`.options`) and, for the files a command
writes, in :mod:`.paths`, all before any work. Results go to stdout (``--json`` for
machine-readable output); progress bars, warnings and errors to stderr, as one line
``autofact: error: ...`` that names the command-line option to change (``--duplicates mean``,
not the Python keyword). Exit status: 2 for a usage or input error, 1 for a failed run
(training diverged, a file could not be written, an internal error), 130 for Ctrl-C; a
traceback appears only with ``--traceback``.

::

    autofact fit u1.base --test u1.test --out model.npz
    autofact evaluate model.npz u1.test
    autofact recommend model.npz --user 196 -n 10 --items u.item
    autofact demo
"""

from __future__ import annotations

import argparse
import atexit
import dis
import functools
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from .common import (
    PROG,
    ExitStatus,
    UsageError,
    imports_done,
    pause_collection,
    resume_collection,
    say,
)

__all__ = ["main", "run", "build_parser", "cli_words", "ExitStatus", "UsageError"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb."""
    from .. import __version__
    from . import demo, evaluate, fit, predict, recommend, tune

    parser = _Parser(
        prog=PROG,
        description="Matrix factorization of ratings with missing entries: fit, evaluate, "
        "predict, recommend, tune.",
        epilog="Run 'autofact VERB --help' for a verb's options; 'autofact demo' for a tour.",
    )
    parser.add_argument("--version", action="version", version=f"autofact {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="VERB", parser_class=_Parser)
    for verb in (fit, evaluate, predict, recommend, tune, demo):
        verb.register(sub)
    return parser


# ------------------------------------------------------------------------------ error messages
# Python keyword in a library message -> the option of the command line that sets it
_OPTIONS = {
    "duplicates": "--duplicates", "sep": "--sep", "encoding": "--encoding",
    "user": "--user-col", "item": "--item-col", "rating": "--rating-col",
    "weight": "--weight-col", "timestamp": "--time-col",
    "lr": "--lr", "beta": "--beta", "solver": "--solver", "rank": "--rank", "epochs": "--epochs",
    "batch_size": "--batch-size", "loss": "--loss", "regularization": "--reg", "seed": "--seed",
    "dtype": "--dtype", "device": "--device", "fallback": "--fallback",
    "patience": "--patience", "validation_fraction": "--validation-fraction",
    "n_trials": "--trials", "metric": "--metric", "timeout": "--timeout",
    "task": "--task", "alpha": "--alpha", "unobserved_weight": "--unobserved-weight",
}
_FLAGS = {("header", "True"): "--header", ("header", "False"): "--no-header",
          ("timestamp", "False"): "--no-time-col",
          ("bias", "True"): "--bias", ("bias", "False"): "--no-bias",
          ("implicit", "True"): "--implicit", ("implicit", "False"): "--no-implicit"}
_KEYWORD = re.compile(
    r"(?<![\w.])(" + "|".join(sorted(_OPTIONS.keys() | {k for k, _ in _FLAGS}, key=len,
                                     reverse=True))
    + r")=(?:'([^']*)'|\"([^\"]*)\"|([\w.+:-]*\w))?"
)
_LEAVE_NONE = re.compile(r"\b(leave|set|use) (\w+)=None\b")
_LOAD_CALL = re.compile(
    r"autofact\.load\([^()]*?,\s*(loss|regularization)=([\w.]+)\.(\w+)\)"
)


def cli_words(text: str) -> str:
    """A library message in command-line words: ``pass duplicates='mean'`` becomes
    ``pass --duplicates mean``, ``lr=0.001`` becomes ``--lr 0.001``, and
    ``autofact.load('m.npz', loss=mymod.cauchy)`` becomes ``--loss mymod:cauchy``."""
    text = _LOAD_CALL.sub(lambda m: f"{_OPTIONS[m.group(1)]} {m.group(2)}:{m.group(3)}", text)
    # trust: Python's None is no value on the command line: "leave lr=None" read "leave --lr
    # None", an option value the command line refuses; it is the option left out
    text = _LEAVE_NONE.sub(lambda m: f"leave out {_OPTIONS[m.group(2)]}"
                           if m.group(2) in _OPTIONS else m.group(0), text)

    def option(m: re.Match[str]) -> str:
        name = m.group(1)
        value = next((g for g in m.groups()[1:] if g is not None), "")
        if (name, value) in _FLAGS:
            return _FLAGS[(name, value)]
        if name not in _OPTIONS:
            return m.group(0)
        if value == "None":
            return f"no {_OPTIONS[name]}"
        return _OPTIONS[name] if not value else f"{_OPTIONS[name]} {value}"

    return _KEYWORD.sub(option, text)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    text = str(message).replace(" (pass strict=True to raise instead)", "")
    say(f"warning: {cli_words(' '.join(text.split()))}")


# ------------------------------------------------------------------------------ entry point
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
            if not getattr(args, "imports_done_by_verb", False):
                imports_done()  # the start-up pause ends here, unless the verb ends it
            return int(args.func(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say("interrupted")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # e.g. `autofact predict ... | head`
        _silence_stdout()
        return ExitStatus.OK
    except Exception as exc:
        if show_tb:
            traceback.print_exc()
        status, message = _describe(exc)
        say(message)
        return status


def run() -> NoReturn:
    """The program (``autofact``, ``python -m autofact``): :func:`main`, then exit with its
    status.

    Issue 10 (cold start): once :func:`main` has returned, Python's own teardown (garbage
    collections over torch's objects, then every module's) took 0.3-1 s of a 2-3 s
    ``autofact fit``. So, with the output flushed and the ``atexit`` functions run, the process
    ends there (``os._exit``), unless a thread that Python's exit would wait for is still
    running (then Python exits as usual). Likewise at the start: Python's garbage collector
    stays off until the verb's modules are imported (:func:`.common.pause_collection`).

    The program also fixes glibc's heap thresholds (:func:`autofact._memory.pin_heap_thresholds`:
    sharded and tiled ALS then reuse their temporaries instead of mapping them afresh, issue 11).
    Both are the process's settings, so only the program changes them; the library never does.
    """
    pause_collection()  # until the verb's modules are imported (issue 10)
    from .._memory import pin_heap_thresholds

    pin_heap_thresholds()  # the program's process (issue 11)
    try:
        status = main()
        if any(t is not threading.main_thread() and not t.daemon
               for t in threading.enumerate()):
            raise SystemExit(status)
        atexit._run_exitfuncs()
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: started with the stream closed (`>&-`)
                    stream.flush()
        except (OSError, ValueError):  # a closed pipe: let Python deal with it as usual
            raise SystemExit(status) from None
    except BaseException:  # also argparse's SystemExit (--help, --version) out of main()
        resume_collection()  # the pause never outlives run(), whatever ends it
        raise
    os._exit(status)


def _describe(exc: Exception) -> tuple[ExitStatus, str]:
    """The exit status and the one line for an error that ended a command."""
    from ..errors import FitError

    if isinstance(exc, UsageError):
        return ExitStatus.USAGE, f"error: {_one_line(exc)}"
    if type(exc).__name__ in ("LinAlgError", "_LinAlgError"):
        # trust: numpy's LinAlgError is a ValueError, so a fit that failed numerically (ratings
        # such as 1e30 made a sampler's precision matrix indefinite) read as a usage error
        # (exit 2) with no word of what to change; torch's (torch.linalg.LinAlgError, named
        # _LinAlgError, a RuntimeError) read as an internal error
        return ExitStatus.ERROR, (
            f"error: the fit failed numerically ({_one_line(exc)}); check DATA for ratings of "
            "extreme size (rescale them), or try --dtype float64 or another --solver"
        )
    if isinstance(exc, ValueError | TypeError) and _checked(exc):
        # bad input (a file, an id, a value, a user's function) that a check of ours or the
        # user's own code refused, with a message written for it
        return ExitStatus.USAGE, f"error: {cli_words(_one_line(exc))}"
    if isinstance(exc, FitError):
        return ExitStatus.ERROR, f"error: {cli_words(_one_line(exc))}"
    if isinstance(exc, ImportError) and "pip install" in str(exc):  # a missing extra
        return ExitStatus.ERROR, f"error: {_one_line(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename!r}" if exc.filename else ""
        return ExitStatus.ERROR, f"error: {exc.strerror}{where}"
    if isinstance(exc, MemoryError) or _out_of_memory(exc):
        return ExitStatus.ERROR, "error: out of memory; try a smaller --rank or --batch-size"
    return ExitStatus.ERROR, (
        f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --traceback for "
        "the details, and please report it)"
    )


def _out_of_memory(exc: BaseException) -> bool:
    """torch's allocators report running out of memory as a RuntimeError (CPU: "can't allocate
    memory"; CUDA: ``torch.OutOfMemoryError``), not as Python's MemoryError."""
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text
            or "out of memory" in text.lower())


def _checked(exc: BaseException) -> bool:
    """Whether ``exc`` was raised on purpose (a ``raise`` statement) by autofact or by the
    user's own code, rather than by Python, numpy, pandas or torch on an unforeseen case."""
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    where = os.path.realpath(code.co_filename)
    ours = where.startswith(_PACKAGE + os.sep)
    if not ours and any(where.startswith(p + os.sep) for p in _libraries()):
        return False
    # the instruction that raised, from the running code itself (never the source file, which
    # may have changed on disk since it was imported): a `raise` statement is RAISE_VARARGS
    lasti = tb.tb_lasti
    return 0 <= lasti < len(code.co_code) and code.co_code[lasti] == _RAISE


_RAISE = dis.opmap["RAISE_VARARGS"]
_PACKAGE = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def _libraries() -> tuple[str, ...]:
    """Where Python's own modules and the installed packages are; found when an error needs
    them (issue 10: 6 ms of every command's start)."""
    import sysconfig

    return tuple(os.path.realpath(p) for p in {sysconfig.get_path(k) for k in
                                               ("stdlib", "platstdlib", "purelib", "platlib")}
                 if p)


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    run()
