"""Checks on the files a command writes, run before any work (issue 8: never lose data).

An output may not be one of the command's inputs (compared as resolved real paths, so a
relative path, a symbolic link or a hard link to the input is caught); its folder must exist;
and a file already there is replaced only when it is one this kind of output wrote before (a
model, an image, a predictions CSV, a tuned settings file) or is empty. A symbolic link is written through.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from .common import UsageError

# what a file must start with to be replaced by a plot of that format
_IMAGE_MAGIC = {
    "png": (b"\x89PNG",), "pdf": (b"%PDF",), "svg": (b"<?xml", b"<svg"), "svgz": (b"\x1f\x8b",),
    "eps": (b"%!PS", b"\xc5\xd0\xd3\xc6"), "ps": (b"%!PS",), "jpg": (b"\xff\xd8",),
    "jpeg": (b"\xff\xd8",), "tif": (b"II*\0", b"MM\0*"), "tiff": (b"II*\0", b"MM\0*"),
    "webp": (b"RIFF",),
}
PREDICTIONS_HEADER = "user,item,prediction"


def plot_formats() -> list[str]:
    """The file extensions matplotlib can write (png, pdf, svg, ...)."""
    from .._optional import optional_import

    optional_import("matplotlib", extra="plot", purpose="plotting")
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(f for f in FigureCanvasBase.get_supported_filetypes() if f in _IMAGE_MAGIC)


def check_folder(path: Path, option: str) -> None:
    """``path`` is a folder that exists (demo --out)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a file; give a folder")
    if not path.is_dir():
        raise UsageError(
            f"{option}: folder {str(path)!r} does not exist; create it first"
        )


def check_output(
    path: Path,
    option: str,
    kind: str,
    inputs: Mapping[str, Path | None],
) -> Path:
    """Refuse ``path`` for ``option`` (an output of ``kind`` 'model', 'plot', 'csv' or 'params') when it
    is a folder, its folder is missing, it is one of ``inputs`` (name -> path), or it holds a
    file this kind of output did not write. Returns ``path``."""
    shown = str(path)
    if path.is_dir():
        raise UsageError(f"{option} {shown!r} is a directory; give a file name")
    real = Path(os.path.realpath(path))
    if not real.parent.is_dir():
        folder = path.parent if real.name == path.name else real.parent
        raise UsageError(
            f"cannot write {option} {shown!r}: folder {str(folder)!r} does not exist; "
            "create it first"
        )
    if kind == "plot":
        formats = plot_formats()
        ext = path.suffix.lower().lstrip(".")
        if ext not in formats:
            raise UsageError(
                f"{option} {shown!r}: cannot draw a {('.' + ext) if ext else 'file without an extension'}"
                f"; give a file name ending in {', '.join('.' + f for f in formats)}"
            )
    for name, other in inputs.items():
        if other is not None and same_file(real, other):
            raise UsageError(
                f"{option} {shown!r} is the input {name} ({str(other)!r}); writing it would "
                "destroy the input: choose another name"
            )
        if (other is not None and other.is_dir() and not real.name.startswith((".", "_"))
                and real.parent == Path(os.path.realpath(other))):
            # issue 8: every file of a folder of parts is read as ratings (autofact.read): one
            # written into it would make the next read of the folder fail
            raise UsageError(
                f"{option} {shown!r} is inside the input folder {name} ({str(other)!r}), whose "
                "files are all read as ratings: choose a file outside it"
            )
    check_writable(real.parent, option, shown)
    if real.exists() and real.stat().st_size > 0 and not _replaceable(real, kind, path.suffix):
        what = {"model": "an autofact model", "plot": f"a {path.suffix.lstrip('.')} image",
                "csv": f"a predictions file (first line {PREDICTIONS_HEADER})",
                "params": "a settings file written by autofact tune"}[kind]
        raise UsageError(
            f"{option} {shown!r} exists and is not {what}; refusing to replace it: remove it "
            "first or choose another name"
        )
    return path


def check_writable(folder: Path, option: str, shown: str) -> None:
    """Refuse ``option`` (given as ``shown``) when ``folder`` exists but no file can be created
    in it (read-only, no permission). Trust: the write used to fail only after the work, a
    fit's result lost with it; a probe file (created and removed at once) asks the file system
    itself, which also holds for root and for read-only mounts, where permission bits do not
    tell."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".autofact-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(
            f"cannot write {option} {shown!r}: folder {str(folder)!r} is not writable "
            f"({exc.strerror or exc}); choose another folder"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_checkpoint_folder(path: Path, option: str = "--checkpoint") -> None:
    """A checkpoint folder (created by the fit when missing): refuse, before any work, a path
    that is a file, lies under a file, or whose nearest existing folder cannot be written."""
    shown = str(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {shown!r} is a file; give a folder")
    folder = Path(os.path.realpath(path))
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(
            f"{option} {shown!r}: {str(folder)!r} is a file, not a folder; give a folder path"
        )
    check_writable(folder, option, shown)


def check_distinct(outputs: Mapping[str, Path | None]) -> None:
    """Two outputs of one command may not be the same file."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(
                f"{option} {str(path)!r} is the same file as {seen[real]}; give each its own name"
            )
        seen[real] = option


def same_file(real: Path, other: Path) -> bool:
    """Whether the resolved path ``real`` is ``other`` (also through a link, or a hard link)."""
    if real == Path(os.path.realpath(other)):
        return True
    try:
        return real.exists() and os.path.samefile(real, other)  # hard links
    except OSError:
        return False


def _replaceable(real: Path, kind: str, suffix: str) -> bool:
    if kind == "model":
        from ..io import is_model_file

        return is_model_file(real)
    try:
        with open(real, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    if kind == "params":
        from ..tuning import PARAMS_FORMAT

        return head.lstrip().startswith(b"{") and _json_format(real) == PARAMS_FORMAT
    if kind == "plot":
        magic = _IMAGE_MAGIC.get(suffix.lower().lstrip("."), ())
        return head.lstrip().startswith(magic) if magic else False
    return head.startswith(PREDICTIONS_HEADER.encode())


def _json_format(path: Path) -> object:
    """The ``format`` field of a small JSON file, or None when it is not one."""
    import json

    try:
        if path.stat().st_size > 1 << 20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc.get("format") if isinstance(doc, dict) else None
