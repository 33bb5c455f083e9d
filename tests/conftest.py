"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Runs each test on one torch thread: the tensors are tiny, and a second thread costs more than it gives,
    all the more on a loaded CPU (restored after the test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_fast_dev_run(project: str, experiment: str, out, overrides=(), precision: str = "32") -> dict:
    """Returns the metrics of one `++trainer.fast_dev_run=true` of `experiment` on one CPU process.

    The experiment's own module, data module, losses and callbacks run; `overrides` only shrink sizes and point
    the data at a fixture. DataLoader workers are 0 (the tests' rule) and no logger is written.
    """
    from common.model_card import compose_experiment
    from common.run import train

    cfg = compose_experiment(project, experiment, [
        "trainer=cpu", f"trainer.precision={precision}", "++trainer.fast_dev_run=true", "num_workers=0",
        "logger=none", f"paths.output_dir={out}", *overrides])
    if project == "rstn":  # one run per plane
        from projects.rstn.train import train_planes

        return train_planes(cfg)
    return train(cfg)


@pytest.fixture(scope="session")
def fast_dev_run():
    """The matrix's second axis: `fast_dev_run(project, experiment, out, overrides, precision) -> metrics`."""
    return run_fast_dev_run


def _distinct_like(templates: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Returns, for each name, a tensor of the template's shape and dtype holding `(arange + 1000 k) * scale`
    (k = the name's position), so that no two tensors are equal and a wrong name mapping shows."""
    out = {}
    for k, (name, template) in enumerate(templates.items()):
        values = torch.arange(template.numel(), dtype=torch.float64).reshape(template.shape) + 1000 * k
        out[name] = (values * scale).to(template.dtype) if template.is_floating_point() else values.to(template.dtype)
    return out


@pytest.fixture()
def distinct_like():
    """The factory `distinct_like(templates, scale=1.0)`: reference-layout weights with distinct values."""
    return _distinct_like


class LoggedRun:
    """The TensorBoard events of one short training run, and the checks every project's run must pass."""

    CAPTION_PX = 18  # the caption strip above each panel row (common.panels)
    GAP_PX = 4

    def __init__(self, version_dir) -> None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        self.events = EventAccumulator(str(version_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
        self.scalars = set(self.events.Tags()["scalars"])
        self.images = set(self.events.Tags()["images"])

    def check_shared_names(self, metrics: set[str], learning_rates: set[str], panels: int) -> None:
        """Asserts the names all projects share: `train/loss`, `val/<metric>`, exactly `learning_rates` under
        `lr/`, no Lightning `_step` renames, and `panels` image tags `val/<case>/<axis><index>` of readable size."""
        import re

        assert {"train/loss", "train/loss_epoch", *metrics} <= self.scalars, sorted(self.scalars)
        assert {t for t in self.scalars if t.startswith("lr")} == learning_rates, sorted(self.scalars)
        assert not [t for t in self.scalars if t.endswith("_step")], sorted(self.scalars)
        assert len(self.images) == panels, sorted(self.images)
        for tag in self.images:
            assert re.fullmatch(r"val/[^/]+/[a-z]+\d+", tag), tag
            image = self.events.Images(tag)[-1]
            assert image.height >= 256 + self.CAPTION_PX and image.width >= 4 * 256, (tag, image.width, image.height)

    def columns(self, tag: str, slice_shape: tuple[int, ...]) -> list:
        """Returns the last panel of `tag` as its 4 columns, float `[h, w, 3]` in [0, 1], shrunk back to one pixel
        per voxel (`slice_shape`: the displayed slice's rows and columns in voxels)."""
        import io

        import numpy as np
        from PIL import Image

        png = self.events.Images(tag)[-1].encoded_image_string
        body = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)[self.CAPTION_PX:] / 255
        width = (body.shape[1] - 3 * self.GAP_PX) // 4
        rows, cols = body.shape[0] // slice_shape[0], width // slice_shape[1]  # voxels drawn in proportion
        return [body[:, k * (width + self.GAP_PX): k * (width + self.GAP_PX) + width][::rows, ::cols]
                for k in range(4)]


def run_logged(project: str, experiment: str, out, overrides=()) -> LoggedRun:
    """Trains `experiment` (shrunk by `overrides`) with the TensorBoard logger and the experiment's own callbacks;
    returns its events. One CPU process, fp32, no workers, every step logged, no test pass."""
    from pathlib import Path

    from common.model_card import compose_experiment
    from common.run import train

    cfg = compose_experiment(project, experiment, [
        "trainer=cpu", "trainer.precision=32", "num_workers=0", "logger=tensorboard", f"paths.output_dir={out}",
        "test_after_fit=false", "trainer.log_every_n_steps=1", *overrides])
    if project == "rstn":
        from projects.rstn.train import train_planes

        train_planes(cfg)
    else:
        train(cfg)
    versions = sorted(Path(out).glob("**/tb/version_*"))
    assert len(versions) == 1, versions
    return LoggedRun(versions[0])


@pytest.fixture(scope="session")
def logged_run():
    """`logged_run(project, experiment, out, overrides) -> LoggedRun`: a short run's TensorBoard events."""
    return run_logged


@pytest.fixture()
def no_file_locks(monkeypatch):
    """A file system without locks (Lustre mounted without `flock`): every `flock` fails with ENOLCK."""
    import errno

    import common.io.lock as lock_module

    class NoLocks:
        LOCK_EX = 2

        @staticmethod
        def flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module, "fcntl", NoLocks)
