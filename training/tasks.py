"""The two training tasks — what a batch's loss is, how a model is built from its config, and how it is
validated. The ignite wiring lives in training/engine.py; the networks in models/; the diffusion process
and samplers in diffusion/.
"""
from __future__ import annotations

import numpy as np
import torch

from datasets.galaxy import GalaxyDataset, ImageAugment
from datasets.preprocess import to_linear
from diffusion.process import GaussianDiffusion
from diffusion.samplers import SAMPLERS, NoiseSource
from models.contrastive import ContrastiveModel, nt_xent
from models.unet1d import ConditionalDenoiser

RESOLUTION = {"lr": "lowres", "sr": "fullres"}


# ----------------------------------------------------------------------------------------------------------
# builders (also used by generate.py to rebuild models from a checkpoint's config alone)
# ----------------------------------------------------------------------------------------------------------
def build_contrastive(model_cfg) -> ContrastiveModel:
    """The CLIP-style image/spectrum model of a ``ContrastiveModelConfig``."""
    return ContrastiveModel(image_encoder=model_cfg.image_encoder, latent_dim=model_cfg.latent_dim,
                            spectrum_base=model_cfg.spectrum_base,
                            spectrum_mults=tuple(model_cfg.spectrum_mults), image_width=model_cfg.image_width)


def build_denoiser(model_cfg, stage: str) -> ConditionalDenoiser:
    """The conditional UNet of a ``DiffusionModelConfig``: 1 input channel (lr) or 2 (sr)."""
    return ConditionalDenoiser(image_encoder=model_cfg.image_encoder, image_width=model_cfg.image_width,
                               in_channels=2 if stage == "sr" else 1, base=model_cfg.base,
                               mults=tuple(model_cfg.mults), attn_levels=tuple(model_cfg.attn_levels),
                               mid_attn=model_cfg.mid_attn, head_dim=model_cfg.head_dim,
                               num_timesteps=model_cfg.timesteps)


def build_diffusion(model_cfg) -> GaussianDiffusion:
    """The noise process (schedule buffers) of a ``DiffusionModelConfig``."""
    return GaussianDiffusion(num_timesteps=model_cfg.timesteps, schedule=model_cfg.schedule)


def _eval_images(images: torch.Tensor) -> torch.Tensor:
    return ImageAugment()(images, train=False)


