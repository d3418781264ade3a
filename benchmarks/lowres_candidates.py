"""How sharp are the generated LOW-RES spectra? Small-scale power and pPXF sigma_v of a results file's
low-res candidates against the same galaxies' observed low-res spectra (prints JSON).

    python benchmarks/lowres_candidates.py outputs/generated.fits [--survey data/mock_sdss.h5] [--n-fit 50]

* ``power_ratio``: mean power spectrum of the high-pass-filtered spectra (each minus its 15-pixel running
  median; the 40 bluest pixels left out) of the generated low-res spectra over that of the observed low-res
  spectra (made as the run's models make them: the header's ``lowres``, "subsample" or "bin"), per band of
  wavenumber (cycles per low-res pixel): for all candidates and for the low-res parent of the top-ranked
  full-res draw. 1 = as much small-scale structure (lines and noise) as the data; below 1 = too smooth
  (lines too shallow).
* ``sigma_v``: pPXF (``analysis.fit_spectrum`` at the catalogue redshift) on the top draw's low-res parent
  and on the observed low-res spectrum, both put back on the 1 A grid by a cubic spline, for the first
  ``--n-fit`` galaxies that are not spirals and have a catalogue sigma_v above ``--min-sigma`` km/s:
  Pearson rho and median bias of log10 sigma_v against the catalogue. The spline blurs both the same way,
  so compare the two rows, not either with the catalogue.
* ``line_coherence`` (mock surveys with ``/spectra/model``): are the small-scale features of a generated
  low-res spectrum the galaxy's absorption lines, or noise-like structure? Pearson correlation of the
  high-passed spectrum with the high-passed NOISELESS true low-res spectrum, per galaxy, median over
  galaxies, for the candidates whose own fitted redshift (``lowres_z``) is within 0.002 (1 + z) of the
  catalogue's (so the lines would sit where the truth's do): all such candidates, and the top draw's low-res
  parent where it is one. Two references: the galaxy's observed low-res spectrum (the noise-limited
  ceiling) and the observed low-res spectrum of ANOTHER test galaxy of the nearest catalogue redshift (what
  a spectrum of the wrong galaxy at the right z scores: lines common to all galaxies). The power ratio
  above cannot tell lines from noise; this can.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import median_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.galaxy import build_cache  # noqa: E402
from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, lowres  # noqa: E402
from datasets.schema import open_survey  # noqa: E402
from evaluation.run import noiseless_spectra  # noqa: E402
from utils.results_fits import read_spectra_fits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sr_on_true_lowres import sigma_v_agreement  # noqa: E402

BANDS = ((0.02, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5))  # cycles per low-res pixel


def highpass(x: np.ndarray) -> np.ndarray:
    """(N, 563) spectra minus their 15-pixel running median, without the 40 bluest and 10 reddest pixels."""
    return (x - median_filter(x, size=(1, 15), mode="nearest"))[:, 40:-10]


def highpass_power(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 563) spectra -> (wavenumbers, mean power spectrum of their high-pass part)."""
    hp = highpass(x)
    return np.fft.rfftfreq(hp.shape[1]), (np.abs(np.fft.rfft(hp, axis=1)) ** 2).mean(0)


