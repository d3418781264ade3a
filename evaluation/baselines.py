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

from pathlib import Path

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
def pool_embeddings(lm, cache: SurveyCache, pool: np.ndarray, device="cpu", batch: int = 256,
                    cache_dir=None, checkpoint=None) -> torch.Tensor:
    """(len(pool), latent) full-res contrastive embeddings of the training spectra ``pool`` under the loaded
    contrastive model ``lm``; stored under ``cache_dir`` (evaluation/cache.py) keyed by the ``checkpoint``
    file's sha256, the survey and the pool when both are given."""
    from evaluation.cache import cached, rows_digest
    from models.reference import sha256

    model, pre = lm.model, lm.cfg.data.preprocessing

    def compute():
        zs = []
        for s in range(0, len(pool), batch):
            spec = to_model_space(np.asarray(cache.flux_fullres[pool[s : s + batch]], np.float64), pre)
            zs.append(model.encode_spectrum(torch.from_numpy(spec.astype(np.float32)).to(device)).float().cpu())
        return torch.cat(zs)

    if cache_dir is None or checkpoint is None:
        return compute()
    ident = {"checkpoint_sha256": sha256(Path(checkpoint)), "preprocessed": str(Path(cache.root).resolve()),
             "pool": rows_digest(pool), "torch": torch.__version__}
    return cached(cache_dir, "retrieval_pool", ident, compute)[0]


@torch.no_grad()
def retrieve(
    contrastive_path,
    survey_path,
    cache: SurveyCache,
    rows: np.ndarray,
    pool: np.ndarray,
    device="cpu",
    batch: int = 256,
    cache_dir=None,
) -> dict:
    """Nearest training spectrum (contrastive image->spectrum score) for each survey row in ``rows``.

    Returns dict ``flux`` (N, 4500) normalised linear flux of the retrieved spectra, ``train_row`` (N,)
    their survey rows and ``score`` (N,) the dot-product score. ``cache_dir``: reuse the pool's embeddings
    (:func:`pool_embeddings`).
    """
    lm = load_model(contrastive_path, "contrastive", "sr", device, given_as="contrastive_sr")
    model = lm.model
    z_spec = pool_embeddings(lm, cache, pool, device, batch, cache_dir, contrastive_path)
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


def photometric_model(survey_path, max_train: int = 5000, seed: int = 0, cache_dir=None):
    """The photometric baseline (:func:`evaluation.photometric.fit_photometric`) fitted on a seeded subset
    of at most ``max_train`` rows of the survey's TRAIN split; stored under ``cache_dir``
    (evaluation/cache.py) when given. Returns ``(model, n_train, read_from_cache)``."""
    import sklearn

    from datasets.schema import SPLIT_CODES, open_survey
    from evaluation.cache import cached, rows_digest, survey_ident
    from evaluation.photometric import fit_photometric, survey_features
    from evaluation.truth import load_truth

    with open_survey(survey_path) as f:
        train = np.flatnonzero(f["split"][:] == SPLIT_CODES["train"])
    if len(train) > max_train:
        train = np.sort(np.random.default_rng(seed).choice(train, max_train, replace=False))

    def compute():
        x, _ = survey_features(survey_path, train)
        targets = load_truth(survey_path, train)
        for k, v in noiseless_lick(survey_path, train, targets.get("z")).items():
            targets.setdefault(k, v)
        return fit_photometric(x, targets, seed=seed)

    ident = {**survey_ident(survey_path), "train": rows_digest(train), "seed": seed,
             "sklearn": sklearn.__version__}
    model, hit = cached(cache_dir, "photometric", ident, compute)
    return model, len(train), hit


def photometric_predict(survey_path, rows: np.ndarray, max_train: int = 5000, seed: int = 0,
                        cache_dir=None) -> dict:
    """Gradient boosting on image aperture photometry (evaluation.photometric) for survey rows ``rows``.

    Fits on a seeded subset of at most ``max_train`` rows of the survey's TRAIN split (catalogue truth
    under evaluation.truth's standard names: regressors for whatever of z, dn4000, sigma_v, age_lw,
    metallicity_lw, ebv, log_mstar the catalogue holds, a classifier for bpt_class; regressors for the Lick
    indices where the truth has them: MPA-JHU columns, or for a mock its noiseless spectra measured like
    evaluate.py's reference, :func:`noiseless_lick`) and predicts ``rows``; ``cache_dir``: reuse the fit
    (:func:`photometric_model`).
    Returns :func:`evaluation.photometric.predict`'s dict (native units; ``agn`` with a bpt_class) plus
    ``n_train``; ``z`` and ``dn4000`` are always present (NaN where not fitted).
    """
    from evaluation.photometric import predict, survey_features

    model, n_train, _ = photometric_model(survey_path, max_train, seed, cache_dir)
    rows = np.asarray(rows, dtype=np.int64)
    x, _ = survey_features(survey_path, rows)
    out = predict(model, x)
    for k in ("z", "dn4000"):
        out.setdefault(k, np.full(len(rows), np.nan))
    out["n_train"] = n_train
    return out


def main(argv=None) -> int:
    """Fill an evaluation cache ahead (``evaluate.py --cache DIR`` then reuses it): the photometric fit and,
    with ``--contrastive-sr``, the retrieval pool's embeddings, for the same survey, pool size and seed."""
    import sys

    from datasets.galaxy import build_cache
    from utils.launch import ArgumentParser, UsageError, run_reporting

    p = ArgumentParser(prog="python -m evaluation.baselines", description=main.__doc__)
    p.add_argument("--survey", required=True, help="survey HDF5")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory (evaluate.py --cache)")
    p.add_argument("--contrastive-sr", dest="contrastive_sr", default=None,
                   help="full-res contrastive checkpoint: also embed the retrieval pool")
    p.add_argument("--pool-size", dest="pool_size", type=int, default=5000, help="as evaluate.py's")
    p.add_argument("--seed", type=int, default=0, help="as evaluate.py's")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    a = p.parse_args(argv)

    def run():
        for path, what in ((a.survey, "--survey"), (a.contrastive_sr, "--contrastive-sr")):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{path}: {what}: file does not exist")
        for name, v in (("--pool-size", a.pool_size), ("--threads", a.threads)):
            if v is not None and v < 1:
                raise UsageError(f"{name}: {v} must be >= 1")
        if a.threads:
            torch.set_num_threads(a.threads)
        _, n, hit = photometric_model(a.survey, a.pool_size, a.seed, a.cache)
        print(f"photometric baseline ({n} training galaxies): " + ("already in" if hit else "fitted ->")
              + f" {a.cache}", file=sys.stderr)
        if a.contrastive_sr:
            cache = build_cache(a.survey)
            pool = train_pool(cache, a.pool_size, a.seed)
            lm = load_model(a.contrastive_sr, "contrastive", "sr", "cpu", given_as="contrastive_sr")
            pool_embeddings(lm, cache, pool, cache_dir=a.cache, checkpoint=a.contrastive_sr)
            print(f"retrieval pool: {len(pool)} spectra embedded -> {a.cache}", file=sys.stderr)

    return run_reporting(run)


if __name__ == "__main__":
    raise SystemExit(main())
