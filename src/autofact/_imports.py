"""Import ``module:function`` paths (user losses and regularizers) without evaluating any code."""

from __future__ import annotations

import importlib
import re
from typing import Any

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_object(path: str, *, what: str) -> Any:
    """The object named by ``'package.module:name'``; a ValueError that says why otherwise."""
    if not _PATH.match(path):
        raise ValueError(f"{what} path must look like 'package.module:function', got {path!r}")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for {what} {path!r}: {exc}; "
            "is it installed or on PYTHONPATH?"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (for {what} {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is not callable")
    return obj


def object_path(obj: Any) -> str | None:
    """``'module:qualname'`` for an importable, module-level callable, else ``None``."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        found = import_object(f"{module}:{qualname}", what="object")
    except ValueError:
        return None
    return f"{module}:{qualname}" if found is obj else None


def call_if_factory(obj: Any, n_args: int) -> Any:
    """A factory such as ``huber`` or ``l2`` named by path is called with its defaults: a loss
    takes two required arguments and a regularizer one, a factory none."""
    import inspect

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj
    required = [
        p for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return obj() if not required and n_args > 0 else obj


def is_path(text: Any) -> bool:
    """Whether ``text`` has the form ``'package.module:function'`` (nothing is imported)."""
    return isinstance(text, str) and bool(_PATH.match(text))


class NotLoaded:
    """Stands in for a loss or regularizer that a model file names by ``'module:function'``.

    Loading a model never imports or calls what its file names (the file may come from anyone).
    Predictions need only the saved arrays; whatever needs the function itself (fold-in, a
    refit) calls this stand-in, which raises a ``ValueError`` asking for the function:
    ``autofact.load(path, loss=mymod.cauchy)``. It saves again under the same path.
    """

    def __init__(self, path: str, what: str, file: str, link: str = "identity") -> None:
        self.path = path
        self.what = what
        self.file = file
        self.link = link
        if what == "loss":
            self.spec: dict[str, object] = {"path": path}
            if link != "identity":
                self.spec["link"] = link
            if link == "custom":
                self.inverse_link = self._missing
            elif link != "identity":
                from .losses import INVERSE_LINKS

                self.inverse_link = INVERSE_LINKS[link]

    @property
    def message(self) -> str:
        module, _, function = self.path.partition(":")
        return (
            f"this model was trained with {self.what} {self.path!r}; pass it to load: "
            f"autofact.load({self.file!r}, {self.what}={module}.{function}) (a model file's "
            "functions are never imported from the file)"
        )

    def _missing(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(self.message)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(self.message)

    def __repr__(self) -> str:
        return f"<{self.what} {self.path!r}, not imported>"
