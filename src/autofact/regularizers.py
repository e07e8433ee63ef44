"""Built-in regularizers: functions ``reg(param) -> scalar`` of one parameter tensor.

``l2(beta)`` is the post's ``beta/2 * ||X||^2``. Names given to the model are turned into these with
the model's strength ``beta``; a callable is used as it is (it carries its own strength).

A regularizer that is a sum over its entries may say so with ``reg.separable = True`` (the
built-ins do): the library then applies it to large parameters a slice of rows at a time, which
bounds the memory of its autograd temporaries, and the alternating Newton solver (``als``) may run
it. An undeclared one is checked on a small probe by :func:`separability`; declare
``reg.separable = False`` to keep it whole.

>>> import torch
>>> l2(0.5)(torch.ones(2, 2))
tensor(1.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["l2", "l1", "none", "get_regularizer", "separability", "REGULARIZERS"]

Regularizer = Callable[[torch.Tensor], torch.Tensor]


def l2(beta: float = 0.02) -> Regularizer:
    """``beta/2 * sum(x**2)``."""

    def l2_reg(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * beta * (x * x).sum()

    l2_reg.__qualname__ = f"l2(beta={beta!r})"
    l2_reg.separable = True  # type: ignore[attr-defined]
    return l2_reg


def l1(beta: float = 0.02) -> Regularizer:
    """``beta * sum(|x|)``."""

    def l1_reg(x: torch.Tensor) -> torch.Tensor:
        return beta * x.abs().sum()

    l1_reg.__qualname__ = f"l1(beta={beta!r})"
    l1_reg.separable = True  # type: ignore[attr-defined]
    return l1_reg


def none(beta: float = 0.0) -> Regularizer:
    """No regularization."""

    def no_reg(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())

    no_reg.__qualname__ = "none()"
    no_reg.separable = True  # type: ignore[attr-defined]
    return no_reg


REGULARIZERS: dict[str, Callable[[float], Regularizer]] = {"l2": l2, "l1": l1, "none": none}


def get_regularizer(reg: str | Regularizer | None, beta: float) -> Regularizer:
    """A regularizer from a built-in name (with strength ``beta``), a path, or a callable."""
    if reg is None:
        return none()
    if isinstance(reg, str):
        if reg in REGULARIZERS:
            return REGULARIZERS[reg](beta)
        if ":" in reg:
            from ._imports import call_if_factory, import_object

            # a factory such as l2 is called with its defaults
            return call_if_factory(import_object(reg, what="regularization"), 1)  # type: ignore[no-any-return]
    elif callable(reg):
        return reg
    raise ValueError(
        f"regularization must be one of {sorted(REGULARIZERS)}, a 'module:function' path, "
        f"or a callable reg(param) -> scalar; got {reg!r}"
    )


def _name(reg: Regularizer) -> str:
    return getattr(reg, "__qualname__", None) or repr(reg)


def separability(reg: Regularizer) -> tuple[bool, str]:
    """Whether ``reg`` is a sum over its entries (up to a constant), and why we think so.

    ``reg.separable`` (``True``/``False``) is taken at its word. Otherwise ``reg`` is probed in
    float64 on a fixed 4 x 3 matrix ``X``: it must equal the sum of its values on ``X``'s single
    rows (each less its value at zero), and its Hessian there (by autograd) must be diagonal.
    Both hold for any sum over entries; a norm, a max or anything coupling entries fails one.
    """
    declared = getattr(reg, "separable", None)
    if isinstance(declared, bool):
        return declared, "declared" + ("" if declared else " reg.separable = False")
    X = (torch.arange(12, dtype=torch.float64).reshape(4, 3) * 0.37).sin() + 0.1

    def scalar(x: torch.Tensor) -> torch.Tensor:
        return reg(x).reshape(())

    try:
        whole = float(scalar(X)) - float(scalar(torch.zeros_like(X)))
        rows = sum(float(scalar(X[r : r + 1])) - float(scalar(torch.zeros_like(X[r : r + 1])))
                   for r in range(len(X)))
        hess = torch.autograd.functional.hessian(lambda v: scalar(v.reshape(X.shape)),
                                                 X.reshape(-1))
    except Exception as exc:  # the user's code: its failure only means "not shown separable"
        return False, f"it failed on a float64 probe ({exc!r})"
    off = hess - torch.diag(torch.diagonal(hess))
    scale = 1.0 + float(torch.nan_to_num(torch.diagonal(hess)).abs().max())
    if bool((torch.nan_to_num(off).abs() > 1e-10 * scale).any()):
        return False, "its Hessian on a probe is not diagonal"
    if not math.isclose(whole, rows, rel_tol=1e-9, abs_tol=1e-12 * (1 + abs(whole))):
        return False, (f"on a probe matrix it is {whole:.6g}, not the sum of its values on the "
                       f"single rows, {rows:.6g}")
    return True, "verified on a probe"
