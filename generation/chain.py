"""The generation chain of the paper, batched: images -> ranked full-resolution spectra.

1. N low-res candidates per image from the low-res diffusion model;
2. rank them with the low-res contrastive network, keep the top k;
3. M super-resolved samples spread over the k kept candidates (sample m refines kept candidate m mod k);
4. rank those with the full-res contrastive network: the top one is the prediction.

Optional, not in the paper (``generate.z_prior: baseline``): a redshift-consistent selection. The supervised
image network of ``generate.checkpoints.baseline`` predicts a photometric redshift z_p from the same image;
in steps 2 and 4 every candidate's own redshift is fitted (``analysis.fit_redshifts``), and candidates with
|z - z_p| / (1 + z_p) <= ``generate.z_prior_width`` are ranked first (by their contrastive score), the
others after them (nearest z first). The spectra are still the diffusion model's; the prior only chooses
among them, so the chain's redshift is no longer independent of the image's photo-z (docs/MODELS.md).
Optional, not in the paper (``generate.prediction: z_mean``): the prediction is the mean of the full-res
candidates whose fitted redshift agrees with the top one's (``z_consistent_mean``) instead of the top one;
``z_aligned`` moves each of them to the top one's redshift before averaging (``z_aligned_mean``);
``consensus`` moves the full-res candidates to the low-res candidates' consensus redshift (the median of the
N fitted redshifts, of the prior-consistent ones with a prior: ``consensus_z``) and averages those within
``generate.prediction_width`` of it (``z_target_mean``): the N cheap draws vote on the redshift.
Optional, not in the paper (``generate.keep_policy: sample``): step 2 keeps the best-ranked low-res candidate
and k - 1 others drawn at random among the consistent ones (``spread_keep``) instead of the k best-ranked: the
M full-res draws then spread as the diffusion model's own draws do, not only as its ranker's favourites do;
``sample_all`` draws the k - 1 among all the other candidates, whatever the redshift prior says of them.

Every model's image encoder runs ONCE per galaxy; the cross-attention context is reused across all
sampling steps and all candidates, and all candidates of a batch of galaxies go through each network
together. Randomness is per galaxy (seeded by the run seed and the galaxy's id: ``diffusion.sampling``),
so a galaxy's output does not depend on the batch it is in, on chunking, on resuming or on the number of
processes. Models come from ``models.loading.load_model``; sampling is
``diffusion.sampling.sample_conditional``.
"""
from __future__ import annotations

import numpy as np
import torch

from datasets.galaxy import ImageAugment
from datasets.photometry import image_features
from datasets.preprocess import (
    FULLRES_WAVE,
    LOWRES_KERNEL_SIGMA,
    LOWRES_WAVE,
    N_FULLRES,
    N_LOWRES,
    SMOOTH_SIGMA,
    STAGE_LENGTHS,
    to_linear,
)
from diffusion.sampling import galaxy_seed, item_seeds, sample_conditional
from models.contrastive import score_candidates
from models.loading import LoadedModel, load_model
from models.precision import autocast_context

ROLES = {  # role -> (kind, stage)
    "diffusion_lr": ("diffusion", "lr"), "diffusion_sr": ("diffusion", "sr"),
    "contrastive_lr": ("contrastive", "lr"), "contrastive_sr": ("contrastive", "sr"),
}


#: roles loaded only for an option: ``generate.z_prior: baseline`` needs the supervised CNN
OPTIONAL_ROLES = {"baseline": ("baseline", None)}
#: Gaussian sigma (Angstrom) of the smoothing of a low-res candidate as the redshift fitter sees it: the
#: preprocessing's 2 A plus linear interpolation between the 8 A samples (~ 8 / sqrt(6) A)
LOWRES_SIGMA = float(np.hypot(SMOOTH_SIGMA, (LOWRES_WAVE[1] - LOWRES_WAVE[0]) / np.sqrt(6.0)))
#: the same for each ``data.lowres`` mode: "bin" adds the 8 A bin's own blur
LOWRES_SIGMAS = {m: float(np.hypot(LOWRES_SIGMA, s)) for m, s in LOWRES_KERNEL_SIGMA.items()}
#: the roles whose inputs or outputs are low-res spectra: they must share ``data.lowres``
LOWRES_ROLES = ("diffusion_lr", "diffusion_sr", "contrastive_lr")


