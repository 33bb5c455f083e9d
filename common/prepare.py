"""The parts of `python -m projects.<p>.prepare` that every project shares: data locations, flags, hints.

Data locations follow `conf/paths/default.yaml`, so a prepare run and a training config agree without being
told: the data root is `$MEDIMG_DATA` (or `<repo>/data` when it is unset), raw downloads live in
`<data root>/raw/<dataset>`, and a project's cache in `<data root>/cache/<project>`.

Every prepare command takes `--raw DIR --cache DIR [--overwrite]` (`prepare_parser`); the flags a project used
before stay for one release as hidden aliases that print one line naming the new flag (`add_renamed_flag`).
A data module whose prepared data is missing raises the `DataError` of `not_prepared`, which names the
prepare command that makes the data and where the raw data comes from.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Returns `$MEDIMG_DATA`, or `<repo>/data` when it is unset or empty (as `paths.data_dir` does)."""
    return Path(os.environ.get("MEDIMG_DATA") or REPO_ROOT / "data")


def cache_root(project: str) -> Path:
    """Returns the default cache folder of a project: `<data root>/cache/<project>` (= `paths.cache_dir`)."""
    return data_root() / "cache" / project


def raw_root(dataset: str) -> Path:
    """Returns the default folder of a raw data set: `<data root>/raw/<dataset>`."""
    return data_root() / "raw" / dataset


def prepare_command(project: str, raw: str, cache: str | os.PathLike, extra: str = "") -> str:
    """Returns the command line that prepares a project's data: `python -m projects.<p>.prepare --raw ...`."""
    return f"python -m projects.{project}.prepare --raw {raw} --cache {cache}{extra}"


def not_prepared(path: str | os.PathLike, problem: str, project: str, raw: str, source: str,
                 cache: str | os.PathLike | None = None, extra: str = "") -> DataError:
    """Returns the error of a command whose prepared data is missing: what is missing, how to make it.

    Args:
        path: the folder at fault (usually the cache).
        problem: what is missing, e.g. "191 scans of atlas_traintest are not in the cache".
        project: the project's package name (`spin`, `fastmri_gen`, ...).
        raw: what to pass as `--raw`, usually a placeholder such as `<ATLAS R1.2 standard_MNI folder>`.
        source: where the raw data comes from (name and address).
        cache: what to pass as `--cache` (default: `path`).
        extra: project options after `--cache`, e.g. " --layout nih".
    """
    command = prepare_command(project, raw, path if cache is None else cache, extra)
    return DataError(path, f"{problem}; run {command} ({source})")


class _RenamedFlag(argparse.Action):
    """An old flag that still works for one release: stores into the new flag's destination, says so once."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str = "", **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is now {self.new_flag}; the old name goes in the next release",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, switch: bool = False,
                     nargs: str | None = None) -> None:
    """Adds `old` as a hidden alias of the option `new` (a switch such as `--force` for `--overwrite`)."""
    dest = new.lstrip("-").replace("-", "_")
    options: dict[str, Any] = {"nargs": 0, "const": True} if switch else {"nargs": nargs}
    parser.add_argument(old, dest=dest, action=_RenamedFlag, new_flag=new, help=argparse.SUPPRESS, **options)


def prepare_parser(project: str, description: str, raw_help: str, raw_default: str | os.PathLike | None,
                   cache_default: str | os.PathLike | None = None, raw_nargs: str | None = None
                   ) -> argparse.ArgumentParser:
    """Returns a parser with the flags every prepare command takes: `--raw`, `--cache`, `--overwrite`.

    Args:
        project: the project's package name.
        description: the first line of `--help`.
        raw_help: what `--raw` points at (the raw layout).
        raw_default: the default of `--raw`; None: the project fills it in after parsing (the help says so).
        cache_default: the default of `--cache`: None gives `cache_root(project)`, "" leaves it to the project
            after parsing (RSTN's depends on `--layout`).
        raw_nargs: "+" when several raw folders are accepted.
    """
    cache = cache_root(project) if cache_default is None else cache_default
    parser = argparse.ArgumentParser(prog=f"python -m projects.{project}.prepare", description=description)
    raw = None if raw_default is None else [str(raw_default)] if raw_nargs else str(raw_default)
    parser.add_argument("--raw", nargs=raw_nargs, default=raw,
                        help=f"{raw_help} (default: {raw_default or 'by the project options'})")
    parser.add_argument("--cache", default=str(cache) if cache else None,
                        help=f"cache folder to write, read by the configs as data.cache_dir (default: "
                             f"{cache or 'by the project options'})")
    parser.add_argument("--overwrite", action="store_true", help="prepare again the cases already in the cache")
    return parser
