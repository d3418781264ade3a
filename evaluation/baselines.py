"""Baselines of the evaluation, all on the same split as the generative chain.

* ``train_mean``: the mean preprocessed spectrum of the training split (one spectrum for every galaxy:
  its measured properties are constant — the floor any image-conditioned method must beat);
* ``retrieval``: for each test image, the TRAINING spectrum whose full-res contrastive embedding is
  closest to the image's embedding (the contrastive network of the generation chain, no generation);
* ``cnn``: the supervised CNN (models/baseline.py, trained by training/baseline.py): z, Dn4000, sigma_v and
  AGN directly from the image;
* ``photometric``: gradient boosting on image aperture photometry (evaluation/photometric.py), fitted on
  the training split's catalogue truth (z, Dn4000, sigma_v, age, [M/H], E(B-V), log M*, BPT class).
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from datasets.galaxy import ImageAugment, SurveyCache
from datasets.photometry import image_features
from datasets.preprocess import to_model_space
from models.loading import load_model


def _raw_images(survey_path, rows: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(rows, return_inverse=True)
    with h5py.File(survey_path, "r") as f:
        return f["images"][uniq][inv].astype(np.float32)


def _standardised(images: np.ndarray, band_mean, band_std) -> torch.Tensor:
    m = np.asarray(band_mean, np.float32)[None, :, None, None]
    s = np.asarray(band_std, np.float32)[None, :, None, None]
    x = torch.from_numpy((images - m) / s)
    return ImageAugment()(x, train=False)  # resize 64 -> 71, centre crop 64 (evaluation view)


def train_pool(cache: SurveyCache, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted training rows (valid spectra), a seeded random subset of at most ``max_rows``."""
    rows = cache.indices("train")
    if len(rows) > max_rows:
        rows = np.random.default_rng(seed).choice(rows, max_rows, replace=False)
    return np.sort(rows)


def train_mean_spectrum(cache: SurveyCache, pool: np.ndarray) -> np.ndarray:
    """(4500,) mean normalised linear spectrum of the training rows ``pool``."""
    return np.asarray(cache.flux_fullres[pool], dtype=np.float64).mean(0)


@torch.no_grad()
def retrieve(
    contrastive_path,
    survey_path,
    cache: SurveyCache,
    rows: np.ndarray,
    pool: np.ndarray,
    device="cpu",
    batch: int = 256,
) -> dict:
    """Nearest training spectrum (contrastive image->spectrum score) for each survey row in ``rows``.

    Returns dict ``flux`` (N, 4500) normalised linear flux of the retrieved spectra, ``train_row`` (N,)
    their survey rows and ``score`` (N,) the dot-product score.
    """
    lm = load_model(contrastive_path, "contrastive", "sr", device, given_as="contrastive_sr")
    model, pre = lm.model, lm.cfg.data.preprocessing
    zs = []
    for s in range(0, len(pool), batch):
        spec = to_model_space(np.asarray(cache.flux_fullres[pool[s : s + batch]], np.float64), pre)
        zs.append(model.encode_spectrum(torch.from_numpy(spec.astype(np.float32)).to(device)).float().cpu())
    z_spec = torch.cat(zs)
    imgs = _raw_images(survey_path, rows)
    best, score = [], []
    for s in range(0, len(rows), batch):
        raw = imgs[s : s + batch]
        phot = (torch.from_numpy(image_features(raw)).to(device)
                if getattr(model, "photometry", None) is not None else None)
        zi = model.encode_image(_standardised(raw, lm.band_mean, lm.band_std).to(device), phot).float().cpu()
        sim = zi @ z_spec.T
        v, k = sim.max(1)
        best.append(k.numpy())
        score.append(v.numpy())
    best = np.concatenate(best)
    train_row = pool[best]
    uniq, inv = np.unique(train_row, return_inverse=True)
    return {
        "flux": np.asarray(cache.flux_fullres[uniq], np.float64)[inv],
        "train_row": train_row,
        "score": np.concatenate(score),
    }


