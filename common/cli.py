"""Command-line plumbing: bad input becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from common.errors import DataError


def exit_on_data_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Returns `fn(*args, **kwargs)`; a `DataError` prints `error: <file>: <problem>` and exits with code 2."""
    try:
        return fn(*args, **kwargs)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
