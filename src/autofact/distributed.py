"""Training across processes and machines with ``torch.distributed`` (launched by ``torchrun``).

Data parallel over ratings: each process holds its own share of the ratings and a full copy of
the factors. Each full-batch step sums the objective and its gradient over the processes (one
all-reduce), so every process takes the same step and the result is the single-process fit's,
up to the order of floating-point sums::

    # train.py -- torchrun --nproc-per-node 4 train.py   (add --nnodes/--rdzv-endpoint for
    # several machines; gloo on CPUs, nccl on GPUs)
    import autofact
    from autofact import distributed

    distributed.init()
    ratings = distributed.read_local("ratings/")      # this process's part files only
    model = autofact.MatrixFactorization(solver="adam", epochs=100, seed=0)
    distributed.fit(model, ratings, local=True)
    distributed.save(model, "model.npz")              # on every process: rank 0 writes
    distributed.shutdown()

**Rank-local data** (issue 11). :func:`read_local` reads only this process's share: from a
folder of part files, the parts assigned to its rank (:func:`assign_parts`: by size, so equal
parts go round robin, part ``k`` to rank ``k mod world_size``); from one file (or with
``split="users"``), the ratings of the users whose id hashes to its rank (:func:`user_owner`),
so every rating of a user lands on one process. The id maps are then agreed by exchanging the
distinct ids (never the ratings): every process ends with the same user and item maps, the
sorted union, which is what ``autofact.read`` of the whole data gives. ``fit(..., local=True)``
keeps what each process was given; the ratings per user and item and their range are summed
over the processes. Each process's model knows its own users' seen items (the items left out
of their recommendations): :func:`save`, on every process, writes one file with every user's,
rank 0 taking them a range of users at a time, so no process holds all of them (``fit(...,
gather_seen=True)`` gathers them all onto rank 0 instead: 2 bytes a rating of all the ratings;
``gather_seen=<user ids>``: those users', e.g. a test set's, for top-k metrics on rank 0).
Alternatively every process reads all the ratings (``autofact.read``) and ``fit``
keeps about ``1/world_size`` of them, cut at user boundaries (:func:`~autofact.sharding.user_cuts`:
every rating of a user on one process).

Every solver runs shared: ``gd``, ``adam`` and ``lbfgs`` full batch (every process holds every
row), mini-batch ``sgd`` and ``adam`` (users partitioned as for ``als``: each process's batches are
its users' ratings, its users' rows move on its batch alone, the items' rows by the gradient summed
over the processes each step, :mod:`autofact.solvers.first_order`), and ``als`` and ``gibbs``
(issue 11); ``solver='auto'`` picks what one process would (the
sampler for the default model: :func:`autofact.solvers.gibbs.gibbs_mf`, sharded by user as
``als`` is). ``als`` partitions the users instead of copying them: every rating of
a user must be on one process (``local=False`` cuts the ratings at user boundaries;
:func:`read_local` with ``split="users"``), each process solves its own users and never sends
them while training, the items' normal equations are summed over the processes, and the user
rows are gathered onto every process once, after the fit (:mod:`autofact.solvers.als`). The mean
rating and the initial factors are global too (summed and broadcast), and the regularizer is
added once. How the sums are taken and which ratings each process holds is a
:class:`~autofact.sharding.TorchShardPlan`, passed to ``model.fit(..., plan=)``. ``autofact fit``
does all this itself when started by torchrun (each process reads its share of DATA with
:func:`read_local`, by user; the solver defaults to ``auto`` as in one process, with
``--checkpoint`` too).
Communication and memory per epoch, and what 1B ratings need: ``docs/scaling.md``.

**Faults.** Every collective waits at most ``timeout`` (:func:`init`, default
:data:`DEFAULT_TIMEOUT` seconds; ``autofact fit --timeout``). A peer that is killed, frozen
(``kill -STOP``) or cut off makes the others raise :class:`~autofact.sharding.PeerLostError`
("rank N stopped responding ...") within that time; ``autofact fit`` then exits with status 1.
A checkpoint (``fit(..., checkpoint=DIR)``) is written atomically by rank 0, so the last one
stays intact: run the same command again to resume (with rank-local data: the same processes
and parts, since the data fingerprint is taken over each one's share; the sampler: the same
number of processes). Shared ``als`` and ``gibbs`` gather every process's users' rows onto rank
0 for each write (``m (k+1)`` values, and the chain's running sums), and each process takes its
own back on resume; Ctrl-C there leaves the last checkpoint written (a gather cannot be
trusted after an interrupt), where the full-copy solvers write the last finished epoch first.
An error one process meets while reading its share stops every process with a ``ValueError``
naming it.
"""

from __future__ import annotations

