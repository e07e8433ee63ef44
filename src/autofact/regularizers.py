"""Built-in regularizers: functions ``reg(param) -> scalar`` of one parameter tensor.

``l2(beta)`` is the post's ``beta/2 * ||X||^2``. Names given to the model are turned into these with
the model's strength ``beta``; a callable is used as it is (it carries its own strength).

A regularizer that is a sum over its entries may say so with ``reg.separable = True`` (the
built-ins do): the library then applies it to large parameters a slice of rows at a time, which
bounds the memory of its autograd temporaries.

>>> import torch
>>> l2(0.5)(torch.ones(2, 2))
tensor(1.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["l2", "l1", "none", "get_regularizer", "REGULARIZERS"]

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
