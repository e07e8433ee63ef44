"""The exceptions autofact raises beyond ``ValueError`` and ``TypeError``."""

from __future__ import annotations

__all__ = ["FitError", "UnknownIdError"]


class FitError(RuntimeError):
    """Training stopped because the objective became NaN or infinite.

    The model keeps the last finite parameters; ``epoch`` is where it happened.
    """

    def __init__(self, message: str, *, epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch


class UnknownIdError(ValueError, KeyError):
    """A user or item id that is not in the training data (a ``ValueError`` and a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
