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
* ``cnn_prior``: sigma_NMAD and outliers of the ``z_prior`` column, when the run used one.

    python benchmarks/candidate_redshifts.py outputs/generated.fits [--survey data/mock_sdss.h5]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--survey", default=None, help="default: the results header's input")
    a = p.parse_args(argv)
    res = read_spectra_fits(a.results)
    t = res["table"]
    ok = np.char.strip(np.asarray(t["status"]).astype(str)) == "ok"
    survey = a.survey or res["header"]["input"]
    with open_survey(survey) as f:
        zt = f["catalog/z"][:][np.asarray(t["row"])[ok]].astype(np.float64)
    lr = res["cubes"]["LOWRES_CANDIDATES"][0][ok].astype(np.float32)
    sr = res["cubes"]["FULLRES_CANDIDATES"][0][ok].astype(np.float32)
    # a run with generate.z_prior already holds every candidate's redshift, fitted the same way
    zl = (np.asarray(t["lowres_z"])[ok] if "lowres_z" in t
          else candidate_redshifts(lr, LOWRES_WAVE, LOWRES_SIGMAS[res["header"].get("lowres", "subsample")]))
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
        "n_lowres": int(lr.shape[1]), "n_fullres": int(sr.shape[1]),
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
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
