"""2-D ResNets (He et al. 2016) for 5-band galaxy images.

Written from the architecture description (no torchvision dependency): a 7x7 stride-2 stem conv and a
3x3 stride-2 max-pool, four stages with strides 1, 2, 2, 2, BatchNorm everywhere. ResNet-50 puts the
stride on the 3x3 conv of the bottleneck ("v1.5"). A 64x64 image gives a 2x2 final feature map, whose
four positions are the cross-attention tokens of the diffusion models.
"""

from __future__ import annotations

import torch
from torch import nn

from surveys.description import SURVEY

__all__ = ["BasicBlock", "Bottleneck", "ResNet2d", "resnet18", "resnet50"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ResNet2d(nn.Module):
    """ResNet trunk without a classifier head.

    Parameters
    ----------
    block : type
        ``BasicBlock`` or ``Bottleneck``.
    layers : sequence of int
        Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    in_channels : int
        Image bands (default: the survey description's, 5 for SDSS u, g, r, i, z).
    width : int
        Stem and first-stage width (64 = standard); stage i has ``width * 2**i``. Smaller values
        make test- and CPU-sized models.
    """

    def __init__(self, block: type, layers: tuple[int, ...], in_channels: int = SURVEY.n_bands,
                 width: int = 64):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, channels = [], width
        for i, n in enumerate(layers):
            stage_width = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(channels, stage_width, stride))
                channels = stage_width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final spatial feature map, (B, C, H/32, W/32): (B, 512 or 2048, 2, 2) for 64x64 input."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNet2d expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled feature vector, (B, C)."""
        return self.forward_features(x).mean(dim=(2, 3))


def resnet18(in_channels: int = SURVEY.n_bands, width: int = 64) -> ResNet2d:
    """ResNet-18 trunk (BasicBlock, [2, 2, 2, 2]); 8 * width output channels (512, ~11.2 M parameters)."""
    return ResNet2d(BasicBlock, (2, 2, 2, 2), in_channels, width)


def resnet50(in_channels: int = SURVEY.n_bands, width: int = 64) -> ResNet2d:
    """ResNet-50 trunk (Bottleneck, [3, 4, 6, 3]); 32 * width output channels (2048, ~23.5 M parameters)."""
    return ResNet2d(Bottleneck, (3, 4, 6, 3), in_channels, width)
