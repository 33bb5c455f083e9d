"""The `predict` command line every project shares: arguments, renamed flags, cases in and out, device, precision.

    python -m projects.<p>.predict -i/--input FILE|FOLDER -o/--output FILE|FOLDER --ckpt CKPT
                                   [--device auto|cpu|cuda] [--precision auto|32|bf16] [project flags]

A file in gives a file out. A folder in gives a folder out: one output per input case, named like its input
(a DICOM series folder `case/` gives `case.nii.gz`), as nnU-Net's predictor does. A CT project also takes a DICOM
series wherever it takes a NIfTI file: a folder holding the series' files is one case; so is a folder whose
DICOM files lie in subfolders (`<patient>/<study>/<series>/`) when `-o` names a NIfTI file, while with an output
folder each of its subfolders holding DICOM files is a case.
Each case is written atomically, under a progress bar on stderr.

A renamed flag keeps working for one release as a hidden alias that prints one line naming its new form.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import progress
from common.errors import DataError
from common.io.nifti import Volume, load_nifti
from common.runtime import choose_precision

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIX = ".dcm"
_DICOM_MAGIC_OFFSET = 128  # a DICOM Part 10 file holds "DICM" after its 128-byte preamble


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def predict_parser(description: str, input_help: str, output_help: str, ckpt_help: str,
                   ckpt_action: str = "store") -> argparse.ArgumentParser:
    """Returns a parser with the contract's arguments: -i/--input, -o/--output, --ckpt, --device, --precision.

    Args:
        description: the first line of `--help`.
        input_help, output_help, ckpt_help: what the project reads and writes.
        ckpt_action: "store", or "append" for a project that takes several checkpoints.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-i", "--input", help=f"{input_help}; a folder of them gives a folder of outputs")
    parser.add_argument("-o", "--output", help=f"{output_help}; a folder when the input is a folder")
    parser.add_argument("--ckpt", action=ckpt_action, help=ckpt_help)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                        help="auto: bf16 where the device computes in bf16 natively, else 32")
    return parser


class _RenamedFlag(argparse.Action):
    """A hidden former flag: prints one line naming the new form, then acts as the new flag (with `value`)."""

    def __init__(self, option_strings: list[str], dest: str, target: argparse.Action, new: str,
                 value: Any = None, **kwargs: Any) -> None:
        kwargs["nargs"] = 0 if value is not None else target.nargs
        super().__init__(option_strings, dest=target.dest, help=argparse.SUPPRESS, **kwargs)
        self.target, self.new, self.value = target, new, value

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is now {self.new} (the old name goes in the next release)", file=sys.stderr)
        self.target(parser, namespace, self.value if self.value is not None else values, option_string)


def rename_flag(parser: argparse.ArgumentParser, old: str, new: str, value: Any = None) -> None:
    """Keeps `old` working as a hidden alias of the parser's flag `new` (e.g. `--out` of `--output`).

    Args:
        parser: holds `new` already.
        old: the former flag.
        new: the new flag as the user writes it; with `value`, e.g. `--precision bf16` for a former `--bf16`.
        value: the value the former (argument-less) flag stands for.
    """
    target = parser._option_string_actions[new.split()[0]]
    parser.add_argument(old, action=_RenamedFlag, target=target, new=new, value=value)


def parse_predict_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Returns the parsed arguments with `device` and `precision` resolved ("cpu"/"cuda", "32"/"bf16").

    Exits with code 2 and argparse's usage line when -i, -o or --ckpt is missing (also under a former name) or
    CUDA is asked for on a machine without it.
    """
    args = parser.parse_args(argv)
    missing = [flag for flag, dest in (("-i/--input", "input"), ("-o/--output", "output"), ("--ckpt", "ckpt"))
               if not getattr(args, dest, None)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        args.device = choose_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    args.precision = choose_precision(args.precision, args.device)
    return args


def choose_device(requested: str = "auto") -> str:
    """Returns "cuda" or "cpu": auto takes CUDA when torch sees a GPU.

    Raises:
        ValueError: "cuda" asked for and no GPU is visible, or an unknown device.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device on this machine")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One input of a predict run and where its output goes.

    Attributes:
        name: the case name (the input's file name without its suffix, or the DICOM series folder's name).
        source: the input file, or the folder holding a DICOM series.
        target: the output file.
    """

    name: str
    source: Path
    target: Path

    @property
    def is_dicom(self) -> bool:
        """Whether the input is a DICOM series folder."""
        return self.source.is_dir()


def _strip(name: str, suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series(folder: Path, recursive: bool = False) -> bool:
    """Returns whether `folder` holds DICOM files (directly, or anywhere below it with `recursive`)."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return any(p.is_file() and not p.name.startswith(".") and _is_dicom_file(p) for p in files)


