"""``python -m autofact``: the same as the ``autofact`` command."""

from .cli import run

run()
