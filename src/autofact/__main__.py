"""``python -m autofact``: the same as the ``autofact`` command."""

from .cli import main

raise SystemExit(main())
