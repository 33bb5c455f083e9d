"""`python -m projects.saint.demo --out outputs/demo/saint`: SAINT on embedded synthetic CT, end to end.

Writes synthetic CT-like abdomens in the MSD `Task03_Liver` layout (held-out cases take ids from the paper's
test list, so the committed split holds them out), prepares the cache, trains `experiment=demo` (a reduced-
width MSR) for about two minutes, then scores held-out volumes at x4 with the paper's protocol against cubic
interpolation along z, predicts one thick-slice NIfTI to a thin-slice NIfTI, and writes `<out>/result.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.synthetic import ct_abdomen, write_msd_task
from projects.saint.data import load_split

DEMO_SHAPE = (64, 64, 48)
DEMO_SPACING = (0.8, 0.8, 1.25)


def write_demo_msd(root: str | Path, n_train: int = 10, n_test: int = 3, shape: Sequence[int] = DEMO_SHAPE,
                   spacing: Sequence[float] = DEMO_SPACING, seed: int = 0, appledouble: bool = True) -> Path:
    """Writes synthetic CT abdomens as an MSD `Task03_Liver` folder under `root`; returns the task folder.

    Training cases take ids that are not in the paper's test list; the `n_test` held-out cases take the
    first ids of that list (`liver_0`, `liver_1`, ...), half in `imagesTr/` and half in `imagesTs/`.
    """
    paper_test = [c for c in load_split(Path(__file__).parent / "splits" / "paper_test.json")["test"]
                  if c.startswith("liver_")]
    train_ids = [f"liver_{i}" for i in range(2, 400) if f"liver_{i}" not in paper_test][:n_train]
    test_ids = paper_test[:n_test]
    tr, ts = {}, {}
    for k, case in enumerate(train_ids + test_ids):
        hu, organ, affine = ct_abdomen(seed + k, shape, spacing)
        if case in test_ids and k % 2:
            ts[case] = (hu, affine)
        else:
            tr[case] = (hu, organ, affine)
    return write_msd_task(root, "Task03_Liver", tr, ts, appledouble=appledouble)
