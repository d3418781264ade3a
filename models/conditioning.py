"""Photometric conditioning: the cutout's aperture-photometry features as extra image information.

A network trained for minutes on a CPU extracts little of what a 5-band image carries (docs/MODELS.md:
the supervised CNN and the jointly trained ResNet tokens stay far from what gradient boosting reads off
aperture photometry). With ``model.photometry: true`` the networks also receive the features of
:func:`datasets.photometry.image_features` (asinh magnitudes and colours in six apertures, concentrations,
colour gradients, size, ellipticity; measured once per galaxy on the original cutout): the diffusion models
as extra cross-attention tokens beside the ResNet's, the contrastive image encoder concatenated to its
pooled ResNet features. The paper's configuration keeps it off.

The features are standardised with the TRAINING split's mean and standard deviation, stored in the module's
buffers (set by the training task, saved in the checkpoint), so a model needs nothing else to condition.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["PhotometryEncoder", "concat_photometry"]


class PhotometryEncoder(nn.Module):
    """Standardise a photometric feature vector and map it to ``n_tokens`` vectors of ``dim`` channels.

    Parameters
    ----------
    n_features : int
        Length of the feature vector (``datasets.photometry.N_FEATURES``).
    dim : int
        Output channels per token.
    n_tokens : int
        Tokens produced (the output is (B, n_tokens, dim)).
    hidden : int
        Width of the two hidden layers of the MLP.
    """

    def __init__(self, n_features: int, dim: int, n_tokens: int = 1, hidden: int = 256):
        super().__init__()
        self.n_features, self.dim, self.n_tokens = n_features, dim, n_tokens
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, n_tokens * dim))

    @torch.no_grad()
    def set_statistics(self, mean, std) -> None:
        """Standardisation of the features (the training split's per-feature mean and std)."""
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        self.feature_mean.copy_(mean)
        # a constant feature (e.g. an offset that is always 0) must not blow up
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"photometry: expected (B, {self.n_features}) features, "
                             f"got {tuple(features.shape)}")
        z = ((features.float() - self.feature_mean) / self.feature_std).clamp(-8.0, 8.0)
        return self.mlp(z.to(self.mlp[0].weight.dtype)).reshape(features.shape[0], self.n_tokens, self.dim)


def concat_photometry(feat: torch.Tensor, encoder: PhotometryEncoder | None, photometry,
                      what: str) -> torch.Tensor:
    """Pooled image features (B, C) -> (B, C + encoder.dim) with the photometry embedding appended, for a
    model built with ``model.photometry`` (``encoder`` not None); unchanged without one. ``what`` names the
    model in the error raised when its photometry is missing."""
    if encoder is None:
        return feat
    if photometry is None:
        raise ValueError(f"this {what} is conditioned on photometry (model.photometry): pass photometry=")
    return torch.cat([feat, encoder(photometry)[:, 0].to(feat.dtype)], dim=-1)


def set_photometry_statistics(encoder: PhotometryEncoder | None, features) -> None:
    """Set ``encoder``'s standardisation from a (N, F) array of training features (no-op without one)."""
    if encoder is None:
        return
    import numpy as np
    x = np.asarray(features, dtype=np.float64)
    encoder.set_statistics(x.mean(0), x.std(0))
