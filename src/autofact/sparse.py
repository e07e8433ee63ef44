"""The one structural primitive: predictions on a sparsity pattern, ``pred[r] = <P[u_r], Q[i_r]>``.

Forward is an SDDMM (``torch.sparse.sampled_addmm`` on a CSR pattern); backward is two sparse @
dense products (SpMM): ``dP = G @ Q`` and ``dQ = G^T @ P`` with ``G`` the CSR of the incoming
per-entry gradient. Nothing of size ``nnz x k`` is ever built. The loss applied to ``pred`` is
differentiated by autograd as usual; only this bilinear gather carries its own backward, and the
test suite checks it with ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Pattern", "gather_dot", "build_patterns", "prepare_transposes", "csr_tensor",
           "is_unsupported", "Csr", "spmm"]


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               size: tuple[int, int]) -> Any:
    """A torch CSR tensor, its invariants unchecked (the callers build them sorted) and torch's
    beta warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta" is not the user's concern
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)



#: Entries of a block whose transpose order is kept in 17 bits (:meth:`Pattern.transpose`).
_SHORT_PERM = 2**17
#: ``_PERM_HIGH[b, j]``: what bit ``j`` of byte ``b`` adds to a short perm's entry (bit 16 of
#: the position, and the 2**15 that its low 16 bits are stored less of, to fit an int16).
_PERM_HIGH = torch.tensor([[2**15 + (((b >> j) & 1) << 16) for j in range(8)]
                           for b in range(256)], dtype=torch.int32)


