"""The Gaussian (DDPM) diffusion process: schedule buffers, forward noising and the training loss.

Network-agnostic: the denoiser enters only as ``model_fn(x_t, t, **model_kwargs) -> output``, the output
being epsilon (the paper), v or x0 as the process's ``prediction`` says; ``eps_model`` turns such a
function into the ``-> eps`` one every sampler takes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.schedule import SCHEDULES

__all__ = ["GaussianDiffusion", "extract"]


def extract(buf: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``buf[t]`` and reshape to broadcast against ``like`` (B, ...); cast to ``like``'s dtype."""
    out = buf.to(like.device)[t.to(like.device).long()]
    return out.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


#: what the denoiser predicts: epsilon (the paper; DDPM), v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans &
#: Ho 2022) or x0 itself
PREDICTIONS = ("eps", "v", "x0")


class GaussianDiffusion(nn.Module):
    """DDPM forward process; the denoiser predicts epsilon (default, the paper), v or x0 (``prediction``).

    All schedule tensors are registered buffers (float32, computed in float64), so they follow
    ``.to(device)`` and appear in the ``state_dict``. Index ``t`` runs over ``0 .. T - 1``; ``betas[t]``
    takes ``x_{t-1}`` to ``x_t`` with ``x_{-1} = x_0`` the data, and ``alphas_cumprod[t] = prod_{s<=t}(1 -
    betas[s])``.

    Parameters
    ----------
    num_timesteps : int
        T (paper: 250).
    schedule : {"cosine", "linear"}
        Name of a schedule in ``diffusion.schedule.SCHEDULES`` (paper: cosine).
    betas : torch.Tensor, optional
        Explicit betas; overrides ``schedule``.
    prediction : {"eps", "v", "x0"}
        The denoiser's output (``PREDICTIONS``): the training target, and how ``eps_model`` reads it.
    """

    def __init__(self, num_timesteps: int = 250, schedule: str = "cosine", betas: torch.Tensor | None = None,
                 prediction: str = "eps"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
        self.prediction = prediction
        if betas is None:
            if schedule not in SCHEDULES:
                raise ValueError(f"schedule={schedule!r}: expected one of {sorted(SCHEDULES)}")
            betas = SCHEDULES[schedule](num_timesteps)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.num_timesteps = int(betas.numel())
        self.schedule = schedule
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        buffers = dict(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
            sqrt_recip_alphas_cumprod=abar.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / abar - 1.0).sqrt(),
            posterior_variance=post_var,
            # post_var[0] == 0; use post_var[1] there so the log stays finite.
            posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        )
        for name, value in buffers.items():
            self.register_buffer(name, value.float())

    def truncated(self, alpha_bar_min: float) -> GaussianDiffusion:
        """The same process restricted to the steps with alpha-bar >= ``alpha_bar_min``.

        Sampling it starts at t_max = max{t : abar_t >= alpha_bar_min} from N(0, I) instead of at T - 1
        (timesteps keep their values, so the denoiser sees the t it was trained on). The cosine schedule's
        last steps have abar ~ 1e-4 .. 1e-8, where an epsilon-model's x0 estimate is unusable unless it is
        trained to near perfection; skipping them costs a small prior mismatch (x_tmax has signal
        sqrt(abar) x0). 0 keeps every step (the paper).
        """
        if alpha_bar_min <= 0:
            return self
        keep = int((self.alphas_cumprod >= alpha_bar_min).sum())
        if keep < 2:
            raise ValueError(f"alpha_bar_min={alpha_bar_min} leaves fewer than 2 timesteps")
        process = GaussianDiffusion(betas=self.betas[:keep].double(), schedule=self.schedule,
                                    prediction=self.prediction)
        return process.to(self.betas.device)

    def sample_timesteps(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw one t per sample uniformly from {0, ..., T - 1}."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` of the steps ``t`` (float32, ``t``'s shape)."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar / (1.0 - abar)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` given the noise."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert ``q_sample``: ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Epsilon implied by an ``x_0`` estimate (used after clipping ``x_0``)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def eps_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Epsilon implied by the denoiser's output ``out`` at ``(x_t, t)`` (``prediction``): eps itself;
        ``sqrt(abar) v + sqrt(1 - abar) x_t``; or ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
        if self.prediction == "v":
            return (extract(self.sqrt_alphas_cumprod, t, x_t) * out
                    + extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t)
        if self.prediction == "x0":
            return self.predict_eps(x_t, t, out)
        return out

    def eps_model(self, model_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``model_fn(x_t, t, ...) -> output`` as the ``-> eps`` function the samplers take (itself for an
        epsilon model, so the paper's path is unchanged). ``t`` keeps its values in ``truncated`` processes,
        so the wrapper of the full process serves them too."""
        if self.prediction == "eps":
            return model_fn

        def eps_fn(x_t, t, *args, **kwargs):
            return self.eps_from_output(x_t, t, model_fn(x_t, t, *args, **kwargs).float())
        return eps_fn

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output at ``x_t = q_sample(x0, t, noise)`` (``prediction``)."""
        if self.prediction == "v":
            return (extract(self.sqrt_alphas_cumprod, t, x0) * noise
                    - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)
        return x0 if self.prediction == "x0" else noise

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, extract(self.posterior_variance, t, x_t)

    def training_loss(
        self,
        model_fn: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        **model_kwargs,
    ) -> torch.Tensor:
        """The denoiser's MSE against its target (``prediction``: epsilon, v or x0) at a random noise level
        per sample.

        Parameters
        ----------
        model_fn : callable
            ``model_fn(x_t, t, **model_kwargs) -> output`` of ``x0``'s shape (e.g. a ``ConditionalDenoiser``,
            with ``images=``/``context=``/``lowres=`` passed through ``model_kwargs``).
        x0 : torch.Tensor
            Clean spectra (B, ...).
        t : torch.Tensor, optional
            (B,) timesteps; drawn uniformly from {0, ..., T - 1} per sample if omitted.
        noise : torch.Tensor, optional
            Standard normal noise like ``x0``; drawn if omitted.
        generator : torch.Generator, optional
            Source of randomness for ``t`` and ``noise``.
        reduction : {"mean", "none"}
            "none" returns the per-sample loss (B,).
        weighting : {"uniform", "min_snr"}
            "uniform": the plain MSE of the output (for epsilon: DDPM, the paper). "min_snr": Min-SNR-gamma
            (Hang et al. 2023), each sample's MSE times min(SNR_t, gamma) / SNR_t for epsilon,
            min(SNR_t, gamma) / (SNR_t + 1) for v and min(SNR_t, gamma) for x0, with SNR_t = abar_t /
            (1 - abar_t): the same weight min(SNR_t, gamma) on the implied x0 error for all three.
            It down-weights the low-noise steps, whose epsilon loss is dominated by the observational noise
            in the spectra (irreducible), relative to the high-noise steps where the image decides the
            spectrum.
        min_snr_gamma : float
            gamma of "min_snr".

        Returns
        -------
        torch.Tensor
            Scalar loss, or (B,) with ``reduction="none"``.
        """
        b = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(b, x0.device, generator)
        if noise is None:
            gen_device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(
                x0.device
            )
        out = model_fn(self.q_sample(x0, t, noise), t, **model_kwargs)
        target = self.training_target(x0.float(), t, noise.float())
        # MSE in float32 even under bf16 autocast: the loss is a small difference of O(1) numbers.
        loss = F.mse_loss(out.float(), target, reduction="none").reshape(b, -1).mean(dim=1)
        if weighting == "min_snr":
            snr = self.snr(t).to(loss.device)
            scale = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[self.prediction]
            loss = loss * snr.clamp(max=min_snr_gamma) / scale
        elif weighting != "uniform":
            raise ValueError(f"weighting={weighting!r}: expected 'uniform' or 'min_snr'")
        if reduction == "none":
            return loss
        if reduction != "mean":
            raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'none'")
        return loss.mean()
