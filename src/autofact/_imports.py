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
