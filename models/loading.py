"""Trained models back from their checkpoints: ``load_model(path, kind, stage)`` is the one way to rebuild any
run kind (contrastive, diffusion denoiser with its noise process, CNN baseline) from the config stored in
its checkpoint. Generation, evaluation and the diffusion task's ``model.image_encoder_init`` all use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion.process import GaussianDiffusion
from models.build import build_diffusion, build_model
from models.checkpoint import CheckpointError, load_checkpoint
from utils.config import BaselineConfig, ContrastiveConfig, GenerativeConfig, config_from_checkpoint_dict

__all__ = ["CONFIGS", "LoadedModel", "load_model"]

CONFIGS = {"contrastive": ContrastiveConfig, "diffusion": GenerativeConfig, "baseline": BaselineConfig}
STAGE_NAMES = {"lr": "low-res", "sr": "super-resolution"}


@dataclass
class LoadedModel:
    """A trained model in eval mode with what its checkpoint says about it: the resolved config, the image
    band statistics it was trained with, the noise process (diffusion only) and the survey version."""
    path: str
    kind: str
    stage: str | None
    model: torch.nn.Module
    cfg: object
    band_mean: np.ndarray
    band_std: np.ndarray
    diffusion: GaussianDiffusion | None = None
    survey_version: str = "mock-sdss/v1"


def load_model(path, kind: str | tuple[str, ...], stage: str | None = None,
               device: torch.device | str = "cpu", *, ema: bool = True,
               given_as: str | None = None) -> LoadedModel:
    """Rebuild a trained model from its checkpoint alone (the config inside).

    Parameters
    ----------
    path : str or Path
        A galspec checkpoint (read with ``load_checkpoint``: weights only).
    kind : {"contrastive", "diffusion", "baseline"} or a tuple of them
        The run kind the caller needs (any of a tuple's: the checkpoint is read once either way); another
        kind is a one-line ``CheckpointError``.
    stage : {"lr", "sr"}, optional
        The stage the caller needs (None: any).
    device
        Where to put the model (and the diffusion process).
    ema : bool
        Load the EMA weights where the checkpoint has them (default), else the trained weights.
    given_as : str, optional
        What the caller calls this checkpoint in error messages (e.g. "diffusion_sr"); default
        ``<kind>_<stage>``.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    label = given_as or (f"{kinds[0]}_{stage}" if stage else " or ".join(kinds))
    ckpt = load_checkpoint(path)
    run = ckpt["run"]
    kind = run.get("kind")
    if kind not in kinds:
        raise CheckpointError(f"{path}: run.kind: {kind!r}, but it is given as {label} "
                              f"(needs a {' or '.join(kinds)} checkpoint)")
    if stage is not None and run.get("stage") != stage:
        raise CheckpointError(f"{path}: run.stage: {run.get('stage')!r}, but it is given as {label} "
                              f"(needs stage {stage!r}: {STAGE_NAMES[stage]})")
    cfg = config_from_checkpoint_dict(run["config"], CONFIGS[kind], f"{path}: run.config")
    model = build_model(kind, cfg.model, run.get("stage"))
    state = (ckpt.get("ema_model") if ema else None) or ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model: weights do not fit the config's architecture: "
                              f"{str(e).splitlines()[0]}") from None
    device = torch.device(device)
    model.to(device).eval()
    diffusion = build_diffusion(cfg.model).to(device) if kind == "diffusion" else None
    return LoadedModel(str(path), kind, run.get("stage"), model, cfg, np.asarray(run["band_mean"]),
                       np.asarray(run["band_std"]), diffusion, run.get("survey_version", "mock-sdss/v1"))
