"""Record one autograd gradient as a straight-line program of aten ops, and replay it in NumPy.

This is what Theano did for the 2016 post: derive the gradient graph once, then run it many times
without the machinery that derived it. Here autograd derives it: :func:`record_gradient` runs
``torch.autograd.grad`` once under a dispatch mode that sees every aten op of the forward *and*
of the backward, and turns that trace into a NumPy program (constants folded, dead ops dropped).
Eager autograd spends ~100 microseconds per backward on bookkeeping; on the post's 5x4 matrix a
whole replayed step costs a few dozen.

The trace is only used when it stands for the same function: every op must be in the table
below (anything else, including ``.item()`` or a Python ``if`` on a tensor, which would mean
data-dependent control flow, returns ``None``), every tensor the program reads must be the input,
a constant that shares no memory with it, or an op's output, each step's NumPy result must have
the dtype and shape torch's had, and the program must reproduce autograd's gradient at the
recorded point and at a second, perturbed point. The caller then falls back to eager autograd.

What the dispatch mode cannot see is the objective leaving torch (``.numpy()``, ``.tolist()``):
a value read that way would be frozen into the program. So the objective must be torch ops only;
the library records only its own objective (the post's, in :mod:`autofact.functional`).

``torch.utils._python_dispatch`` is private to torch and may move between releases, so this
module is imported only when :func:`autofact.matrix_factorization_bgd` records, never by
``import autofact``; if importing it fails, that function runs eager autograd instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["record_gradient"]

aten = torch.ops.aten


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _slice_index(ndim: int, dim: int, start: int | None, end: int | None, step: int = 1) -> tuple:
    index: list[Any] = [slice(None)] * ndim
    index[dim] = slice(start, end, step)
    return tuple(index)


def _slice(a: np.ndarray, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> np.ndarray:
    return a[_slice_index(a.ndim, dim, start, end, step)]


def _slice_backward(g: np.ndarray, sizes: list[int], dim: int, start: int, end: int,
                    step: int) -> np.ndarray:
    out = np.zeros(sizes, dtype=g.dtype)
    out[_slice_index(len(sizes), dim, start, end, step)] = g
    return out


def _select_backward(g: np.ndarray, sizes: list[int], dim: int, index: int) -> np.ndarray:
    out = np.zeros(sizes, dtype=g.dtype)
    idx: list[Any] = [slice(None)] * len(sizes)
    idx[dim] = index
    out[tuple(idx)] = g
    return out


def _put(a: np.ndarray, index: np.ndarray, source: np.ndarray, accumulate: bool = False) -> np.ndarray:
    out = a.copy()
    flat = out.reshape(-1)
    if accumulate:
        np.add.at(flat, index.reshape(-1), source.reshape(-1))
    else:
        flat[index.reshape(-1)] = source.reshape(-1)
    return out


def _expand(a: np.ndarray, sizes: list[int], implicit: bool = False) -> np.ndarray:
    lead = len(sizes) - a.ndim
    shape = [a.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)]
    return np.broadcast_to(a, shape)


def _sum(a: np.ndarray, dim: list[int] | None = None, keepdim: bool = False,
         dtype: torch.dtype | None = None) -> np.ndarray:
    out = np.sum(a, axis=tuple(dim) if dim else None, keepdims=keepdim)
    return np.asarray(out if dtype is None else out.astype(_np_dtype(dtype)))


def _mean(a: np.ndarray, dim: list[int] | None = None, keepdim: bool = False,
          dtype: torch.dtype | None = None) -> np.ndarray:
    out = np.mean(a, axis=tuple(dim) if dim else None, keepdims=keepdim)
    return np.asarray(out if dtype is None else out.astype(_np_dtype(dtype)))


def _pow(a: np.ndarray, e: float) -> np.ndarray:
    if e == 2:
        return np.square(a)
    if e == 1:
        return a.copy()
    return np.power(a, np.asarray(e, dtype=a.dtype))


def _softplus(a: np.ndarray, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    z = a * beta
    return np.where(z > threshold, a, np.logaddexp(0, z) / beta).astype(a.dtype, copy=False)


def _softplus_backward(g: np.ndarray, a: np.ndarray, beta: float = 1.0,
                       threshold: float = 20.0) -> np.ndarray:
    z = a * beta
    s = 1.0 / (1.0 + np.exp(-z))
    return np.where(z > threshold, g, g * s).astype(g.dtype, copy=False)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-a))).astype(a.dtype, copy=False)


def _alpha(op: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def f(a: Any, b: Any, alpha: float = 1) -> Any:
        return op(a, b) if alpha == 1 else op(a, b * alpha)
    return f


#: aten op -> NumPy function over the same positional/keyword arguments (tensors as ndarrays).
#: Each one matches torch's semantics for the argument kinds autograd produces; an op that is
#: not here sends the caller back to eager autograd.
_NUMPY: dict[Any, Callable[..., Any]] = {
    aten.mm.default: np.matmul,
    aten.take.default: lambda a, i: a.reshape(-1)[i],
    aten.add.Tensor: _alpha(np.add),
    aten.sub.Tensor: _alpha(np.subtract),
    aten.add.Scalar: _alpha(np.add),
    aten.sub.Scalar: _alpha(np.subtract),
    aten.rsub.Scalar: lambda a, b, alpha=1: b - a * alpha,
    aten.rsub.Tensor: lambda a, b, alpha=1: b - a * alpha,
    aten.mul.Tensor: np.multiply,
    aten.mul.Scalar: np.multiply,
    aten.div.Tensor: np.true_divide,
    aten.div.Scalar: np.true_divide,
    aten.neg.default: np.negative,
    aten.abs.default: np.abs,
    aten.sgn.default: np.sign,
    aten.sign.default: np.sign,
    aten.exp.default: np.exp,
    aten.log.default: np.log,
    aten.log1p.default: np.log1p,
    aten.expm1.default: np.expm1,
    aten.sqrt.default: np.sqrt,
    aten.reciprocal.default: np.reciprocal,
    aten.tanh.default: np.tanh,
    aten.sigmoid.default: _sigmoid,
    aten.sigmoid_backward.default: lambda g, y: g * (1 - y) * y,
    aten.tanh_backward.default: lambda g, y: g * (1 - y * y),
    aten.softplus.default: _softplus,
    aten.softplus_backward.default: _softplus_backward,
    aten.pow.Tensor_Scalar: _pow,
    aten.relu.default: lambda a: np.maximum(a, 0),
    aten.threshold_backward.default: lambda g, a, t: np.where(a <= t, 0, g).astype(g.dtype),
    aten.maximum.default: np.maximum,
    aten.minimum.default: np.minimum,
    aten.clamp.default: lambda a, lo=None, hi=None: np.clip(a, lo, hi),
    aten.clamp_min.default: np.maximum,
    aten.clamp_max.default: np.minimum,
    aten.where.self: np.where,
    aten.gt.Scalar: np.greater, aten.gt.Tensor: np.greater,
    aten.ge.Scalar: np.greater_equal, aten.ge.Tensor: np.greater_equal,
    aten.lt.Scalar: np.less, aten.lt.Tensor: np.less,
    aten.le.Scalar: np.less_equal, aten.le.Tensor: np.less_equal,
    aten.eq.Scalar: np.equal, aten.eq.Tensor: np.equal,
    aten.ne.Scalar: np.not_equal, aten.ne.Tensor: np.not_equal,
    aten.logical_not.default: np.logical_not,
    aten.masked_fill.Scalar: lambda a, m, v: np.where(m, np.asarray(v, dtype=a.dtype), a),
    aten.sum.default: _sum,
    aten.sum.dim_IntList: _sum,
    aten.mean.default: _mean,
    aten.mean.dim: _mean,
    aten.expand.default: _expand,
    aten.view.default: np.reshape,
    aten._unsafe_view.default: np.reshape,
    aten.reshape.default: np.reshape,
    aten.t.default: np.transpose,
    aten.transpose.int: np.swapaxes,
    aten.slice.Tensor: _slice,
    aten.slice_backward.default: _slice_backward,
    aten.select.int: lambda a, dim, i: np.take(a, i, axis=dim),
    aten.select_backward.default: _select_backward,
    aten.put.default: _put,
    aten.clone.default: lambda a, memory_format=None: a.copy(),
    aten.detach.default: lambda a: a,
    aten.alias.default: lambda a: a,
    aten.lift_fresh.default: lambda a: a,
    aten._to_copy.default: lambda a, dtype=None, **_: a.astype(_np_dtype(dtype) if dtype else a.dtype),
}

#: ops whose result depends on no tensor's values (only shapes, dtypes and scalars): their
#: recorded output is the constant.
_VALUE_FREE = {
    aten.ones_like.default, aten.zeros_like.default, aten.full_like.default,
    aten.new_zeros.default, aten.new_ones.default, aten.new_full.default,
    aten.scalar_tensor.default, aten.zeros.default, aten.ones.default, aten.full.default,
}


class _Recorder(TorchDispatchMode):
    """Runs each aten op as usual and keeps ``(op, args, kwargs, output)``."""

    # The mode only ever runs eagerly. Without this, torch wraps ``__torch_dispatch__`` for
    # torch.compile, and the first call imports torch._dynamo (about 2 s and 70 MB).
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


class _Unsupported(Exception):
    pass


def _build(ops: list[tuple[Any, tuple, dict, Any]], x: torch.Tensor,
           grad: torch.Tensor) -> _Program:
    """The NumPy program ``x -> grad`` for a recorded trace (raises ``_Unsupported``)."""
    values: dict[tuple, Any] = {}  # tensor key -> ("in",) | ("const", array) | ("op", index)
    produced_storage = {x.untyped_storage().data_ptr()}
    values[_key(x)] = ("in",)
    consts: list[np.ndarray] = []
    program: list[tuple[Callable[..., Any], tuple, dict, tuple]] = []  # args refer to slots

    def ref(obj: Any) -> Any:
        """A recorded argument as a slot reference, a folded constant, or a plain value."""
        if isinstance(obj, torch.Tensor):
            k = _key(obj)
            if k in values:
                return values[k]
            if obj.untyped_storage().data_ptr() in produced_storage:
                raise _Unsupported("a view of a computed tensor made outside the trace")
            consts.append(obj.detach().cpu().numpy())
            return ("const", consts[-1])
        if isinstance(obj, list | tuple):
            items = [ref(o) for o in obj]
            if any(isinstance(i, tuple) and i and i[0] in ("in", "op") for i in items):
                raise _Unsupported("a list of computed tensors")
            return ("value", type(obj)(i[1] for i in items))
        if isinstance(obj, torch.dtype | torch.device | torch.memory_format | torch.layout) or obj is None:
            return ("value", obj)
        if isinstance(obj, bool | int | float):
            return ("value", obj)
        raise _Unsupported(f"argument {obj!r}")

    for func, args, kwargs, out in ops:
        if not isinstance(out, torch.Tensor):
            raise _Unsupported(f"{func} returns {type(out).__name__}")
        if func in _VALUE_FREE:
            values[_key(out)] = ("const", out.detach().cpu().numpy().copy())
            continue
        if func not in _NUMPY:
            raise _Unsupported(f"no NumPy form for {func}")
        a = [ref(v) for v in args]
        kw = {name: ref(v) for name, v in kwargs.items()
              if name not in ("pin_memory", "layout", "device", "memory_format", "non_blocking")}
        expect = (_np_dtype(out.dtype), tuple(out.shape))
        if all(r[0] in ("const", "value") for r in [*a, *kw.values()]):
            value = np.asarray(_NUMPY[func](*[r[1] for r in a], **{n: r[1] for n, r in kw.items()}))
            if (value.dtype, value.shape) != expect:
                raise _Unsupported(f"{func}: NumPy gives {value.dtype}{value.shape}, torch {expect}")
            values[_key(out)] = ("const", value)
            continue
        produced_storage.add(out.untyped_storage().data_ptr())
        program.append((_NUMPY[func], tuple(a), kw, expect))
        values[_key(out)] = ("op", len(program) - 1)

    result = values.get(_key(grad))
    if result is None or result[0] != "op":
        raise _Unsupported("the gradient is not computed by the trace")
    return _compile(program, result[1], grad.dtype, tuple(grad.shape))


class _Program:
    """The replayable gradient: ``program(x)``; ``program.check(x)`` also asserts that every
    step's NumPy result has the dtype and shape torch's had (NumPy's promotion rules differ from
    torch's for integers, and dtypes do not depend on values, so one checked run settles it)."""

    def __init__(self, steps: list[tuple[Any, tuple, dict, tuple]], dtype: np.dtype,
                 shape: tuple[int, ...]) -> None:
        self.steps, self.dtype, self.shape = steps, dtype, shape

    def __call__(self, x: np.ndarray, check: bool = False) -> np.ndarray:
        slots: list[Any] = []
        for fn, args, kw, expect in self.steps:
            a = [x if k == 0 else slots[v] if k == 1 else v for k, v in args]
            if kw:
                out = fn(*a, **{n: x if k == 0 else slots[v] if k == 1 else v
                                for n, (k, v) in kw.items()})
            else:
                out = fn(*a)
            if check:
                got = np.asarray(out)
                if (got.dtype, got.shape) != expect:
                    raise _Unsupported(f"{fn}: NumPy gives {got.dtype}{got.shape}, torch {expect}")
            slots.append(out)
        return np.asarray(slots[-1]).astype(self.dtype, copy=False).reshape(self.shape)


def _compile(program: list[tuple[Callable[..., Any], tuple, dict, tuple]], out: int,
             dtype: torch.dtype, shape: tuple[int, ...]) -> _Program:
    """Keep only the ops the output needs, over a flat list of slots."""
    needed = {out}
    for i in range(out, -1, -1):
        if i in needed:
            for r in [*program[i][1], *program[i][2].values()]:
                if r[0] == "op":
                    needed.add(r[1])
    order = sorted(needed)
    slot = {i: s for s, i in enumerate(order)}
    # each argument: (kind, payload) with kind 0 = input, 1 = slot, 2 = value
    steps = []
    for i in order:
        fn, args, kw, expect = program[i]

        def conv(r: tuple) -> tuple[int, Any]:
            if r[0] == "in":
                return (0, None)
            if r[0] == "op":
                return (1, slot[r[1]])
            return (2, r[1])

        steps.append((fn, tuple(conv(r) for r in args), {n: conv(r) for n, r in kw.items()},
                      expect))
    return _Program(steps, _np_dtype(dtype), shape)


def record_gradient(
    objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> _Program | None:
    """``x -> d objective / dx`` as a NumPy function, or ``None`` where replay is not safe.

    ``objective`` maps a 1-D CPU tensor to a scalar tensor and may close over constant tensors
    (targets, indices). The gradient is autograd's: it is recorded from one
    ``torch.autograd.grad`` call, then checked against autograd at ``x`` and at a second point.
    """
    if x.device.type != "cpu" or x.ndim != 1 or not x.dtype.is_floating_point:
        return None
    leaf = x.detach().clone().requires_grad_()
    recorder = _Recorder()
    try:
        with torch.enable_grad(), recorder:
            value = objective(leaf)
            (grad,) = torch.autograd.grad(value, leaf)
        with np.errstate(all="ignore"):  # folding constants may overflow, as torch would
            program = _build(recorder.ops, leaf, grad)
        # the same function? compare with autograd here and at a second point
        other = leaf.detach() + 0.1 * (1 + leaf.detach().abs()) * torch.linspace(-1, 1, x.numel(),
                                                                                 dtype=x.dtype)
        other_leaf = other.clone().requires_grad_()
        with torch.enable_grad():
            (other_grad,) = torch.autograd.grad(objective(other_leaf), other_leaf)
        tol = 1e-10 if x.dtype == torch.float64 else 1e-4
        for k, (point, expected) in enumerate(((leaf.detach(), grad), (other, other_grad))):
            with np.errstate(all="ignore"):  # overflow gives inf, as in torch
                got = program(point.numpy().copy(), check=k == 0)
            want = expected.numpy()
            if not np.allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max())):
                return None
    except Exception:  # noqa: BLE001 - anything the replay cannot reproduce: eager autograd
        return None
    return program