def candidate_redshifts(flux, wave: np.ndarray, sigma: float) -> np.ndarray:
    """Redshift of every candidate spectrum (..., L), normalised LINEAR flux (numpy) -> (...) float64 (NaN
    where none fits); ``sigma`` = the spectra's smoothing in Angstrom (``LOWRES_SIGMA``, ``SMOOTH_SIGMA``)."""
    from analysis import fit_redshifts

    lin = np.asarray(flux)
    res = fit_redshifts(wave, lin.reshape(-1, lin.shape[-1]).astype(np.float64), None, extra_sigma=sigma)
    return np.array([r.z for r in res], dtype=np.float64).reshape(lin.shape[:-1])


def prior_rank_key(scores: torch.Tensor, z_cand: np.ndarray, z_prior: np.ndarray,
                   width: float) -> torch.Tensor:
    """Ranking key of the redshift-consistent selection: candidates with |z - z_p| / (1 + z_p) <= ``width``
    keep their contrastive score (in [-1, 1]); the others rank after every consistent one, nearest first.

    scores (B, K), z_cand (B, K), z_prior (B,) -> (B, K) float32; higher is better. A candidate without a
    redshift (NaN) is last; a galaxy without a prior (NaN) keeps its plain scores."""
    dz = np.abs(z_cand - z_prior[:, None]) / (1.0 + z_prior[:, None])
    dz = np.where(np.isnan(z_cand), np.inf, dz)
    ok = (dz <= width) | np.isnan(z_prior)[:, None]
    key = np.where(ok, scores.float().cpu().numpy(), -10.0 - np.minimum(dz, 1e6))
    return torch.from_numpy(key.astype(np.float32)).to(scores.device)


#: ranking keys above this are candidates ``prior_rank_key`` counts as consistent (their plain scores, in
#: [-1, 1]); the inconsistent ones sit below -10
CONSISTENT_KEY = -5.0


def spread_keep(key: torch.Tensor, k: int, galaxy_seeds, among_all: bool = False) -> torch.Tensor:
    """Step 2 with ``generate.keep_policy: sample`` (or ``sample_all``: ``among_all``): (B, k) kept candidate
    indices per galaxy.

    Slot 0 is the galaxy's best-ranked candidate (highest ``key``, as with the paper's top-k); slots 1..k-1
    are drawn at random without replacement among its other consistent candidates (key > CONSISTENT_KEY:
    all of them without a redshift prior), seeded by the galaxy's seed alone (the same galaxy gets the same
    draw in any batch); if there are fewer than k - 1 of those, the best-ranked of the rest fill the slots.
    The top-k keeps the draws the ranker likes best, which agree with each other more than the model's
    draws do (their spread under-states the uncertainty); this keeps one of them and a fair sample of
    the rest.
    """
    kn = key.float().cpu().numpy()
    out = np.empty((kn.shape[0], k), dtype=np.int64)
    for b, (row, seed) in enumerate(zip(kn, galaxy_seeds)):
        order = np.argsort(-row, kind="stable")
        rest = order[1:]
        ok = rest if among_all else rest[row[rest] > CONSISTENT_KEY]
        rng = np.random.default_rng([int(seed), 2])
        pick = rng.choice(ok, size=min(k - 1, ok.size), replace=False) if ok.size else ok
        fill = rest[~np.isin(rest, pick)][:k - 1 - pick.size]
        out[b] = np.concatenate([order[:1], pick, fill])
    return torch.from_numpy(out).to(key.device)


