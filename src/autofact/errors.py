"""The exceptions autofact raises beyond ``ValueError`` and ``TypeError``."""

from __future__ import annotations

__all__ = ["FitError", "UnknownIdError"]


class FitError(RuntimeError):
    """Training stopped because the objective (or a gradient) became NaN or infinite, or grew
    without bound (``J - J0 > 1000 * max(|J0|, 1)``, ``J0`` the objective at the start).

    The model keeps the last parameters whose objective was checked; ``epoch`` is where it
    happened, and the message suggests a smaller learning rate.
    """

    def __init__(self, message: str, *, epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch


class UnknownIdError(ValueError, KeyError):
    """A user or item id that is not in the training data (a ``ValueError`` and a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
