"""Conditional 1-D UNet denoiser for galaxy spectra, cross-attending to image tokens.

Layout at the paper preset (base 64, multipliers (1, 2, 4, 8), attention at level 3 and the bottleneck):

    init conv k3 (in_channels -> 64)
    down level i (width w_i):   ResBlock, ResBlock, [Transformer], stride-2 conv (none at the last level)
    bottleneck (512):           ResBlock, Transformer, ResBlock
    up level i (reversed):      ResBlock(skip concat), ResBlock(skip concat), [Transformer], transposed conv
    final ResBlock (concat with the init-conv output), conv 1x1 -> 1 channel (epsilon)

ResBlock = conv k3 -> GroupNorm(8) -> scale/shift from the time embedding -> ReLU -> conv k3 -> GroupNorm(8)
-> ReLU, plus a 1x1 shortcut when the width changes. Time conditioning is FiLM (scale/shift) after the
first normalisation, as in Dhariwal & Nichol's "AdaGN".
Transformer = GroupNorm, linear in, [LayerNorm -> self-attention, LayerNorm -> cross-attention to the image
tokens, LayerNorm -> GEGLU feed-forward (hidden 2x width)] with residuals, linear out (zero-initialised)
+ residual.
Attention heads are 32 channels wide.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.resnet2d import resnet18, resnet50

__all__ = [
    "SinusoidalTimeEmbedding",
    "ResBlock",
    "Attention",
    "TransformerBlock1d",
    "UNet1d",
    "ConditionalDenoiser",
    "upsample_lowres",
]


def upsample_lowres(lowres: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate low-res spectra onto ``length`` points (the SR stage's second channel).

    Parameters
    ----------
    lowres : torch.Tensor
        (B, L_low) or (B, 1, L_low) spectra, e.g. 563 points (every 8th pixel of the 1 Angstrom grid).
    length : int
        Target number of points, e.g. 4500.

    Returns
    -------
    torch.Tensor
        (B, 1, length).
    """
    if lowres.ndim == 2:
        lowres = lowres.unsqueeze(1)
    n_low = lowres.shape[-1]
    if n_low == length:  # already on the target grid (e.g. a training crop interpolated beforehand)
        return lowres
    # low-res pixel j IS full-res pixel 8 j (every 8th point), so full-res pixel i sits at low-res
    # position i / 8: interpolate exactly there (flat beyond the last low-res pixel) rather than
    # stretching 563 points end to end over 4500 (which drifts by 3 pixels across the spectrum)
    step = 8.0 if n_low == -(-length // 8) else (length - 1) / max(n_low - 1, 1)  # full px per low px
    pos = torch.arange(length, device=lowres.device, dtype=torch.float32) / step
    pos = pos.clamp(max=n_low - 1)
    i0 = pos.floor().long().clamp(max=n_low - 2 if n_low > 1 else 0)
    frac = (pos - i0).to(lowres.dtype)
    i1 = (i0 + 1).clamp(max=n_low - 1)
    return lowres[..., i0] * (1 - frac) + lowres[..., i1] * frac


class SinusoidalTimeEmbedding(nn.Module):
    """Fourier features of t rescaled to [-1, 1], then an MLP.

    Angular frequencies are geometric from pi to (T - 1) / 2 (computed in floating point, so nothing
    overflows): the top one advances one radian per diffusion step, below the Nyquist limit of the
    integer-t grid and not a rational fraction of a turn, so every feature takes distinct values for
    every t instead of aliasing onto a few.
    """

    def __init__(self, dim: int, hidden: int, num_timesteps: int = 250):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.num_timesteps = num_timesteps
        half = dim // 2
        top = max((num_timesteps - 1) / 2.0, math.pi)
        freqs = torch.exp(torch.linspace(math.log(math.pi), math.log(top), half, dtype=torch.float64))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        """Raw sinusoidal features (B, dim) of integer or real timesteps t in [0, T - 1]."""
        t = t.float().reshape(-1)
        s = t / max(self.num_timesteps - 1, 1) * 2.0 - 1.0
        arg = s[:, None] * self.freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


class ResBlock(nn.Module):
    """Conv k3 + GroupNorm + ReLU residual block with FiLM time conditioning."""

    def __init__(
        self, in_channels: int, out_channels: int, time_dim: int, groups: int = 8, dropout: float = 0.0
    ):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.time_proj = nn.Sequential(nn.ReLU(), nn.Linear(time_dim, 2 * out_channels))
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else nn.Conv1d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time_proj(temb)[:, :, None].chunk(2, dim=1)
        h = self.norm1(self.conv1(x))
        h = F.relu(h * (1 + scale) + shift)
        h = F.relu(self.norm2(self.conv2(self.dropout(h))))
        return h + self.shortcut(x)


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention via ``scaled_dot_product_attention``.

    heads = dim / head_dim (paper: 32-channel heads); a width below ``head_dim`` (tiny test models) gets
    a single head of the full width.
    """

    def __init__(self, dim: int, context_dim: int | None = None, head_dim: int = 32):
        super().__init__()
        self.heads = max(dim // head_dim, 1)
        if dim % self.heads or (dim >= head_dim and dim % head_dim):
            raise ValueError(f"attention width {dim} is not a multiple of head_dim {head_dim}")
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (
            rearrange(p(a), "b n (h d) -> b h n d", h=self.heads)
            for p, a in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Gated-GELU feed-forward: (x W) * GELU(x V), then a linear back to ``dim``."""

    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TransformerBlock1d(nn.Module):
    """Self-attention, cross-attention to the image tokens and GEGLU on a (B, C, L) feature map."""

    def __init__(self, dim: int, context_dim: int, head_dim: int = 32, groups: int = 8, ff_mult: int = 2):
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, dim)
        self.proj_in = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, None, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, context_dim, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim, ff_mult)
        self.proj_out = nn.Linear(dim, dim)
        # Zero-initialised output: the block starts as the identity, which keeps early training stable.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.proj_in(rearrange(self.norm_in(x), "b c l -> b l c"))
        h = h + self.self_attn(self.norm1(h))
        if context is not None:
            h = h + self.cross_attn(self.norm2(h), context)
        h = h + self.ff(self.norm3(h))
        return x + rearrange(self.proj_out(h), "b l c -> b c l")