@dataclass
class Pattern:
    """A block of rows ``[row0, row1)`` of a row-sorted sparsity pattern.

    ``crow``/``col`` index the block as a CSR matrix of shape ``(row1 - row0, n_cols)``. The
    transpose (needed only by the backward pass) is built on first use and kept:
    ``tcrow``/``trow`` are the same entries as a CSR matrix of the transpose and ``perm`` maps
    positions of the transpose to positions of the block (``values_T = values[perm]``).
    """

    row0: int
    row1: int
    start: int  # offset of the block's first entry in the full entry arrays
    n_cols: int
    crow: torch.Tensor
    col: torch.Tensor
    keep_rows: bool = True
    _perm: torch.Tensor | None = field(default=None, repr=False)
    _tcrow: torch.Tensor | None = field(default=None, repr=False)
    _rows_t: torch.Tensor | None = field(default=None, repr=False)
    # a short perm (issue 11): its low 16 bits less 2**15 (int16, padded to 8 entries) and,
    # past 2**16 entries, bit 16 packed 8 entries a byte
    _perm_low: torch.Tensor | None = field(default=None, repr=False)
    _perm_high: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.col.shape[0])

    @property
    def stop(self) -> int:
        return self.start + self.nnz

    @property
    def short_perm(self) -> bool:
        """Whether ``perm`` is kept in 17 bits (2.125 bytes an entry) rather than 4: on the CPU,
        for a block of at most 2**17 entries whose transposes are not kept (``keep_rows``
        off: memory is short); unpacked at each call (~0.1 ms a block of 2**17 entries: the
        full gradient 1.00-1.01x the time with whole ones, 5M ratings, issue 11)."""
        return (not self.keep_rows and self.nnz <= _SHORT_PERM
                and self.col.device.type == "cpu")

    def transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tcrow, trow, perm)`` of the block's transpose.

        ``perm`` is built on first use and kept: 4 bytes an entry, or 2.125 (its low 16 bits
        and, past 2**16 entries, its 17th bit, packed: :attr:`short_perm`). With ``keep_rows``
        the column pointers ``tcrow`` and ``trow``, the block-local row of each transposed
        entry, are kept too (another 4 bytes an entry); without, both are recomputed at each
        call (a count and a gather), which keeps the memory of a large matrix at 2.125 bytes a
        rating (issue 11).
        """
        if self._perm is None and self._perm_low is None:
            prepare_transposes([self])
        perm = self._perm if self._perm is not None else self._unpacked_perm()
        if self._rows_t is not None and self._tcrow is not None:
            return self._tcrow, self._rows_t, perm
        idx = self.col.dtype
        tcrow = torch.zeros(self.n_cols + 1, dtype=idx, device=self.col.device)
        torch.cumsum(torch.bincount(self.col, minlength=self.n_cols), 0, dtype=idx,
                     out=tcrow[1:])
        rows = torch.repeat_interleave(
            torch.arange(self.row1 - self.row0, dtype=idx, device=self.col.device),
            torch.diff(self.crow), output_size=self.nnz,
        )
        trow = torch.index_select(rows, 0, perm)
        if self.keep_rows:
            self._tcrow, self._rows_t = tcrow, trow
        return tcrow, trow, perm

    def _unpacked_perm(self) -> torch.Tensor:
        """The short perm as int32 (:attr:`short_perm`)."""
        assert self._perm_low is not None
        out = self._perm_low.to(torch.int32)
        if self._perm_high is None:
            out += 2**15
        else:
            out.view(-1, 8).add_(_PERM_HIGH.index_select(0, self._perm_high.to(torch.int32)))
        return out[: self.nnz]

    def csr(self, values: torch.Tensor) -> Any:
        return csr_tensor(self.crow, self.col, values, (self.row1 - self.row0, self.n_cols))

    def transposed(self, values: torch.Tensor) -> Csr:
        """The block's transpose with ``values`` (in the block's order) as a :class:`Csr`."""
        tcrow, trow, perm = self.transpose()
        # index_select: about twice as fast as values[perm] on the CPU
        return Csr(tcrow, trow, torch.index_select(values, 0, perm))


def prepare_transposes(patterns: list[Pattern]) -> None:
    """Build every block's ``perm`` now, as slices of one buffer (of each kind: short perms'
    low bits and high bits, and whole ones).

    Built lazily inside the first backward pass, each block's ``perm`` would land between that
    block's temporaries on the allocator's heap and keep it fragmented (on a 25M-rating fit,
    ~150 MB of free but resident heap); one buffer allocated before any temporaries avoids that.
    """
    todo = [p for p in patterns if p._perm is None and p._perm_low is None]
    if not todo:
        return
    dev = todo[0].col.device
    short = [p for p in todo if p.short_perm]
    whole = [p for p in todo if not p.short_perm]

    def padded(p: Pattern) -> int:
        return -(-p.nnz // 8) * 8

    low = torch.empty(sum(padded(p) for p in short), dtype=torch.int16, device=dev)
    high = torch.empty(sum(padded(p) // 8 for p in short if p.nnz > 2**16), dtype=torch.uint8,
                       device=dev)
    dtype = todo[0].col.dtype if dev.type == "cpu" else torch.int64
    buf = torch.empty(sum(p.nnz for p in whole), dtype=dtype, device=dev)
    at = at_low = at_high = 0
    bits = torch.arange(8, dtype=torch.uint8, device=dev)
    for p in todo:
        perm = torch.sort(p.col, stable=True).indices  # stable: rows stay sorted in a column
        if not p.short_perm:
            p._perm = buf[at : at + p.nnz]
            p._perm.copy_(perm)
            at += p.nnz
            continue
        size = padded(p)
        p._perm_low = low[at_low : at_low + size]
        p._perm_low[p.nnz :] = 0
        p._perm_low[: p.nnz].copy_(perm.bitwise_and(2**16 - 1).sub_(2**15))
        at_low += size
        if p.nnz > 2**16:
            top = torch.zeros(size, dtype=torch.uint8, device=dev)
            top[: p.nnz] = perm.bitwise_right_shift(16)
            p._perm_high = high[at_high : at_high + size // 8]
            torch.sum(top.view(-1, 8).bitwise_left_shift(bits), 1, dtype=torch.uint8,
                      out=p._perm_high)
            at_high += size // 8


def build_patterns(
    rows: torch.Tensor,
    cols: torch.Tensor,
    shape: tuple[int, int],
    max_nnz: int,
    keep_rows: bool = True,
    max_rows: int | None = None,
    row_ids: torch.Tensor | None = None,
) -> list[Pattern]:
    """Split a (row, col)-sorted pattern into row blocks of at most ``max_nnz`` entries each.

    A single row with more entries than ``max_nnz`` gets a block of its own. The blocks' column
    indices are views of ``cols`` (no copy when ``cols`` is int32). ``keep_rows``: see
    :meth:`Pattern.transpose`. ``max_rows`` also caps the rows of a block. ``row_ids``: the
    value row ``r`` of the blocks has in ``rows`` (sorted, ``shape[0]`` of them, every entry's
    among them; default ``r``): rows numbered ``0..m-1`` in that order without a renumbered
    copy of ``rows`` (issue 11: a process's users by their index among all users).
    """
    m, n = shape
    device = rows.device
    # row pointers by binary search on the sorted rows: no int64 copy of the whole array
    if row_ids is None:
        crow_full = torch.searchsorted(rows, torch.arange(m + 1, dtype=rows.dtype,
                                                          device=device))
    else:
        crow_full = torch.full((m + 1,), len(rows), dtype=torch.int64, device=device)
        crow_full[:m] = torch.searchsorted(rows, row_ids.to(rows))
    crow_cpu = crow_full.cpu()
    blocks: list[Pattern] = []
    r0 = 0
    while r0 < m:
        start = int(crow_cpu[r0])
        # last row r1 such that crow[r1] - start <= max_nnz (at least one row)
        r1 = int(torch.searchsorted(crow_cpu, start + max_nnz, right=True)) - 1
        r1 = min(max(r1, r0 + 1), m)
        if max_rows is not None:
            r1 = min(r1, r0 + max(1, int(max_rows)))
        stop = int(crow_cpu[r1])
        idx_dtype = torch.int32 if max(n, m, stop - start) < 2**31 - 1 else torch.int64
        blocks.append(
            Pattern(
                row0=r0,
                row1=r1,
                start=start,
                n_cols=n,
                crow=(crow_full[r0 : r1 + 1] - start).to(idx_dtype),
                col=cols[start:stop].to(idx_dtype),
                keep_rows=keep_rows,
            )
        )
        r0 = r1
    return blocks


# What torch says when a build lacks a sparse kernel (a CPU-only or older build, another device):
# only these send a product to its out-of-place fallback. Anything else, out of memory above
# all, is a real failure and propagates (issue 8).
_UNSUPPORTED = ("not implemented", "could not run", "not supported", "unsupported",
                "does not support", "only supports")


def is_unsupported(exc: BaseException) -> bool:
    """Whether ``exc`` says a sparse kernel is missing (never for an out-of-memory error)."""
    if isinstance(exc, NotImplementedError):
        return True
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return False
    return any(phrase in text for phrase in _UNSUPPORTED)


class Csr(NamedTuple):
    """A CSR matrix as its row pointers, column indices (one integer dtype) and values, for
    :func:`spmm`."""

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor


def spmm(C: Csr, dense: torch.Tensor) -> torch.Tensor:
    """``C @ dense``: each row's sum of its entries' values times their rows of ``dense``, by
    ``embedding_bag`` (issue 10: on the CPU 2x faster than torch's CSR product at 11 to 66
    columns, 3-4x at several hundred); torch's CSR product where a build lacks it."""
    try:
        return F.embedding_bag(C.col, dense, C.crow, mode="sum", per_sample_weights=C.values,
                               include_last_offset=True)
    except (NotImplementedError, RuntimeError) as exc:
        if not is_unsupported(exc):
            raise
    return csr_tensor(C.crow, C.col, C.values, (len(C.crow) - 1, dense.shape[0])) @ dense


#: Result entries (rows x columns) that :func:`_spmm_into` makes at a time: 1 MiB in float32,
#: so its temporary stays cache-sized whatever a block's rows.
_SPMM_CHUNK = 2**18
#: :func:`_spmm_into` serves a product of ``rows x k`` results from ``nnz`` entries by
#: :func:`spmm` where ``rows * k <= _SPMM_ROWS_PER_ENTRY * nnz``: its cost grows with the
#: result's size (every row is written and added, empty or not), the CSR product's only with the
#: entries. Measured on the CPU (one thread, 2**17 entries, k = 32): 3,706 rows 0.26 ms against
#: 0.40; 20,000 rows x 64 1.07 against 1.63; 200,000 rows 3.2 against 2.6.
_SPMM_ROWS_PER_ENTRY = 8


def _spmm_into(C: Csr, dense: torch.Tensor, out: torch.Tensor) -> bool:
    """``out += C @ dense`` by :func:`spmm` in slices of rows (of at most :data:`_SPMM_CHUNK`
    results), where it is the faster product (on the CPU, :data:`_SPMM_ROWS_PER_ENTRY`);
    ``False`` (nothing done) where it is not."""
    rows, k = out.shape
    if (dense.device.type != "cpu" or dense.dim() != 2
            or rows * k > _SPMM_ROWS_PER_ENTRY * max(1, C.col.shape[0])):
        return False
    step = max(1, _SPMM_CHUNK // max(1, k))
    if rows <= step:
        out.add_(spmm(C, dense))
        return True
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        a, b = int(C.crow[r0]), int(C.crow[r1])
        out[r0:r1].add_(spmm(Csr(C.crow[r0 : r1 + 1] - a, C.col[a:b], C.values[a:b]), dense))
    return True


def _product(A: Any, B: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor | None:
    """``A @ B`` (``B`` a matrix or a vector), or ``out += A @ B`` in place when ``out`` is given:
    no result-sized temporary, and on the CPU several times faster for the transposed product."""
    if out is None:
        return A @ B if B.dim() == 2 else torch.mv(A, B)
    try:
        if B.dim() == 2:
            out.addmm_(A, B)
        else:
            out.addmv_(A, B)
    except (NotImplementedError, RuntimeError) as exc:  # a build without the in-place kernel
        if not is_unsupported(exc):
            raise
        out += A @ B if B.dim() == 2 else torch.mv(A, B)
    return None


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        P: torch.Tensor,
        Q: torch.Tensor,
        bu: torch.Tensor | None,
        bi: torch.Tensor | None,
        pattern: Pattern,
        into: tuple[torch.Tensor | None, ...] | None,
    ) -> torch.Tensor:
        ctx.pattern, ctx.into = pattern, into
        ctx.save_for_backward(P, Q)
        # The SDDMM writes into a fresh CSR of the pattern (out= its own input): called with a
        # separate input it would first copy the input's indices and values. beta=0 still reads
        # the input (0 * NaN is NaN), hence zeros.
        out = torch.zeros(pattern.nnz, dtype=P.dtype, device=P.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            S = pattern.csr(out)
            try:
                torch.sparse.sampled_addmm(S, P, Q.t(), beta=0.0, out=S)
            except (NotImplementedError, RuntimeError) as exc:  # no in-place form in the build
                if not is_unsupported(exc):
                    raise
                out = torch.sparse.sampled_addmm(S, P, Q.t(), beta=0.0).values()
        if bu is not None:
            out += torch.repeat_interleave(bu, torch.diff(pattern.crow), output_size=pattern.nnz)
        if bi is not None:
            out += torch.index_select(bi, 0, pattern.col)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        P, Q = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        into = ctx.into or (None, None, None, None)
        grad = grad.contiguous()
        need = ctx.needs_input_grad
        out: list[torch.Tensor | None] = [None, None, None, None]  # dP, dQ, dbu, dbi
        # rows: dP = G @ Q, dbu = row sums of G; columns: dQ = G^T @ P, dbi = column sums
        sides = ((0, 2, lambda: Csr(pattern.crow, pattern.col, grad), Q,
                  (pattern.row1 - pattern.row0, pattern.n_cols)),
                 (1, 3, lambda: pattern.transposed(grad), P,
                  (pattern.n_cols, pattern.row1 - pattern.row0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for factor, bias, parts, other, shape in sides:
                if need[factor] or need[bias]:
                    C = parts()
                    target = into[factor]
                    # issue 10: a factor's product added in place by embedding_bag where that
                    # is the faster product (_spmm_into), else by torch's CSR product
                    done = (need[factor] and target is not None
                            and _spmm_into(C, other, target))
                    if done and not need[bias]:
                        continue
                    M = csr_tensor(C.crow, C.col, C.values, shape)
                    if need[factor] and not done:
                        out[factor] = _product(M, other, target)
                    if need[bias]:
                        ones = torch.ones(other.shape[0], dtype=grad.dtype, device=grad.device)
                        out[bias] = _product(M, ones, into[bias])
        return (*out, None, None)


def gather_dot(
    P: torch.Tensor,
    Q: torch.Tensor,
    pattern: Pattern,
    bu: torch.Tensor | None = None,
    bi: torch.Tensor | None = None,
    into: tuple[torch.Tensor | None, ...] | None = None,
) -> torch.Tensor:
    """``out[r] = P[row_r] . Q[col_r] (+ bu[row_r] + bi[col_r])`` for the entries of ``pattern``.

    ``P`` (and ``bu``) hold the block's rows (``row1 - row0`` of them), ``Q`` (and ``bi``) all
    columns. Differentiable in each tensor argument; the bias gradients are the row and column
    sums of the incoming gradient (two more sparse products, no gathers).

    ``into``: buffers ``(dP, dQ, dbu, dbi)`` (each may be ``None``) that the backward adds its
    gradients to in place, returning ``None`` for those arguments instead. A blockwise caller
    thereby accumulates the full gradient with no per-block gradient tensors.
    """
    return _GatherDot.apply(P, Q, bu, bi, pattern, into)
