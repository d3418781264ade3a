"""Where the chain's redshift goes wrong: the redshift of every candidate in a generate.py results file.

For each galaxy it fits z on every low-res and every full-res candidate (the chain's own fitter and
settings, ``generation.chain.candidate_redshifts``) and reports, against the catalogue z (JSON on stdout):

* ``lowres_outlier_frac``: fraction of all low-res candidates with |dz| / (1 + z) > 0.05 (OUTLIER_DZ);
* ``oracle``: the candidate nearest the truth among each galaxy's N (median |dz|/(1+z), outlier fraction):
  what a perfect selection could reach with these draws;
* ``ranker_top_outlier_frac``: the low-res candidate the contrastive ranker scores highest;
* ``kept_outlier_frac``: the kept candidates (after the ranker, or the z prior when it was on);
* ``sr_keeps_parent_z``: fraction of full-res draws whose z is within 0.01 (and 0.05) of their low-res
  parent's (does super-resolution keep the redshift it was given?);
* ``cnn_prior``: sigma_NMAD and outliers of the ``z_prior`` column, when the run used one;
* ``consensus``: sigma_NMAD and outliers of the median of each galaxy's low-res candidate redshifts (the
  ``z_consensus`` of ``generate.prediction: consensus``).

``--against other.fits`` (the same galaxies and seeds, another setting) adds paired bootstrap differences
(this run minus the other, 95 % intervals over galaxies) of the consensus sigma_NMAD / outliers and of the
low-res candidates' outlier fraction.

    python benchmarks/candidate_redshifts.py outputs/generated.fits [--survey data/mock_sdss.h5]
                                             [--against other.fits]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, SMOOTH_SIGMA  # noqa: E402
from datasets.schema import open_survey  # noqa: E402
from evaluation.metrics import OUTLIER_DZ, outlier_fraction, sigma_nmad  # noqa: E402
from generation.chain import LOWRES_SIGMAS, candidate_redshifts  # noqa: E402
from utils.results_fits import read_spectra_fits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain_vs_prior_z import paired  # noqa: E402


def lowres_redshifts(results: str, survey: str | None = None):
    """(rows, catalogue z, low-res candidate z (B, N), the read results, mask of ok rows) of a generate.py
    results file, ok rows only; the candidates' z from the file when it holds them, else fitted."""
    res = read_spectra_fits(results)
    t = res["table"]
    ok = np.char.strip(np.asarray(t["status"]).astype(str)) == "ok"
    with open_survey(survey or res["header"]["input"]) as f:
        zt = f["catalog/z"][:][np.asarray(t["row"])[ok]].astype(np.float64)
    lr = res["cubes"]["LOWRES_CANDIDATES"][0][ok].astype(np.float32)
    zl = (np.asarray(t["lowres_z"])[ok] if "lowres_z" in t
          else candidate_redshifts(lr, LOWRES_WAVE, LOWRES_SIGMAS[res["header"].get("lowres", "subsample")]))
    return np.asarray(t["row"])[ok], zt, zl, res, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--survey", default=None, help="default: the results header's input")
    p.add_argument("--against", default=None, help="another run on the same galaxies: paired differences")
    p.add_argument("--boot", type=int, default=2000)
    a = p.parse_args(argv)
    # a run with generate.z_prior or prediction consensus holds every candidate's z, fitted the same way
    rows_ok, zt, zl, res, ok = lowres_redshifts(a.results, a.survey)
    t = res["table"]
    sr = res["cubes"]["FULLRES_CANDIDATES"][0][ok].astype(np.float32)
    zs = (np.asarray(t["fullres_z"])[ok] if "fullres_z" in t
          else candidate_redshifts(sr, FULLRES_WAVE, SMOOTH_SIGMA))
    dl = np.abs(zl - zt[:, None]) / (1 + zt[:, None])
    n = len(zt)
    rows = np.arange(n)[:, None]
    top_lr = np.argmax(t["lowres_scores"][ok], axis=1)
    kept = t["kept"][ok]
    parent = kept[rows, t["fullres_parent"][ok]]
    dpar = np.abs(zs - zl[rows, parent]) / (1 + zl[rows, parent])
    out = {
        "results": str(a.results), "n_galaxies": int(n),
        "n_lowres": int(zl.shape[1]), "n_fullres": int(sr.shape[1]),
        "z_prior": res["header"].get("z_prior", "none"),
        "lowres_outlier_frac": float(np.mean(dl > OUTLIER_DZ)),
        "oracle": {"median_abs_dz": float(np.median(dl.min(1))),
                   "outlier_frac": float(np.mean(dl.min(1) > OUTLIER_DZ))},
        "ranker_top_outlier_frac": float(np.mean(dl[np.arange(n), top_lr] > OUTLIER_DZ)),
        "kept_outlier_frac": float(np.mean(dl[rows, kept] > OUTLIER_DZ)),
        "sr_keeps_parent_z": {"within_0.01": float(np.mean(dpar <= 0.01)),
                              "within_0.05": float(np.mean(dpar <= 0.05))},
    }
    if "z_prior" in t:
        zp = np.asarray(t["z_prior"])[ok].astype(np.float64)
        out["cnn_prior"] = {"sigma_nmad": sigma_nmad(zp, zt), "outlier_frac": outlier_fraction(zp, zt)}
    zc = np.median(zl, axis=1)
    out["consensus"] = {"sigma_nmad": sigma_nmad(zc, zt), "outlier_frac": outlier_fraction(zc, zt)}
    if a.against:
        rows_b, zt_b, zl_b, _, _ = lowres_redshifts(a.against, a.survey)
        common, ia, ib = np.intersect1d(rows_ok, rows_b, return_indices=True)
        if len(common) < 2:
            raise SystemExit(f"error: {a.against}: shares {len(common)} galaxies with {a.results}")
        out["against"] = {"results": str(a.against), **paired(
            zc[ia], np.median(zl_b[ib], axis=1), zt[ia], a.boot, names=("this", "other"))}
        fa = (dl[ia] > OUTLIER_DZ).mean(1)
        fb = (np.abs(zl_b[ib] - zt[ia, None]) / (1 + zt[ia, None]) > OUTLIER_DZ).mean(1)
        rng = np.random.default_rng(0)
        boot = [np.mean(fa[i] - fb[i]) for i in rng.integers(0, len(common), (a.boot, len(common)))]
        out["against"]["lowres_outlier_frac_this_minus_other"] = {
            "difference": float(np.mean(fa - fb)),
            "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
