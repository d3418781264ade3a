"""The two training tasks — what a batch's loss is, how a model is built from its config, and how it is
validated. The ignite wiring lives in training/engine.py; the networks, their builders and checkpoint loading
in models/; the diffusion process, samplers and conditional sampling in diffusion/.
"""
from __future__ import annotations

import numpy as np
import torch

from datasets.galaxy import GalaxyDataset, ImageAugment
from datasets.preprocess import STAGE_LENGTHS, to_linear, to_model_space
from diffusion.sampling import item_seeds, sample_conditional
from models.build import build_contrastive, build_denoiser, build_diffusion
from models.checkpoint import CheckpointError
from models.conditioning import set_photometry_statistics
from models.contrastive import ContrastiveModel, nt_xent
from models.loading import load_model
from models.unet1d import upsample_lowres

RESOLUTION = {"lr": "lowres", "sr": "fullres"}


def _eval_images(images: torch.Tensor) -> torch.Tensor:
    return ImageAugment()(images, train=False)


def init_photometry(model, train_ds) -> None:
    """Standardisation of a photometry-conditioned model's features: the training split's statistics."""
    if getattr(model, "photometry", None) is not None:
        set_photometry_statistics(model.photometry, train_ds.cache.photometry[np.sort(train_ds.rows)])


def image_trunk(path):
    """The image trunk of a trained contrastive (ranker) or baseline (CNN) checkpoint — its trained, not EMA,
    weights — for ``model.image_encoder_init``; another kind of checkpoint is a one-line CheckpointError."""
    src = load_model(path, ("contrastive", "baseline"), ema=False, given_as="model.image_encoder_init")
    return src.model.encoder if src.kind == "baseline" else src.model.image_trunk


def init_image_encoder(model, path) -> None:
    """Start a denoiser's image encoder from the image trunk of a trained contrastive or baseline checkpoint
    (``model.image_encoder_init``)."""
    _load_into(model.image_encoder, image_trunk(path),
               f"{path}: image trunk: does not fit model.image_encoder")


def _load_into(dst, src, what: str) -> None:
    """``dst.load_state_dict(src.state_dict())``, a mismatch as a one-line CheckpointError ``what (...)``."""
    try:
        dst.load_state_dict(src.state_dict())
    except RuntimeError as e:
        raise CheckpointError(f"{what} ({str(e).splitlines()[0][:100]})") from None


