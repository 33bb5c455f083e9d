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
