"""The model file format: one file, arrays plus JSON metadata, no pickle; atomic write,
strict read.

The file is a zip archive written by :func:`numpy.savez` holding plain arrays:

============== ============================================================================
``meta``        uint8: a UTF-8 JSON document (format name and version, the autofact version,
                the hyper-parameters, the id maps, ``global_mean``, ``fallback_mean``,
                ``rating_range``, ``history``, ``n_epochs``, ``solver``)
``user_factors`` ``m x k`` float
``item_factors`` ``n x k`` float
``user_bias``    ``m`` float
``item_bias``    ``n`` float
``seen_indptr``  ``m + 1`` int64: the training pattern (which items each user rated), CSR
``seen_indices`` int32, or uint16 (a pattern gathered after a rank-local fit, up to 65536
                items); any integer dtype is read
``implicit_factors`` ``n x k`` float, only for a model fitted with ``implicit=True``: the items'
                implicit factors ``y_j`` (the metadata's ``implicit_factors`` says whether it is
                there)
============== ============================================================================

The loss and the regularization are stored by name (``'huber'`` with its ``delta``, ``'l2'``
with the ``beta`` hyper-parameter) or as a ``'module:function'`` path, never as code; a lambda
or closure cannot be saved. Writing is atomic (a temporary file in the same folder, flushed,
fsynced, then renamed over the target), so a failed save leaves any earlier file untouched.
:func:`read` opens with ``allow_pickle=False`` and checks every array's dtype, shape and values
and the ids before anything is built from them; it never imports or calls what a file names
(:func:`autofact.load` builds the model, and asks for a user's function when one is needed).
This module works from the model's public attributes and :class:`~autofact.index.ModelIndex`.

>>> model.save("model.npz")
>>> same = autofact.load("model.npz")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .data import py_scalar

__all__ = ["save", "read", "atomic_write", "SavedModel", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "autofact.MatrixFactorization"
FORMAT_VERSION = 1

_ARRAYS = (
    "meta", "user_factors", "item_factors", "user_bias", "item_bias", "seen_indptr",
    "seen_indices",
)
_OPTIONAL_ARRAYS = ("implicit_factors",)
_ID_DTYPE_KINDS = "iubfUO"


# ------------------------------------------------------------------------------------ save
def save(model: Any, path: str | os.PathLike[str], *,
         seen: tuple[np.ndarray, Iterable[np.ndarray]] | None = None) -> Path:
    """Write a fitted ``model`` to ``path`` (one file; the name is used as given).

    A symbolic link is written through: the link stays, the file it points to gets the model.
    Raises ``ValueError`` for a loss or regularization that cannot be re-imported, for ids
    that JSON cannot hold and for a model that holds only some users' seen items (fitted on
    rank-local ratings: save it with :func:`autofact.distributed.save`); ``RuntimeError`` when
    the model is not fitted.

    ``seen``: the training pattern to write instead of the model's own, as ``(indptr,
    chunks)``: the CSR row pointer (``n_users + 1``, the index's counts) and an iterable of the
    column indices in order, a chunk at a time, all of one dtype (uint16 or int32), written as
    they come (:func:`autofact.distributed.save`: no process holds all of them, issue 11).
    """
    real, meta = _prepare(model, path)
    if seen is None:
        model.index_.require_seen(action="save the model with model.save")
        indptr, indices = model.index_.seen_arrays()  # no scipy needed (issue 10)
    else:
        indptr = np.asarray(seen[0], dtype=np.int64)
        if not (indptr.shape == (model.index_.n_users + 1,)
                and np.array_equal(np.diff(indptr), model.index_.user_counts)):
            raise ValueError("seen's indptr must give the model's ratings per user")
        indices = np.empty(0, dtype=np.int32)  # (written from seen's chunks)
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8),
        "user_factors": np.ascontiguousarray(model.user_factors_),
        "item_factors": np.ascontiguousarray(model.item_factors_),
        "user_bias": np.ascontiguousarray(model.user_bias_),
        "item_bias": np.ascontiguousarray(model.item_bias_),
        "seen_indptr": np.asarray(indptr, dtype=np.int64),
        # issue 11, item 3: a compact (uint16) pattern is written as it is, without a copy
        "seen_indices": indices if indices.dtype in (np.uint16, np.int32)
        else np.asarray(indices, dtype=np.int32),
    }
    implicit = getattr(model, "implicit_factors_", None)
    if implicit is not None:
        arrays["implicit_factors"] = np.ascontiguousarray(implicit)
    streamed = None if seen is None else ("seen_indices", int(indptr[-1]), seen[1])
    _atomic_savez(real, arrays, streamed)
    return Path(path)


def check_savable(model: Any, path: str | os.PathLike[str]) -> None:
    """Raise what :func:`save` would raise before writing anything (not fitted, a folder, a
    missing folder, non-finite factors, settings JSON cannot hold), without writing."""
    _prepare(model, path)


def _prepare(model: Any, path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """:func:`save`'s checks; returns the real path to write and the metadata."""
    _check_fitted(model)
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name such as model.npz")
    real = Path(os.path.realpath(target))  # issue 8: replace the link's target, not the link
    if not real.parent.is_dir():
        folder = target.parent if real.name == target.name else real.parent
        raise ValueError(
            f"cannot save to {str(path)!r}: folder {str(folder)!r} does not exist; "
            "create it first"
        )
    meta = _metadata(model)
    _check_finite_to_save(model, meta)
    return real, meta


def _check_finite_to_save(model: Any, meta: dict[str, Any]) -> None:
    """Trust: a model whose factors, biases or means are not finite is refused before anything
    is written (:func:`read` refuses such a file: save wrote files that could not be loaded)."""
    for name in ("user_factors", "item_factors", "user_bias", "item_bias", "implicit_factors"):
        arr = getattr(model, name + "_", None)
        if arr is None:
            continue
        arr = np.asarray(arr)
        where = first_non_finite(arr)
        if where is not None:
            raise ValueError(
                f"cannot save: {name}_ holds non-finite values (first {float(arr[where])!r} at "
                f"index {where}): the fit diverged; refit (a smaller learning rate, more "
                "regularization or solver='als') before saving"
            )
    for key in ("global_mean", "fallback_mean"):
        value = meta.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"cannot save: the model's {key} is {value!r}: the fit diverged; refit before "
                "saving"
            )


