"""Training checkpoints: save the whole state of a fit every few epochs, and resume from it.

``MatrixFactorization.fit(ratings, checkpoint="ckpt/", checkpoint_every=5)`` (``autofact fit
DATA --checkpoint ckpt/ --checkpoint-every 5``) writes ``ckpt/checkpoint.npz`` after every 5th
epoch (a sampler's sweep), after the last one, and when Ctrl-C stops the fit (the state of the
last finished epoch). The same call again finds it and continues from the epoch after it: a fit
killed at any moment (even by SIGKILL) and resumed ends where an uninterrupted one would (the
sampler, ``als``, ``gd`` and full-batch ``adam`` and ``lbfgs`` are deterministic on a CPU: the
same factors, to rounding; the sampler draws the same numbers). A finished fit's checkpoint
gives back the finished model without training. Every solver that ``solver='auto'`` picks for
``task='rating'`` writes one, so it picks the same model with or without ``checkpoint=`` (issue
8); ``solver='gibbs'`` with a loss other than ``'squared'`` (Laplace-MH, never picked by
``'auto'``) refuses ``checkpoint=``, and so does ``task='ranking'``.

The file follows the model file's rules (:mod:`autofact.io`): one ``np.savez`` archive, written
atomically (a temporary file renamed over the old one, so a kill leaves the previous checkpoint
whole), read with ``allow_pickle=False``; nothing it names is imported or called.

==================  ================================================================================
``meta``            uint8: a UTF-8 JSON document: ``format`` (``"autofact-checkpoint"``),
                    ``format_version``, ``autofact_version``, ``epoch`` (the last finished one),
                    ``finished``, ``solver``, ``settings`` (the hyper-parameters that shape the
                    fit), ``data`` (a SHA-256 of the training and validation ratings and their
                    ids), ``history`` (``history_`` so far), ``start_value`` (the objective the
                    divergence rule measures from), ``best`` and ``best_epoch`` (early stopping);
                    for ``gibbs``, ``chain``: its numbers (``values``: ``alpha``, the running
                    sums' ``alpha_sum`` and count ``n_avg``, each sweep's ``rmse``, the ``Y``
                    draw's ``cg_iterations``, and ``rng``, the numpy generator's
                    ``bit_generator.state``), ``sweeps`` and ``burn_in`` (the chain's length,
                    which a resume must keep), ``processes``, the sweep budget's ``run``,
                    ``gain`` and ``sizes`` (each process's pairs), early stopping's ``best`` and
                    ``best_epoch``
``param.NAME``      the parameters after that epoch: ``P``, ``Q`` and, with biases, ``bu``, ``bi``;
                    for ``gibbs`` the chain's current draw (the model's factors are the running
                    means)
``optim.NAME``      the solver's state: Adam's ``adam.K.t/m/v``; L-BFGS's history (``d``,
                    ``old_dirs[]``, ``ro[]``, ... as torch.optim.LBFGS keeps it); none for gd,
                    sgd and als; for ``gibbs`` (:class:`~autofact.solvers.gibbs.ChainState`) the
                    per-user ``rows.sum`` (running sums of the users' conditional means, bias
                    last), ``rows.tau`` (noise precisions) and ``rows.implicit_mean``, the rest as
                    ``chain.NAME`` (the items' ``sum`` and ``tau``, the hyper-parameters
                    ``hyp_u.mean``/``.prec``, ``hyp_i``, ``hyp_y``, ``prior_u.sum``,
                    ``prior_i.sum``, ``Y``, ``Y.sum``), and ``budget.kept``: the sweep budget's
                    predictions of its sampled pairs after each kept sweep (pairs x sweeps),
                    with the pairs, ``budget.users`` and ``budget.items``
``generator``       uint8: the state of the generator that shuffles mini-batches
``best.NAME``       the best validation epoch's parameters (early stopping), when there is one
==================  ================================================================================

A checkpoint written for other ratings or other settings is refused with a ``ValueError`` that
names what differs (``epochs`` may grow: the fit then runs on to the new number; not a
sampler's, whose burn-in is a tenth of its sweeps). With :mod:`autofact.distributed` rank 0
writes, and every process reads the same folder to resume, so it must be one they all see (a
shared file system, or one machine). Solvers that partition the users (shared ``als`` and
``gibbs``: each process holds only its users' rows) gather those rows onto rank 0 for each write
(:func:`gather_to_main`; the budget's pairs too, in rank order), and each process takes its own
back on resume; the sampler's generator is one stream every process draws alike, so rank 0's
state is every process's. Their Ctrl-C writes nothing more (a gather is a collective, which an
interrupt may have cut): the last checkpoint written stands, or the one whose write (after its
gather) the interrupt cut.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .data import Ratings
from .sharding import ShardPlan

__all__ = ["Checkpointer", "TrainingState", "FILE_NAME", "read", "data_fingerprint"]

FORMAT_NAME = "autofact-checkpoint"
FORMAT_VERSION = 1
#: The checkpoint's file name inside the folder given as ``checkpoint=``.
FILE_NAME = "checkpoint.npz"
#: Hyper-parameters that do not shape the trajectory, left out of the settings compared on
#: resume (``epochs`` may grow: the fit then runs on).
UNCHECKED = ("epochs", "verbose", "strict", "n_threads")


@dataclass
class TrainingState:
    """Everything a fit needs to go on from the end of ``epoch``."""

    epoch: int
    finished: bool
    solver: str
    settings: dict[str, Any]
    data: str
    history: list[dict[str, Any]]
    start_value: float | None
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    generator: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    best: float | None = None
    best_epoch: int | None = None
    best_params: dict[str, np.ndarray] | None = None
    chain: dict[str, Any] | None = None

    def solver_state(self) -> dict[str, Any]:
        """The form :func:`autofact.solvers.fit_params` takes as ``resume=``."""
        return {"epoch": self.epoch,
                "optimizer": {k: torch.from_numpy(v.copy()) for k, v in self.optimizer.items()},
                "generator": torch.from_numpy(self.generator.copy()),
                "start_value": self.start_value}


def data_fingerprint(*datasets: Ratings | None) -> str:
    """A SHA-256 (hex) of the ratings, their weights, shape and ids (``None``s count too)."""
    h = hashlib.sha256()
    for r in datasets:
        if r is None:
            h.update(b"none;")
            continue
        h.update(repr(tuple(r.shape)).encode())
        for arr in (r.users, r.items, r.values, r.weights):
            if arr is None:
                h.update(b"-")
                continue
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        for ids in (r.user_ids, r.item_ids):
            h.update("\x1f".join(map(str, np.asarray(ids).tolist())).encode("utf-8", "replace"))
            h.update(b";")
    return h.hexdigest()


def _json_value(value: Any) -> Any:
    """A JSON form of a hyper-parameter: built-in values as they are, functions by their
    import path (or name), anything else by its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if module and name:
        return f"{module}:{name}"
    return repr(value)


