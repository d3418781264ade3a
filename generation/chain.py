"""The generation chain of the paper, batched: images -> ranked full-resolution spectra.

1. N low-res candidates per image from the low-res diffusion model;
2. rank them with the low-res contrastive network, keep the top k;
3. M super-resolved samples spread over the k kept candidates (sample m refines kept candidate m mod k);
4. rank those with the full-res contrastive network: the top one is the prediction.

Every model's image encoder runs ONCE per galaxy; the cross-attention context is reused across all
sampling steps and all candidates, and all candidates of a batch of galaxies go through each network
together. Randomness is per galaxy (seeded by the run seed and the galaxy's id), so a galaxy's output does
not depend on the batch it is in, on chunking, on resuming or on the number of processes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from datasets.galaxy import ImageAugment
from datasets.photometry import image_features
from datasets.preprocess import N_FULLRES, N_LOWRES, to_linear
from diffusion.process import GaussianDiffusion
from diffusion.samplers import SAMPLERS, NoiseSource
from models.contrastive import score_candidates
from training.engine import CheckpointError, autocast_context, load_checkpoint
from training.tasks import build_contrastive, build_denoiser, build_diffusion, clip_range
from utils.config import ContrastiveConfig, GenerativeConfig, config_from_checkpoint_dict

ROLES = {  # role -> (kind, stage)
    "diffusion_lr": ("diffusion", "lr"), "diffusion_sr": ("diffusion", "sr"),
    "contrastive_lr": ("contrastive", "lr"), "contrastive_sr": ("contrastive", "sr"),
}


class GenerationError(ValueError):
    """Inconsistent models or inputs; the message names the file and the field."""


@dataclass
class LoadedModel:
    role: str
    path: str
    model: torch.nn.Module
    cfg: object
    band_mean: np.ndarray
    band_std: np.ndarray
    diffusion: GaussianDiffusion | None = None
    survey_version: str = "mock-sdss/v1"


def load_model(role: str, path: str, device: torch.device) -> LoadedModel:
    """Rebuild a trained model from its checkpoint alone (config inside), EMA weights where present."""
    kind, stage = ROLES[role]
    ckpt = load_checkpoint(path)
    run = ckpt["run"]
    if run.get("kind") != kind:
        raise GenerationError(f"{path}: run.kind: {run.get('kind')!r}, but it is given as {role} "
                              f"(needs a {kind} checkpoint)")
    if run.get("stage") != stage:
        what = "super-resolution" if stage == "sr" else "low-res"
        raise GenerationError(f"{path}: run.stage: {run.get('stage')!r}, but it is given as {role} "
                              f"(needs stage {stage!r}: {what})")
    cls = ContrastiveConfig if kind == "contrastive" else GenerativeConfig
    cfg = config_from_checkpoint_dict(run["config"], cls, f"{path}: run.config")
    if kind == "contrastive":
        model = build_contrastive(cfg.model)
        diffusion = None
    else:
        model = build_denoiser(cfg.model, stage)
        diffusion = build_diffusion(cfg.model).to(device)
    state = ckpt.get("ema_model") or ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model: weights do not fit the config's architecture: "
                              f"{str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return LoadedModel(role, str(path), model, cfg, np.asarray(run["band_mean"]), np.asarray(run["band_std"]),
                       diffusion, run.get("survey_version", "mock-sdss/v1"))


def check_compatible(models: dict[str, LoadedModel]) -> None:
    """The four models must share the data space: preprocessing, band statistics, latent sizes."""
    ref = models["diffusion_lr"]
    for m in models.values():
        if m.survey_version != ref.survey_version:
            raise GenerationError(f"{m.path}: run.survey_version: {m.survey_version!r} differs from "
                                  f"{ref.path}'s {ref.survey_version!r} (models trained on different data)")
        if m.cfg.data.preprocessing != ref.cfg.data.preprocessing:
            raise GenerationError(f"{m.path}: data.preprocessing: {m.cfg.data.preprocessing!r} differs from "
                                  f"{ref.path}'s {ref.cfg.data.preprocessing!r}")
        if not np.allclose(m.band_mean, ref.band_mean, rtol=1e-3) or not np.allclose(m.band_std, ref.band_std,
                                                                                      rtol=1e-3):
            raise GenerationError(f"{m.path}: band_mean/band_std: trained on other data than {ref.path}")
    lr, sr = models["contrastive_lr"], models["contrastive_sr"]
    if lr.cfg.model.latent_dim != sr.cfg.model.latent_dim:
        raise GenerationError(f"{sr.path}: model.latent_dim: {sr.cfg.model.latent_dim} differs from "
                              f"{lr.path}'s {lr.cfg.model.latent_dim} (the rankers must share one latent "
                              "size)")
    if models["diffusion_lr"].cfg.model.timesteps != models["diffusion_sr"].cfg.model.timesteps:
        raise GenerationError(f"{models['diffusion_sr'].path}: model.timesteps differs from the low-res "
                              "model's")


def galaxy_seed(seed: int, galaxy_id: int) -> int:
    """A 63-bit seed of (run seed, galaxy id), independent of batch composition."""
    h = hashlib.blake2b(f"{seed}:{galaxy_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)


class GenerationChain:
    """The four models and the chain's settings; ``run(images, ids)`` processes one batch of galaxies."""

    def __init__(self, models: dict[str, LoadedModel], gen_cfg, device: torch.device, amp: str = "auto"):
        check_compatible(models)
        self.m = models
        self.g = gen_cfg
        self.device = device
        self.amp = amp
        self.preprocessing = models["diffusion_lr"].cfg.data.preprocessing
        self.mean = torch.tensor(models["diffusion_lr"].band_mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(models["diffusion_lr"].band_std, dtype=torch.float32)[None, :, None, None]
        self.augment = ImageAugment()
        # photometric features (model.photometry): measured on the original cutouts, once per galaxy
        self.photometry = any(getattr(m.model, "photometry", None) is not None for m in models.values())
        if self.g.sampler not in SAMPLERS:
            raise GenerationError(f"generate.sampler: {self.g.sampler!r} is not one of {sorted(SAMPLERS)}")

    def prepare_images(self, images_nmgy: torch.Tensor) -> torch.Tensor:
        """Nanomaggies -> standardised with the training band statistics -> evaluation crop."""
        x = (images_nmgy.float() - self.mean) / self.std
        return self.augment(x, train=False).to(self.device)

    def _sample(self, role, images, n, seeds, lowres=None, photometry=None):
        lm = self.m[role]
        length = N_FULLRES if role.endswith("sr") else N_LOWRES
        with autocast_context(self.device, self.amp):
            context = lm.model.encode_context(images, photometry).repeat_interleave(n, dim=0)
            # cross-attention keys/values once per galaxy, not at every step
            context = lm.model.precompute_context(context)
        noise = NoiseSource(seeds, device=self.device)
        if lowres is not None:
            lowres = lm.model.normalize_lowres(lowres)

        def model_fn(x, t):
            with autocast_context(self.device, self.amp):
                return lm.model(x, t, context=context, lowres=lowres).float()
        process = lm.diffusion.truncated(self.g.alpha_bar_min)
        steps = None if self.g.sampler == "ancestral" else min(self.g.steps, process.num_timesteps)
        x = SAMPLERS[self.g.sampler](model_fn, (len(seeds), length), process, steps=steps, noise=noise,
                                     clip_x0=clip_range(lm.model))
        return lm.model.denormalize(x)

    def _rank(self, role, images, candidates, n, photometry=None):
        lm = self.m[role]
        with autocast_context(self.device, self.amp):
            z_img = lm.model.encode_image(images, photometry).float()
            z_c = lm.model.encode_spectrum(candidates).float()
        return score_candidates(z_img, z_c.reshape(images.shape[0], n, -1))

    @torch.no_grad()
    def run(self, images_nmgy: torch.Tensor, ids) -> dict[str, np.ndarray]:
        """The chain on a batch of B galaxies. Returns numpy arrays (linear normalised flux):

        ``lowres_candidates`` (B, N, 563), ``lowres_scores`` (B, N), ``kept`` (B, k) candidate indices,
        ``fullres_candidates`` (B, M, 4500), ``fullres_parent`` (M,) kept-slot of each full-res sample,
        ``fullres_scores`` (B, M), ``top`` (B,) index of the winner, ``flux_pred`` (B, 4500).
        """
        g = self.g
        b = images_nmgy.shape[0]
        N, k, M = g.n_lowres, g.keep_lowres, g.n_fullres
        images = self.prepare_images(images_nmgy)
        phot = (torch.from_numpy(image_features(images_nmgy.numpy())).to(self.device) if self.photometry
                else None)
        gseeds = [galaxy_seed(g.seed, int(i)) for i in ids]
        lr = self._sample("diffusion_lr", images, N, [s + j for s in gseeds for j in range(N)], photometry=phot)
        lr_scores = self._rank("contrastive_lr", images, lr, N, phot)                    # (B, N)
        kept = lr_scores.topk(k, dim=1).indices                                     # (B, k)
        parent = torch.arange(M) % k                                                # (M,)
        chosen = torch.gather(lr.reshape(b, N, -1), 1,
                              kept[:, parent].unsqueeze(-1).expand(b, M, N_LOWRES))  # (B, M, 563)
        sr = self._sample("diffusion_sr", images, M, [s + 1000 + j for s in gseeds for j in range(M)],
                          lowres=chosen.reshape(b * M, N_LOWRES), photometry=phot)
        sr_scores = self._rank("contrastive_sr", images, sr, M, phot)                    # (B, M)
        top = sr_scores.argmax(dim=1)
        sr = sr.reshape(b, M, N_FULLRES)
        pre = self.preprocessing
        return {
            "lowres_candidates": to_linear(lr.reshape(b, N, N_LOWRES), pre).cpu().numpy(),
            "lowres_scores": lr_scores.cpu().numpy(), "kept": kept.cpu().numpy(),
            "fullres_candidates": to_linear(sr, pre).cpu().numpy(),
            "fullres_parent": np.broadcast_to(parent.numpy(), (b, M)).copy(),
            "fullres_scores": sr_scores.cpu().numpy(), "top": top.cpu().numpy(),
            "flux_pred": to_linear(sr[torch.arange(b), top], pre).cpu().numpy(),
        }


def load_chain(gen_cfg, device, amp="auto") -> GenerationChain:
    """Load the four checkpoints named in ``generate.checkpoints`` and check that they fit together."""
    models = {role: load_model(role, gen_cfg.checkpoints[role], device) for role in ROLES}
    return GenerationChain(models, gen_cfg, device, amp)