def first_non_finite(arr: np.ndarray) -> tuple[int, ...] | None:
    """The index of ``arr``'s first value that is not finite, or ``None`` (a float array checked
    a slice at a time: no mask of the whole array, issue 11, item 3; other kinds: ``None``)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc":
        return None
    flat = arr.reshape(-1)
    step = _WRITE_PIECE
    for s in range(0, flat.size, step):
        bad = np.flatnonzero(~np.isfinite(flat[s : s + step]))
        if len(bad):
            return tuple(int(x) for x in np.unravel_index(s + int(bad[0]), arr.shape))
    return None


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a file :func:`save` wrote: a zip archive holding ``meta.npy``
    (only the zip's directory is read; nothing is loaded). The CLI replaces only such files."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "meta.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


# Temporary files are named ``.NAME.PID.XXXXXXXX.tmp`` beside the target: a save killed
# before its rename (kill -9, power loss) leaves one, which the next save to NAME removes once
# the process PID is gone (issue 8). The PID keeps a save running in parallel safe.
_TMP_RANDOM = "[a-z0-9_]{8}"


def _atomic_savez(target: Path, arrays: dict[str, np.ndarray],
                  streamed: tuple[str, int, Iterable[np.ndarray]] | None = None) -> None:
    """Write ``arrays`` (and ``streamed``: :func:`savez_plain`) to a temporary file in
    ``target``'s folder, flush, fsync, then rename it over ``target`` (which must not be a
    symbolic link: resolve it first)."""
    atomic_write(target, lambda fh: savez_plain(fh, arrays, streamed))


#: Bytes handed to the archive at a time (a view, never a copy: numpy's own writer copies 16 MiB
#: pieces into bytes objects when the file is a zip member; issue 11, item 3: rank 0's save).
_WRITE_PIECE = 1 << 20


def savez_plain(fh: BinaryIO, arrays: dict[str, np.ndarray],
                streamed: tuple[str, int, Iterable[np.ndarray]] | None = None) -> None:
    """What ``np.savez(fh, **arrays)`` writes (uncompressed ``NAME.npy`` members, which
    ``np.load`` reads as usual), for arrays that need no pickle: an object array (which
    ``np.savez`` would pickle) is refused first. Each array's bytes go to the archive as views,
    1 MiB at a time, with no copy of a C-ordered array.

    ``streamed``: ``(name, length, chunks)``, one more 1-D array (in place of ``arrays[name]``)
    written a chunk at a time as ``chunks`` yields them, all of the first one's integer dtype."""
    for name, a in arrays.items():
        if np.asarray(a).dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects ({np.asarray(a).dtype}); "
                            "only numeric arrays are saved (no pickle)")
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        if streamed is not None:  # first: its source may be waiting on it (distributed.save)
            _write_streamed(zf, *streamed)
        for key, a in arrays.items():
            if streamed is None or key != streamed[0]:
                arr = np.asarray(a)
                if not arr.flags.c_contiguous:  # (ascontiguousarray would make 0-d 1-d)
                    arr = arr.copy(order="C")
                with zf.open(key + ".npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array_header_1_0(
                        out, np.lib.format.header_data_from_array_1_0(arr))
                    _write_bytes(out, arr)


