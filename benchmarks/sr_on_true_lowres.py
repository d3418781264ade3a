"""Where are the line widths lost? Super-resolve the TRUE low-res spectra and fit sigma_v (prints JSON).

    python benchmarks/sr_on_true_lowres.py --checkpoints reference [--survey runs/reference/mock_ref.h5]
        [--n 40] [--min-sigma 120] [--threads 1]

For the first ``--n`` test galaxies that are not spirals and have a catalogue sigma_v above ``--min-sigma``
km/s, the super-resolution model of ``--checkpoints`` (a directory as generate.py takes it, or "reference")
is given the galaxy's image and its OBSERVED low-res spectrum (every 8th point of the preprocessed spectrum,
or its 8 A bins for a model trained with ``data.lowres: bin``: exactly its training input) instead of a
generated one; pPXF (analysis.fit_spectrum, at the catalogue
redshift) then reads sigma_v from the super-resolved spectrum, from the preprocessed observed spectrum
itself (the ceiling) and from the low-res input interpolated back to the 1 A grid (what the input alone
carries). Pearson rho and median bias of log10 sigma_v against the catalogue. Against the
chain's own numbers (evaluate.py) this separates what the super-resolution stage loses from what the
generated low-res spectra bring. The first draw per galaxy is seeded as generate.py seeds its first full-res
draw; ``--draws K`` adds the mean of K draws.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.interpolate import CubicSpline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import fit_spectrum  # noqa: E402
from datasets.galaxy import build_cache  # noqa: E402
from datasets.preprocess import (  # noqa: E402
    FULLRES_WAVE,
    LOWRES_WAVE,
    N_FULLRES,
    SMOOTH_SIGMA,
    to_linear,
    to_model_space,
)
from diffusion.sampling import galaxy_seed  # noqa: E402
from evaluation import metrics as M  # noqa: E402
from generation.chain import load_chain  # noqa: E402
from generation.cli import resolve_checkpoints  # noqa: E402
from utils.config import GenerativeConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sigma_v_agreement(flux: np.ndarray, z: np.ndarray, sigma_v: np.ndarray) -> dict:
    """pPXF (``analysis.fit_spectrum`` at redshift ``z``) on every spectrum of ``flux`` (n, 4500, the 1 A
    grid): Pearson rho and median bias (dex) of log10 sigma_v against the catalogue's ``sigma_v`` (n,)."""
    s = np.array([fit_spectrum(FULLRES_WAVE, f, zi, extra_sigma=SMOOTH_SIGMA).sigma_v
                  for f, zi in zip(flux, z)], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(s > 0, np.log10(s), np.nan)
    truth = np.log10(sigma_v)
    return {"log_sigma_v_pearson": round(float(M.pearson(ls, truth)), 3),
            "log_sigma_v_bias_dex": round(float(np.nanmedian(ls - truth)), 3),
            "n_fitted": int(np.isfinite(ls).sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", default="reference", help="'reference' or a directory (generate.py's)")
    p.add_argument("--survey", default=str(ROOT / "runs/reference/mock_ref.h5"))
    p.add_argument("--preset", default="reference", help="params_generative.yml preset (sampler settings)")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--min-sigma", dest="min_sigma", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--draws", type=int, default=1, help="draws per galaxy (> 1: + their mean)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig, preset=a.preset).generate
    g.checkpoints = resolve_checkpoints(a.checkpoints)
    chain = load_chain(g, torch.device("cpu"))
    c = build_cache(a.survey)
    test = c.indices("test")
    with h5py.File(a.survey, "r") as f:
        sv, z = f["catalog/sigma_v"][:], f["catalog/z"][:]
        morph, ids = f["catalog/morphology"][:], f["catalog/id"][:]
    sel = test[(sv[test] > a.min_sigma) & (morph[test] != 1)][: a.n]
    imgs = torch.from_numpy(np.ascontiguousarray(c.images[sel]))
    phot = chain.photometry_features(imgs)
    lr_obs = np.asarray(c.lowres(chain.lowres_mode)[sel], np.float64)  # the SR model's own data.lowres
    lowres = torch.from_numpy(to_model_space(lr_obs,
                                             chain.preprocessing).astype(np.float32))
    k = a.draws
    gseeds = [galaxy_seed(g.seed, int(i)) for i in ids[sel]]
    with torch.no_grad():
        sr = chain.super_resolve(chain.prepare_images(imgs), gseeds, lowres.repeat_interleave(k, dim=0), phot)
    sr = to_linear(sr.reshape(len(sel), k, N_FULLRES), chain.preprocessing).cpu().numpy().astype(np.float64)
    spectra = {"super_resolved_true_lowres": sr[:, 0],
               "observed_preprocessed": np.asarray(c.flux_fullres[sel], np.float64),
               # what the low-res input itself says: its 563 points back on the 1 A grid (cubic spline);
               # the interpolation blurs the lines, so only its rho, not its bias, means anything
               "true_lowres_interpolated": CubicSpline(LOWRES_WAVE, lr_obs, axis=1)(FULLRES_WAVE)}
    if k > 1:  # the draws' own pixel-scale structure averages out; what they agree on stays
        spectra[f"super_resolved_true_lowres_mean_of_{k}"] = sr.mean(axis=1)
    out = {"benchmark": "sr_on_true_lowres", "checkpoints": a.checkpoints, "survey": a.survey,
           "lowres": chain.lowres_mode,
           "n_galaxies": int(len(sel)), "min_sigma_kms": a.min_sigma, "results": {}}
    for name, flux in spectra.items():
        out["results"][name] = sigma_v_agreement(flux, z[sel], sv[sel])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