class UNet1d(nn.Module):
    """Epsilon-prediction 1-D UNet with cross-attention conditioning.

    Parameters
    ----------
    in_channels : int
        1 for the low-res model; 2 for super-resolution (noisy spectrum + interpolated low-res spectrum).
    out_channels : int
        1 (epsilon).
    base : int
        Width of the first level (paper 64).
    mults : sequence of int
        Width multipliers per level (paper as built: (1, 2, 4, 8)); the bottleneck has the last width.
    attn_levels : sequence of int
        1-based levels with a transformer block on the way down and up (paper: (3,)).
    mid_attn : bool
        Transformer block in the bottleneck.
    context_dim : int
        Channel size of the image tokens (512 for ResNet-18).
    head_dim : int
        Channels per attention head.
    ff_mult : int
        GEGLU hidden width / model width (2 matches the paper's parameter count; 4 is the LDM default).
    num_timesteps : int
        T of the diffusion process; t is rescaled by T - 1.
    groups : int
        GroupNorm groups.
    dropout : float
        Dropout inside the residual blocks.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base: int = 64,
        mults: tuple[int, ...] = (1, 2, 4, 8),
        attn_levels: tuple[int, ...] = (3,),
        mid_attn: bool = True,
        context_dim: int = 512,
        head_dim: int = 32,
        ff_mult: int = 2,
        num_timesteps: int = 250,
        groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_down = len(mults) - 1
        time_dim = 4 * base
        self.time_embed = SinusoidalTimeEmbedding(base, time_dim, num_timesteps)
        self.init_conv = nn.Conv1d(in_channels, base, 3, padding=1)
        widths = [base * m for m in mults]

        def transformer(level: int, width: int) -> nn.Module:
            if level in attn_levels:
                return TransformerBlock1d(width, context_dim, head_dim, groups, ff_mult)
            return nn.Identity()

        self.down = nn.ModuleList()
        ch = base
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            self.down.append(
                nn.ModuleDict(
                    dict(
                        res1=ResBlock(ch, w, time_dim, groups, dropout),
                        res2=ResBlock(w, w, time_dim, groups, dropout),
                        attn=transformer(i + 1, w),
                        down=nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1),
                    )
                )
            )
            ch = w
        self.mid1 = ResBlock(ch, ch, time_dim, groups, dropout)
        self.mid_attn = (
            TransformerBlock1d(ch, context_dim, head_dim, groups, ff_mult) if mid_attn else nn.Identity()
        )
        self.mid2 = ResBlock(ch, ch, time_dim, groups, dropout)

        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            w_next = widths[i - 1] if i > 0 else base
            self.up.append(
                nn.ModuleDict(
                    dict(
                        res1=ResBlock(ch + w, w, time_dim, groups, dropout),
                        res2=ResBlock(w + w, w, time_dim, groups, dropout),
                        attn=transformer(i + 1, w),
                        up=nn.Identity() if i == 0 else nn.ConvTranspose1d(w, w_next, 4, stride=2, padding=1),
                    )
                )
            )
            ch = w if i == 0 else w_next
        self.final_res = ResBlock(ch + base, base, time_dim, groups, dropout)
        self.final_conv = nn.Conv1d(base, out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict epsilon.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_channels, L), any L >= 1; padded internally to a multiple of 2**(levels - 1).
        t : torch.Tensor
            (B,) integer (or real) timesteps in [0, T - 1].
        context : torch.Tensor, optional
            (B, N_tokens, context_dim) image tokens; without it cross-attention is skipped.

        Returns
        -------
        torch.Tensor
            (B, out_channels, L).
        """
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet1d expects x (B, {self.in_channels}, L), got {tuple(x.shape)}")
        length = x.shape[-1]
        multiple = 2**self.num_down
        pad = (-length) % multiple
        if pad:
            # Replicate padding keeps the padded tail on the data's scale; the tail is cropped below.
            x = F.pad(x, (0, pad), mode="replicate")
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        temb = self.time_embed(t)

        h = self.init_conv(x)
        h0 = h
        skips = []
        for lvl in self.down:
            h = lvl["res1"](h, temb)
            skips.append(h)
            h = lvl["res2"](h, temb)
            h = _attend(lvl["attn"], h, context)
            skips.append(h)
            h = lvl["down"](h)
        h = self.mid1(h, temb)
        h = _attend(self.mid_attn, h, context)
        h = self.mid2(h, temb)
        for lvl in self.up:
            h = lvl["res1"](torch.cat([h, skips.pop()], dim=1), temb)
            h = lvl["res2"](torch.cat([h, skips.pop()], dim=1), temb)
            h = _attend(lvl["attn"], h, context)
            h = lvl["up"](h)
        h = self.final_res(torch.cat([h, h0], dim=1), temb)
        return self.final_conv(h)[..., :length]


