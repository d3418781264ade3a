"""Are two samplers equal in quality? A paired comparison of two generate.py results files (prints JSON).

Both files must come from the same models, galaxies, seeds and N/k/M, differing only in the sampler (e.g. the
paper's 250-step ancestral sampler vs the fast default). Per galaxy, with evaluate.py's own definitions:
- MSE of the top-ranked spectrum (``flux_pred``) against the observed one
  (``evaluation.metrics.spectral_errors``; galaxies without a finite observed spectrum are skipped, as in
  evaluate.py);
- the redshift read from it (``analysis.fit_redshifts`` through ``evaluation.measure.measure_cheap``).
The galaxies are resampled with replacement (paired bootstrap: one draw picks the same galaxies in both
files) for the relative differences B/A - 1 of the mean MSE, the median MSE and the redshift sigma_NMAD, and
the difference of the outlier fractions; each gets a 95 % interval. "Equal within the margin" means the whole
interval lies inside +-margin (for the outlier fraction: +-margin_outliers, absolute).

    python benchmarks/sampler_equivalence.py --a anc250.fits --b dpmpp10.fits --survey mock.h5 \
        [--margin 0.03] [--margin-outliers 0.02] [--boot 2000] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import metrics as M  # noqa: E402
from evaluation.measure import measure_cheap  # noqa: E402
from utils.files import jsonable, write_text  # noqa: E402
from utils.results_fits import read_spectra_fits  # noqa: E402


def per_galaxy(path: Path, survey: Path) -> dict:
    """Per-galaxy MSE and fitted redshift of one results file, plus the catalogue redshift."""
    r = read_spectra_fits(path)
    t, wave = r["table"], r["wave"]
    pred, obs, ivar = (np.asarray(r["spectra"][k], dtype=np.float64) for k in ("flux_pred", "flux_obs",
                                                                                 "ivar_obs"))
    mse = M.spectral_errors(pred, obs, ivar)["mse"]
    mse[~np.isfinite(obs).all(axis=1)] = np.nan
    z_fit = measure_cheap(wave, pred)["z"]
    with h5py.File(survey, "r") as f:
        z_true = np.asarray(f["catalog/z"])[np.asarray(t["row"])]
    return {"id": np.asarray(t["id"]), "mse": mse, "z": z_fit, "z_true": z_true,
            "header": {k: r["header"].get(k) for k in ("sampler", "steps", "n_lowres", "keep_lowres",
                                                         "n_fullres", "z_prior", "seed", "amp")}}


def first(d: dict, n: int | None) -> dict:
    """The first ``n`` galaxies of ``per_galaxy``'s output (None: all): compare a longer run with a shorter
    one made with the same settings over the same first galaxies."""
    if n is None:
        return d
    return {k: (v if k == "header" else v[:n]) for k, v in d.items()}


#: each compared statistic of (mse, z, z_true), on its own so a bootstrap draw computes only the one it needs
STATISTICS = {"mse_mean": lambda mse, z, zt: float(np.nanmean(mse)),
              "mse_median": lambda mse, z, zt: float(np.nanmedian(mse)),
              "z_sigma_nmad": lambda mse, z, zt: M.sigma_nmad(z, zt),
              "z_outlier_frac": lambda mse, z, zt: M.outlier_fraction(z, zt)}


def statistics(mse, z, z_true) -> dict:
    return {k: f(mse, z, z_true) for k, f in STATISTICS.items()}


def _change(key: str, a: float, b: float) -> float:
    """b vs a: the difference for the outlier fraction, else the relative change (NaN if a is 0)."""
    if key == "z_outlier_frac":
        return b - a
    return b / a - 1 if a != 0 else float("nan")


def compare(a: dict, b: dict, boot: int, margin: float, margin_outliers: float, seed: int = 0) -> dict:
    if not np.array_equal(a["id"], b["id"]):
        raise SystemExit("error: the two results files hold different galaxies (column id)")
    n = len(a["id"])
    keys = tuple(STATISTICS)
    sa, sb = statistics(a["mse"], a["z"], a["z_true"]), statistics(b["mse"], b["z"], b["z_true"])
    out = {"n_galaxies": n, "n_with_observed_spectrum": int(np.isfinite(a["mse"]).sum()),
           "a": {**a["header"], **sa}, "b": {**b["header"], **sb}, "bootstrap_draws": boot,
           "margin_relative": margin, "margin_outliers_absolute": margin_outliers, "comparison": {}}
    cols = lambda r: (r["mse"], r["z"], r["z_true"])  # noqa: E731
    for k in keys:
        lo, hi = M.paired_interval(STATISTICS[k], cols(a), cols(b), boot, seed,
                                   change=lambda x, y, k=k: _change(k, x, y)) or (np.nan, np.nan)
        m = margin_outliers if k == "z_outlier_frac" else margin
        point = _change(k, sa[k], sb[k])
        out["comparison"][k] = {"b_vs_a": "difference" if k == "z_outlier_frac" else "ratio - 1",
                                "point": float(point), "ci95": [float(lo), float(hi)],
                                "equal_within_margin": bool(-m <= lo and hi <= m),
                                "b_not_worse_by_margin": bool(hi <= m)}
    d = b["mse"] - a["mse"]
    ok = np.isfinite(d)
    out["per_galaxy_mse_difference"] = {"mean": float(d[ok].mean()),
                                        "sem": float(d[ok].std(ddof=1) / np.sqrt(ok.sum())),
                                        "b_better_fraction": float((d[ok] < 0).mean())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, type=Path,
                   help="results of the reference sampler (e.g. ancestral 250)")
    p.add_argument("--b", required=True, type=Path,
                   help="results of the candidate sampler (e.g. the fast default)")
    p.add_argument("--survey", required=True, type=Path, help="the survey HDF5 both were generated from")
    p.add_argument("--margin", type=float, default=0.03, help="relative margin for MSE and sigma_NMAD")
    p.add_argument("--margin-outliers", dest="margin_outliers", type=float, default=0.02,
                   help="absolute margin for the outlier fraction")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--first", type=int, default=None,
                   help="only the first N galaxies of each file (both must hold the same N first)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    res = compare(first(per_galaxy(a.a, a.survey), a.first), first(per_galaxy(a.b, a.survey), a.first),
                  a.boot, a.margin, a.margin_outliers)
    res.update({"a_file": str(a.a), "b_file": str(a.b), "survey": str(a.survey)})
    text = json.dumps(jsonable(res), indent=1)
    if a.out:
        write_text(a.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