import datetime
import errno
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from ._memory import release_freed_memory
from .data import Ratings, as_ratings
from .index import pattern_dtype
from .sharding import PeerLostError, ShardPlan, TorchShardPlan

if TYPE_CHECKING:
    from .model import MatrixFactorization

__all__ = ["init", "fit", "save", "read_local", "assign_parts", "user_owner", "is_main_process",
           "shutdown", "DEFAULT_TIMEOUT"]

#: What ``fit`` runs shared: the full-batch gradient solvers, ``als`` and ``gibbs`` (users
#: partitioned), and ``auto`` (what one process would pick).
SOLVERS = ("auto", "als", "gibbs", "gd", "adam", "lbfgs", "sgd")
#: Seconds a collective waits for the other processes before the fit gives up on them.
DEFAULT_TIMEOUT = 300.0
#: Seconds of the timeout kept back to find out which rank stopped answering.
_DIAGNOSIS = 3.0
#: Keys rank 0 places at a time when it gathers the training pattern (bounds its temporaries:
#: ~50 bytes a key, so ~3 MiB; issue 11: 1 << 20 keys took ~50 MiB beside the pattern, 1 << 18
#: ~13 MiB, over a 4-process share's bound at 25M ratings).
_GATHER_STEP = 1 << 16
#: Ratings in a range of users whose seen items rank 0 assembles at a time when it saves a model
#: fitted on rank-local ratings (:func:`save`): 2 MiB of uint16 (issue 11, item 3).
_SAVE_STEP = 1 << 20
#: Codes rewritten at a time when the id maps are agreed (bounds the temporaries).
_REMAP_STEP = 1 << 20


