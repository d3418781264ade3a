"""Noise schedules: plain functions returning float64 beta tensors of length T."""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_betas", "linear_betas", "SCHEDULES"]


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021).

    ``beta_t = 1 - abar(t + 1) / abar(t)`` with ``abar(u) = cos^2(pi / 2 * (u / T + s) / (1 + s))``,
    clipped at ``max_beta``. The cumulative product of ``1 - beta`` then reproduces ``abar(t + 1) /
    abar(0)`` exactly (up to clipping), so ``alphas_cumprod[t]`` always refers to the same step as
    ``betas[t]``.

    Parameters
    ----------
    T : int
        Number of diffusion steps.
    s : float
        Offset that keeps beta_0 from being vanishingly small.
    max_beta : float
        Upper clip, avoids a singular last step.

    Returns
    -------
    torch.Tensor
        (T,) float64 betas in (0, max_beta].
    """
    if T < 1:
        raise ValueError(f"cosine_betas: T must be >= 1, got {T}")
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(min=1e-12, max=max_beta)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear schedule of Ho et al. (2020), rescaled so any T spans the same total noise as T = 1000.

    The endpoints are multiplied by ``1000 / T`` (the "improved DDPM" rescaling), so a short chain
    still ends close to pure noise.

    Returns
    -------
    torch.Tensor
        (T,) float64 betas.
    """
    if T < 1:
        raise ValueError(f"linear_betas: T must be >= 1, got {T}")
    scale = 1000.0 / T
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), T, dtype=torch.float64)


SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}