def _write_streamed(zf: zipfile.ZipFile, name: str, length: int,
                    chunks: Iterable[np.ndarray]) -> None:
    """:func:`savez_plain`'s streamed member ``NAME.npy``: 1-D, ``length`` values, the first
    chunk's integer dtype."""
    written, dtype = 0, None
    with zf.open(name + ".npy", "w", force_zip64=True) as out:
        for chunk in chunks:
            if dtype is None:
                dtype = chunk.dtype
                np.lib.format.write_array_header_1_0(
                    out, {"descr": np.lib.format.dtype_to_descr(dtype),
                          "fortran_order": False, "shape": (length,)})
            if chunk.dtype != dtype or chunk.ndim != 1 or dtype.kind not in "iu":
                raise TypeError(f"{name}: a chunk of {chunk.dtype} with shape {chunk.shape}; "
                                f"expected 1-D integers of one dtype ({dtype})")
            written += len(chunk)
            _write_bytes(out, np.ascontiguousarray(chunk))
        if dtype is None:
            empty = np.empty(0, dtype=np.int32)
            np.lib.format.write_array_header_1_0(
                out, np.lib.format.header_data_from_array_1_0(empty))
    if written != length:
        raise ValueError(f"{name}: the chunks held {written} values, expected {length}")


def _write_bytes(out: Any, arr: np.ndarray) -> None:
    """A C-contiguous array's bytes to ``out``, :data:`_WRITE_PIECE` at a time, as views."""
    flat = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
    for s in range(0, len(flat), _WRITE_PIECE):
        out.write(flat[s : s + _WRITE_PIECE])


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, flush, fsync, then rename it over
    ``path``: readers see the old file or the new one, never half of one. A symbolic link is
    written through (the link stays); leftovers of interrupted writes to the same name are
    removed; the file gets the usual mode (0666 minus the umask). Returns the path written."""
    target = Path(os.path.realpath(path))
    _remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            with contextlib.suppress(AttributeError, OSError):  # mkstemp creates it 0600
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # make the rename itself durable (POSIX); not possible on every platform
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def _remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary files of earlier saves to ``target`` whose process has ended."""
    import re

    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.{_TMP_RANDOM}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or _process_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(target.parent / name)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (threads may be
    creating files meanwhile); else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_fitted(model: Any) -> None:
    if getattr(model, "index_", None) is None or not hasattr(model, "user_factors_"):
        raise RuntimeError(f"this {type(model).__name__} is not fitted yet; call fit(ratings) "
                           "first")