def settings_of(params: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a resume must match, as JSON values."""
    return {k: _json_value(v) for k, v in sorted(params.items()) if k not in UNCHECKED}


def _arrays(tensors: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """Copies of tensors (or arrays) as arrays."""
    return {f"{prefix}{k}": (t.detach().cpu().numpy() if isinstance(t, torch.Tensor)
                             else np.asarray(t)).copy() for k, t in tensors.items()}


def read(path: str | os.PathLike[str]) -> TrainingState:
    """Read and check a checkpoint file (never unpickles, imports or calls anything).

    Raises ``ValueError`` naming the file when it is not an autofact checkpoint, is damaged or
    truncated, or has another format version.
    """
    name = str(path)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{name} is not an autofact checkpoint or is damaged ({type(exc).__name__}: {exc}); "
            "delete it to start over"
        ) from None
    meta_raw = raw.pop("meta", None)
    try:
        meta = json.loads(np.asarray(meta_raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is damaged: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{name} is not an autofact checkpoint (no {FORMAT_NAME!r} metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{name} is checkpoint format {meta.get('format_version')!r} (autofact "
            f"{meta.get('autofact_version', '?')}); this autofact {__version__} reads format "
            f"{FORMAT_VERSION}: resume with that version, or delete the checkpoint to start over"
        )
    try:
        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}

        params = group("param.")
        if not params or "P" not in params or "Q" not in params:
            raise ValueError("it holds no factors")
        best_params = group("best.") or None
        _check_meta(meta)  # trust: each value of the type the resume takes it as
        _check_finite(raw)  # trust: a NaN resumed to NaN factors, or a LinAlgError
        return TrainingState(
            epoch=int(meta["epoch"]), finished=bool(meta["finished"]), solver=str(meta["solver"]),
            settings=dict(meta["settings"]), data=str(meta["data"]),
            history=list(meta["history"]), start_value=meta.get("start_value"),
            params=params, optimizer=group("optim."),
            generator=np.asarray(raw.get("generator", np.zeros(0, np.uint8)), dtype=np.uint8),
            best=meta.get("best"), best_epoch=meta.get("best_epoch"), best_params=best_params,
            chain=meta.get("chain"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(name, str(exc)) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_meta(meta: dict[str, Any]) -> None:
    """Raise ``ValueError(what is wrong)`` when a metadata value is not of the type a resume
    takes it as (trust: an edited or damaged ``history`` of ``"x"`` ended in "internal error:
    AttributeError", an ``epoch`` of -3 in "sweeps must be a positive int")."""
    def bad(key: str, want: str) -> ValueError:
        return ValueError(f"its {key!r} is {meta.get(key)!r}, not {want}")

    # (a missing key is named by the KeyError of read's caller: "is damaged: 'settings'")
    if "epoch" in meta and not (_is_int(meta["epoch"]) and meta["epoch"] >= 0):
        raise bad("epoch", "a non-negative int")
    for key, kind, want in (("finished", bool, "true or false"), ("solver", str, "a string"),
                            ("settings", dict, "an object"), ("data", str, "a string"),
                            ("history", list, "a list of epochs")):
        if key in meta and not isinstance(meta[key], kind):
            raise bad(key, want)
    for j, rec in enumerate(meta.get("history") or []):
        if not isinstance(rec, dict):
            raise ValueError(f"its history's entry {j} is {rec!r}, not an object")
        if "epoch" in rec and not _is_int(rec["epoch"]):
            raise ValueError(f"its history's entry {j} has epoch {rec['epoch']!r}, not an int")
        if "time" in rec and not _is_number(rec["time"]):
            raise ValueError(f"its history's entry {j} has time {rec['time']!r}, not a number")
    for key in ("start_value", "best"):
        if meta.get(key) is not None and not _is_number(meta[key]):
            raise bad(key, "a finite number or null")
    if meta.get("best_epoch") is not None and not _is_int(meta["best_epoch"]):
        raise bad("best_epoch", "an int or null")
    if meta.get("chain") is not None and not isinstance(meta["chain"], dict):
        raise bad("chain", "an object")


def _check_finite(raw: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError(what is wrong)`` when an array of the state holds NaN or infinity
    (nothing a fit writes does: its divergence rule stops first)."""
    for key, a in raw.items():
        if key.startswith(("param.", "optim.", "best.")):
            if a.dtype.kind not in "biuf":
                raise ValueError(f"its array {key!r} has dtype {a.dtype}, not a number type")
            if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
                raise ValueError(f"its array {key!r} holds non-finite values (NaN or infinity)")


def _damaged(path: str, what: str) -> ValueError:
    """The error for a checkpoint at ``path`` that does not fit the model resumed."""
    return ValueError(f"{path} is damaged: {what}; delete it to start over")


def check_shapes(state: TrainingState, path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Check that ``state`` (read from ``path``) fits the model being resumed, whose parameters
    have ``shapes`` (the whole tables, in the solver's order): its parameters, the best epoch's,
    Adam's moments, L-BFGS's history and the shuffling generator. Raises ``ValueError`` "PATH is
    damaged: ...; delete it to start over" (trust: a ``P`` of the wrong shape ended in "internal
    error: could not broadcast ... please report it")."""
    def damaged(what: str) -> ValueError:
        return _damaged(path, what)

    for group, arrays in (("param", state.params), ("best", state.best_params)):
        if arrays is None:
            continue
        if set(arrays) != set(shapes):
            raise damaged(f"it holds the parameters {sorted(arrays)} under {group!r}, the model "
                          f"has {sorted(shapes)}")
        for k, shape in shapes.items():
            if tuple(arrays[k].shape) != tuple(shape):
                raise damaged(f"its {group}.{k} has shape {tuple(arrays[k].shape)}, the model's "
                              f"is {tuple(shape)}")
    order = list(shapes.values())
    flat = (sum(math.prod(s) for s in order),)
    for key, a in state.optimizer.items():
        parts = key.split(".")
        want: tuple[int, ...] | None = None
        if parts[0] == "adam" and len(parts) == 3:
            if not (parts[1].isdigit() and int(parts[1]) < len(order)):
                raise damaged(f"its optimizer state names a parameter {parts[1]!r} the model "
                              "does not have")
            want = () if parts[2] == "t" else tuple(order[int(parts[1])])
            if parts[2] == "t" and a.shape == () and int(a) < 0:
                raise damaged(f"its optim.{key} is {int(a)}, not a count of steps")
        elif parts[0] == "lbfgs":
            name = key[len("lbfgs."):]
            if name in ("d", "prev_flat_grad"):
                want = flat
            elif name in ("old_dirs[]", "old_stps[]"):
                want = (a.shape[0] if a.ndim else 0, *flat)
            elif name.endswith("#") or name == "H_diag":
                want = ()
        if want is not None and tuple(a.shape) != want:
            raise damaged(f"its optim.{key} has shape {tuple(a.shape)}, the model's is {want}")
    size = torch.Generator().get_state().numel()
    if state.generator.shape != (size,):
        raise damaged(f"its generator state has {state.generator.size} bytes, not {size}")


def check_chain(state: TrainingState, where: str, sweeps: int,
                shape: tuple[int, int, int, bool] | None) -> None:
    """Check that a Gibbs chain's state (read from ``where``) fits the model being resumed:
    ``sweeps`` the chain's length, ``shape`` its ``(users, items, rank, implicit)`` (``None``:
    unchecked). Trust: the chain's arrays and numbers fit this model (a NaN in a running sum gave
    NaN factors, a NaN noise precision a LinAlgError, an epoch of -3 "sweeps must be a
    positive int"); raises ``ValueError`` "PATH is damaged: ...; delete it to start over"."""
    def damaged(what: str) -> ValueError:
        return _damaged(where, what)

    if not 0 <= state.epoch <= sweeps:
        raise damaged(f"its epoch {state.epoch} is not within the chain's "
                      f"{sweeps} sweeps")
    if shape is not None:
        m, n, k, implicit = shape
        want = {"param.P": (m, k), "param.bu": (m,), "param.Q": (n, k), "param.bi": (n,),
                "optim.rows.sum": (m, k + 1), "optim.rows.tau": (m,),
                "optim.chain.sum": (n, k + 1), "optim.chain.tau": (n,),
                **{f"optim.chain.{x}": (k + 1,) for x in (
                    "prior_u.sum", "prior_i.sum", "hyp_u.mean", "hyp_u.prec", "hyp_i.mean",
                    "hyp_i.prec")}}
        if implicit:
            want.update({"optim.rows.implicit_mean": (m, k), "optim.chain.Y": (n, k),
                         "optim.chain.Y.sum": (n, k), "optim.chain.hyp_y.mean": (k,),
                         "optim.chain.hyp_y.prec": (k,)})
        held = {**{f"param.{a}": v for a, v in state.params.items()},
                **{f"optim.{a}": v for a, v in state.optimizer.items()}}
        for key, expected in want.items():
            if key not in held:
                name = key[len("param."):] if key.startswith("param.") else key
                raise damaged(f"its chain lacks {name!r}")
            if tuple(held[key].shape) != expected:
                raise damaged(f"its {key} has shape {tuple(held[key].shape)}, the model's "
                              f"is {expected}")
        for key in ("optim.rows.tau", "optim.chain.tau", "optim.chain.hyp_u.prec",
                    "optim.chain.hyp_i.prec", "optim.chain.hyp_y.prec"):
            if key in held and not bool((held[key] > 0).all()):
                raise damaged(f"its {key} holds a precision that is not positive")
        for key, size in (("optim.budget.users", m), ("optim.budget.items", n)):
            a = held.get(key)
            if a is not None and len(a) and not (a.min() >= 0 and a.max() < size):
                raise damaged(f"its {key} holds indices outside [0, {size})")
    values = (state.chain or {}).get("values")
    if not isinstance(values, dict):
        raise damaged("its chain has no 'values'")

    def count(x: Any) -> bool:
        return _is_int(x) and x >= 0

    for key, ok, what in (
        ("alpha", _is_number, "a finite number"),
        ("alpha_sum", _is_number, "a finite number"),
        ("n_avg", count, "a non-negative int"),
        ("rmse", lambda x: isinstance(x, list) and all(map(_is_number, x)),
         "a list of numbers"),
        ("cg_iterations", lambda x: isinstance(x, list) and all(map(count, x)),
         "a list of counts"),
    ):
        if not ok(values.get(key)):
            raise damaged(f"its chain's {key!r} is {values.get(key)!r}, not {what}")
    try:
        rng: Any = values.get("rng")
        np.random.default_rng(0).bit_generator.state = rng
    except (TypeError, ValueError, KeyError) as exc:
        raise damaged(f"its chain's generator state is not one ({exc})") from None


def write(path: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`autofact.io.atomic_write`)."""
    from .io import atomic_write, savez_plain

    def finite(x: float | None) -> float | None:
        return x if x is None or math.isfinite(x) else None

    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "autofact_version": __version__, "epoch": state.epoch, "finished": state.finished,
        "solver": state.solver, "settings": state.settings, "data": state.data,
        "history": state.history, "start_value": finite(state.start_value),
        "best": finite(state.best), "best_epoch": state.best_epoch,
    }
    if state.chain is not None:
        meta["chain"] = state.chain
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8),
        "generator": state.generator,
    }
    arrays.update({f"param.{k}": v for k, v in state.params.items()})
    arrays.update({f"optim.{k}": v for k, v in state.optimizer.items()})
    if state.best_params is not None:
        arrays.update({f"best.{k}": v for k, v in state.best_params.items()})
    return atomic_write(path, lambda fh: savez_plain(fh, arrays))


class Checkpointer:
    """Writes a fit's checkpoints into ``folder`` and finds the one to resume from.

    Built by :meth:`MatrixFactorization.fit` from its ``checkpoint=``/``checkpoint_every=``;
    ``plan.is_main`` decides which process writes.
    """

    def __init__(self, folder: str | os.PathLike[str], every: int, *, plan: ShardPlan,
                 solver: str, settings: dict[str, Any], data: str) -> None:
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"checkpoint must be a folder path, got {type(folder).__name__}")
        if not (isinstance(every, int | np.integer) and not isinstance(every, bool) and every >= 1):
            raise ValueError(f"checkpoint_every must be a positive int (epochs), got {every!r}")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"checkpoint={str(folder)!r} is a file; give a folder (it will hold "
                f"{FILE_NAME})"
            )
        self.path = self.folder / FILE_NAME
        self.every = int(every)
        self.plan = plan
        # rank-local ratings (issue 11): one fingerprint of every process's
        self.solver, self.settings, self.data = solver, settings, plan.digest(data)
        self.pending: TrainingState | None = None  # the last finished epoch's, if not written
        self.written = 0  # the epoch of the checkpoint on disk

    def resume(self) -> TrainingState | None:
        """The checkpoint to go on from (``None``: there is none), checked against this fit's
        data and settings; every process of the plan must find the same one."""
        state = read(self.path) if self.path.exists() else None
        if not self.plan.agree(-1 if state is None else state.epoch):
            raise ValueError(
                f"the processes found different checkpoints in {str(self.folder)!r} (rank "
                f"{self.plan.rank}: {'none' if state is None else f'epoch {state.epoch}'}); "
                "the checkpoint folder must be one every process reads (a shared file system)"
            )
        if state is None:
            return None
        if state.data != self.data:
            raise ValueError(
                f"checkpoint {str(self.path)!r} was written for other ratings (their fingerprint "
                f"differs: {state.data[:12]} there, {self.data[:12]} now); fit the same data to "
                "resume, or pass another checkpoint folder (or delete this one) to start over"
            )
        diff = [f"{k}={state.settings.get(k)!r} there, {self.settings.get(k)!r} now"
                for k in sorted(set(state.settings) | set(self.settings))
                if state.settings.get(k) != self.settings.get(k)]
        if diff or state.solver != self.solver:
            if state.solver != self.solver:
                diff.insert(0, f"solver {state.solver!r} there, {self.solver!r} now")
            raise ValueError(
                f"checkpoint {str(self.path)!r} was written with other settings ("
                + "; ".join(diff) + "); use the same settings to resume, or pass another "
                "checkpoint folder (or delete this one) to start over"
            )
        self.written = state.epoch
        return state

    def epoch_end(self, epoch: int, state: Callable[[], TrainingState], last: bool, *,
                  collective: bool = False) -> None:
        """After epoch ``epoch``: write every ``every`` epochs and after the last; otherwise
        keep the state for Ctrl-C. ``state()`` makes it, only when needed; with ``collective``
        it takes part in a collective (gathers the rows each process holds), so every process
        calls it on the same epochs: only when writing, and no state is kept for Ctrl-C."""
        if last or epoch % self.every == 0:
            # kept until written: Ctrl-C during the write writes it again (:meth:`interrupted`;
            # with ``collective`` the gather is done by then, the write is rank 0's alone)
            self.pending = state()
            self._write(self.pending)
        elif not collective:
            self.pending = state()

    def interrupted(self) -> bool:
        """Ctrl-C: write the last finished epoch's state if the file does not hold it yet;
        whether a checkpoint exists now."""
        if self.pending is not None and self.pending.epoch > self.written:
            self._write(self.pending)
        return self.written > 0

    def _write(self, state: TrainingState) -> None:
        if self.plan.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write(self.path, state)
        self.written = state.epoch
        self.pending = None


def gather_to_main(plan: ShardPlan, tables: dict[str, np.ndarray], own: np.ndarray | None,
                   n: int) -> dict[str, np.ndarray]:
    """The whole ``n``-row tables on the main process (the one that writes), from each
    process's ``tables``, its rows ``own`` (sorted indices; ``None``: every row, nothing to
    gather) in order; the other processes send theirs and get ``{}``. A collective: every
    process calls it with the same names (:meth:`ShardPlan.gather_each`: rank 0 holds one
    process's rows at a time besides the whole tables)."""
    if own is None:
        return tables
    index = _collect(plan, torch.from_numpy(np.asarray(own, dtype=np.int64)))
    out: dict[str, np.ndarray] = {}
    for name, table in tables.items():
        rows = torch.from_numpy(np.ascontiguousarray(table))
        whole = np.zeros((n, *table.shape[1:]), dtype=table.dtype) if plan.is_main else None
        for r, flat in enumerate(_collect(plan, rows, each=True)):
            if whole is not None and flat is not None:
                whole[index[r]] = flat.reshape(len(index[r]), *table.shape[1:])
        if whole is not None:
            out[name] = whole
    return out


def _collect(plan: ShardPlan, tensor: torch.Tensor, each: bool = False) -> list[Any]:
    """Every process's ``tensor`` (flattened) on the main process, in rank order (``each``: as
    an iterator that assembles one process's at a time); ``[]`` elsewhere."""
    def by_rank() -> Any:
        held: list[np.ndarray] = []
        at = 0
        for r, piece in plan.gather_each(tensor):
            while r > at:
                yield np.concatenate(held) if held else np.zeros(0, tensor.numpy().dtype)
                held, at = [], at + 1
            held.append(piece.numpy().copy())
        if plan.is_main:
            while at < plan.world_size:
                yield np.concatenate(held) if held else np.zeros(0, tensor.numpy().dtype)
                held, at = [], at + 1

    return by_rank() if each else list(by_rank())


def snapshot(epoch: int, solver_state: dict[str, Any], params: dict[str, Any],
             **fields: Any) -> TrainingState:
    """A :class:`TrainingState` holding copies of ``params`` and ``solver_state``'s tensors
    (from :func:`autofact.solvers.fit_params`'s ``state()``); ``fields`` fill the rest."""
    gen = solver_state["generator"]
    return TrainingState(
        epoch=epoch, params=_arrays(params, ""), optimizer=_arrays(solver_state["optimizer"], ""),
        generator=gen.numpy().copy(), start_value=solver_state["start_value"], **fields,
    )
