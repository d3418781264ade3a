"""Conditional sampling: the one function that turns a conditional denoiser and per-galaxy conditioning into
spectra, used by training validation (training/tasks.py) and by generate.py (generation/chain.py).

Seeds: every sampled item draws its noise from its own generator (``NoiseSource``), seeded by
``item_seeds(galaxy_seeds, n, stride, offset)`` = ``galaxy_seed * stride + offset + k`` for its galaxy and
candidate k, so a galaxy's samples depend neither on the batch it is in nor on chunking or the number of
processes. The callers keep the seeds their outputs were made with:

- training validation: galaxy seed = the galaxy's dataset index, ``stride=1000`` (item ``index * 1000 + k``);
- generation: galaxy seed = ``galaxy_seed(run seed, galaxy id)`` (a hash), ``stride=1``; the low-res
  candidates use ``offset=0`` and the super-resolved ones ``offset=1000``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from diffusion.process import GaussianDiffusion
from diffusion.samplers import NoiseSource, ancestral, ddim, get_sampler

__all__ = ["START_MODES", "galaxy_seed", "item_seeds", "parse_start", "sample_conditional"]

#: how a sampler that skips the near-pure-noise steps (``alpha_bar_min > 0``) begins: ``sample_conditional``;
#: "ancestral:K" (K >= 1) is the ancestral start in K respaced posterior steps
START_MODES = ("noise", "ancestral", "ancestral:K")


def parse_start(start: str) -> tuple[str, int | None]:
    """``"noise"`` -> ("noise", None); ``"ancestral"`` -> ("ancestral", None) (every skipped step);
    ``"ancestral:K"`` -> ("ancestral", K). ValueError for anything else."""
    if start in ("noise", "ancestral"):
        return start, None
    head, _, k = str(start).partition(":")
    if head == "ancestral" and k.isdigit() and int(k) >= 1:
        return "ancestral", int(k)
    raise ValueError(f"start={start!r}: expected one of {list(START_MODES)} (K an integer >= 1)")


def respaced_head(diffusion: GaussianDiffusion, first_kept: int, k: int) -> list[int]:
    """The ``k`` timesteps of the respaced ancestral start, spread evenly from T - 1 down to first_kept + 1
    (every one of them when k >= the skipped steps)."""
    top = diffusion.num_timesteps - 1
    return sorted({int(round(t)) for t in np.linspace(top, first_kept + 1, min(k, top - first_kept))},
                  reverse=True)


def galaxy_seed(seed: int, galaxy_id: int) -> int:
    """A 62-bit seed of (run seed, galaxy id), independent of batch composition."""
    h = hashlib.blake2b(f"{seed}:{galaxy_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)


def item_seeds(galaxy_seeds: Sequence[int], n: int, stride: int = 1, offset: int = 0) -> list[int]:
    """One seed per sampled item, galaxy-major: ``galaxy_seed * stride + offset + k`` for k < ``n``."""
    return [int(s) * stride + offset + k for s in galaxy_seeds for k in range(n)]


def lowres_noise(seeds: Sequence[int], length: int) -> torch.Tensor:
    """Standard-normal (len(seeds), length) noise for the conditioning augmentation of the low-res input
    (``ConditionalDenoiser.augment_lowres``): item i's from numpy's generator of (seed_i, 1), a stream apart
    from the diffusion's own per-item noise (``NoiseSource``), so the same seed gives the same draw."""
    return torch.from_numpy(np.stack([np.random.default_rng((int(s), 1)).standard_normal(length)
                                      for s in seeds]).astype(np.float32))