@torch.no_grad()
def cnn_predict(path, survey_path, rows: np.ndarray, device="cpu", batch: int = 256) -> dict:
    """Predictions of the supervised CNN checkpoint ``path`` for survey rows ``rows``.

    Returns dict of (N,) arrays: z, dn4000, sigma_v (km/s), agn_prob, agn (1 if agn_prob exceeds the AGN
    fraction of the survey's training split: evaluation.metrics.agn_decision), and ``agn_threshold``.
    """
    from evaluation.metrics import agn_decision
    from evaluation.truth import train_agn_fraction

    lm = load_model(path, "baseline", device=device)
    imgs = _raw_images(survey_path, rows)
    phot = getattr(lm.model, "photometry", None) is not None
    parts = [
        lm.model.predict(_standardised(imgs[s : s + batch], lm.band_mean, lm.band_std).to(device),
                         torch.from_numpy(image_features(imgs[s : s + batch])).to(device) if phot else None)
        for s in range(0, len(rows), batch)
    ]
    out = {k: np.concatenate([p[k] for p in parts]).astype(np.float64) for k in parts[0]}
    prevalence = train_agn_fraction(survey_path)  # the CNN's AGN target: BPT class 2
    out["agn"] = agn_decision(out["agn_prob"], prevalence)
    out["agn_threshold"] = prevalence
    return out


def noiseless_lick(survey_path, rows: np.ndarray, z) -> dict:
    """Lick indices ``lick_<Name>`` of survey rows' NOISELESS spectra (``/spectra/model``, mock surveys),
    preprocessed and measured at the catalogue redshift ``z`` exactly as evaluate.py measures its Lick
    reference (evaluation.run.noiseless_spectra -> evaluation.measure.measure_cheap); {} for a survey
    without noiseless spectra or redshifts (a real one: its Lick truth is MPA-JHU's, evaluation.truth)."""
    from datasets.preprocess import FULLRES_WAVE
    from evaluation.measure import LICK_NAMES, measure_cheap
    from evaluation.run import noiseless_spectra

    with h5py.File(survey_path, "r") as f:
        if "spectra/model" not in f or z is None or len(rows) == 0:
            return {}
    flux = noiseless_spectra(survey_path, np.asarray(rows))
    m = measure_cheap(FULLRES_WAVE, flux, z=np.asarray(z, np.float64))
    return {f"lick_{n}": m[f"lick_{n}"] for n in LICK_NAMES}


def photometric_predict(survey_path, rows: np.ndarray, max_train: int = 5000, seed: int = 0) -> dict:
    """Gradient boosting on image aperture photometry (evaluation.photometric) for survey rows ``rows``.

    Fits on a seeded subset of at most ``max_train`` rows of the survey's TRAIN split (catalogue truth
    under evaluation.truth's standard names: regressors for whatever of z, dn4000, sigma_v, age_lw,
    metallicity_lw, ebv, log_mstar the catalogue holds, a classifier for bpt_class; regressors for the Lick
    indices where the truth has them: MPA-JHU columns, or for a mock its noiseless spectra measured like
    evaluate.py's reference, :func:`noiseless_lick`) and predicts ``rows``.
    Returns :func:`evaluation.photometric.predict`'s dict (native units; ``agn`` with a bpt_class) plus
    ``n_train``; ``z`` and ``dn4000`` are always present (NaN where not fitted).
    """
    from datasets.schema import SPLIT_CODES, open_survey
    from evaluation.photometric import fit_photometric, predict, survey_features
    from evaluation.truth import load_truth

    with open_survey(survey_path) as f:
        train = np.flatnonzero(f["split"][:] == SPLIT_CODES["train"])
    if len(train) > max_train:
        train = np.sort(np.random.default_rng(seed).choice(train, max_train, replace=False))
    rows = np.asarray(rows, dtype=np.int64)
    x, _ = survey_features(survey_path, np.concatenate([train, rows]))
    targets = load_truth(survey_path, train)
    for k, v in noiseless_lick(survey_path, train, targets.get("z")).items():
        targets.setdefault(k, v)
    model = fit_photometric(x[: len(train)], targets, seed=seed)
    out = predict(model, x[len(train):])
    for k in ("z", "dn4000"):
        out.setdefault(k, np.full(len(rows), np.nan))
    out["n_train"] = len(train)
    return out
