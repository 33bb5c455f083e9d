"""A tiny denoising project used to test the shared driver (run folders, DDP, bf16, resume, panels)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.callbacks import PanelBatch
from common.metrics import ReconstructionVolumeMetric
from common.module import ConfiguredModule, log_train_loss


class TinyDenoiser(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ToyModule(ConfiguredModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_metric = ReconstructionVolumeMetric()

    def training_step(self, batch, batch_idx):
        noisy, clean, _ = batch
        loss = nn.functional.l1_loss(self.net(noisy), clean)
        log_train_loss(self, loss, len(noisy))
        return loss

    def _evaluate(self, batch, stage: str):
        noisy, clean, index = batch
        pred = self.net(noisy)
        case_ids = [f"case{int(i) // 4}" for i in index]
        self.val_metric.update(pred[:, 0], clean[:, 0], case_ids, index % 4, data_range=torch.ones(len(index)))
        self.log(f"{stage}/loss", nn.functional.l1_loss(pred, clean), sync_dist=True)
        return {"panels": PanelBatch(input=noisy[:, 0], prediction=pred[:, 0], reference=clean[:, 0],
                                     case_ids=case_ids, slice_index=index % 4)}

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self):
        self.log_dict({f"val/{k}": v for k, v in self.val_metric.compute().items()})
        self.val_metric.reset()

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_test_epoch_end(self):
        self.log_dict({f"test/{k}": v for k, v in self.val_metric.compute().items()})
        self.val_metric.reset()


class ToyData(pl.LightningDataModule):
    def __init__(self, n: int = 16, size: int = 16, batch_size: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        clean = torch.rand(n, 1, size, size, generator=g)
        noisy = clean + 0.1 * torch.randn(n, 1, size, size, generator=g)
        self.data = TensorDataset(noisy, clean, torch.arange(n))
        self.batch_size = batch_size

    def case_affine(self, case_id: str) -> np.ndarray:
        # stored like DICOM (x towards the patient's left, y towards posterior): panels show each slice transposed
        return np.diag([-1.0, -1.0, 1.0, 1.0])

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)
