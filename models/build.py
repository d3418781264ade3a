"""Model construction from a config: one builder per run kind (the networks' constructors stay in their
modules). Training builds new models with these; ``models.loading`` rebuilds trained ones from the config
stored in their checkpoint.
"""
from __future__ import annotations

from datasets.photometry import N_FEATURES
from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, N_FULLRES, N_LOWRES
from diffusion.process import GaussianDiffusion
from models.baseline import BaselineNet
from models.contrastive import ContrastiveModel
from models.unet1d import ConditionalDenoiser

__all__ = ["BUILDERS", "build_model", "build_contrastive", "build_denoiser", "build_diffusion",
           "build_baseline"]


def build_contrastive(model_cfg) -> ContrastiveModel:
    """The CLIP-style image/spectrum model of a ``ContrastiveModelConfig``."""
    return ContrastiveModel(image_encoder=model_cfg.image_encoder, latent_dim=model_cfg.latent_dim,
                            spectrum_base=model_cfg.spectrum_base,
                            spectrum_mults=tuple(model_cfg.spectrum_mults), image_width=model_cfg.image_width,
                            photometry_features=N_FEATURES if model_cfg.photometry else 0)


def build_denoiser(model_cfg, stage: str) -> ConditionalDenoiser:
    """The conditional UNet of a ``DiffusionModelConfig``: 1 input channel (lr) or 2 (sr); its image encoder
    frozen when the config says so (in training, and when a trained model is loaded, so that a BatchNorm
    re-estimation leaves it alone)."""
    model = ConditionalDenoiser(image_encoder=model_cfg.image_encoder, image_width=model_cfg.image_width,
                                data_length=N_FULLRES if stage == "sr" else N_LOWRES,
                                in_channels=2 if stage == "sr" else 1, base=model_cfg.base,
                                mults=tuple(model_cfg.mults), attn_levels=tuple(model_cfg.attn_levels),
                                mid_attn=model_cfg.mid_attn, head_dim=model_cfg.head_dim,
                                num_timesteps=model_cfg.timesteps, layout=model_cfg.layout,
                                photometry_features=N_FEATURES if model_cfg.photometry else 0,
                                photometry_tokens=model_cfg.photometry_tokens,
                                global_context=model_cfg.global_context,
                                position_features=model_cfg.position_features,
                                lowres_noise=getattr(model_cfg, "lowres_noise", 0.0),
                                wave=FULLRES_WAVE if stage == "sr" else LOWRES_WAVE)
    if getattr(model_cfg, "freeze_image_encoder", False):
        model.freeze_image_encoder()
    return model


def build_diffusion(model_cfg) -> GaussianDiffusion:
    """The noise process (schedule buffers) of a ``DiffusionModelConfig``."""
    return GaussianDiffusion(num_timesteps=model_cfg.timesteps, schedule=model_cfg.schedule,
                             prediction=getattr(model_cfg, "prediction", "eps"))


def build_baseline(model_cfg) -> BaselineNet:
    """The supervised CNN of a ``BaselineModelConfig`` (target statistics at their defaults: the training
    task or a checkpoint sets them)."""
    return BaselineNet(model_cfg.image_encoder, model_cfg.image_width,
                       photometry_features=N_FEATURES if getattr(model_cfg, "photometry", False) else 0)


BUILDERS = {  # run kind -> builder of (model config, stage)
    "contrastive": lambda model_cfg, stage: build_contrastive(model_cfg),
    "diffusion": build_denoiser,
    "baseline": lambda model_cfg, stage: build_baseline(model_cfg),
}


def build_model(kind: str, model_cfg, stage: str | None = None):
    """The network of a run ``kind`` ("contrastive", "diffusion" or "baseline") from its model config;
    ``stage`` ("lr"/"sr") matters for the diffusion denoiser only."""
    return BUILDERS[kind](model_cfg, stage)
