"""The one error type that bad input raises anywhere in the project."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data: a file that is missing, truncated, corrupt or inconsistent.

    The message always names the file (or case) and what is wrong with it, so that the
    command-line entry points can print one line and exit non-zero.

    Args:
        path: the file, folder or case id at fault.
        problem: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self) -> tuple[type, tuple[str | None, str]]:
        # Rebuilt from (path, problem), not from the message, so it crosses a process boundary intact
        # (a worker's error reaching the parent through concurrent.futures / multiprocessing).
        return type(self), (self.path, self.problem)
