"""Diffusion process (schedules, q_sample, epsilon loss), samplers and conditional sampling
(``diffusion.sampling``), independent of any network class."""

from diffusion.process import GaussianDiffusion
from diffusion.samplers import (
    SAMPLERS,
    NoiseSource,
    Sampler,
    ancestral,
    ddim,
    dpmpp_2m,
    get_sampler,
    timesteps,
)
from diffusion.sampling import galaxy_seed, item_seeds, sample_conditional
from diffusion.schedule import SCHEDULES, cosine_betas, linear_betas

__all__ = [
    "GaussianDiffusion",
    "SAMPLERS",
    "NoiseSource",
    "Sampler",
    "galaxy_seed",
    "item_seeds",
    "sample_conditional",
    "ancestral",
    "ddim",
    "dpmpp_2m",
    "get_sampler",
    "timesteps",
    "SCHEDULES",
    "cosine_betas",
    "linear_betas",
]
