"""The supervised image -> properties baseline network: a ResNet trunk, 3 regression heads and 1 AGN logit.

Its targets, loss and training task live in training/baseline.py; this module is the network alone, so
evaluation rebuilds it from a checkpoint (``models.loading.load_model(path, "baseline")``) without training/.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from models.conditioning import PhotometryEncoder, concat_photometry
from models.resnet2d import resnet18, resnet50

__all__ = ["REGRESSION", "N_OUT", "BaselineNet"]

REGRESSION = ("z", "dn4000", "log_sigma_v")
N_OUT = len(REGRESSION) + 1  # + AGN logit


class BaselineNet(nn.Module):
    """ResNet trunk -> linear head with 3 standardised regressions and 1 AGN logit.

    The regression targets' training-split mean and std are buffers (``target_mean``, ``target_std``), so a
    checkpoint alone predicts in physical units. With ``photometry_features`` > 0 (``model.photometry``) the
    cutout's aperture-photometry features go through a :class:`PhotometryEncoder` whose output is
    concatenated to the pooled ResNet features, as in the contrastive image encoder."""

    def __init__(self, image_encoder: str = "resnet18", image_width: int = 64, photometry_features: int = 0):
        super().__init__()
        ctor = resnet18 if image_encoder == "resnet18" else resnet50
        kw = {"width": image_width} if "width" in inspect.signature(ctor).parameters else {}
        self.encoder = ctor(5, **kw)
        width = self.encoder.out_channels
        self.photometry = PhotometryEncoder(photometry_features, width) if photometry_features else None
        self.head = nn.Linear(width * (2 if photometry_features else 1), N_OUT)
        self.register_buffer("target_mean", torch.zeros(len(REGRESSION)))
        self.register_buffer("target_std", torch.ones(len(REGRESSION)))

    def forward(self, images: torch.Tensor, photometry: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(concat_photometry(self.encoder(images), self.photometry, photometry, "baseline"))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, photometry: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Standardised, centre-cropped images (B, 5, 64, 64) (+ their photometry features when the model
        takes them) -> z, dn4000, sigma_v (km/s), agn_prob."""
        self.eval()
        out = self(images, photometry).float()
        reg = out[:, :3] * self.target_std + self.target_mean
        return {
            "z": reg[:, 0].numpy(),
            "dn4000": reg[:, 1].numpy(),
            "sigma_v": (10 ** reg[:, 2]).numpy(),
            "agn_prob": torch.sigmoid(out[:, 3]).numpy(),
        }
