"""1-D ResNet spectrum encoder of the contrastive networks.

Per level: two residual blocks (conv k3, GroupNorm(8), SiLU, twice) then a stride-2 conv k3. The width
changes in the first residual block of a level (with a 1x1 projection on the shortcut), so the
downsampling conv keeps the width. Global mean pool and a linear layer to the latent size close it.
At base 64 and multipliers (1, 2, 4, 8, 16) this is 19.5 M parameters + the final linear layer
(19.8 M at latent 256), the paper's ~19.7 M.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResBlock1d", "SpectrumResNet"]


class ResBlock1d(nn.Module):
    """Pre-activation-free residual block: (conv k3, GroupNorm, SiLU) x 2 plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Conv1d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
        )
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else nn.Conv1d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class SpectrumResNet(nn.Module):
    """Spectrum (B, L) or (B, 1, L) -> latent vector (B, latent_dim), not normalised.

    Parameters
    ----------
    latent_dim : int
        Output size (256 in both contrastive stages and the generative config).
    base : int
        Width of the first level.
    mults : sequence of int
        Width multiplier per level; each level ends with a stride-2 conv.
    in_channels : int
        Input channels (1 for a flux vector).
    groups : int
        GroupNorm groups.
    """

    def __init__(
        self,
        latent_dim: int = 256,
        base: int = 64,
        mults: tuple[int, ...] = (1, 2, 4, 8, 16),
        in_channels: int = 1,
        groups: int = 8,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Conv1d(in_channels, base, 3, padding=1)
        levels, ch = [], base
        for m in mults:
            width = base * m
            levels.append(
                nn.Sequential(
                    ResBlock1d(ch, width, groups),
                    ResBlock1d(width, width, groups),
                    nn.Conv1d(width, width, 3, stride=2, padding=1),
                )
            )
            ch = width
        self.levels = nn.Sequential(*levels)
        self.head = nn.Linear(ch, latent_dim)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.ndim == 2:
            spec = spec.unsqueeze(1)
        if spec.ndim != 3 or spec.shape[1] != self.in_channels:
            raise ValueError(
                f"SpectrumResNet expects spectra (B, L) or (B, {self.in_channels}, L), "
                f"got {tuple(spec.shape)}"
            )
        h = self.levels(self.stem(spec))
        return self.head(h.mean(dim=-1))