@torch.no_grad()
def sample_conditional(model, diffusion: GaussianDiffusion, context: torch.Tensor, length: int,
                       seeds: Sequence[int], sampler: str = "ancestral", steps: int | None = None, *,
                       lowres: torch.Tensor | None = None, alpha_bar_min: float = 0.0,
                       start: str = "noise", precision: Callable[[], object] = nullcontext,
                       guidance: float = 1.0, **options) -> torch.Tensor:
    """Draw ``len(seeds)`` spectra, n = len(seeds) / B per galaxy, from a conditional denoiser.

    Parameters
    ----------
    model
        A conditional denoiser (``models.unet1d.ConditionalDenoiser``): ``model(x, t, context=, lowres=)``
        predicts epsilon, v or x0 (``diffusion.prediction``); ``precompute_context``, ``normalize_lowres``,
        ``denormalize`` and ``clip_range`` (the x0 clipping bounds, or None) as there.
    diffusion : GaussianDiffusion
        The model's noise process (on the model's device).
    context : torch.Tensor
        (B, N, C) conditioning tokens of B galaxies (``model.encode_context``); each galaxy's are used for
        its n consecutive items, their cross-attention keys/values projected once.
    length : int
        Spectrum length (pixels).
    seeds : sequence of int
        One noise seed per item, galaxy-major (``item_seeds``).
    sampler : str
        A name in ``diffusion.samplers.SAMPLERS``.
    steps : int, optional
        Model evaluations (capped at the number of steps; ignored by samplers that visit every step).
    lowres : torch.Tensor, optional
        (len(seeds), L_low) low-res spectra in model space, one per item (super-resolution).
    alpha_bar_min : float
        Sample only the steps with alpha-bar >= this (``GaussianDiffusion.truncated``; 0 = all).
    start : {"noise", "ancestral"}
        With ``alpha_bar_min > 0``, where the sampler starts: "noise" = at the first kept step, from
        N(0, I) (a prior mismatch: x there holds sqrt(alpha-bar) of signal); "ancestral" = the skipped
        near-pure-noise steps are taken first, one exact ancestral (posterior) step each from T - 1, and
        the sampler goes on from the sample they reach (no mismatch; costs one model call per skipped
        step: 23 of 250 for the cosine schedule at 0.02); "ancestral:K" = the same start in K model calls,
        posterior steps on a respaced schedule (DDIM, eta = 1) from T - 1 to the first kept step (K >= the
        skipped steps: one per step, with the posterior variance instead of beta). Ignored when nothing is
        skipped.
    precision : callable
        Returns the context manager every network call runs in (e.g. bf16 autocast); default none.
    guidance : float
        Classifier-free guidance weight w: epsilon = eps_null + w (eps - eps_null), eps_null the model's
        prediction under the null condition (``model.null_context``); 1 = the conditional model alone (one
        call per step), otherwise two calls per step. Meaningful only for a model trained with
        ``train.cond_dropout`` > 0.
    **options
        The sampler's own options (e.g. ``eta`` for ddim), checked by ``Sampler.check_options``.

    Returns
    -------
    torch.Tensor
        (len(seeds), length) samples in model space (``model.denormalize`` applied), float32.
    """
    spec = get_sampler(sampler)
    spec.check_options(options)
    n = len(seeds) // context.shape[0]
    if n * context.shape[0] != len(seeds):
        raise ValueError(f"{len(seeds)} seeds for {context.shape[0]} galaxies: not a whole number per galaxy")
    with precision():
        # cross-attention keys/values once per item, not at every step
        tokens = context.repeat_interleave(n, dim=0)
        kv = model.precompute_context(tokens)
        kv_null = model.precompute_context(model.null_context(tokens)) if guidance != 1.0 else None
    if lowres is not None:
        lowres = model.normalize_lowres(lowres)
        if getattr(model, "lowres_noise", 0.0):  # conditioning augmentation, seeded per item
            lowres = model.augment_lowres(lowres, lowres_noise(seeds, lowres.shape[-1]))

    net = diffusion.eps_model(lambda x, t, kv: model(x, t, context=kv, lowres=lowres).float())

    def model_fn(x, t):
        with precision():
            eps = net(x, t, kv)
            if kv_null is None:
                return eps
            eps_null = net(x, t, kv_null)
        return eps_null + guidance * (eps - eps_null)
    start, start_calls = parse_start(start)
    process = diffusion.truncated(alpha_bar_min)
    noise = NoiseSource(seeds, device=diffusion.betas.device)
    x = (len(seeds), length)
    skipped = diffusion.num_timesteps - process.num_timesteps
    if start == "ancestral" and skipped > 0:
        first_kept = process.num_timesteps - 1
        if start_calls is None:     # one exact ancestral step per skipped step
            head = list(range(diffusion.num_timesteps - 1, first_kept, -1))
            x = ancestral(model_fn, x, diffusion, head, noise=noise, clip_x0=model.clip_range())
        else:                       # K posterior steps on a respaced schedule: DDIM with eta 1
            x = ddim(model_fn, x, diffusion, respaced_head(diffusion, first_kept, start_calls), noise,
                     eta=1.0, clip_x0=model.clip_range(), end=first_kept)
    x = spec(model_fn, x, process, spec.timesteps(process, steps), noise=noise, clip_x0=model.clip_range(),
             **options)
    return model.denormalize(x)
