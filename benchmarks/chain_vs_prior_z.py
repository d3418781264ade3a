"""Does the chain read redshifts better than the CNN? A paired bootstrap (JSON).

A generate.py run with ``generate.z_prior: baseline`` stores the CNN's photo-z of every galaxy (``z_prior``)
beside the generated spectra; for a run without it, ``--cnn`` names the CNN checkpoint to run on the
same galaxies ('reference' = the shipped one). Per galaxy, the redshift read from the prediction
(``flux_pred``, fitted as evaluate.py does: ``analysis.fit_redshifts``) and the CNN's are compared with the
catalogue's; the galaxies are resampled with replacement (the same draw for both) for the relative
difference chain/CNN - 1 of sigma_NMAD and the difference of the outlier fractions, each with a 95 %
interval.

    python benchmarks/chain_vs_prior_z.py outputs/generated.fits [--survey mock.h5] [--cnn reference]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.preprocess import FULLRES_WAVE, SMOOTH_SIGMA  # noqa: E402
from datasets.schema import open_survey  # noqa: E402
from evaluation.metrics import outlier_fraction, paired_interval, sigma_nmad  # noqa: E402
from generation.chain import candidate_redshifts  # noqa: E402
from utils.results_fits import read_spectra_fits  # noqa: E402


def paired(z_chain, z_cnn, z_true, boot: int = 2000, seed: int = 0, names=("chain", "cnn")) -> dict:
    """Point values and 95 % paired-bootstrap intervals of sigma_NMAD(a)/sigma_NMAD(b) - 1 and of the
    outlier-fraction difference a - b, for the redshifts ``z_chain`` (a) and ``z_cnn`` (b) named ``names``."""
    zc, zp, zt = (np.asarray(a, dtype=np.float64) for a in (z_chain, z_cnn, z_true))
    n = len(zt)
    ci = lambda stat, change: list(paired_interval(stat, (zc, zt), (zp, zt), boot, seed,  # noqa: E731
                                                   change=change) or (np.nan, np.nan))
    ratio = ci(sigma_nmad, lambda x, y: x / y - 1)
    dout = ci(outlier_fraction, None)
    a, b = names
    return {"n_galaxies": int(n),
            a: {"sigma_nmad": sigma_nmad(zc, zt), "outlier_frac": outlier_fraction(zc, zt)},
            b: {"sigma_nmad": sigma_nmad(zp, zt), "outlier_frac": outlier_fraction(zp, zt)},
            f"sigma_nmad_{a}_vs_{b}": {"ratio_minus_1": sigma_nmad(zc, zt) / sigma_nmad(zp, zt) - 1,
                                       "ci95": ratio},
            f"outlier_frac_{a}_minus_{b}": {
                "difference": outlier_fraction(zc, zt) - outlier_fraction(zp, zt), "ci95": dout},
            "boot": boot}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--survey", default=None, help="default: the results header's input")
    p.add_argument("--cnn", default=None, help="CNN checkpoint ('reference' = the shipped one); default: the "
                   "run's z_prior column")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    res = read_spectra_fits(a.results)
    t = res["table"]
    survey = a.survey or res["header"]["input"]
    rows = np.asarray(t["row"])
    if a.cnn:
        from evaluation.baselines import cnn_predict
        from models.reference import reference_path
        path = reference_path("baseline") if a.cnn == "reference" else a.cnn
        z_cnn = cnn_predict(path, survey, rows)["z"]
    elif "z_prior" in t:
        z_cnn = np.asarray(t["z_prior"], dtype=np.float64)
    else:
        raise SystemExit(f"error: {a.results}: z_prior: no such column (generated without generate.z_prior); "
                         "name the CNN with --cnn")
    ok = (np.char.strip(np.asarray(t["status"]).astype(str)) == "ok") & np.isfinite(z_cnn)
    with open_survey(survey) as f:
        zt = f["catalog/z"][:][rows[ok]].astype(np.float64)
    zc = candidate_redshifts(res["spectra"]["flux_pred"][ok], FULLRES_WAVE, SMOOTH_SIGMA)
    out = {"results": str(a.results), "prediction": res["header"].get("prediction", "top"),
           "cnn_source": a.cnn or "the run's z_prior column", **paired(zc, z_cnn[ok], zt, a.boot)}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