def init(backend: str | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (its environment variables); returns
    ``(rank, world_size)``. ``backend`` defaults to ``'nccl'`` when CUDA is available, else
    ``'gloo'``; on CUDA each process takes the GPU numbered by its ``LOCAL_RANK``.
    ``timeout``: seconds a collective (a sum, a broadcast) waits for a peer before the fit
    fails naming it (default :data:`DEFAULT_TIMEOUT`). Calling it again is harmless."""
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    seconds = DEFAULT_TIMEOUT if timeout is None else timeout
    if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                   if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"autofact.distributed.init() needs the environment torchrun sets up "
                f"(missing: {', '.join(missing)}); start the script with "
                "'torchrun --nproc-per-node N script.py'"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # the collectives' own limit, less the few seconds the survivors take to find out which
        # rank is gone (sharding.TorchShardPlan), so that they give up within `timeout`
        wait = max(seconds - _DIAGNOSIS, seconds / 2)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=wait))
        except (RuntimeError, ConnectionError) as exc:  # a peer that never came, or went
            detail = " ".join(str(exc).split())[:300]
            raise PeerLostError(
                f"the {os.environ['WORLD_SIZE']} processes did not all join at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {wait:g} s "
                f"(rank {os.environ['RANK']} gave up: {type(exc).__name__}: {detail}); start "
                "every process, or raise the timeout"
            ) from exc
    return dist.get_rank(), dist.get_world_size()


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group (each process, when it is done with collective work). Exiting
    without it can abort a gloo process ("terminate called without an active exception").

    ``wait=True`` first waits at a barrier until every process is here, so none tears the group
    down while another still talks to it (that too can abort a gloo process); a barrier that
    fails (a peer gone: it ends within the group's timeout) is ignored. After a failure, pass
    ``wait=False`` to leave at once."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            try:
                dist.barrier()
            except Exception:  # a peer is gone: leave anyway, the error was or will be reported
                pass
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, or when no process group is running."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def fit(model: MatrixFactorization, ratings: Any, validation: Any = None,
        group: Any = None, *, local: bool = False, gather_seen: bool | Sequence[Any] = False,
        **fit_kwargs: Any) -> MatrixFactorization:
    """``model.fit(ratings, validation=validation, plan=TorchShardPlan(group, local=local),
    **fit_kwargs)``: the work shared by the processes of ``group`` (default: all of them).

    ``local=False``: every process passes the same ratings (``autofact.read``) and keeps about
    ``1/world_size`` of them, cut at user boundaries (:func:`~autofact.sharding.user_cuts`).
    ``local=True``: each passes its own, from :func:`read_local` (the same id maps everywhere),
    and keeps them all; ``validation`` is then
    the same on every process (``validation_fraction`` is refused: each process would hold out
    another share). Every process ends with the same factors.

    ``gather_seen`` (``local=True`` only) says which users' seen items rank 0's model gets from
    the other processes after the fit (recommendations leave a user's rated items out, so a
    model can recommend only for users whose seen items it holds). ``False`` (the default):
    none; every process's model holds its own users' seen items only, which is its share of the
    memory (issue 11, item 3), and :func:`save` (called on every process) writes a file with
    every user's, a range of users at a time. A sequence of user ids (e.g. a test set's users,
    to evaluate top-k metrics on rank 0): those users' too. ``True``: every user's, 2 bytes a
    rating of *all* the ratings on rank 0 up to 65,536 items, else 4 (~48 MiB at 25M ratings
    and 59,047 items: more than a 4-process share's bound allows). A model missing a user's
    seen items refuses to recommend for that user, and ``model.save`` refuses it (use
    :func:`save`): it never answers as if that user's rated items were unrated.
    ``fit_kwargs``: ``checkpoint=`` and ``checkpoint_every=`` (rank 0 writes; the folder must be
    one every process can read, to resume)."""
    if model.solver not in SOLVERS:
        raise ValueError(
            f"distributed training runs these solvers: set solver to one of "
            f"{SOLVERS}, got solver={model.solver!r}"
        )
    if local and model.validation_fraction is not None:
        raise ValueError(
            f"validation_fraction={model.validation_fraction!r} would hold out another share on "
            "each process of rank-local ratings (local=True); set validation_fraction=None and "
            "pass validation= (the same ratings on every process)"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "no torch.distributed process group: call autofact.distributed.init() first, in a "
            "script started by torchrun"
        )
    train = as_ratings(ratings, "ratings")
    if local:
        plan = TorchShardPlan(group, local=True)
        if not (plan.agree(train.shape[0]) and plan.agree(train.shape[1])):
            raise ValueError(
                f"the processes' ratings have different id maps (rank {plan.rank}: "
                f"{train.shape[0]} users x {train.shape[1]} items); read them with "
                "autofact.distributed.read_local, which agrees on the id maps"
            )
    else:
        plan = TorchShardPlan(group)
        if len(train) < plan.world_size:
            raise ValueError(
                f"{len(train)} ratings cannot be shared by {plan.world_size} processes")
        if not plan.agree(_summary(train)):
            raise ValueError(
                f"the processes were given different ratings (rank {plan.rank}: {len(train)}); "
                "with local=False every process passes all of them; for each process's own "
                "ratings (autofact.distributed.read_local) pass local=True"
            )
    _check_gather_seen(gather_seen)
    model.fit(train, validation=validation, plan=plan, **fit_kwargs)
    # issue 11: the last gradient (a parameter-sized copy the model does not need) and the
    # fit's freed workspace back to the system before the gather's arrays; the objective (its
    # transposes), the optimizer's state and the guard's copy are gone with the fit (no
    # reference cycle holds them: tests/test_memory_adam.py)
    for param in getattr(model, "_params", {}).values():
        param.grad = None
    release_freed_memory()
    if local and gather_seen is not False and plan.world_size > 1:
        # rank 0's model gets the other processes' seen items of the users asked for; one
        # process's index already holds them all (from_ratings)
        _gather_pattern(model, plan, _wanted_rows(model, gather_seen))
    return model


def _check_gather_seen(gather_seen: Any) -> None:
    """``distributed.fit``'s ``gather_seen``: ``True``, ``False`` or a 1-D sequence of user ids
    (checked before the fit, not after it)."""
    if isinstance(gather_seen, bool):
        return
    ids = None
    if not isinstance(gather_seen, str) and isinstance(gather_seen, Sequence | np.ndarray):
        ids = np.asarray(gather_seen)
    if ids is None or ids.ndim != 1 or ids.dtype == bool:
        raise TypeError(
            f"gather_seen must be True, False or a sequence of user ids, got {gather_seen!r}")


def _wanted_rows(model: MatrixFactorization, gather_seen: Any) -> np.ndarray:
    """``distributed.fit``'s ``gather_seen`` (``True`` or user ids) as a boolean mask over the
    model's users."""
    if gather_seen is True:
        return np.ones(model.index_.n_users, dtype=bool)
    mask = np.zeros(model.index_.n_users, dtype=bool)
    rows = model.index_.user_index(np.asarray(gather_seen), strict=False)
    mask[rows[rows >= 0]] = True
    return mask


def _rank_0_mask(plan: ShardPlan, mask: np.ndarray) -> np.ndarray:
    """Rank 0's boolean ``mask`` on every process (one bit a user, broadcast): the processes
    then agree on whose pairs move, whatever each was given."""
    bits = torch.from_numpy(np.packbits(mask)) if plan.is_main \
        else torch.zeros((len(mask) + 7) // 8, dtype=torch.uint8)
    plan.broadcast([bits])
    return np.unpackbits(bits.numpy(), count=len(mask)).astype(bool)


def _gather_pattern(model: MatrixFactorization, plan: ShardPlan, wanted: np.ndarray) -> None:
    """Every process's (user, item) pairs of the users in ``wanted`` (a boolean mask; rank 0's
    is used) onto rank 0, into rank 0's ``model.index_`` beside its own users' (issue 11: it
    holds 2 bytes a rating of the ratings it gathers, uint16, up to 65536 items, else 4, and one
    piece: :func:`_pattern_ranges`)."""
    index = model.index_
    wanted = _rank_0_mask(plan, wanted)
    target = _target_indptr(index, plan, wanted)
    indices = np.empty(int(target[-1]) if plan.is_main else 0, dtype=pattern_dtype(index.n_items))
    for _ in _pattern_ranges(index, plan, target, wanted, lambda lo, hi: indices[lo:hi]):
        pass
    if not plan.is_main:
        return
    # issue 11: the pieces' freed temporaries back to the system before with_pattern's checks
    # allocate theirs beside the gathered pattern
    release_freed_memory()
    model.index_ = index.with_pattern(target, indices, partial=not wanted.all())
    release_freed_memory()  # (with_pattern's checks)


def _target_indptr(index: Any, plan: ShardPlan, wanted: np.ndarray | None) -> np.ndarray:
    """Rank 0's CSR row pointer once it holds its own users' seen items and every wanted
    user's (``None``: every user's); on the other processes an empty array (unused)."""
    if not plan.is_main:
        return np.zeros(0, dtype=np.int64)
    counts = index.user_counts
    if wanted is not None and not wanted.all():
        own = np.diff(np.asarray(index.seen_arrays()[0], dtype=np.int64))
        counts = np.where(wanted, counts, own)
    indptr = np.zeros(index.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def _pattern_ranges(index: Any, plan: ShardPlan, target: np.ndarray, wanted: np.ndarray | None,
                    buffer: Callable[[int, int], np.ndarray],
                    failed: Callable[[], bool] = lambda: False) -> Iterator[np.ndarray]:
    """Gather the training pattern onto rank 0 a range of users at a time (a collective: every
    process iterates it to the end). For each range of users holding at most
    :data:`_SAVE_STEP` ratings of ``target`` (rank 0's row pointer, :func:`_target_indptr`),
    every other process sends its pairs of the range's ``wanted`` users (the same mask on every
    process; ``None``: every user; rank 0 must hold only its own ratings' pairs of the others),
    as int64 keys ``user * n_items + item``, :data:`_GATHER_STEP` at a time; rank 0 places every
    pair it holds and the ones it receives into ``buffer(target[first user], target[end user])``
    and yields it, complete and sorted within each row (a row whose ratings came from several
    processes is sorted there). Other processes yield nothing.

    A failure on rank 0 (pairs that do not add up; ``failed()``: its caller's, e.g. the file
    it writes) stops the placing, not the receiving: every range is still taken, so no process
    is left waiting, and at the end the processes agree on the outcome (one ``all_max``): rank 0
    raises its error, the others ``OSError`` (EIO) naming rank 0."""
    m, n = index.n_users, index.n_items
    main = plan.is_main
    mine_ptr, mine_cols = index.seen_arrays()
    mine_ptr = np.asarray(mine_ptr, dtype=np.int64)
    if wanted is not None and not main:  # only the wanted users' pairs are sent
        keep = np.repeat(wanted, np.diff(mine_ptr))
        mine_cols = mine_cols[keep]
        counts = np.diff(mine_ptr) * wanted
        mine_ptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(counts, out=mine_ptr[1:])
        del keep, counts
    total = int(index.user_counts.sum())
    cuts = np.unique(np.r_[0, np.searchsorted(np.cumsum(index.user_counts),
                                              np.arange(_SAVE_STEP, total, _SAVE_STEP),
                                              side="right"), m])
    error: BaseException | None = None
    for u0, u1 in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        a = int(mine_ptr[u0])

        def keys(s: int, e: int, a: int = a) -> torch.Tensor:
            pos = np.arange(a + s, a + e, dtype=np.int64)
            out = np.searchsorted(mine_ptr, pos, side="right") - 1
            out *= n
            out += mine_cols[pos]
            return torch.from_numpy(out)

        length = 0 if main else int(mine_ptr[u1]) - a
        pieces = plan.gather_pieces(length, keys, _GATHER_STEP)
        if not main:
            for _ in pieces:
                pass
            continue
        if error is None and failed():
            error = OSError(errno.EIO, "the caller stopped")  # (its own error is raised)
        out = None
        try:
            if error is None:
                out = _place_range(mine_ptr, mine_cols, target, u0, u1, pieces, n, buffer)
        except PeerLostError:
            raise
        except Exception as exc:  # (every range is still received below)
            error = exc
        for _ in pieces:  # what was not taken, after a failure
            pass
        if out is not None:
            yield out
    flag = torch.tensor([1.0 if main and (error is not None or failed()) else 0.0])
    plan.all_max([flag])
    if error is not None and not failed():
        raise error
    if flag[0] > 0 and not main:
        raise OSError(errno.EIO, "rank 0 could not gather or write the training pattern (its "
                      "error says why)")


def _place_range(mine_ptr: np.ndarray, mine_cols: np.ndarray, target: np.ndarray, u0: int,
                 u1: int, pieces: Iterator[tuple[int, torch.Tensor]], n: int,
                 buffer: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Rank 0's part of :func:`_pattern_ranges` for users ``[u0, u1)``: its own pairs, then the
    other processes' ``pieces``, into ``buffer``; checked and sorted within rows."""
    base = int(target[u0])
    out = buffer(base, int(target[u1]))
    starts = target[u0:u1] - base  # each user's slot in out
    ends = target[u0 + 1 : u1 + 1] - base
    fill = starts.copy()  # where each user's next item goes
    sources = np.zeros(u1 - u0, dtype=np.int32)  # processes that sent each user
    touched = np.zeros(u1 - u0, dtype=bool)
    a, b = int(mine_ptr[u0]), int(mine_ptr[u1])
    for s in range(a, b, _GATHER_STEP):  # rank 0's own pairs
        e = min(s + _GATHER_STEP, b)
        users = np.searchsorted(mine_ptr, np.arange(s, e), side="right") - 1 - u0
        touched[_place(out, fill, ends, users, mine_cols[s:e])] = True
    current = 0
    for r, piece in pieces:
        if r != current:
            sources += touched
            touched[:] = False
            current = r
        users, items = np.divmod(piece.numpy(), n)
        touched[_place(out, fill, ends, users - u0, items)] = True
    sources += touched
    if not np.array_equal(fill, ends):
        k = int(np.flatnonzero(fill != ends)[0])
        raise RuntimeError(
            f"the processes' training patterns do not add up to the ratings counted for user "
            f"index {u0 + k}: {int(fill[k] - starts[k])} pairs, expected "
            f"{int(ends[k] - starts[k])}; were they all given their share of the same data?"
        )
    mixed = np.flatnonzero(sources > 1)  # parts not split by user: sort those rows' items
    if len(mixed):
        lens = ends[mixed] - starts[mixed]
        rows = np.repeat(mixed, lens)
        at = np.repeat(starts[mixed] - np.r_[0, np.cumsum(lens)[:-1]], lens) \
            + np.arange(len(rows))
        order = np.lexsort((out[at], rows))
        out[at] = out[at][order]
    return out


def _place(out: np.ndarray, fill: np.ndarray, ends: np.ndarray, users: np.ndarray,
           items: np.ndarray) -> np.ndarray:
    """A piece of one process's pairs, sorted by (user, item), into the CSR indices ``out``,
    user ``u``'s next at ``fill[u]`` (advanced), its slot ending at ``ends[u]``; returns the
    users it touched. More pairs than a user's slot raise (never written into the next's)."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    runs = np.diff(np.r_[starts, len(users)])
    first = users[starts]
    over = fill[first] + runs > ends[first]
    if over.any():
        u = int(first[np.flatnonzero(over)[0]])
        raise RuntimeError(
            f"the processes' training patterns hold more pairs than the ratings counted for a "
            f"user ({int(fill[u] + runs[np.flatnonzero(over)[0]])} > its slot): were they all "
            "given their share of the same data?"
        )
    out[np.repeat(fill[first] - starts, runs) + np.arange(len(users))] = items
    fill[first] += runs
    return first


def save(model: MatrixFactorization, path: str | os.PathLike[str], group: Any = None) -> Path:
    """Save a model fitted by :func:`fit` to ``path``, on every process of ``group`` at once (a
    collective: call it on each; rank 0 writes the file, atomically, as :meth:`model.save
    <autofact.MatrixFactorization.save>` does). The file holds every user's seen items: rank 0
    writes the training pattern first, a range of users at a time, as the other processes send
    their users' pairs, so no process holds more than a few MiB of it beyond its own (issue 11,
    item 3: rank 0 otherwise held 2 bytes a rating of *all* the ratings); the other processes
    return once the pattern is written, and rank 0 then writes the factor tables. A model rank
    0 already holds whole (``gather_seen=True``, or one process) is saved as it is. Returns
    ``path``. A save that fails on rank 0 raises there; while the pattern moves (or before:
    a folder that does not exist, an unfitted model), the other processes raise ``OSError``
    (EIO) naming rank 0, never wait for it past the pattern."""
    from . import io

    if not hasattr(model, "index_"):  # (the same on every process)
        raise RuntimeError("this MatrixFactorization is not fitted yet; call "
                           "autofact.distributed.fit first")
    plan = TorchShardPlan(group, local=True)
    index = model.index_
    ready = torch.zeros(2, dtype=torch.float64)
    if plan.is_main:
        try:
            io.check_savable(model, path)
            ready[0] = 1.0
        except BaseException:
            plan.all_max([ready])  # the others learn of it, then rank 0 raises
            raise
        ready[1] = 1.0 if index.pattern_complete else 0.0
    plan.all_max([ready])
    if ready[0] < 1:
        raise OSError(errno.EIO, "rank 0 could not save the model (its error says why)",
                      str(path))
    if ready[1] > 0:  # rank 0 holds every seen item: a plain save
        if plan.is_main:
            io.save(model, path)
        return Path(path)
    # the users whose seen items rank 0 lacks (it has its own users', and any it gathered):
    # only theirs are sent
    held = np.diff(np.asarray(index.seen_arrays()[0], dtype=np.int64))
    lacking = _rank_0_mask(plan, held < index.user_counts)
    del held
    target = _target_indptr(index, plan, None)
    stopped = [False]
    chunks = _pattern_ranges(index, plan, target, lacking,
                             lambda lo, hi: np.empty(hi - lo, dtype=pattern_dtype(index.n_items)),
                             failed=lambda: stopped[0])
    if not plan.is_main:
        for _ in chunks:
            pass
        return Path(path)
    try:
        io.save(model, path, seen=(target, chunks))
    except Exception:
        stopped[0] = True
        for _ in chunks:  # the others finish sending and learn of it; then rank 0 raises
            pass
        raise
    return Path(path)


def _summary(r: Ratings) -> int:
    """A checksum of ratings (their count, shape and sums): processes given the same ratings
    agree on it."""
    text = (f"{len(r)};{r.shape};{int(r.users.sum(dtype=np.int64))};"
            f"{int(r.items.sum(dtype=np.int64))};{float(r.values.sum()).hex()}")
    return zlib.crc32(text.encode())


# ---------------------------------------------------------------------------- rank-local data
def assign_parts(files: Sequence[str | os.PathLike[str]], world_size: int) -> list[list[Path]]:
    """Which part files each of ``world_size`` processes reads: the largest first, each to the
    process with the fewest bytes so far (ties: the lowest rank), each process's in name order.
    Parts of equal size go round robin: part ``k`` (in name order) to rank ``k mod world_size``.

    >>> assign_parts(["p0", "p1", "p2"], 2)          # three parts of equal size
    [[PosixPath('p0'), PosixPath('p2')], [PosixPath('p1')]]
    """
    paths = [Path(f) for f in files]
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    sizes = [p.stat().st_size if p.exists() else 0 for p in paths]
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for k in sorted(range(len(paths)), key=lambda k: (-sizes[k], k)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(k)
        load[r] += sizes[k]
    return [[paths[k] for k in sorted(ks)] for ks in out]


def user_owner(ids: Any, world_size: int) -> np.ndarray:
    """The rank that holds each user's ratings under ``read_local(..., split="users")``: a hash
    of the id as written (SipHash with a fixed key, so every process and every run agrees; an
    int id hashes as its decimal text, as it reads in a file), modulo ``world_size``."""
    import pandas as pd

    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    text = np.asarray(ids).astype(str).astype(object)
    return (pd.util.hash_array(text) % np.uint64(world_size)).astype(np.int64)


def read_local(path: str | os.PathLike[str], *,
               split: Literal["auto", "parts", "users"] = "auto", group: Any = None,
               dtype: Any = None, **read_kwargs: Any) -> Ratings:
    """This process's share of the ratings at ``path``, with the id maps every process agrees
    on. Every process of ``group`` (default: all) must call it, with the same arguments.

    ``split``: ``"parts"`` (the default for a folder): the part files :func:`assign_parts` gives
    this rank; ``"users"`` (the default for one file): the ratings of the users
    :func:`user_owner` gives this rank, so all of a user's ratings are on one process (every
    process then reads every part, one at a time, keeping its users' ratings; from one file it
    reads the whole file first, but for a Parquet file, which it streams as it does Parquet
    parts). ``read_kwargs``: those of :func:`autofact.read`.
    ``dtype="float32"`` keeps the values in 4 bytes a rating instead of 8: what a float32 fit
    (the default) uses, so it shares them instead of copying them (issue 11: 12 bytes a rating
    held instead of 16, and no copy of 4 in the objective).

    The returned :class:`~autofact.Ratings` has the shape and id maps of all the ratings (the
    sorted union of the distinct ids, agreed by exchanging them: the maps of
    ``autofact.read(path)``) and holds this process's ratings only; pass it to
    :func:`fit` with ``local=True``. A file that cannot be read, or a process left with no
    ratings, stops every process with a ``ValueError``. With ``split="parts"`` a (user, item)
    pair rated in parts read by two processes is not found to be a duplicate; ``"users"``
    keeps the one-process rule.

    >>> ratings = distributed.read_local("ratings/")            # part files: ratings/part-*.parquet
    >>> ratings = distributed.read_local("ratings.csv")         # one file, users hashed to ranks
    """
    from .reading import part_files, read, read_parts, values_dtype

    kind = values_dtype(dtype)
    if split not in ("auto", "parts", "users"):
        raise ValueError(f"split must be 'auto', 'parts' or 'users', got {split!r}")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "no torch.distributed process group: call autofact.distributed.init() first, in a "
            "script started by torchrun"
        )
    p = Path(path)
    folder = p.is_dir()
    mode = ("parts" if folder else "users") if split == "auto" else split
    if mode == "parts" and not folder:
        raise ValueError(
            f"split='parts' needs a folder of part files, got the file {str(path)!r}; pass "
            "split='users' (each process keeps the users that hash to it)"
        )
    plan = TorchShardPlan(group, local=True)
    rank, world = plan.rank, plan.world_size
    error: BaseException | None = None
    local: Ratings | None = None
    try:
        if not p.exists():
            raise ValueError(f"path {str(path)!r} does not exist")
        files = part_files(p) if folder else [p]
        listing = ";".join(f"{f.name}:{f.stat().st_size}" for f in files)
    except (ValueError, OSError) as exc:
        error, files, listing = exc, [], "?"
    # every process must see the same parts (a shared file system, or the same copy)
    if not plan.agree(zlib.crc32(listing.encode())):
        raise ValueError(
            f"the processes see different files at {str(path)!r} (rank {rank}: "
            f"{len(files)} part files); every process must see the same folder (a shared file "
            "system, or the same copy on every machine)"
        )
    if error is None and mode == "parts" and len(files) < world:
        error = ValueError(
            f"folder {str(path)!r} holds {len(files)} part files for {world} processes; write "
            "at least one part per process, or pass split='users'"
        )
    if error is None:
        try:
            if mode == "parts":
                local = read_parts(assign_parts(files, world)[rank], dtype=kind,
                                   **read_kwargs)
            else:
                def mine(ids: np.ndarray) -> np.ndarray:
                    return user_owner(ids, world) == rank

                if folder:
                    try:
                        local = read_parts(files, keep_users=mine, dtype=kind,
                                           **read_kwargs)
                    except ValueError as exc:
                        if not str(exc).startswith("no ratings were kept"):
                            raise
                else:  # a Parquet file streamed, its users' ratings only (issue 11)
                    local = _own_users_of_one_file(p, read_kwargs, mine, kind)
                    if local is None:  # any other file: read whole, then filtered
                        whole = read(p, **read_kwargs)
                        kept = mine(whole.user_ids)[whole.users]
                        local = whole.subset(kept) if kept.any() else None
                        del whole
        except Exception as exc:  # stop every process, not only this one (they would wait)
            error = exc
    status = torch.zeros(2, world, dtype=torch.int64)
    status[0, rank] = error is not None
    status[1, rank] = local is None
    plan.all_sum([status])
    if status[0].any():
        if error is not None:
            raise error
        failed = [int(r) for r in torch.nonzero(status[0]).flatten()]
        raise ValueError(
            f"rank {', '.join(map(str, failed))} could not read {str(path)!r} (its error is "
            f"on its own output); rank {rank} stops too"
        )
    if status[1].any():
        empty = [int(r) for r in torch.nonzero(status[1]).flatten()]
        raise ValueError(
            f"rank {', '.join(map(str, empty))} of {world} holds no ratings of {str(path)!r} "
            "(fewer users than processes hash to every rank); use fewer processes"
        )
    assert local is not None
    for what in ("weights", "timestamps"):
        flags = torch.zeros(world, dtype=torch.int64)
        flags[rank] = getattr(local, what) is not None
        plan.all_sum([flags])
        if 0 < int(flags.sum()) < world:
            raise ValueError(
                f"{str(path)!r}: some processes' part files have {what} and some do not (rank "
                f"{rank}: {'has' if flags[rank] else 'lacks'} them); give every part the same "
                "columns" + (", or pass timestamp=False" if what == "timestamps" else "")
            )
    # the codes are rewritten in place (issue 11: no second copy of the ratings); maps that
    # keep the order (the usual case: the agreed map is a sorted superset) keep them sorted
    users, user_ids, user_order = _agreed_codes(plan, local.users, local.user_ids)
    items, item_ids, item_order = _agreed_codes(plan, local.items, local.item_ids)
    values = local.values.astype(kind, copy=False)  # a file read whole is read as float64
    out = Ratings(users, items, values, shape=(len(user_ids), len(item_ids)),
                  user_ids=user_ids, item_ids=item_ids, weights=local.weights,
                  timestamps=local.timestamps, _sorted=user_order and item_order)
    del local, users, items, values
    release_freed_memory()  # reading's freed heap and pyarrow's pool (issue 11)
    return out


def _own_users_of_one_file(path: Path, read_kwargs: dict[str, Any],
                           mine: Callable[[np.ndarray], np.ndarray],
                           kind: np.dtype[Any]) -> Ratings | None:
    """The ratings of this process's users in one Parquet file, streamed a batch of rows at a
    time (issue 11, item 3: never the whole file in memory), or None where :func:`read` must
    read it whole (not Parquet, not plain, ``duplicates='mean'``, anything to report, no
    ratings of this process's users). A pair rated twice by a user of another process is
    that process's to report."""
    from .reading import _stream_parquet

    known = {"format", "sep", "header", "user", "item", "rating", "weight", "timestamp",
             "duplicates", "encoding"}
    duplicates = read_kwargs.get("duplicates", "error")
    if not set(read_kwargs) <= known or duplicates not in ("error", "last"):
        return None  # read() takes (or refuses) these
    kwargs = {k: v for k, v in read_kwargs.items() if k != "duplicates"}
    return _stream_parquet([path], kwargs, duplicates, mine, kind)


def _agreed_codes(plan: ShardPlan, codes: np.ndarray, ids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``codes`` into this process's ``ids`` as codes into the map every process agrees on:
    the sorted union of every process's distinct ids (ints only when every process's are,
    else every id as text), exchanged rank by rank and merged as they come. The codes are
    rewritten in place, a slice at a time (a read-only array is copied first); the flag says
    whether the new map keeps the old codes' order (then sorted codes stay sorted)."""
    present = _present(codes, len(ids))
    mine = np.asarray(ids)[present]
    flags = torch.zeros(1, dtype=torch.int64)
    flags[0] = mine.dtype.kind not in "iu"
    plan.all_sum([flags])
    text = bool(flags[0])
    if text:
        mine = mine.astype(str)  # an int id as text is its canonical decimal form
        merged: np.ndarray = np.zeros(0, dtype=str)
        for packed in plan.each_rank(_pack_text(mine)):
            merged = np.union1d(merged, _unpack_text(packed))
    else:
        mine = mine.astype(np.int64)
        merged = np.zeros(0, dtype=np.int64)
        for part in plan.each_rank(torch.from_numpy(mine)):
            merged = np.union1d(merged, part.numpy())
    lut = np.zeros(len(ids), dtype=np.int32)
    lut[present] = np.searchsorted(merged, mine)
    kept_order = bool((np.diff(lut[present]) > 0).all())
    out = codes if codes.flags.writeable and codes.dtype == np.int32 else codes.astype(np.int32)
    for s in range(0, len(out), _REMAP_STEP):
        out[s : s + _REMAP_STEP] = lut[out[s : s + _REMAP_STEP]]
    text_ids = np.asarray(merged.tolist(), dtype=object) if text else merged
    return out, text_ids, kept_order


def _present(codes: np.ndarray, size: int) -> np.ndarray:
    """The distinct values of ``codes`` (ints in ``[0, size)``), sorted; counted a slice at a
    time (``np.bincount`` copies its input to int64; ``np.unique`` sorts a copy)."""
    seen = np.zeros(size, dtype=bool)
    for s in range(0, len(codes), _REMAP_STEP):
        seen[codes[s : s + _REMAP_STEP]] = True
    return np.flatnonzero(seen)


def _pack_text(ids: np.ndarray) -> torch.Tensor:
    """Strings as one uint8 tensor: their count, their UTF-8 lengths (int64), then the bytes."""
    raw = [s.encode("utf-8") for s in ids.tolist()]
    head = np.asarray([len(raw), *map(len, raw)], dtype=np.int64).tobytes()
    return torch.frombuffer(bytearray(head + b"".join(raw)), dtype=torch.uint8)


def _unpack_text(packed: torch.Tensor) -> np.ndarray:
    buf = packed.numpy().tobytes()
    n = int(np.frombuffer(buf[:8], dtype=np.int64)[0])
    lengths = np.frombuffer(buf[8 : 8 * (n + 1)], dtype=np.int64)
    ends = 8 * (n + 1) + np.cumsum(lengths)
    starts = ends - lengths
    return np.asarray([buf[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)],
                      dtype=str)