def init_weights(model, path, stage: str) -> None:
    """Start a denoiser from a trained one's EMA weights and buffers (``model.init_weights``: a fine-tune):
    same stage and architecture, or a one-line error naming the checkpoint."""
    src = load_model(path, "diffusion", stage, given_as="model.init_weights").model
    _load_into(model, src, f"{path}: model.init_weights: does not fit model.* of this run")


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
        phot = b["photometry"].to(device) if "photometry" in b else None
        zi.append(model.encode_image(_eval_images(b["image"]).to(device), phot).float().cpu())
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

    def __init__(self, stage: str, crop_length: int | None = None):
        self.stage = stage
        self.crop_length = crop_length
        self.resolution = RESOLUTION[stage]

    def build_model(self, cfg):
        self.temperature = cfg.model.temperature
        return build_contrastive(cfg.model)

    def init_model(self, model, train_ds, cfg):
        init_photometry(model, train_ds)

    def loss(self, model, batch, generator):
        spec = batch["spectrum"]
        if self.crop_length and self.crop_length < spec.shape[-1]:
            # a window of the spectrum; the encoder is convolutional with a global mean pool, so the whole
            # spectrum's embedding at inference is the (normalised) average over its windows
            spec, _ = random_windows(spec, None, self.crop_length, generator)
        z_img, z_spec = model(batch["image"], spec, batch.get("photometry"))
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
def random_windows(x0, lowres, length: int, generator):
    """One random window of ``length`` pixels per spectrum (start a multiple of 8, so it is aligned with
    the low-res grid); the low-res conditioning is interpolated to full resolution first and cut the same
    way. The denoiser is convolutional, so it then samples whole spectra."""
    b, n = x0.shape
    starts = torch.randint(0, (n - length) // 8 + 1, (b,), generator=generator).to(x0.device) * 8
    idx = starts[:, None] + torch.arange(length, device=x0.device)
    out = torch.gather(x0, 1, idx)
    if lowres is not None:
        lowres = torch.gather(upsample_lowres(lowres, n)[:, 0], 1, idx)
    return out, lowres


class DiffusionTask:
    """Epsilon-prediction loss at t ~ U{0..T-1}; validation = best-of-n sample MSE in linear flux."""
    kind = "diffusion"
    score_name = "mse_best"
    score_sign = -1.0

    def __init__(self, stage: str, model_cfg, crop_length: int | None = None):
        self.stage = stage
        self.crop_length = crop_length
        self.resolution = RESOLUTION[stage]
        self.with_lowres = stage == "sr"
        self.diffusion = build_diffusion(model_cfg)
        self._mean_spectrum = None
        self.loss_kwargs = {}
        self.cond_dropout = 0.0

    def build_model(self, cfg):
        self.loss_kwargs = dict(weighting=cfg.train.loss_weighting, min_snr_gamma=cfg.train.min_snr_gamma)
        self.cond_dropout = cfg.train.cond_dropout
        return build_denoiser(cfg.model, self.stage)

    def init_model(self, model, train_ds, cfg):
        """Optional initialisations: the image encoder from a contrastive or baseline checkpoint
        (``model.image_encoder_init``; ``build_denoiser`` freezes it with ``model.freeze_image_encoder``), the
        photometry standardisation and, with ``model.standardize``, the per-pixel data scaling; or all of them
        from a trained denoiser (``model.init_weights``)."""
        init_photometry(model, train_ds)
        if cfg.model.init_weights:
            init_weights(model, cfg.model.init_weights, self.stage)
            return
        if cfg.model.image_encoder_init:
            init_image_encoder(model, cfg.model.image_encoder_init)
        if not cfg.model.standardize:
            return
        cache = train_ds.cache
        arr = train_ds.flux_lowres if self.resolution == "lowres" else cache.flux_fullres  # data.lowres
        rows = np.sort(train_ds.rows)
        s1 = np.zeros(arr.shape[1])
        s2 = np.zeros(arr.shape[1])
        lo = np.full(arr.shape[1], np.inf)
        hi = np.full(arr.shape[1], -np.inf)
        for i in range(0, rows.size, 2048):
            x = to_model_space(np.asarray(arr[rows[i:i + 2048]], dtype=np.float64), cfg.data.preprocessing)
            s1 += x.sum(0)
            s2 += (x ** 2).sum(0)
            lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
        mean = s1 / rows.size
        std = np.sqrt(np.maximum(s2 / rows.size - mean ** 2, 0))
        std = np.maximum(std, 0.05 * np.median(std))  # no near-zero scale at the normalisation window
        model.data_mean.copy_(torch.from_numpy(mean).float())
        model.data_std.copy_(torch.from_numpy(std).float())
        model.data_lo.copy_(torch.from_numpy((lo - mean) / std).float())
        model.data_hi.copy_(torch.from_numpy((hi - mean) / std).float())

    def loss(self, model, batch, generator):
        self.diffusion = self.diffusion.to(batch["spectrum"].device)
        raw = model.module if hasattr(model, "module") else model
        x0 = raw.normalize(batch["spectrum"])
        lowres = raw.normalize_lowres(batch["lowres"]) if "lowres" in batch else None
        if lowres is not None and raw.lowres_noise:   # conditioning augmentation (model.lowres_noise)
            gen_device = generator.device if generator is not None else lowres.device
            lowres = raw.augment_lowres(lowres, torch.randn(lowres.shape, generator=generator,
                                                            device=gen_device))
        if self.crop_length and self.crop_length < x0.shape[-1]:
            x0, lowres = random_windows(x0, lowres, self.crop_length, generator)
        # images go through forward() (not a precomputed context) so DDP sees the encoder's gradients

        drop = None
        if self.cond_dropout > 0:   # classifier-free guidance: some samples see the null condition
            gen_device = generator.device if generator is not None else x0.device
            drop = (torch.rand(x0.shape[0], generator=generator, device=gen_device)
                    < self.cond_dropout).to(x0.device)

        def model_fn(x, t):
            return model(x, t, images=batch["image"], lowres=lowres, photometry=batch.get("photometry"),
                         drop_context=drop)
        return self.diffusion.training_loss(model_fn, x0, generator=generator, **self.loss_kwargs)

    @torch.no_grad()
    def sample(self, model, images, device, n_samples, sampler, steps, seeds, lowres=None,
               alpha_bar_min=0.0, photometry=None):
        """``n_samples`` spectra per image, (B, n_samples, L), in model space; context encoded once.
        ``seeds`` are the galaxies' dataset indices (item seeds ``index * 1000 + k``)."""
        model.eval()
        self.diffusion = self.diffusion.to(device)
        context = model.encode_context(_eval_images(images).to(device),
                                       None if photometry is None else photometry.to(device))
        if lowres is not None:
            lowres = lowres.to(device).repeat_interleave(n_samples, 0)
        length = STAGE_LENGTHS[self.stage]
        seeds = item_seeds(seeds, n_samples, stride=1000)
        x = sample_conditional(model, self.diffusion, context, length, seeds, sampler, steps, lowres=lowres,
                               alpha_bar_min=alpha_bar_min)
        return x.reshape(images.shape[0], n_samples, length).float().cpu()

    def validate(self, model, val_ds, cfg, device, figure=None):
        n = min(cfg.validation.n_galaxies, len(val_ds))
        batch = val_ds[np.arange(n)]
        pre = cfg.data.preprocessing
        samples = self.sample(model, batch["image"], device, cfg.validation.n_samples, cfg.validation.sampler,
                              cfg.validation.steps, seeds=batch["index"].tolist(), lowres=batch.get("lowres"),
                              alpha_bar_min=cfg.validation.alpha_bar_min, photometry=batch.get("photometry"))
        truth = to_linear(batch["spectrum"], pre)
        pred = to_linear(samples, pre)
        mse = ((pred - truth[:, None]) ** 2).mean(-1)  # (n, n_samples)
        # control: the same draws (same seeds) conditioned on another galaxy's image; a model that uses the
        # image is worse here than above, one that ignores it is not
        phot = batch.get("photometry")
        shuffled = self.sample(model, batch["image"].roll(1, 0), device, cfg.validation.n_samples,
                               cfg.validation.sampler, cfg.validation.steps, seeds=batch["index"].tolist(),
                               lowres=batch.get("lowres"), alpha_bar_min=cfg.validation.alpha_bar_min,
                               photometry=None if phot is None else phot.roll(1, 0))
        mse_shuffled = ((to_linear(shuffled, pre) - truth[:, None]) ** 2).mean(-1)
        if self._mean_spectrum is None:
            cache = val_ds.cache
            train_rows = cache.indices("train")
            arr = val_ds.flux_lowres if self.resolution == "lowres" else cache.flux_fullres
            self._mean_spectrum = torch.from_numpy(np.asarray(arr[np.sort(train_rows)]).mean(0))
        mse_mean = ((self._mean_spectrum[None] - truth) ** 2).mean(-1)
        metrics = {"mse_best": float(mse.min(1).values.mean()), "mse_first": float(mse[:, 0].mean()),
                   "mse_train_mean_spectrum": float(mse_mean.mean()),
                   "mse_best_shuffled_images": float(mse_shuffled.min(1).values.mean())}
        if figure is not None:
            from training.figures import sample_figure
            sample_figure(figure, batch, truth, pred, val_ds.cache, title=f"{cfg.name}_{cfg.train.stage}")
        return metrics