def _folder_cases(folder: Path, suffixes: Sequence[str], dicom: bool) -> list[tuple[str, Path]]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        name = _strip(path.name, suffixes) if path.is_file() else None
        if name is None and dicom and path.is_dir() and is_dicom_series(path, recursive=True):
            name = path.name
        if name is None:
            continue
        if name in found:
            raise DataError(folder, f"two inputs for case {name!r}: {found[name].name}, {path.name}")
        found[name] = path
    if not found:
        kinds = " / ".join(suffixes) + (" files or DICOM series folders" if dicom else " files")
        raise DataError(folder, f"no {kinds} found")
    return sorted(found.items())


def list_cases(input_path: str | Path, output_path: str | Path, suffixes: Sequence[str] = NIFTI_SUFFIXES,
               dicom: bool = False, out_suffix: str | None = None) -> list[Case]:
    """Returns the cases of a predict run: one for a file (or a DICOM series folder), one per input in a folder.

    Args:
        input_path: a file, a folder of files (and, with `dicom`, of DICOM series folders), or a series folder
            (its DICOM files directly in it, or anywhere below it when `output_path` names a NIfTI file).
        output_path: the output file for one case; the output folder for a folder of cases.
        suffixes: the input file endings, longest first.
        dicom: accept DICOM series folders wherever a file is accepted.
        out_suffix: the output ending (default: the input's own; ".nii.gz" for a DICOM series).

    Raises:
        DataError: the input is missing, of an unknown kind, or a folder without cases; the output of a
            folder of cases is an existing file.
    """
    source, target = Path(input_path), Path(output_path)
    if not source.exists():
        raise DataError(source, "not found")

    def out_name(name: str, path: Path) -> str:
        own = next((s for s in suffixes if path.name.endswith(s)), NIFTI_SUFFIXES[0])
        return name + (out_suffix or (NIFTI_SUFFIXES[0] if path.is_dir() else own))

    names_a_file = not target.is_dir() and _strip(target.name, NIFTI_SUFFIXES) is not None
    one_series = dicom and source.is_dir() and (is_dicom_series(source) or (names_a_file and is_dicom_series(source, recursive=True)))
    if source.is_file() or one_series:
        name = _strip(source.name, suffixes) if source.is_file() else source.name
        if name is None:
            raise DataError(source, f"not a {' / '.join(suffixes)} file")
        return [Case(name, source, target / out_name(name, source) if target.is_dir() else target)]
    if target.is_file():
        raise DataError(target, f"is a file, but the input {source} is a folder: give an output folder")
    return [Case(name, path, target / out_name(name, path))
            for name, path in _folder_cases(source, suffixes, dicom)]


def load_ct(case: Case, dtype: type = np.float32) -> Volume:
    """Returns the volume of a CT case: its NIfTI file, or its DICOM series (HU, RAS affine).

    Raises:
        DataError: unreadable file or series (naming it).
    """
    if case.is_dicom:
        from common.io.dicom import load_dicom_series  # pydicom is imported only for a series

        return load_dicom_series(case.source, dtype=dtype)
    return load_nifti(case.source, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------
def predict_cases(cases: Sequence[Case], predict_one: Callable[[Case], Path], what: str = "predict") -> list[Path]:
    """Runs `predict_one(case) -> written path` on every case under a progress bar; returns the written paths."""
    written = [predict_one(case) for case in progress(cases, f"{what}: {len(cases)} case(s)", len(cases))]
    print(f"wrote {written[0] if len(written) == 1 else f'{len(written)} files to {written[0].parent}'}")
    return written