def _metadata(model: Any) -> dict[str, Any]:
    from . import __version__
    from ._imports import NotLoaded, object_path
    from .losses import link_label, loss_spec

    params = dict(model.get_params())
    loss = params.pop("loss")
    spec = loss_spec(loss)
    if spec is None:
        raise ValueError(
            f"cannot save a model whose loss is {_describe(loss)}: a lambda or closure cannot be "
            "re-imported when the model is loaded; define the loss as a function at module level "
            "(def my_loss(pred, target): ...) in an importable module and pass it, or its "
            "'module:function' path, as loss="
        )
    if "path" in spec:  # the inverse link the model predicts with, by name
        link = link_label(model.index_.inverse_link)
        spec.pop("link", None)
        if link != "identity":
            spec["link"] = link
    reg = params.pop("regularization")
    if reg is None or isinstance(reg, str):
        reg_spec: Any = reg
    elif isinstance(reg, NotLoaded):
        reg_spec = reg.path
    else:
        reg_spec = object_path(reg)
        if reg_spec is None:
            raise ValueError(
                f"cannot save a model whose regularization is {_describe(reg)}: a lambda or "
                "closure cannot be re-imported when the model is loaded; define it as a function "
                "at module level in an importable module, or use a built-in name ('l2', 'l1', "
                "'none') with beta="
            )
    if "dtype" in params:  # torch / numpy dtypes that fit accepts, saved by name
        from .objective import resolve_dtype

        params["dtype"] = str(resolve_dtype(params["dtype"])).replace("torch.", "")
    if "device" in params and not isinstance(params["device"], str):
        params["device"] = str(params["device"])
    for name, value in params.items():
        params[name] = _json_scalar(value, f"hyper-parameter {name}")
    index = model.index_
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "autofact_version": __version__,
        "params": params,
        "loss": spec,
        "regularization": reg_spec,
        "user_ids": _ids_to_json(index.user_ids, "user"),
        "item_ids": _ids_to_json(index.item_ids, "item"),
        "user_ids_dtype": np.asarray(index.user_ids).dtype.str,
        "item_ids_dtype": np.asarray(index.item_ids).dtype.str,
        "global_mean": float(model.global_mean_),
        "fallback_mean": float(index.fallback),
        "rating_range": [float(x) for x in index.rating_range],
        "history": [
            {k: _json_scalar(v, "history") for k, v in rec.items()}
            for rec in getattr(model, "history_", [])
        ],
        "n_epochs": _json_scalar(getattr(model, "n_epochs_", None), "n_epochs_"),
        "solver": getattr(model, "solver_", None),
        "implicit_factors": getattr(model, "implicit_factors_", None) is not None,
    }


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def _json_scalar(value: Any, what: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise ValueError(
        f"cannot save {what}={value!r} (a {type(value).__name__}): only None, bool, int, float "
        "and str values can be stored; set it to one of those before saving"
    )


def _ids_to_json(ids: Any, what: str) -> list[Any]:
    arr = np.asarray(ids)
    if arr.dtype.kind not in _ID_DTYPE_KINDS:
        raise ValueError(
            f"cannot save {what} ids of dtype {arr.dtype}: ids must be ints, floats or strings"
        )
    out = arr.tolist()
    if arr.dtype.kind != "O":  # numbers and str: tolist() gave Python ints, floats, bools, strs
        return out
    for k, v in enumerate(out):
        if not isinstance(v, bool | int | float | str):
            try:
                out[k] = _json_scalar(v, f"{what} id")
            except ValueError:
                raise ValueError(
                    f"cannot save {what} id {v!r} (a {type(v).__name__}) at index {k}: ids must "
                    "be ints, floats or strings; map them to strings before fitting"
                ) from None
    return out


# ------------------------------------------------------------------------------------ load
class SavedModel:
    """The checked contents of a model file: what :func:`read` returns.

    ``meta`` is the JSON metadata (hyper-parameters under ``'params'``, the loss's and
    regularization's names under ``'loss'`` and ``'regularization'``, ``global_mean``,
    ``fallback_mean``, ``rating_range``, ``history``, ``n_epochs``, ``solver``); ``user_ids`` and
    ``item_ids`` the id maps; ``arrays`` the factors and biases (``user_factors``,
    ``item_factors``, ``user_bias``, ``item_bias``, and ``implicit_factors`` when the model has
    them); ``seen`` the training pattern (boolean CSR).
    Nothing in it has been imported or called.
    """

    def __init__(self, name: str, meta: dict[str, Any], user_ids: np.ndarray,
                 item_ids: np.ndarray, arrays: dict[str, np.ndarray], seen: Any) -> None:
        self.name = name
        self.meta = meta
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.arrays = arrays
        self.seen = seen

    def __repr__(self) -> str:
        return (f"<SavedModel {self.name!r} ({len(self.user_ids)} users x "
                f"{len(self.item_ids)} items, rank {self.arrays['user_factors'].shape[1]})>")


def read(path: str | os.PathLike[str]) -> SavedModel:
    """Read and check a file written by :func:`save` (never unpickles, imports or calls anything).

    Raises ``ValueError`` naming the file when it does not exist, is not an autofact model, is
    truncated, is a pickle, has another format version, has missing or inconsistent arrays,
    non-finite factors, biases or means, or duplicate ids. Build the model with
    :func:`autofact.load`.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise ValueError(f"model file {name!r} does not exist")
    if p.is_dir():
        raise ValueError(f"model path {name!r} is a directory; give the model file itself")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if _looks_like_pickle(head):
        raise ValueError(
            f"{name} is a Python pickle; autofact refuses to load pickles because they can run "
            "arbitrary code (nothing in it was executed); save the model with model.save(path) "
            "and load that file"
        )
    if not head.startswith(b"PK"):
        raise ValueError(
            f"{name} is not an autofact model (not a zip archive written by model.save) or is "
            "truncated"
        )
    try:
        # our own handle: np.load leaks the one it opens when the zip turns out to be bad
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            members = set(npz.files)
            raw = {a: npz[a] for a in _ARRAYS + _OPTIONAL_ARRAYS if a in members}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(
            f"{name} is not an autofact model or is truncated ({type(exc).__name__}: {exc})"
        ) from None
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(
                f"{name} holds pickled (object) arrays; autofact refuses to load pickles because "
                "they can run arbitrary code (nothing in it was executed)"
            ) from None
        raise ValueError(f"{name} is not an autofact model or is truncated ({exc})") from None
    if any(m.endswith(".pkl") for m in members):
        raise ValueError(
            f"{name} holds pickled data (a torch.save or pickle archive); autofact refuses to "
            "load pickles because they can run arbitrary code (nothing in it was executed); save "
            "the model with model.save(path) and load that file"
        )
    if "meta" not in raw:
        raise ValueError(
            f"{name} is not an autofact model: it has no 'meta' array (it holds "
            f"{sorted(members)!r})"
        )
    meta = _read_meta(raw.pop("meta"), name)
    missing = [a for a in _ARRAYS if a != "meta" and a not in raw]
    if missing:
        raise ValueError(f"{name} is damaged or not an autofact model: missing array(s) {missing!r}")
    return _check(meta, raw, name)


def _looks_like_pickle(head: bytes) -> bool:
    # protocol 2+ (the default since Python 3.0, and torch.save's) starts with PROTO (0x80) and
    # the protocol number
    # (older protocols are refused too, as "not an autofact model": nothing is ever unpickled)
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _read_meta(raw: np.ndarray, name: str) -> dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(
            f"{name} is not an autofact model: 'meta' must be a 1-D uint8 array, got "
            f"{raw.dtype} with shape {raw.shape}"
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name} is damaged: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{name} is not an autofact model: format is {got!r}, expected {FORMAT_NAME!r}"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        from . import __version__

        raise ValueError(
            f"{name} has model format version {version!r} (written by autofact "
            f"{meta.get('autofact_version', '?')}), but autofact {__version__} reads format "
            f"version {FORMAT_VERSION}; load it with the autofact version that wrote it, or "
            "refit and save with this one"
        )
    for key in ("params", "loss", "user_ids", "item_ids", "global_mean", "rating_range"):
        if key not in meta:
            raise ValueError(f"{name} is damaged: its metadata lacks {key!r}")
    if not isinstance(meta["params"], dict):
        raise ValueError(f"{name} is damaged: its hyper-parameters are not a JSON object")
    _check_spec(meta["loss"], meta.get("regularization"), name)
    for key in ("global_mean", "fallback_mean"):
        value = meta.get(key, 0.0)
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value)):
            raise ValueError(
                f"{name} is damaged: its metadata {key!r} is {value!r}, expected a finite number"
            )
    rr = meta["rating_range"]
    if not (isinstance(rr, list) and len(rr) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in rr) and rr[0] <= rr[1]):
        raise ValueError(
            f"{name} is damaged: its metadata 'rating_range' is {rr!r}, expected [min, max] of "
            "finite numbers"
        )
    return meta


def _check_spec(loss: Any, reg: Any, name: str) -> None:
    """The loss and regularization names must be built-in names or well-formed paths (which are
    kept as text: nothing a file names is imported)."""
    from ._imports import is_path
    from .losses import LOSSES, loss_from_spec
    from .regularizers import REGULARIZERS

    if not isinstance(loss, dict):
        raise ValueError(f"{name} is damaged: loss specification {loss!r} is not a dict")
    if "path" in loss:
        if not is_path(loss["path"]):
            raise ValueError(
                f"{name} is damaged: loss path {loss['path']!r} is not of the form "
                "'module:function'"
            )
        if loss.get("link", "identity") not in ("identity", "log", "logit", "custom"):
            raise ValueError(f"{name} is damaged: loss link {loss.get('link')!r} is not known")
    else:
        try:
            loss_from_spec(loss)
        except ValueError:
            raise ValueError(
                f"{name} names loss {loss!r}, which is not one of the built-in losses "
                f"{sorted(LOSSES)} nor a 'module:function' path"
            ) from None
    if not (reg is None or reg in REGULARIZERS or is_path(reg)):
        raise ValueError(
            f"{name} names regularization {reg!r}, which is not one of the built-ins "
            f"{sorted(REGULARIZERS)} nor a 'module:function' path"
        )


def _ids_from_json(ids: Any, dtype: Any, what: str, name: str) -> np.ndarray:
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{name} is damaged: {what} ids must be a non-empty list")
    try:
        dt = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in _ID_DTYPE_KINDS:
        raise ValueError(f"{name} is damaged: {what} ids dtype {dtype!r} is not supported")
    if dt.kind == "U":
        # issue 8: the width is the file's word; an edited '<U40000000' made numpy allocate
        # 4e7 characters an id (or fail as "out of memory"): never more than the longest id
        longest = max(1, max(len(v) if isinstance(v, str) else len(str(v)) for v in ids))
        if dt.itemsize > 4 * longest:
            dt = np.dtype(f"U{longest}")
    if dt.kind == "O":
        arr = np.empty(len(ids), dtype=object)
        arr[:] = ids
    else:
        try:
            arr = np.asarray(ids, dtype=dt)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"{name} is damaged: its {what} ids do not fit their dtype {dtype!r}"
            ) from None
    import pandas as pd

    dup = pd.Index(arr).duplicated()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"{name} is damaged: {what} id {py_scalar(arr[k])!r} appears more than once in its {what} ids "
            f"(at positions {int(np.flatnonzero(pd.Index(arr) == arr[k])[0])} and {k})"
        )
    return arr


def _expect(arr: np.ndarray, array: str, shape: tuple[int, ...], kinds: str, name: str) -> None:
    if arr.dtype.kind not in kinds:
        raise ValueError(
            f"{name} is damaged: array {array!r} has dtype {arr.dtype}, expected "
            f"{'a float' if kinds == 'f' else 'an integer'} dtype"
        )
    if arr.shape != shape:
        raise ValueError(
            f"{name} is damaged: array {array!r} has shape {arr.shape}, expected {shape} "
            "from the model's id maps and rank"
        )
    if kinds == "f" and not np.isfinite(arr).all():
        where = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} is damaged: array {array!r} holds non-finite values (first "
            f"{float(arr[tuple(where)])!r} at index {tuple(int(x) for x in where)}); refit the model "
            "or restore the file"
        )


def _check(meta: dict[str, Any], arrays: dict[str, np.ndarray], name: str) -> SavedModel:
    import scipy.sparse as sp

    user_ids = _ids_from_json(meta["user_ids"], meta.get("user_ids_dtype"), "user", name)
    item_ids = _ids_from_json(meta["item_ids"], meta.get("item_ids_dtype"), "item", name)
    m, n = len(user_ids), len(item_ids)
    P, Q = arrays["user_factors"], arrays["item_factors"]
    k = P.shape[1] if P.ndim == 2 else -1
    _expect(P, "user_factors", (m, k), "f", name)
    _expect(Q, "item_factors", (n, k), "f", name)
    _expect(arrays["user_bias"], "user_bias", (m,), "f", name)
    _expect(arrays["item_bias"], "item_bias", (n,), "f", name)
    indptr, indices = arrays["seen_indptr"], arrays["seen_indices"]
    _expect(indptr, "seen_indptr", (m + 1,), "iu", name)
    _expect(indices, "seen_indices", (int(indptr[-1]) if len(indptr) else 0,), "iu", name)
    if (
        indptr[0] != 0
        or (np.diff(indptr) < 0).any()
        or (len(indices) and (indices.min() < 0 or indices.max() >= n))
    ):
        raise ValueError(f"{name} is damaged: the seen-items pattern is not a valid CSR")
    from .solvers import RANK_DEFAULTS

    rank = meta["params"].get("rank")
    task = meta["params"].get("task", "rating")
    if not (isinstance(task, str) and task in RANK_DEFAULTS):
        raise ValueError(
            f"{name} is damaged: its hyper-parameter 'task' is {task!r}, expected one of "
            f"{', '.join(map(repr, RANK_DEFAULTS))}; restore the file or refit"
        )
    if rank == "auto":  # the task's own number of factors (issue 12)
        rank = RANK_DEFAULTS[task]
        # trust: an edited task read as "rank is 'auto' but the factors have 10 columns"
        if rank != k:
            raise ValueError(
                f"{name} is damaged: its hyper-parameter 'task' is {task!r}, whose rank 'auto' "
                f"means {rank} factors, but the factors have {k} columns (was 'task' edited?); "
                "restore the file or refit"
            )
    if rank != k:
        raise ValueError(
            f"{name} is damaged: rank is {meta['params'].get('rank')!r} but the factors have "
            f"{k} columns"
        )
    seen = sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(m, n))
    factors = {a: arrays[a] for a in ("user_factors", "item_factors", "user_bias", "item_bias")}
    has_y = bool(meta.get("implicit_factors", False))
    if has_y != ("implicit_factors" in arrays):
        raise ValueError(
            f"{name} is damaged: its metadata says implicit_factors is "
            f"{'present' if has_y else 'absent'}, but the array is "
            f"{'missing' if has_y else 'there'}"
        )
    if has_y:
        _expect(arrays["implicit_factors"], "implicit_factors", (n, k), "f", name)
        factors["implicit_factors"] = arrays["implicit_factors"]
    return SavedModel(name, meta, user_ids, item_ids, factors, seen)
