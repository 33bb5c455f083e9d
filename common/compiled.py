"""Compiled inference for whole-volume work: one graph for one batch shape, the last batch padded to it.

`torch.compile` fuses a network's elementwise chains into its convolutions' neighbours; on a 2-core CPU it took
0.73x the CPU time of SPiN's BatchNorm-folded network on full-size slices, but compiling costs 40-100 s per input
shape there (`benchmarks/results/speed_levers.md`). Compiling for every batch size a volume produces (and
`dynamic=True` still recompiled for batches of 1 and 3) would cost more than it saves, so `FixedBatch` compiles
once: `common.inference.predict_by_slices` pads a volume's last, shorter batch to the full batch size, and runs
the memory budget's probe passes (1 and 2 slices) on the eager function. It pays off on many slices or many
volumes (an evaluation set, a folder of scans); for one scan the eager network is faster end to end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class FixedBatch:
    """`fn` compiled for the one batch shape `common.inference.predict_by_slices` then gives it.

    Attributes:
        eager: the uncompiled `fn` (what memory probes and other batch shapes run).
        fixed_batch: True: the caller pads every batch to one size.
    """

    fixed_batch = True

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.eager = fn
        self._compiled = torch.compile(fn, dynamic=False)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._compiled(batch)


def maybe_compiled(fn: Callable[[torch.Tensor], torch.Tensor], compile_graph: bool
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns `FixedBatch(fn)` when `compile_graph`, else `fn` unchanged."""
    return FixedBatch(fn) if compile_graph else fn
