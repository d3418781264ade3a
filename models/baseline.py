"""The supervised image -> properties baseline network: a ResNet trunk, 3 regression heads and 1 AGN logit.

Its targets, loss and training task live in training/baseline.py; this module is the network alone, so
evaluation rebuilds it from a checkpoint (``models.loading.load_model(path, "baseline")``) without training/.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from models.resnet2d import resnet18, resnet50

__all__ = ["REGRESSION", "N_OUT", "BaselineNet"]

REGRESSION = ("z", "dn4000", "log_sigma_v")
N_OUT = len(REGRESSION) + 1  # + AGN logit


class BaselineNet(nn.Module):
    """ResNet trunk -> linear head with 3 standardised regressions and 1 AGN logit.

    The regression targets' training-split mean and std are buffers (``target_mean``, ``target_std``), so a
    checkpoint alone predicts in physical units."""

    def __init__(self, image_encoder: str = "resnet18", image_width: int = 64):
        super().__init__()
        ctor = resnet18 if image_encoder == "resnet18" else resnet50
        kw = {"width": image_width} if "width" in inspect.signature(ctor).parameters else {}
        self.encoder = ctor(5, **kw)
        self.head = nn.Linear(self.encoder.out_channels, N_OUT)
        self.register_buffer("target_mean", torch.zeros(len(REGRESSION)))
        self.register_buffer("target_std", torch.ones(len(REGRESSION)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Standardised, centre-cropped images (B, 5, 64, 64) -> z, dn4000, sigma_v (km/s), agn_prob."""
        self.eval()
        out = self(images).float()
        reg = out[:, :3] * self.target_std + self.target_mean
        return {
            "z": reg[:, 0].numpy(),
            "dn4000": reg[:, 1].numpy(),
            "sigma_v": (10 ** reg[:, 2]).numpy(),
            "agn_prob": torch.sigmoid(out[:, 3]).numpy(),
        }
