"""Diffusion process (schedules, q_sample, epsilon loss) and samplers, independent of the networks."""

from diffusion.process import GaussianDiffusion
from diffusion.samplers import SAMPLERS, NoiseSource, ancestral, ddim, dpmpp_2m, get_sampler, timesteps
from diffusion.schedule import SCHEDULES, cosine_betas, linear_betas

__all__ = [
    "GaussianDiffusion",
    "SAMPLERS",
    "NoiseSource",
    "ancestral",
    "ddim",
    "dpmpp_2m",
    "get_sampler",
    "timesteps",
    "SCHEDULES",
    "cosine_betas",
    "linear_betas",
]
