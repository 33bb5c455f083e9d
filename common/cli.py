"""Command-line plumbing: bad input (or an output folder that cannot be written) becomes one line on stderr and exit code 2; the process is set up for CPU work.

Both wrappers call `common.runtime.tune_allocator()` first, so that every project command (train, eval, predict,
prepare) gets the allocator settings that keep large tensors' memory mapped between batches.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from common.errors import DataError
from common.io.atomic import is_unwritable
from common.runtime import tune_allocator

T = TypeVar("T")


def _one_line(err: Exception) -> str:
    """Returns the one-line message of a DataError, or of an OSError on a file the command cannot write."""
    if isinstance(err, DataError):
        return f"error: {err}"
    return f"error: {err.filename}: {err.strerror or err}"  # type: ignore[attr-defined]


def _is_bad_input(err: Exception) -> bool:
    return isinstance(err, DataError) or (is_unwritable(err) and getattr(err, "filename", None) is not None)


def exit_on_data_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Returns `fn(*args, **kwargs)`; a `DataError` (or an unwritable output path) prints `error: <file>: <problem>` and exits with code 2."""
    tune_allocator()
    try:
        return fn(*args, **kwargs)
    except (DataError, OSError) as err:
        if not _is_bad_input(err):
            raise
        print(_one_line(err), file=sys.stderr)
        sys.exit(2)


def exit_code_on_data_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorates a command's `main(argv) -> int`: a `DataError` (or an unwritable output path) prints `error: <file>: <problem>` and returns 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        tune_allocator()
        try:
            return main(*args, **kwargs)
        except (DataError, OSError) as err:
            if not _is_bad_input(err):
                raise
            print(_one_line(err), file=sys.stderr)
            return 2

    return wrapper


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yields `items` under a rich progress bar on stderr (cases done, elapsed and remaining time).

    The bar is drawn on a terminal only: in a log file or a captured stream it would add a line after an error's
    one line, so there it stays silent.
    """
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    yield from track(items, description=description, total=total, console=console,
                     transient=not console.is_terminal, disable=not console.is_terminal)