# ----------------------------------------------------------------------------------------------------------
# contrastive
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_dataset(model: ContrastiveModel, ds: GalaxyDataset, rows: np.ndarray, device,
                  batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and spectrum embeddings of dataset items ``rows`` (evaluation crop)."""
    model.eval()
    zi, zs = [], []
    for s in range(0, len(rows), batch):
        b = ds[rows[s:s + batch]]
        zi.append(model.encode_image(_eval_images(b["image"]).to(device)).float().cpu())
        zs.append(model.encode_spectrum(b["spectrum"].to(device)).float().cpu())
    return torch.cat(zi), torch.cat(zs)


def retrieval_metrics(z_img: torch.Tensor, z_spec: torch.Tensor) -> dict:
    """Image -> spectrum retrieval: rank (1 = best) of each image's own spectrum among all spectra."""
    sim = z_img @ z_spec.T
    own = sim.diag()[:, None]
    rank = (sim > own).sum(1) + 1
    n = len(rank)
    return {"median_rank": float(rank.float().median()), "mean_rank": float(rank.float().mean()),
            "top1": float((rank == 1).float().mean()), "top5": float((rank <= 5).float().mean()),
            "chance_median_rank": (n + 1) / 2}


class ContrastiveTask:
    """NT-Xent over a batch of (image, spectrum) pairs; validation = retrieval among validation galaxies."""
    kind = "contrastive"
    with_lowres = False
    score_name = "mean_rank"
    score_sign = -1.0

    def __init__(self, stage: str):
        self.stage = stage
        self.resolution = RESOLUTION[stage]

    def build_model(self, cfg):
        self.temperature = cfg.model.temperature
        return build_contrastive(cfg.model)

    def loss(self, model, batch, generator):
        z_img, z_spec = model(batch["image"], batch["spectrum"])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # negatives from every rank: gather embeddings (gradients flow through the local shard)
            import ignite.distributed as idist
            z_img_all = idist.all_gather(z_img)
            z_spec_all = idist.all_gather(z_spec)
            r, n = idist.get_rank(), z_img.shape[0]
            z_img_all = torch.cat([z_img_all[:r * n], z_img, z_img_all[(r + 1) * n:]])
            z_spec_all = torch.cat([z_spec_all[:r * n], z_spec, z_spec_all[(r + 1) * n:]])
            return nt_xent(z_img_all, z_spec_all, self.temperature) * idist.get_world_size()
        return nt_xent(z_img, z_spec, self.temperature)

    def validate(self, model, val_ds, cfg, device, figure=None):
        rows = np.arange(min(cfg.validation.n_galaxies, len(val_ds)))
        z_img, z_spec = embed_dataset(model, val_ds, rows, device)
        return retrieval_metrics(z_img, z_spec)


# ----------------------------------------------------------------------------------------------------------
# diffusion
# ----------------------------------------------------------------------------------------------------------
class DiffusionTask:
    """Epsilon-prediction loss at t ~ U{0..T-1}; validation = best-of-n sample MSE in linear flux."""
    kind = "diffusion"
    score_name = "mse_best"
    score_sign = -1.0

    def __init__(self, stage: str, model_cfg):
        self.stage = stage
        self.resolution = RESOLUTION[stage]
        self.with_lowres = stage == "sr"
        self.diffusion = build_diffusion(model_cfg)
        self._mean_spectrum = None

    def build_model(self, cfg):
        return build_denoiser(cfg.model, self.stage)

    def loss(self, model, batch, generator):
        self.diffusion = self.diffusion.to(batch["spectrum"].device)
        lowres = batch.get("lowres")
        # images go through forward() (not a precomputed context) so DDP sees the encoder's gradients

        def model_fn(x, t):
            return model(x, t, images=batch["image"], lowres=lowres)
        return self.diffusion.training_loss(model_fn, batch["spectrum"], generator=generator)

    @torch.no_grad()
    def sample(self, model, images, device, n_samples, sampler, steps, seeds, lowres=None):
        """``n_samples`` spectra per image, (B, n_samples, L), in model space; context encoded once."""
        model.eval()
        self.diffusion = self.diffusion.to(device)
        context = model.encode_context(_eval_images(images).to(device))
        b = images.shape[0]
        context = context.repeat_interleave(n_samples, dim=0)
        lr = None if lowres is None else lowres.to(device).repeat_interleave(n_samples, dim=0)
        length = 4500 if self.stage == "sr" else 563
        item_seeds = [int(s) * 1000 + k for s in seeds for k in range(n_samples)]
        noise = NoiseSource(item_seeds, device=device)

        def model_fn(x, t):
            return model(x, t, context=context, lowres=lr)
        x = SAMPLERS[sampler](model_fn, (b * n_samples, length), self.diffusion,
                              steps=None if sampler == "ancestral" else steps, noise=noise)
        return x.reshape(b, n_samples, length).float().cpu()

    def validate(self, model, val_ds, cfg, device, figure=None):
        n = min(cfg.validation.n_galaxies, len(val_ds))
        batch = val_ds[np.arange(n)]
        pre = cfg.data.preprocessing
        samples = self.sample(model, batch["image"], device, cfg.validation.n_samples, cfg.validation.sampler,
                              cfg.validation.steps, seeds=batch["index"].tolist(), lowres=batch.get("lowres"))
        truth = to_linear(batch["spectrum"], pre)
        pred = to_linear(samples, pre)
        mse = ((pred - truth[:, None]) ** 2).mean(-1)  # (n, n_samples)
        if self._mean_spectrum is None:
            cache = val_ds.cache
            train_rows = cache.indices("train")
            arr = cache.flux_lowres if self.resolution == "lowres" else cache.flux_fullres
            self._mean_spectrum = torch.from_numpy(np.asarray(arr[np.sort(train_rows)]).mean(0))
        mse_mean = ((self._mean_spectrum[None] - truth) ** 2).mean(-1)
        metrics = {"mse_best": float(mse.min(1).values.mean()), "mse_first": float(mse[:, 0].mean()),
                   "mse_train_mean_spectrum": float(mse_mean.mean())}
        if figure is not None:
            from training.figures import sample_figure
            sample_figure(figure, batch, truth, pred, val_ds.cache, title=f"{cfg.name}_{cfg.train.stage}")
        return metrics
