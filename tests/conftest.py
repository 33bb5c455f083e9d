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