def _attend(block: nn.Module, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    return h if isinstance(block, nn.Identity) else block(h, context)


class ConditionalDenoiser(nn.Module):
    """Image encoder (trained jointly, from scratch) + conditional UNet: one diffusion model.

    Parameters
    ----------
    image_encoder : {"resnet18", "resnet50"}
        Trunk whose final spatial map gives the cross-attention tokens (64x64 -> 2x2 = 4 tokens).
    in_bands : int
        Image bands.
    image_width : int
        Base width of the image ResNet (64 = standard); the token size is 8x (ResNet-18) or 32x it.
    data_length : int, optional
        Length of the spectra it generates (563 or 4500); gives the per-pixel data scaling buffers
        ``data_mean``/``data_std`` (identity unless set from the training data: see ``normalize``).
    **unet_kwargs
        Passed to ``UNet1d`` (``in_channels=2`` makes the super-resolution model).
    """

    def __init__(
        self, image_encoder: str = "resnet18", in_bands: int = 5, image_width: int = 64,
        data_length: int | None = None, **unet_kwargs
    ):
        super().__init__()
        # the diffusion runs on (x - data_mean) / data_std; identity by default (the paper's raw log flux)
        self.register_buffer("data_mean", torch.zeros(data_length or 1))
        self.register_buffer("data_std", torch.ones(data_length or 1))
        # per-pixel range of the (scaled) training data: samplers clip x0 predictions to it
        self.register_buffer("data_lo", torch.full((data_length or 1,), -torch.inf))
        self.register_buffer("data_hi", torch.full((data_length or 1,), torch.inf))
        encoders = {"resnet18": resnet18, "resnet50": resnet50}
        if image_encoder not in encoders:
            raise ValueError(f"image_encoder={image_encoder!r}: expected one of {sorted(encoders)}")
        self.image_encoder = encoders[image_encoder](in_bands, image_width)
        unet_kwargs.setdefault("context_dim", self.image_encoder.out_channels)
        self.unet = UNet1d(**unet_kwargs)
        self.config = dict(
            image_encoder=image_encoder, in_bands=in_bands, image_width=image_width, **unet_kwargs
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Spectra (model space) -> the diffusion's data space."""
        return (x - self.data_mean) / self.data_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (applied to samples)."""
        return x * self.data_std + self.data_mean

    def normalize_lowres(self, lowres: torch.Tensor) -> torch.Tensor:
        """The super-resolution model's conditioning: low-res spectra with the scaling of their pixels
        (every 8th pixel of the full-resolution statistics)."""
        if self.data_mean.numel() == lowres.shape[-1] or self.data_mean.numel() == 1:
            return self.normalize(lowres)
        return (lowres - self.data_mean[::8]) / self.data_std[::8]

    @property
    def in_channels(self) -> int:
        return self.unet.in_channels

    def encode_context(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, bands, H, W) -> cross-attention tokens (B, H/32 * W/32, C): (B, 4, 512) at 64x64.

        Encode once per galaxy and reuse across sampling steps; for K candidates per galaxy use
        ``context.repeat_interleave(K, dim=0)``.
        """
        return rearrange(self.image_encoder.forward_features(images), "b c h w -> b (h w) c")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        lowres: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict epsilon for noisy spectra ``x``.

        Parameters
        ----------
        x : torch.Tensor
            Noisy spectra (B, L) or (B, 1, L); the output has the same shape.
        t : torch.Tensor
            (B,) timesteps.
        context : torch.Tensor, optional
            Precomputed tokens from ``encode_context``; takes precedence over ``images``.
        images : torch.Tensor, optional
            (B, bands, H, W) images, encoded here if ``context`` is not given (training).
        lowres : torch.Tensor, optional
            (B, L_low) or (B, 1, L_low) low-res spectra; required when ``in_channels == 2``.
        """
        squeeze = x.ndim == 2
        h = x.unsqueeze(1) if squeeze else x
        if context is None and images is not None:
            context = self.encode_context(images)
        if self.in_channels == 2:
            if lowres is None:
                raise ValueError("super-resolution denoiser (in_channels=2) needs lowres=")
            h = torch.cat([h, upsample_lowres(lowres, h.shape[-1]).to(h.dtype)], dim=1)
        eps = self.unet(h, t, context)
        return eps.squeeze(1) if squeeze else eps