class GenerationError(ValueError):
    """Inconsistent models or inputs; the message names the file and the field."""


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
    modes = {role: models[role].cfg.data.lowres for role in LOWRES_ROLES}
    for role in LOWRES_ROLES[1:]:
        if modes[role] != modes["diffusion_lr"]:
            raise GenerationError(f"{models[role].path}: data.lowres: {modes[role]!r} differs from "
                                  f"{ref.path}'s {modes['diffusion_lr']!r} (low-res spectra made "
                                  "differently)")
    lr, sr = models["contrastive_lr"], models["contrastive_sr"]
    if lr.cfg.model.latent_dim != sr.cfg.model.latent_dim:
        raise GenerationError(f"{sr.path}: model.latent_dim: {sr.cfg.model.latent_dim} differs from "
                              f"{lr.path}'s {lr.cfg.model.latent_dim} (the rankers must share one latent "
                              "size)")
    if models["diffusion_lr"].cfg.model.timesteps != models["diffusion_sr"].cfg.model.timesteps:
        raise GenerationError(f"{models['diffusion_sr'].path}: model.timesteps differs from the low-res "
                              "model's")


class GenerationChain:
    """The four models and the chain's settings; ``run(images, ids)`` processes one batch of galaxies."""

    def __init__(self, models: dict[str, LoadedModel], gen_cfg, device: torch.device, amp: str = "auto"):
        check_compatible(models)
        for role in ("diffusion_lr", "diffusion_sr"):
            w = gen_cfg.stage_sampler(ROLES[role][1])["guidance"]
            if w != 1.0 and not models[role].cfg.train.cond_dropout:
                own = role == "diffusion_lr" and gen_cfg.lowres_guidance is not None
                key = "generate.lowres_guidance" if own else "generate.guidance"
                raise GenerationError(f"{models[role].path}: train.cond_dropout: 0, but {key} is {w} "
                                      "(classifier-free guidance needs a model trained with a null "
                                      "condition)")
        self.m = models
        self.g = gen_cfg
        self.device = device
        self.amp = amp
        self.preprocessing = models["diffusion_lr"].cfg.data.preprocessing
        self.lowres_mode = models["diffusion_lr"].cfg.data.lowres
        self.mean = torch.tensor(models["diffusion_lr"].band_mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(models["diffusion_lr"].band_std, dtype=torch.float32)[None, :, None, None]
        self.augment = ImageAugment()
        # photometric features (model.photometry): measured on the original cutouts, once per galaxy
        self.photometry = any(getattr(m.model, "photometry", None) is not None for m in models.values())
        self.z_prior = gen_cfg.z_prior
        if self.z_prior and "baseline" not in models:
            raise GenerationError(f"generate.z_prior: {self.z_prior!r} needs generate.checkpoints.baseline")

    def prepare_images(self, images_nmgy: torch.Tensor) -> torch.Tensor:
        """Nanomaggies -> standardised with the training band statistics -> evaluation crop."""
        x = (images_nmgy.float() - self.mean) / self.std
        return self.augment(x, train=False).to(self.device)

    def _sample(self, role, images, seeds, lowres=None, photometry=None):
        lm = self.m[role]
        with autocast_context(self.device, self.amp):
            context = lm.model.encode_context(images, photometry)
        length = STAGE_LENGTHS[ROLES[role][1]]
        sp = self.g.stage_sampler(ROLES[role][1])
        options = {"eta": sp["eta"]} if sp["eta"] else {}   # (0 = the sampler's default)
        return sample_conditional(lm.model, lm.diffusion, context, length, seeds, sp["sampler"],
                                  sp["steps"], lowres=lowres, alpha_bar_min=sp["alpha_bar_min"],
                                  start=sp["start"], guidance=sp["guidance"],
                                  precision=lambda: autocast_context(self.device, self.amp), **options)

    def photometry_features(self, images_nmgy: torch.Tensor) -> torch.Tensor | None:
        """The cutouts' aperture-photometry features (model.photometry), or None if no model takes them."""
        if not self.photometry:
            return None
        return torch.from_numpy(image_features(images_nmgy.numpy())).to(self.device)

    def super_resolve(self, images, galaxy_seeds, lowres, photometry=None) -> torch.Tensor:
        """Full-res draws (B * M, 4500, model space) of the low-res spectra ``lowres`` (B * M, 563, model
        space; M per galaxy, galaxy-major) for the prepared ``images`` (B, ...): the chain's second stage,
        seeded as ``run`` seeds it."""
        m = lowres.shape[0] // images.shape[0]
        return self._sample("diffusion_sr", images, item_seeds(galaxy_seeds, m, offset=1000), lowres=lowres,
                            photometry=photometry)

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
        ``fullres_scores`` (B, M), ``top`` (B,) index of the winner, ``flux_pred`` (B, 4500); with
        ``generate.z_prior`` also ``z_prior`` (B,), ``lowres_z`` (B, N) and ``fullres_z`` (B, M), the
        candidates' fitted redshifts; with ``generate.prediction: consensus`` ``lowres_z``, ``fullres_z``
        and ``z_consensus`` (B,).
        """
        g = self.g
        b = images_nmgy.shape[0]
        N, k, M = g.n_lowres, g.keep_lowres, g.n_fullres
        images = self.prepare_images(images_nmgy)
        phot = self.photometry_features(images_nmgy)
        gseeds = [galaxy_seed(g.seed, int(i)) for i in ids]
        lr = self._sample("diffusion_lr", images, item_seeds(gseeds, N), photometry=phot)
        lr_scores = self._rank("contrastive_lr", images, lr, N, phot)                    # (B, N)
        pre = self.preprocessing
        lr_lin = to_linear(lr.reshape(b, N, N_LOWRES), pre).cpu().numpy()   # output, and the z fits
        extra = {}
        lr_key = lr_scores
        if self.z_prior or g.prediction == "consensus":
            extra["lowres_z"] = candidate_redshifts(lr_lin, LOWRES_WAVE, LOWRES_SIGMAS[self.lowres_mode])
        if self.z_prior:
            with autocast_context(self.device, self.amp):
                zp = self.m["baseline"].model.predict(images, phot)["z"].astype(np.float64)
            lr_key = prior_rank_key(lr_scores, extra["lowres_z"], zp, self.g.z_prior_width)
            extra["z_prior"] = zp
        kept = (spread_keep(lr_key, k, gseeds, among_all=g.keep_policy == "sample_all")
                if g.keep_policy in ("sample", "sample_all") else lr_key.topk(k, dim=1).indices)  # (B, k)
        parent = torch.arange(M) % k                                                # (M,)
        chosen = torch.gather(lr.reshape(b, N, -1), 1,
                              kept[:, parent].unsqueeze(-1).expand(b, M, N_LOWRES))  # (B, M, 563)
        sr = self.super_resolve(images, gseeds, chosen.reshape(b * M, N_LOWRES), phot)
        sr_scores = self._rank("contrastive_sr", images, sr, M, phot)                    # (B, M)
        sr_lin = to_linear(sr.reshape(b, M, N_FULLRES), pre).cpu().numpy()
        sr_key = sr_scores
        if self.z_prior or g.prediction != "top":
            extra["fullres_z"] = candidate_redshifts(sr_lin, FULLRES_WAVE, SMOOTH_SIGMA)
        if self.z_prior:
            sr_key = prior_rank_key(sr_scores, extra["fullres_z"], extra["z_prior"], self.g.z_prior_width)
        top = sr_key.argmax(dim=1).cpu().numpy()
        flux_pred, zc = predict(g.prediction, sr_lin, top, extra.get("fullres_z"), g.prediction_width,
                                extra.get("lowres_z"), extra.get("z_prior"), g.z_prior_width)
        if zc is not None:
            extra["z_consensus"] = zc
        return {
            "lowres_candidates": lr_lin,
            "lowres_scores": lr_scores.cpu().numpy(), "kept": kept.cpu().numpy(),
            "fullres_candidates": sr_lin,
            "fullres_parent": np.broadcast_to(parent.numpy(), (b, M)).copy(),
            "fullres_scores": sr_scores.cpu().numpy(), "top": top,
            "flux_pred": flux_pred,
            **extra,
        }


#: the values of ``generate.prediction`` (``predict``)
PREDICTIONS = ("top", "z_mean", "z_aligned", "consensus")


def predict(prediction: str, fullres: np.ndarray, top: np.ndarray, fullres_z=None, width: float = 0.003,
            lowres_z=None, z_prior=None, prior_width: float = 0.02):
    """The chain's prediction (B, L) from the full-res candidates (B, M, L) under ``generate.prediction``,
    and the consensus redshift (B,) (None unless ``consensus``). ``fullres_z`` (B, M) is needed by every rule
    but "top", ``lowres_z`` (B, N) by "consensus" (with ``z_prior`` (B,) when the run had one)."""
    if prediction == "top":
        return fullres[np.arange(len(top)), top], None
    if prediction == "consensus":
        zc = consensus_z(lowres_z, z_prior, prior_width)
        return z_target_mean(fullres, fullres_z, zc, top, width), zc
    average = z_aligned_mean if prediction == "z_aligned" else z_consistent_mean
    return average(fullres, fullres_z, top, width), None


def _agree_with_top(z: np.ndarray, top: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1) top candidate's z and (B, M) mask of the candidates within ``width`` x (1 + z_top) of it; the
    top one always counts (alone where its z is NaN)."""
    b = np.arange(len(top))
    zt = z[b, top][:, None]
    use = np.abs(z - zt) <= width * (1 + zt)       # NaN compares False
    use[b, top] = True
    return zt, use


def z_consistent_mean(candidates: np.ndarray, z: np.ndarray, top: np.ndarray, width: float) -> np.ndarray:
    """(B, L) mean of each galaxy's candidates (B, M, L) whose fitted z (B, M) lies within ``width`` x
    (1 + z_top) of the top-ranked one's (``generate.prediction: z_mean``). The top candidate always counts
    (alone where its z is NaN). Averaging draws that agree on z estimates the posterior mean: it keeps
    the continuum and lines they share and averages away the noise-like structure of single draws."""
    zt, use = _agree_with_top(z, top, width)
    w = use.astype(np.float64)
    return ((candidates * w[..., None]).sum(1) / w.sum(1)[:, None]).astype(np.float32)


def z_aligned_mean(candidates: np.ndarray, z: np.ndarray, top: np.ndarray, width: float,
                   wave: np.ndarray = FULLRES_WAVE) -> np.ndarray:
    """``z_consistent_mean`` with every averaged candidate first moved to the top one's redshift
    (``generate.prediction: z_aligned``): candidate m's flux at wavelength w is read at
    w (1 + z_m) / (1 + z_top) (linear interpolation on the uniform grid ``wave``). Candidates that agree on
    z within ``width`` still differ by up to ``width`` (1 + z), ~900 km/s at 0.003; averaging them unshifted
    broadens every line by that spread. Pixels a shifted candidate does not cover are averaged over the
    others (the top one covers all). The flux-density factor (1 + z_top) / (1 + z_m) (< 1 % here) is left
    out: the spectra are normalised."""
    b = np.arange(len(top))
    zt, use = _agree_with_top(z, top, width)
    ratio = np.where(use, (1 + np.nan_to_num(z, nan=0.0)) / (1 + np.nan_to_num(zt, nan=0.0)), 1.0)
    ratio[b, top] = 1.0                            # the top one stays exactly as drawn
    return _shifted_mean(candidates, ratio, use, wave)


def consensus_z(lowres_z: np.ndarray, z_prior: np.ndarray | None = None, width: float = 0.02) -> np.ndarray:
    """(B,) the consensus redshift of each galaxy's N low-res candidates (B, N): the median of their fitted
    redshifts; with a prior (B,), of those within ``width`` x (1 + z_prior) of it (all of them where none
    is). NaN where no candidate has a redshift. The N draws are cheap, and their median is a steadier
    estimate than any single ranked draw's (docs/MODELS.md)."""
    zl = np.asarray(lowres_z, dtype=np.float64)
    ok = np.isfinite(zl)
    if z_prior is not None:
        zp = np.asarray(z_prior, dtype=np.float64)[:, None]
        near = ok & (np.abs(zl - zp) <= width * (1 + zp))
        ok = np.where(near.any(1, keepdims=True), near, ok)
    masked = np.where(ok, zl, np.nan)
    out = np.full(len(zl), np.nan)
    has = ok.any(1)
    out[has] = np.nanmedian(masked[has], axis=1)
    return out


def z_target_mean(candidates: np.ndarray, z: np.ndarray, target: np.ndarray, top: np.ndarray, width: float,
                  wave: np.ndarray = FULLRES_WAVE) -> np.ndarray:
    """(B, L) mean of each galaxy's candidates (B, M, L) whose fitted z (B, M) lies within ``width`` x
    (1 + target) of ``target`` (B,), each moved to ``target`` first as in ``z_aligned_mean``
    (``generate.prediction: consensus``). Where none lies that close, the nearest one alone, moved; where
    the target or every candidate's z is NaN, the ``top`` (B,) candidate as drawn."""
    zc = np.asarray(z, dtype=np.float64)
    tg = np.asarray(target, dtype=np.float64)[:, None]
    dz = np.abs(zc - tg) / (1 + tg)
    dz = np.where(np.isnan(dz), np.inf, dz)        # NaN z or target: never near
    use = dz <= width
    lone = ~use.any(1) & np.isfinite(dz).any(1)
    use[lone, np.argmin(dz[lone], axis=1)] = True
    none = ~use.any(1)
    use[none, top[none]] = True
    ratio = np.where(use & np.isfinite(dz), (1 + np.nan_to_num(zc)) / (1 + np.nan_to_num(tg)), 1.0)
    ratio[none] = 1.0
    return _shifted_mean(candidates, ratio, use, wave)


def _shifted_mean(candidates: np.ndarray, ratio: np.ndarray, use: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """(B, L) mean over the ``use`` (B, M) candidates (B, M, L) of candidate m read at w x ratio (B, M)
    (linear interpolation on the uniform grid ``wave``). A pixel is averaged over the used candidates that
    cover it; one that none covers (all shifted past the grid's end) takes their edge-extended values."""
    cand = np.asarray(candidates, dtype=np.float64)
    n_pix = cand.shape[-1]
    w0, dw = float(wave[0]), float(wave[1] - wave[0])
    pos = (wave[None, None, :] * ratio[..., None] - w0) / dw   # (B, M, L) fractional source pixel
    inside = (pos >= 0) & (pos <= n_pix - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_pix - 2)
    frac = np.clip(pos - i0, 0.0, 1.0)
    lo = np.take_along_axis(cand, i0, axis=-1)
    hi = np.take_along_axis(cand, i0 + 1, axis=-1)
    shifted = lo + frac * (hi - lo)
    wgt = (use[..., None] & inside).astype(np.float64)
    n = wgt.sum(1)
    edge = (shifted * use[..., None]).sum(1) / use.sum(1)[:, None]
    out = np.where(n > 0, (shifted * wgt).sum(1) / np.maximum(n, 1), edge)
    return out.astype(np.float32)


def chain_roles(gen_cfg) -> dict[str, tuple[str, str | None]]:
    """The roles this run loads: the four of the paper, + ``baseline`` with ``generate.z_prior``."""
    return {**ROLES, **(OPTIONAL_ROLES if gen_cfg.z_prior else {})}


def load_chain(gen_cfg, device, amp="auto") -> GenerationChain:
    """Load the checkpoints named in ``generate.checkpoints`` and check that they fit together."""
    models = {role: load_model(gen_cfg.checkpoints[role], kind, stage, device, given_as=role)
              for role, (kind, stage) in chain_roles(gen_cfg).items()}
    return GenerationChain(models, gen_cfg, device, amp)
