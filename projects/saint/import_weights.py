"""Import the reference's SAINT checkpoint (`model_comb.pt`: MSR and `RFN.*` in one state dict) into one of ours.

    python -m projects.saint.import_weights SAINT_ckpt/model_comb.pt --out outputs/saint/imported/model_comb.ckpt
    python -m projects.saint.import_weights SAINT_ckpt/model_comb.pt --experiment msd_msr --out ...

Our SAINT keeps the reference's names (`SFENet1`, `RDBs.i.convs.c.conv.0`, `RDBs.i.LFF`, `GFF.{0,1}`,
`GW.meta_block.{0,2,...}`, `RFN.*`), so the import adds the LightningModule's `net.` prefix (DataParallel's
`module.` is removed on reading) and the strict load checks every name and shape. `experiment=msd_rfn` (the
default: the combined checkpoint holds a trained RFN) names the imported file as its own stage-1 checkpoint
(`model.msr_ckpt`), so stage 2 fine-tunes from it; `experiment=msd_msr` fine-tunes the MSR (stage 1).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.errors import DataError
from common.weights import import_main, load_third_party, require_keys
from projects.saint.model import reference_state_dict

PARTS = ("SFENet1.", "RDBs.", "GFF.", "GW.meta_block.", "RFN.")


def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
    """Returns the LightningModule state dict of the reference's combined SAINT checkpoint."""
    if len(sources) != 1:
        raise DataError(None, f"expected one SAINT checkpoint (MSR and RFN together), got {len(sources)} files")
    state = reference_state_dict(load_third_party(sources[0]))
    require_keys(state, PARTS, sources[0], "a combined SAINT checkpoint (MSR + RFN)")
    return {f"net.{key}": value for key, value in state.items()}


def stage_overrides(out: Path, experiment: str) -> list[str]:
    """Returns `model.msr_ckpt=<out>` for a stage-2 experiment: the imported file carries the MSR itself."""
    return [f"model.msr_ckpt={Path(out).resolve()}"] if experiment.endswith("rfn") else []


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("saint", convert, "msd_rfn", __doc__ or "", argv, extra_overrides=stage_overrides)


if __name__ == "__main__":
    sys.exit(main())
