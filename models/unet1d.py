"""Conditional 1-D UNet denoiser for galaxy spectra, cross-attending to image tokens.

Two layouts (``layout=``), both at widths 64/128/256/512 (base 64, multipliers (1, 2, 4, 8)) at the paper
preset, with attention at level 3 and in the bottleneck:

``released`` (default; compute parity with the paper's released network, ~2.6 / ~19.5 GFLOP per forward at
563 / 4500 points, see docs/MODELS.md):

    init conv k3 (in_channels -> 64)
    down level i (width w_i):  ResBlock(-> w_i), [Transformer at level 3], skip, stride-2 conv k3 (no padding)
    bottleneck (512, 1/16 length): ResBlock, Transformer, ResBlock
    up level i (reversed):     ConvTranspose k4 s2 p1 (-> w_i), pad to the skip's length, concatenate the
                               skip, ResBlock (-> w_i; the deepest one narrows to w_{i-1}),
                               [Transformer one level deeper than on the way down: after the deepest block]
    conv 1x1 -> 1 channel (epsilon)

``wide`` (the project's first layout, ~1.7x the compute at the same parameter count): two ResBlocks per level
on both paths, a skip after each, transformers at level 3 at 1/4 length, transposed conv after each up level,
a final ResBlock on the init conv's output; GEGLU hidden 2x width; time MLP 4x base.

ResBlock = conv k3 -> GroupNorm(8) -> scale/shift from the time embedding -> ReLU -> conv k3 -> GroupNorm(8)
-> ReLU, plus a 1x1 shortcut when the width changes. Time conditioning is FiLM (scale/shift) after the
first normalisation, as in Dhariwal & Nichol's "AdaGN".
Transformer = GroupNorm, linear in, [LayerNorm -> self-attention, LayerNorm -> cross-attention to the image
tokens, LayerNorm -> GEGLU feed-forward] with residuals, linear out (zero-initialised) + residual.
Attention heads are 32 channels wide. The image tokens are fixed during sampling: ``precompute_context``
projects every cross-attention's keys/values once (a ``ContextKV``), reused at every step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.conditioning import PhotometryEncoder
from models.resnet2d import resnet18, resnet50
from surveys.description import SURVEY

__all__ = [
    "SinusoidalTimeEmbedding",
    "ResBlock",
    "Attention",
    "TransformerBlock1d",
    "UNet1d",
    "ContextKV",
    "LAYOUTS",
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


FUSED_RESBLOCK = True  # False: the straightforward ResBlock arithmetic (same result), for benchmarks


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
        if not FUSED_RESBLOCK:  # the unfused reference (benchmarks time it as "before")
            h = F.relu(self.norm1(self.conv1(x)) * (1 + scale) + shift)
            h = F.relu(self.norm2(self.conv2(self.dropout(h))))
            return h + self.shortcut(x)
        # GroupNorm's affine folds into the FiLM: (n g + b)(1 + s) + c = n [g (1 + s)] + [b (1 + s) + c], one
        # multiply-add pass over the (B, C, L) map instead of three; ReLUs in place (no autograd needs the
        # tensors they overwrite)
        n1 = self.norm1
        h = F.group_norm(self.conv1(x), n1.num_groups, None, None, n1.eps)
        # float32 parameters times the (bf16 under autocast) FiLM terms: back to the activations' dtype, so
        # that autocast does not silently run the rest of the block in float32
        gain = (n1.weight[:, None] * (1 + scale)).to(h.dtype)
        h = torch.addcmul((n1.bias[:, None] * (1 + scale) + shift).to(h.dtype), h, gain).relu_()
        h = self.norm2(self.conv2(self.dropout(h))).relu_()
        skip = self.shortcut(x)
        return h.add_(skip) if not torch.is_grad_enabled() else h + skip


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

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, N, head_dim) of ``context``: computed once per galaxy when sampling."""
        return (rearrange(self.to_k(context), "b n (h d) -> b h n d", h=self.heads),
                rearrange(self.to_v(context), "b n (h d) -> b h n d", h=self.heads))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, L, dim) to ``context`` (B, N, context_dim), or to itself without one;
        ``kv`` = ``project_kv(context)`` precomputed replaces ``context``."""
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = self.project_kv(x if context is None else context) if kv is None else kv
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
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

    def forward(self, x: torch.Tensor, context) -> torch.Tensor:
        """``context``: image tokens (B, N, C), their precomputed ``(k, v)`` for this block, or None."""
        h = self.proj_in(rearrange(self.norm_in(x), "b c l -> b l c"))
        h = h + self.self_attn(self.norm1(h))
        if isinstance(context, tuple):
            h = h + self.cross_attn(self.norm2(h), kv=context)
        elif context is not None:
            h = h + self.cross_attn(self.norm2(h), context)
        h = h + self.ff(self.norm3(h))
        return x + rearrange(self.proj_out(h), "b l c -> b c l")


LAYOUTS = ("released", "wide")


class ContextKV(dict):
    """Cross-attention keys/values of every transformer block of one UNet, projected once from the image
    tokens (``UNet1d.precompute_context``); pass it as ``context=`` instead of the tokens. Maps block ->
    (k, v); ``pooled`` holds the mean token for ``UNet1d(cond_dim=...)``."""

    pooled = None


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
    ff_mult : int, optional
        GEGLU hidden width / model width; default 4 (``released``) or 2 (``wide``).
    num_timesteps : int
        T of the diffusion process; t is rescaled by T - 1.
    groups : int
        GroupNorm groups.
    dropout : float
        Dropout inside the residual blocks.
    layout : {"released", "wide"}
        Block arrangement (module docstring); ``released`` has the released network's compute.
    time_mult : int, optional
        Time-MLP width / base; default 16 (``released``) or 4 (``wide``).
    cond_dim : int, optional
        If set, the mean of the context tokens (cond_dim = context_dim) goes through a linear layer (zero
        initialised) into the time embedding, so every residual block is conditioned on the image
        (``model.global_context``); None = cross-attention only (paper).
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
        ff_mult: int | None = None,
        num_timesteps: int = 250,
        groups: int = 8,
        dropout: float = 0.0,
        layout: str = "released",
        time_mult: int | None = None,
        cond_dim: int | None = None,
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: expected one of {list(LAYOUTS)}")
        released = layout == "released"
        self.layout = layout
        self.in_channels = in_channels
        self.num_down = len(mults) if released else len(mults) - 1
        time_dim = (time_mult or (16 if released else 4)) * base
        ff_mult = ff_mult or (4 if released else 2)
        self.time_embed = SinusoidalTimeEmbedding(base, time_dim, num_timesteps)
        self.init_conv = nn.Conv1d(in_channels, base, 3, padding=1)
        widths = [base * m for m in mults]

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, time_dim, groups, dropout)

        def transformer(width: int, on: bool = True) -> nn.Module:
            return TransformerBlock1d(width, context_dim, head_dim, groups, ff_mult) if on else nn.Identity()

        def mid() -> None:  # registered between the paths: parameter order is the checkpoints' (optimizer)
            self.mid1 = res(widths[-1], widths[-1])
            self.mid_attn = transformer(widths[-1], mid_attn)
            self.mid2 = res(widths[-1], widths[-1])

        build = self._build_released if released else self._build_wide
        ch = build(widths, set(attn_levels), res, transformer, mid)
        self.final_res = res(ch + base, base) if not released else nn.Identity()
        self.final_conv = nn.Conv1d(base, out_channels, 1)
        self.cond_proj = None
        if cond_dim:  # registered last: the other parameters keep the paper model's order
            self.cond_proj = nn.Linear(cond_dim, time_dim)
            nn.init.zeros_(self.cond_proj.weight)
            nn.init.zeros_(self.cond_proj.bias)

    def _build_released(self, widths, attn_levels, res, transformer, mid) -> int:
        """One ResBlock per level and path; every level ends in a stride-2 conv (the bottleneck sits at
        1/2**levels of the length). Returns the width entering the final conv."""
        n = len(widths)
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths, start=1):
            self.down.append(nn.ModuleDict(dict(
                res=res(ch, w), attn=transformer(w, i in attn_levels), down=nn.Conv1d(w, w, 3, stride=2))))
            ch = w
        mid()
        self.up = nn.ModuleList()
        for i in range(n, 0, -1):
            w = widths[i - 1]
            out = widths[i - 2] if i == n and n > 1 else w  # the deepest up block narrows one level
            # the up-path transformer of level a follows up level a + 1 (the deepest, for a = n - 1): one
            # resolution deeper than on the way down, which is what keeps the compute at the released value
            attn = any(min(a + 1, n) == i for a in attn_levels)
            self.up.append(nn.ModuleDict(dict(
                up=nn.ConvTranspose1d(ch, w, 4, stride=2, padding=1), res=res(2 * w, out),
                attn=transformer(out, attn))))
            ch = out
        return ch

    def _build_wide(self, widths, attn_levels, res, transformer, mid) -> int:
        """Two ResBlocks per level and path, a skip after each. Returns the width entering the final
        ResBlock."""
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            self.down.append(nn.ModuleDict(dict(
                res1=res(ch, w), res2=res(w, w), attn=transformer(w, i + 1 in attn_levels),
                down=nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1))))
            ch = w
        mid()
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            w_next = widths[i - 1] if i > 0 else widths[0]
            self.up.append(nn.ModuleDict(dict(
                res1=res(ch + w, w), res2=res(w + w, w), attn=transformer(w, i + 1 in attn_levels),
                up=nn.Identity() if i == 0 else nn.ConvTranspose1d(w, w_next, 4, stride=2, padding=1))))
            ch = w if i == 0 else w_next
        return ch

    def transformers(self) -> list[TransformerBlock1d]:
        return [m for m in self.modules() if isinstance(m, TransformerBlock1d)]

    def precompute_context(self, context: torch.Tensor) -> ContextKV:
        """Project the image tokens (B, N, context_dim) to every cross-attention's keys/values once; the
        result, passed as ``context=``, gives the same output as the tokens (tested to 1e-6)."""
        kv = ContextKV({blk: blk.cross_attn.project_kv(context) for blk in self.transformers()})
        if self.cond_proj is not None:
            kv.pooled = context.mean(1)
        return kv

    def forward(self, x: torch.Tensor, t: torch.Tensor, context=None) -> torch.Tensor:
        """Predict epsilon.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_channels, L), any L >= 1 (padded internally where the layout needs it, output cropped).
        t : torch.Tensor
            (B,) integer (or real) timesteps in [0, T - 1].
        context : torch.Tensor or ContextKV, optional
            (B, N_tokens, context_dim) image tokens, or their ``precompute_context``; without it
            cross-attention is skipped.

        Returns
        -------
        torch.Tensor
            (B, out_channels, L).
        """
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet1d expects x (B, {self.in_channels}, L), got {tuple(x.shape)}")
        length = x.shape[-1]
        if self.layout == "released":  # unpadded stride-2 convs need >= 2**(levels+1) - 1 points
            pad = max(2 ** (self.num_down + 1) - 1 - length, 0)
        else:  # padded stride-2 convs: a multiple of 2**(levels - 1)
            pad = (-length) % 2**self.num_down
        if pad:
            # Replicate padding keeps the padded tail on the data's scale; the tail is cropped below.
            x = F.pad(x, (0, pad), mode="replicate")
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        temb = self.time_embed(t)
        if self.cond_proj is not None and context is not None:
            pooled = context.pooled if isinstance(context, ContextKV) else context.mean(1)
            temb = temb + self.cond_proj(pooled.to(temb.dtype))
        h = self.init_conv(x)
        if self.layout == "released":
            h = self._forward_released(h, temb, context)
        else:
            h = self._forward_wide(h, temb, context)
        return self.final_conv(h)[..., :length]

    def _mid(self, h, temb, context):
        return self.mid2(_attend(self.mid_attn, self.mid1(h, temb), context), temb)

    def _forward_released(self, h, temb, context):
        skips = []
        for lvl in self.down:
            h = _attend(lvl["attn"], lvl["res"](h, temb), context)
            skips.append(h)
            h = lvl["down"](h)
        h = self._mid(h, temb, context)
        for lvl in self.up:
            skip = skips.pop()
            h = lvl["up"](h)
            # (L - 1) // 2 * 2 is 1 or 2 short of L: replicate the last column(s)
            h = F.pad(h, (0, skip.shape[-1] - h.shape[-1]), mode="replicate")
            h = _attend(lvl["attn"], lvl["res"](torch.cat([h, skip], dim=1), temb), context)
        return h

    def _forward_wide(self, h, temb, context):
        h0 = h
        skips = []
        for lvl in self.down:
            h = lvl["res1"](h, temb)
            skips.append(h)
            h = _attend(lvl["attn"], lvl["res2"](h, temb), context)
            skips.append(h)
            h = lvl["down"](h)
        h = self._mid(h, temb, context)
        for lvl in self.up:
            h = lvl["res1"](torch.cat([h, skips.pop()], dim=1), temb)
            h = lvl["res2"](torch.cat([h, skips.pop()], dim=1), temb)
            h = lvl["up"](_attend(lvl["attn"], h, context))
        return self.final_res(torch.cat([h, h0], dim=1), temb)


def _attend(block: nn.Module, h: torch.Tensor, context) -> torch.Tensor:
    if isinstance(block, nn.Identity):
        return h
    return block(h, context[block] if isinstance(context, ContextKV) else context)


def position_encoding(wave: np.ndarray, n: int) -> torch.Tensor:
    """(2n, L) sinusoids of the pixels' log wavelength u in [0, 1] over the grid: sin and cos of
    pi 2^k u for k < n (``model.position_features``; not in the paper). A redshift is a shift of log
    wavelength, which turns each (sin, cos) pair by an angle: lines at fixed rest wavelengths are a simple
    function of these channels and the redshift, which a convolutional network cannot read off the pixel
    index."""
    u = np.log(wave)
    u = (u - u[0]) / max(u[-1] - u[0], 1e-12)
    ang = np.pi * (2.0 ** np.arange(n))[:, None] * u[None, :]
    return torch.from_numpy(np.concatenate([np.sin(ang), np.cos(ang)]).astype(np.float32))


class ConditionalDenoiser(nn.Module):
    """Image encoder (trained jointly, from scratch) + conditional UNet: one diffusion model.

    Parameters
    ----------
    image_encoder : {"resnet18", "resnet50"}
        Trunk whose final spatial map gives the cross-attention tokens (64x64 -> 2x2 = 4 tokens).
    in_bands : int
        Image bands (default: the survey description's, 5 for SDSS ugriz).
    image_width : int
        Base width of the image ResNet (64 = standard); the token size is 8x (ResNet-18) or 32x it.
    data_length : int, optional
        Length of the spectra it generates (563 or 4500); gives the per-pixel data scaling buffers
        ``data_mean``/``data_std`` (identity unless set from the training data: see ``normalize``).
    photometry_features : int
        > 0: also condition on that many aperture-photometry features per galaxy, mapped to
        ``photometry_tokens`` extra cross-attention tokens (models/conditioning.py); 0 = image only (paper).
    global_context : bool
        Also add the mean context token to the time embedding (``UNet1d(cond_dim=...)``).
    **unet_kwargs
        Passed to ``UNet1d`` (``in_channels=2`` makes the super-resolution model).
    """

    def __init__(
        self, image_encoder: str = "resnet18", in_bands: int = SURVEY.n_bands, image_width: int = 64,
        data_length: int | None = None, photometry_features: int = 0, photometry_tokens: int = 4,
        global_context: bool = False, position_features: int = 0, wave=None, lowres_noise: float = 0.0,
        **unet_kwargs
    ):
        super().__init__()
        # super-resolution: std of the noise added to the normalised low-res input (augment_lowres)
        self.lowres_noise = float(lowres_noise)
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
        if global_context:
            unet_kwargs["cond_dim"] = unet_kwargs["context_dim"]
        # spectrum channels: 1 (low-res) or 2 (+ the upsampled low-res input: super-resolution)
        self.spectrum_channels = unet_kwargs.get("in_channels", 1)
        self.register_buffer("position", None, persistent=False)  # (derived from the grid: not saved)
        if position_features:
            grid = np.arange(1.0, data_length + 1) if wave is None else np.asarray(wave, np.float64)
            self.position = position_encoding(grid, position_features)
            unet_kwargs["in_channels"] = self.spectrum_channels + self.position.shape[0]
        self.unet = UNet1d(**unet_kwargs)
        self.photometry = (
            PhotometryEncoder(photometry_features, unet_kwargs["context_dim"], photometry_tokens)
            if photometry_features else None)
        self.config = dict(
            image_encoder=image_encoder, in_bands=in_bands, image_width=image_width,
            position_features=position_features, lowres_noise=self.lowres_noise, **unet_kwargs
        )

    def freeze_image_encoder(self) -> None:
        """Keep the image encoder as it is (``model.freeze_image_encoder``): no gradients for its weights,
        and its BatchNorm layers stay in eval mode (their running statistics are the source model's) when
        the rest of the model trains."""
        self.image_encoder.requires_grad_(False)
        self.image_encoder_frozen = True
        self.image_encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "image_encoder_frozen", False):
            self.image_encoder.eval()
        return self

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

    def augment_lowres(self, lowres: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Conditioning augmentation (``model.lowres_noise``; Ho et al. 2022, cascaded diffusion): the
        normalised low-res input plus ``lowres_noise`` times the standard-normal ``noise``, in training and
        sampling alike, so the model does not copy small-scale structure that a generated low-res spectrum
        gets wrong. Unchanged (the same tensor) when ``lowres_noise`` is 0."""
        if not self.lowres_noise:
            return lowres
        return lowres + self.lowres_noise * noise.to(lowres.device, lowres.dtype)

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """x0 clipping bounds for sampling: the per-pixel range of the training data (set with the data
        scaling, ``model.standardize``), or None where it was not recorded (the paper's unscaled setting).

        With the cosine schedule the terminal alpha-bar is ~0, so early x0 = (x_t - sqrt(1-abar) eps) /
        sqrt(abar) estimates are unbounded; clipping them to the data range keeps a short-trained model's
        samples sane."""
        if not torch.isfinite(self.data_lo).all():
            return None
        return (self.data_lo, self.data_hi)

    @property
    def in_channels(self) -> int:
        """Spectrum channels of the input: 1 (low-res model) or 2 (super-resolution)."""
        return self.spectrum_channels

    def encode_context(self, images: torch.Tensor, photometry: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, bands, H, W) -> cross-attention tokens (B, H/32 * W/32, C): (B, 4, 512) at 64x64,
        followed by the photometry tokens when the model has them (then ``photometry`` (B, F) is required).

        Encode once per galaxy and reuse across sampling steps; for K candidates per galaxy use
        ``context.repeat_interleave(K, dim=0)``.
        """
        tokens = rearrange(self.image_encoder.forward_features(images), "b c h w -> b (h w) c")
        if self.photometry is None:
            return tokens
        if photometry is None:
            raise ValueError("this denoiser is conditioned on photometry (model.photometry): "
                             "pass photometry=")
        return torch.cat([tokens, self.photometry(photometry).to(tokens.dtype)], dim=1)

    @staticmethod
    def null_context(context: torch.Tensor) -> torch.Tensor:
        """The null condition of classifier-free guidance for tokens like ``context``: all zeros (what
        ``drop_context`` trains; the pooled token of ``global_context`` is then zero too)."""
        return torch.zeros_like(context)

    def precompute_context(self, context: torch.Tensor) -> ContextKV:
        """Cross-attention keys/values of ``encode_context``'s tokens, for every sampling step (see
        ``UNet1d.precompute_context``)."""
        return self.unet.precompute_context(context)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | ContextKV | None = None,
        images: torch.Tensor | None = None,
        lowres: torch.Tensor | None = None,
        photometry: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict epsilon for noisy spectra ``x``.

        Parameters
        ----------
        x : torch.Tensor
            Noisy spectra (B, L) or (B, 1, L); the output has the same shape.
        t : torch.Tensor
            (B,) timesteps.
        context : torch.Tensor or ContextKV, optional
            Precomputed tokens from ``encode_context`` (or their ``precompute_context``); takes precedence
            over ``images``.
        images : torch.Tensor, optional
            (B, bands, H, W) images, encoded here if ``context`` is not given (training).
        lowres : torch.Tensor, optional
            (B, L_low) or (B, 1, L_low) low-res spectra; required when ``in_channels == 2``.
        photometry : torch.Tensor, optional
            (B, F) photometric features, with ``images`` for a photometry-conditioned model.
        drop_context : torch.Tensor, optional
            (B,) bool: these samples get the null condition (all tokens zero; ``null_context``) instead of
            their image's tokens (``train.cond_dropout``: classifier-free guidance training). Needs
            ``context`` as tokens or ``images``.
        """
        squeeze = x.ndim == 2
        h = x.unsqueeze(1) if squeeze else x
        if context is None and images is not None:
            context = self.encode_context(images, photometry)
        if drop_context is not None:
            if context is None or isinstance(context, ContextKV):
                raise ValueError("drop_context needs the image tokens (images= or context= as tokens)")
            context = context * (~drop_context).to(context.dtype)[:, None, None]
        if self.in_channels == 2:
            if lowres is None:
                raise ValueError("super-resolution denoiser (in_channels=2) needs lowres=")
            h = torch.cat([h, upsample_lowres(lowres, h.shape[-1]).to(h.dtype)], dim=1)
        if self.position is not None:
            if h.shape[-1] != self.position.shape[-1]:
                raise ValueError(f"model.position_features: the model encodes the positions of whole "
                                 f"{self.position.shape[-1]}-pixel spectra, got {h.shape[-1]} pixels "
                                 "(train.crop_length windows do not say where they are)")
            h = torch.cat([h, self.position.to(h.dtype).expand(h.shape[0], -1, -1)], dim=1)
        eps = self.unet(h, t, context)
        return eps.squeeze(1) if squeeze else eps