def row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (N, L) -> (N,)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def line_coherence(lr: np.ndarray, lowres_z: np.ndarray, parent: np.ndarray, obs: np.ndarray,
                   truth: np.ndarray, z: np.ndarray, tol: float = 0.002) -> dict:
    """``line_coherence`` of the module docstring. lr (B, N, L) candidates, lowres_z (B, N) their fitted
    redshifts, parent (B,) the top draw's parent index, obs / truth (B, L) observed / noiseless low-res,
    z (B,) catalogue redshifts."""
    ht = highpass(truth)
    right = np.abs(lowres_z - z[:, None]) <= tol * (1 + z[:, None])
    gi, ci = np.nonzero(right)
    b = np.arange(len(z))
    top_ok = right[b, parent]
    other = np.array([np.argsort(np.abs(z - z[i]), kind="stable")[1] for i in b]) if len(z) > 1 else b

    def med(c):
        return round(float(np.median(c)), 3) if len(c) else None
    return {"tolerance_dz_over_1pz": tol,
            "right_z_candidates": {"n": int(len(gi)), "n_galaxies": int(len(np.unique(gi))),
                                   "median_corr": med(row_correlation(highpass(lr[gi, ci]), ht[gi]))},
            "top_draw_parent": {"n": int(top_ok.sum()),
                                "median_corr": med(row_correlation(highpass(lr[b, parent][top_ok]),
                                                                   ht[top_ok]))},
            "observed_lowres": {"n": int(len(z)), "median_corr": med(row_correlation(highpass(obs), ht))},
            "other_galaxy_nearest_z": {"n": int(len(z)),
                                       "median_corr": med(row_correlation(highpass(obs[other]), ht))}}


def band_ratios(gen: np.ndarray, obs: np.ndarray) -> dict:
    k, pg = highpass_power(gen)
    _, po = highpass_power(obs)
    return {f"{lo}-{hi}": round(float(pg[(k >= lo) & (k < hi)].mean() / po[(k >= lo) & (k < hi)].mean()), 3)
            for lo, hi in BANDS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--survey", default=None, help="default: the results header's input")
    p.add_argument("--n-fit", dest="n_fit", type=int, default=50, help="galaxies fitted by pPXF (0: none)")
    p.add_argument("--min-sigma", dest="min_sigma", type=float, default=120.0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    res = read_spectra_fits(a.results)
    t, h = res["table"], res["header"]
    ok = np.flatnonzero(np.char.strip(np.asarray(t["status"]).astype(str)) == "ok")
    survey = a.survey or h["input"]
    mode = h.get("lowres", "subsample")
    rows = np.asarray(t["row"])[ok]
    lr = res["cubes"]["LOWRES_CANDIDATES"][0][ok].astype(np.float64)  # (B, N, 563)
    b = np.arange(len(ok))
    parent = np.asarray(t["kept"])[ok][b, np.asarray(t["fullres_parent"])[ok][b, np.asarray(t["top"])[ok]]]
    top_parent = lr[b, parent]
    order = np.argsort(rows)
    obs = np.empty((len(rows), lr.shape[-1]))
    obs[order] = build_cache(survey).lowres(mode)[rows[order]]
    out = {"results": str(a.results), "lowres": mode, "n_galaxies": int(len(ok)),
           "n_lowres": int(lr.shape[1]),
           "lowres_sampling": h.get("lowres_sampling"),
           "power_ratio": {"all_candidates": band_ratios(lr.reshape(-1, lr.shape[-1]), obs),
                           "top_draw_parent": band_ratios(top_parent, obs)}}
    with open_survey(survey) as f:
        has_model = "spectra/model" in f
    if has_model:
        truth = lowres(noiseless_spectra(survey, rows), mode)
        out["line_coherence"] = line_coherence(lr, np.asarray(t["lowres_z"])[ok], parent, obs, truth,
                                               np.asarray(t["z"])[ok])
    if a.n_fit:
        with open_survey(survey) as f:
            sv, z, morph = f["catalog/sigma_v"][:], f["catalog/z"][:], f["catalog/morphology"][:]
        sel = np.flatnonzero((sv[rows] > a.min_sigma) & (morph[rows] != 1))[: a.n_fit]
        out["sigma_v"] = {"n_galaxies": int(len(sel)), "min_sigma_kms": a.min_sigma}
        for name, flux in (("top_draw_parent", top_parent[sel]), ("observed_lowres", obs[sel])):
            fine = CubicSpline(LOWRES_WAVE, flux, axis=1)(FULLRES_WAVE)
            out["sigma_v"][name] = sigma_v_agreement(fine, z[rows[sel]], sv[rows[sel]])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
