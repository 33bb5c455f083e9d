"""Command-line plumbing: bad input becomes one line on stderr and exit code 2; the process is set up for CPU work.

Both wrappers call `common.runtime.tune_allocator()` first, so that every project command (train, eval, predict,
prepare) gets the allocator settings that keep large tensors' memory mapped between batches.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from common.errors import DataError
from common.runtime import tune_allocator


def exit_on_data_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Returns `fn(*args, **kwargs)`; a `DataError` prints `error: <file>: <problem>` and exits with code 2."""
    tune_allocator()
    try:
        return fn(*args, **kwargs)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def exit_code_on_data_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorates a command's `main(argv) -> int`: a `DataError` prints `error: <file>: <problem>` and returns 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        tune_allocator()
        try:
            return main(*args, **kwargs)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper
