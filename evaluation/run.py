"""evaluate.py's logic: the paper's science read-out, scored three ways against the truth.

Columns of the one table (``METHODS``):
  predicted   the top-ranked generated spectrum (flux_pred) through the toolbox        (a)
  observed    the observed spectrum (flux_obs, with its ivar) through the same toolbox  (b) ceiling
  noiseless   the noiseless true spectrum (/spectra/model, mock only), same toolbox    (b) ceiling
  cnn         supervised CNN from the image (z, Dn4000, sigma_v, AGN only)             (c)
  photometric gradient boosting on image aperture photometry (evaluation.photometric)  (c)
  retrieval   nearest training spectrum in contrastive space, same toolbox             (c)
  train_mean  the training-mean spectrum, same toolbox (constant properties)           (c)
Every row names its reference (catalogue truth where the survey has it). See docs/EVALUATION.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from evaluation import metrics as M
from evaluation.measure import FIT_QUANTITIES, LICK_NAMES, fit_populations, measure_cheap
from evaluation.truth import load_truth

METHODS = ("predicted", "predicted_at_z", "observed", "noiseless", "cnn", "photometric", "retrieval",
           "train_mean")
QUIESCENT_DN4000 = 1.5  # Dn4000 above this: quiescent (Kauffmann et al. 2003-style split)
LOG_QUANTITIES = ("sigma_v", "age_lw")  # scored in dex


class EvaluationError(ValueError):
    """Unusable evaluation input; the one-line message names the file, the field and the value."""


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
def load_inputs(results_path, survey_path=None) -> dict:
    """Read and cross-check the results FITS and its survey; raise EvaluationError before any work."""
    from utils.results_fits import ResultsFileError, read_spectra_fits

    results_path = Path(results_path)
    if not results_path.exists():
        raise EvaluationError(f"{results_path}: file: does not exist (run generate.py first)")
    try:
        res = read_spectra_fits(results_path)
    except ResultsFileError as e:
        raise EvaluationError(str(e)) from None
    t, sp = res["table"], res["spectra"]
    for need, where in (("row", t), ("flux_pred", sp), ("flux_obs", sp)):
        if need not in where:
            raise EvaluationError(f"{results_path}: SPECTRA/{need}: missing column")
    if len(res["wave"]) != sp["flux_pred"].shape[1]:
        raise EvaluationError(f"{results_path}: WAVELENGTH: {len(res['wave'])} points != flux_pred length")
    survey = survey_path or res["header"].get("input")
    if not survey:
        raise EvaluationError(f"{results_path}: header.input: missing; pass --survey")
    survey = Path(survey)
    if not survey.exists():
        raise EvaluationError(
            f"{survey}: file: survey does not exist "
            f"(from {'--survey' if survey_path else results_path.name + ' header.input'})"
        )
    rows = np.asarray(t["row"], dtype=np.int64)
    from datasets.schema import SurveyFileError, validate_survey

    try:
        validate_survey(survey)
    except SurveyFileError as e:
        raise EvaluationError(str(e)) from None
    try:
        with h5py.File(survey, "r") as f:
            n_survey = f["catalog/id"].shape[0]
            bad = (rows < 0) | (rows >= n_survey)
            if bad.any():
                raise EvaluationError(
                    f"{results_path}: row: value {rows[bad][0]} outside 0..{n_survey - 1} of {survey}"
                )
            if "id" in t:
                uniq, inv = np.unique(rows, return_inverse=True)
                ids = f["catalog/id"][uniq][inv]
                mism = np.flatnonzero(ids != np.asarray(t["id"]))
                if mism.size:
                    i = mism[0]
                    raise EvaluationError(
                        f"{results_path}: id: row {rows[i]} has id {t['id'][i]} but {survey} "
                        f"catalog/id[{rows[i]}] = {ids[i]} ({mism.size} mismatched rows: "
                        "wrong --survey?)"
                    )
            _check_same_galaxies(results_path, res, rows, survey, f)
            has_model = "spectra/model" in f
    except OSError as e:
        raise EvaluationError(f"{survey}: file: not a readable HDF5 survey ({e})") from None
    status = np.asarray(t.get("status", np.full(len(rows), "ok")), dtype=str)
    ok = (np.char.strip(status) == "ok") & np.isfinite(sp["flux_pred"]).all(1)
    if not ok.any():
        raise EvaluationError(f"{results_path}: status: no row is 'ok' ({len(rows)} rows)")
    return {
        "results": res,
        "survey": survey,
        "rows": rows,
        "ok": ok,
        "has_model": has_model,
        "path": results_path,
    }


def _check_same_galaxies(results_path, res, rows, survey, f) -> None:
    """The results must describe the survey's galaxies, not those of another survey of the same size
    (the mock's ids are row numbers): per-row ra/dec and the catalogue fingerprint of the header."""
    from datasets.schema import catalog_fingerprint

    t = res["table"]
    uniq, inv = np.unique(rows, return_inverse=True)
    ra, dec = f["catalog/ra"][uniq][inv], f["catalog/dec"][uniq][inv]
    for col, ref in (("ra", ra), ("dec", dec)):
        if col in t:
            off = np.flatnonzero(~np.isclose(np.asarray(t[col], np.float64), ref, rtol=0, atol=1e-6))
            if off.size:
                i = off[0]
                raise EvaluationError(
                    f"{results_path}: {col}: row {rows[i]} has {col} {float(t[col][i]):.6f} but {survey} "
                    f"catalog/{col}[{rows[i]}] = {float(ref[i]):.6f} ({off.size} mismatched rows: results "
                    "of another survey?)")
    want = res["header"].get("input_catalog_sha256")
    if want:
        ids = f["catalog/id"][uniq][inv]
        have = catalog_fingerprint(ids, ra, dec)
        if have != want:
            raise EvaluationError(
                f"{results_path}: header.input_catalog_sha256: {str(want)[:16]} but the selected rows of "
                f"{survey} give {have[:16]} (results of another survey?)")


def _noiseless(survey, rows) -> np.ndarray:
    from datasets.preprocess import preprocess_spectra

    uniq, inv = np.unique(rows, return_inverse=True)
    with h5py.File(survey, "r") as f:
        pp = preprocess_spectra(f["spectra/loglam"][:], f["spectra/model"][uniq])
    return pp["flux"].astype(np.float64)[inv]


# ----------------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------------
def _cell(x):
    return None if x is None or not np.isfinite(x) else float(x)


class Table:
    """Rows of (section, quantity, metric, reference) -> value per method, plus the reference's own value."""

    def __init__(self):
        self.rows = []

    def add(self, section, quantity, metric, reference, values: dict, n=None, reference_value=None):
        self.rows.append(
            {
                "section": section,
                "quantity": quantity,
                "metric": metric,
                "reference": reference,
                "n": None if n is None else int(n),
                "reference_value": _cell(reference_value),
                "values": {m: _cell(values.get(m)) for m in METHODS},
            }
        )

    def markdown(self, methods) -> str:
        head = "| section | quantity | metric | reference | n | ref. value | " + " | ".join(methods) + " |"
        lines = [head, "|" + " --- |" * (6 + len(methods))]
        for r in self.rows:

            def f(v):
                return "—" if v is None else f"{v:.4g}"

            lines.append(
                f"| {r['section']} | {r['quantity']} | {r['metric']} | {r['reference']} | "
                f"{'' if r['n'] is None else r['n']} | {f(r['reference_value'])} | "
                + " | ".join(f(r["values"][m]) for m in methods)
                + " |"
            )
        return "\n".join(lines)


def _tr(q, x):
    x = np.asarray(x, dtype=np.float64)
    if q in LOG_QUANTITIES:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)
    return x


def _regression_rows(table, section, q, ref, ref_name, vals: dict, obs_key="observed", mask=None, unit=""):
    """rho, robust scatter and median bias vs the reference, and rho vs the observed measurement."""
    mask = np.ones(len(ref), bool) if mask is None else mask
    r = _tr(q, ref)[mask]
    v = {m: _tr(q, a)[mask] for m, a in vals.items() if a is not None}
    n = int(np.isfinite(r).sum())
    sfx = " [dex]" if q in LOG_QUANTITIES else unit
    table.add(section, q, "pearson_rho", ref_name, {m: M.pearson(a, r) for m, a in v.items()}, n)
    table.add(section, q, "scatter" + sfx, ref_name, {m: M.robust_scatter(a, r) for m, a in v.items()}, n)
    table.add(section, q, "bias" + sfx, ref_name, {m: M.median_bias(a, r) for m, a in v.items()}, n)
    if obs_key in v and ref_name != "observed":
        o = v[obs_key]
        table.add(
            section,
            q,
            "pearson_rho_vs_observed",
            "observed",
            {m: M.pearson(a, o) for m, a in v.items() if m != obs_key},
            int(np.isfinite(o).sum()),
        )


def _image_only_rows(table, truth, phot, cnn, n):
    """The image-only baselines on EVERY evaluated galaxy (they are cheap): populations, mass and BPT."""
    sec = "image-only baselines (all galaxies)"
    for q in FIT_QUANTITIES + ("log_mstar",):
        if q in truth and q in phot:
            vals = {"photometric": phot[q]}
            if q == "sigma_v" and cnn is not None:
                vals["cnn"] = cnn["sigma_v"]
            _regression_rows(table, sec, q, truth[q].astype(np.float64), "catalogue", vals)
    if "bpt_class" in truth and "bpt_class" in phot:
        bt = truth["bpt_class"].astype(np.int64)
        cls = phot["bpt_class"]
        table.add(sec, "bpt_class (4 classes incl. -1)", "accuracy", "catalogue",
                  {"photometric": M.accuracy(cls, bt)}, n)
        table.add(sec, "bpt_class (4 classes incl. -1)", "balanced_accuracy", "catalogue",
                  {"photometric": M.balanced_accuracy(cls, bt)}, n)
        agn = {"photometric": phot["agn"]} | ({"cnn": cnn["agn"]} if cnn is not None else {})
        at = (bt == 2).astype(int)
        table.add(sec, "AGN presence", "balanced_accuracy", "catalogue",
                  {m: M.balanced_accuracy(a, at) for m, a in agn.items()}, n, reference_value=at.mean())


def evaluate(
    results,
    survey=None,
    out_dir="figures",
    report="outputs/eval_report",
    max_fit: int = 25,
    baselines=(),
    retrieval: bool = True,
    workers: int = 2,
    pool_size: int = 5000,
    seed: int = 0,
    figures: bool = True,
    log=print,
    photometric: bool = True,
) -> dict:
    """Run the evaluation; write ``<report>.json``/``.md`` and ``<out_dir>/eval_*.png``; return the report."""
    t0 = time.perf_counter()
    timings = {}

    def lap(name, t):
        timings[name] = round(time.perf_counter() - t, 2)
        log(f"evaluate: {name}: {timings[name]:.1f} s")
        return time.perf_counter()

    inp = load_inputs(results, survey)
    res, ok = inp["results"], inp["ok"]
    wave = res["wave"]
    rows = inp["rows"][ok]
    n = int(ok.sum())
    notes = []
    if (~ok).any():
        notes.append(
            f"{int((~ok).sum())} of {len(ok)} rows skipped (status != 'ok' or non-finite prediction)"
        )
    truth = load_truth(inp["survey"], rows)
    morph = truth.get("morphology")
    spectra = {
        "predicted": res["spectra"]["flux_pred"][ok].astype(np.float64),
        "observed": res["spectra"]["flux_obs"][ok].astype(np.float64),
    }
    ivar_obs = res["spectra"]["ivar_obs"][ok].astype(np.float64) if "ivar_obs" in res["spectra"] else None
    if ivar_obs is None:
        notes.append("ivar_obs missing: chi2/N not computed, observed spectra measured without weights")
    if inp["has_model"]:
        spectra["noiseless"] = _noiseless(inp["survey"], rows)
    else:
        notes.append("survey has no /spectra/model: no 'noiseless' column")
    t = lap("load", t0)

    # ---------------- baselines
    from datasets.galaxy import build_cache
    from evaluation import baselines as B

    cnn = None
    try:
        cache = build_cache(inp["survey"])
        pool = B.train_pool(cache, pool_size, seed)
        mean_spec = B.train_mean_spectrum(cache, pool)
        spectra["train_mean"] = mean_spec[None, :]
    except Exception as e:  # a survey without a training split still gets the rest of the evaluation
        cache = None
        notes.append(f"train_mean/retrieval baselines skipped: {type(e).__name__}: {e}")
    cfg = res["header"].get("config") or {}
    ck_sr = (cfg.get("generate", {}).get("checkpoints", {}) or res["header"].get("checkpoints", {})).get(
        "contrastive_sr"
    )
    retrieved = None
    if retrieval and cache is not None:
        if ck_sr and Path(ck_sr).exists():
            retrieved = B.retrieve(ck_sr, inp["survey"], cache, rows, pool)
            spectra["retrieval"] = retrieved["flux"]
        else:
            notes.append(f"retrieval baseline skipped: contrastive_sr checkpoint {ck_sr!r} not found")
    for path in baselines or ():
        cnn = B.cnn_predict(path, inp["survey"], rows)
    if not baselines:
        notes.append("cnn baseline skipped: no --baselines checkpoint (train_baseline.py --preset cpu)")
    phot = None
    if photometric:
        phot = B.photometric_predict(inp["survey"], rows, pool_size, seed)
        notes.append(f"photometric baseline fitted on {phot['n_train']} training galaxies (--pool-size)")
    t = lap("baselines", t)

    # ---------------- cheap measurements: redshift, Lick, Dn4000 of every spectrum
    meas = {}
    for m, flux in spectra.items():
        meas[m] = measure_cheap(wave, flux, ivar_obs if m == "observed" else None)
        if m == "train_mean":
            meas[m] = {k: np.repeat(v, n) for k, v in meas[m].items()}
    if cnn is not None:
        meas["cnn"] = {"z": cnn["z"], "dn4000": cnn["dn4000"]}
    if phot is not None:
        meas["photometric"] = {"z": phot["z"], "dn4000": phot["dn4000"]}
    if "predicted" in spectra and "z" in truth:
        # the predicted spectra's indices at the catalogue redshift (e.g. a photo-z in practice): separates
        # what the spectrum's shape says from whether its redshift can be read off it
        meas["predicted_at_z"] = measure_cheap(wave, spectra["predicted"], z=truth["z"].astype(np.float64))
    t = lap("redshift_indices", t)

    # ---------------- candidates: distributions over the M full-res samples
    calib = None
    cube = res["cubes"].get("FULLRES_CANDIDATES")
    if cube is not None:
        cand = cube[0][ok].astype(np.float64)
        nm = cand.shape[1]
        cm = measure_cheap(wave, cand.reshape(n * nm, -1))
        calib = {"n_candidates": nm, "z": cm["z"].reshape(n, nm), "dn4000": cm["dn4000"].reshape(n, nm)}
    else:
        notes.append("no FULLRES_CANDIDATES cube: calibration skipped")
    t = lap("candidates", t)

    # ---------------- pPXF on a seeded subset
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, min(max_fit, n), replace=False)) if max_fit > 0 else np.zeros(0, int)
    fits = {}
    if fit_idx.size:
        fspec = {m: (s[fit_idx] if m != "train_mean" else s) for m, s in spectra.items() if m != "noiseless"}
        fz = {m: (meas[m]["z"][fit_idx] if m != "train_mean" else meas[m]["z"][:1]) for m in fspec}
        fits = fit_populations(
            wave,
            fspec,
            fz,
            ivar={"observed": None if ivar_obs is None else ivar_obs[fit_idx]},
            workers=workers,
        )
        if "train_mean" in fits:
            fits["train_mean"] = {k: np.repeat(v, fit_idx.size) for k, v in fits["train_mean"].items()}
        notes.append(
            f"pPXF fits on a seeded subset of {fit_idx.size} galaxies (--max-fit); noiseless spectra "
            "are not pPXF-fitted (time budget)"
        )
    t = lap("ppxf", t)

    # ---------------- the table
    table = Table()
    obs = spectra["observed"]
    errs = {}
    for m in ("predicted", "noiseless", "retrieval", "train_mean"):
        if m in spectra:
            s = spectra[m] if m != "train_mean" else np.broadcast_to(spectra[m], obs.shape)
            errs[m] = M.spectral_errors(s, obs, ivar_obs)
    sec = "spectrum"
    # galaxies whose observed spectrum failed the positive-flux filter have NaN flux_obs: skip them
    n_obs = int(np.isfinite(obs).all(axis=1).sum())
    table.add(sec, "flux", "mse_median", "observed", {m: np.nanmedian(e["mse"]) for m, e in errs.items()},
              n_obs)
    table.add(sec, "flux", "mse_mean", "observed", {m: np.nanmean(e["mse"]) for m, e in errs.items()}, n_obs)
    table.add(
        sec,
        "flux",
        "chi2n_median",
        "observed",
        {m: np.nanmedian(e["chi2n"]) if np.isfinite(e["chi2n"]).any() else np.nan for m, e in errs.items()},
        n,
    )
    if morph is not None and "predicted" in errs:
        for code, name in ((0, "elliptical"), (1, "spiral"), (2, "uncertain")):
            sel = morph == code
            if sel.any():
                table.add(
                    sec,
                    f"flux ({name})",
                    "mse_median",
                    "observed",
                    {m: np.nanmedian(e["mse"][sel]) for m, e in errs.items()},
                    int(sel.sum()),
                )

    # redshift
    sec = "redshift"
    zt = truth["z"].astype(np.float64)
    zv = {m: d["z"] for m, d in meas.items() if "z" in d}
    table.add(sec, "z", "sigma_nmad", "catalogue", {m: M.sigma_nmad(v, zt) for m, v in zv.items()}, n)
    table.add(sec, "z", "bias", "catalogue", {m: M.z_bias(v, zt) for m, v in zv.items()}, n)
    table.add(sec, "z", "outlier_frac", "catalogue", {m: M.outlier_fraction(v, zt) for m, v in zv.items()}, n)

    # Dn4000 and Lick indices (the paper excludes spirals for the Lick comparison)
    lick_mask = np.ones(n, bool) if morph is None else (morph != 1)
    if morph is None:
        notes.append("no morphology column: Lick statistics include every galaxy")

    def ref_of(key):
        if key in truth:
            return truth[key].astype(np.float64), "catalogue"
        if "noiseless" in meas:
            return meas["noiseless"][key], "noiseless"
        return meas["observed"][key], "observed"

    refs = {}
    sec = "indices"
    dref, dname = ref_of("dn4000")
    refs["dn4000"] = (dref, dname)
    _regression_rows(table, sec, "dn4000", dref, dname, {m: d.get("dn4000") for m, d in meas.items()})
    for name in LICK_NAMES:
        key = f"lick_{name}"
        r, rn = ref_of(key)
        _regression_rows(
            table,
            "indices (non-spiral)" if morph is not None else sec,
            key,
            r,
            rn,
            {m: d.get(key) for m, d in meas.items()},
            mask=lick_mask,
        )

    # populations (pPXF subset)
    fit_truth = {}
    if fits:
        sec = "populations (pPXF subset)"
        for q in FIT_QUANTITIES:
            if q in truth:
                r, rn = truth[q][fit_idx].astype(np.float64), "catalogue"
            else:
                r, rn = fits["observed"][q], "observed"
                notes.append(f"no catalogue {q}: scored against the observed-spectrum fit")
            fit_truth[q] = (r, rn)
            vals = {m: d[q] for m, d in fits.items()}
            if q == "sigma_v" and cnn is not None:
                vals["cnn"] = cnn["sigma_v"][fit_idx]
            if phot is not None and q in phot:
                vals["photometric"] = phot[q][fit_idx]
            _regression_rows(table, sec, q, r, rn, vals)
        table.add(
            sec, "pPXF", "success_frac", "", {m: np.mean(d["success"]) for m, d in fits.items()}, fit_idx.size
        )

    # bimodality and mass-metallicity relation
    sec = "bimodality / MZR"
    qf = {
        m: np.nanmean(d["dn4000"] > QUIESCENT_DN4000) if np.isfinite(d["dn4000"]).any() else np.nan
        for m, d in meas.items()
    }
    table.add(
        sec,
        "dn4000",
        f"quiescent_frac (Dn4000>{QUIESCENT_DN4000})",
        dname,
        qf,
        n,
        reference_value=np.mean(dref[np.isfinite(dref)] > QUIESCENT_DN4000),
    )
    from scipy.stats import ks_2samp

    def ks(a):
        a, b = a[np.isfinite(a)], dref[np.isfinite(dref)]
        return ks_2samp(a, b).statistic if a.size > 2 and b.size > 2 else np.nan

    table.add(
        sec, "dn4000", "ks_distance_to_reference", dname, {m: ks(d["dn4000"]) for m, d in meas.items()}, n
    )
    mzr = None
    if fits and "log_mstar" in truth:
        lm = truth["log_mstar"][fit_idx].astype(np.float64)
        if "bpt_class" in truth:
            sf = truth["bpt_class"][fit_idx] == 0
            sf_def = "catalogue bpt_class == 0"
        else:
            sf = dref[fit_idx] < QUIESCENT_DN4000
            sf_def = f"reference Dn4000 < {QUIESCENT_DN4000}"

        def slope(met):
            ok_ = sf & np.isfinite(met) & np.isfinite(lm)
            return np.polyfit(lm[ok_], met[ok_], 1)[0] if ok_.sum() >= 5 else np.nan

        met_ref = fit_truth["metallicity_lw"][0]
        mzr = {"sf": sf, "log_mstar": lm, "definition": sf_def}
        table.add(
            sec,
            "metallicity_lw vs log_mstar (SF)",
            "mzr_slope",
            fit_truth["metallicity_lw"][1],
            {m: slope(d["metallicity_lw"]) for m, d in fits.items()},
            int(sf.sum()),
            reference_value=slope(met_ref),
        )
        table.add(
            sec,
            "metallicity_lw vs log_mstar (SF)",
            "mzr_pearson_rho",
            fit_truth["metallicity_lw"][1],
            {m: M.pearson(d["metallicity_lw"][sf], lm[sf]) for m, d in fits.items()},
            int(sf.sum()),
            reference_value=M.pearson(met_ref[sf], lm[sf]),
        )
    elif fits:
        notes.append("no log_mstar column: mass-metallicity relation skipped")

    # AGN / BPT
    bpt = None
    if fits:
        sec = "AGN (BPT, pPXF subset)"
        if "bpt_class" in truth:
            bt, bn = truth["bpt_class"][fit_idx].astype(np.int64), "catalogue"
        else:
            bt, bn = fits["observed"]["bpt_class"], "observed"
            notes.append("no catalogue bpt_class: BPT scored against the observed-spectrum classes")
        cls = {m: d["bpt_class"] for m, d in fits.items()}
        agn = {m: (c == 2).astype(int) for m, c in cls.items()}
        if cnn is not None:
            agn["cnn"] = cnn["agn"][fit_idx]
        if phot is not None and "bpt_class" in phot:
            cls["photometric"] = phot["bpt_class"][fit_idx]
            agn["photometric"] = phot["agn"][fit_idx]
        at = (bt == 2).astype(int)
        k = fit_idx.size
        table.add(
            sec,
            "bpt_class (4 classes incl. -1)",
            "accuracy",
            bn,
            {m: M.accuracy(c, bt) for m, c in cls.items()},
            k,
        )
        table.add(
            sec,
            "bpt_class (4 classes incl. -1)",
            "balanced_accuracy",
            bn,
            {m: M.balanced_accuracy(c, bt) for m, c in cls.items()},
            k,
        )
        table.add(
            sec,
            "AGN presence",
            "accuracy",
            bn,
            {m: M.accuracy(a, at) for m, a in agn.items()},
            k,
            reference_value=at.mean(),
        )
        table.add(
            sec,
            "AGN presence",
            "balanced_accuracy",
            bn,
            {m: M.balanced_accuracy(a, at) for m, a in agn.items()},
            k,
        )
        ao = agn["observed"]
        table.add(
            sec,
            "AGN presence",
            "accuracy_vs_observed",
            "observed",
            {m: M.accuracy(a, ao) for m, a in agn.items() if m != "observed"},
            k,
        )
        bpt = {"truth": bt, "classes": cls, "reference": bn}

    if phot is not None:
        _image_only_rows(table, truth, phot, cnn, n)

    # calibration of the candidate distributions
    cal_report = None
    if calib is not None:
        sec = f"calibration (M={calib['n_candidates']} candidates)"
        cal_report = {"n_candidates": calib["n_candidates"]}
        for q, r, rn in (("z", zt, "catalogue"), ("dn4000", dref, dname)):
            s = calib[q]
            pit = M.pit_values(s, r, seed=seed)
            cov = M.interval_coverage(s, r)
            med = np.nanmedian(s, axis=1) if np.isfinite(s).any() else np.full(n, np.nan)
            width = np.nanmedian(np.nanpercentile(s, 84, axis=1) - np.nanpercentile(s, 16, axis=1))
            calib[f"pit_{q}"] = pit
            cal_report[q] = {
                "coverage_16_84": cov,
                "pit_ks": M.pit_uniformity(pit),
                "median_width_68": float(width),
            }
            ideal = M.expected_coverage(calib["n_candidates"])
            cal_report[q]["coverage_if_calibrated"] = ideal
            table.add(
                sec,
                q,
                f"coverage_16_84 (calibrated: {ideal:.3f})",
                rn,
                {"predicted": cov},
                n,
                reference_value=ideal,
            )
            table.add(sec, q, "pit_ks_distance (ideal 0)", rn, {"predicted": M.pit_uniformity(pit)}, n)
            table.add(sec, q, "median_68_width", rn, {"predicted": width}, n)
            if q == "z":
                table.add(
                    sec, "z (candidate median)", "sigma_nmad", rn, {"predicted": M.sigma_nmad(med, r)}, n
                )
            else:
                table.add(
                    sec, "dn4000 (candidate median)", "pearson_rho", rn, {"predicted": M.pearson(med, r)}, n
                )
        notes.append(
            f"calibration uses M={calib['n_candidates']} candidates per galaxy: with so few samples the "
            "16/84 percentiles are crude and a perfectly calibrated sampler covers only 0.68 (M-1)/(M+1) "
            f"of the truths ({M.expected_coverage(calib['n_candidates']):.2f} for this M; the reference "
            "value of the coverage rows); "
            "the randomised PIT histogram is exact for any M"
        )
    t = lap("table", t)

    # ---------------- figures + report
    present = [m for m in METHODS if m in meas or m in fits]
    fig_paths = []
    if figures:
        from evaluation import figures as F

        ctx = {
            "wave": wave,
            "n": n,
            "truth": truth,
            "meas": meas,
            "fits": fits,
            "fit_idx": fit_idx,
            "errs": errs,
            "morph": morph,
            "lick_mask": lick_mask,
            "refs": refs,
            "fit_truth": fit_truth,
            "mzr": mzr,
            "bpt": bpt,
            "calib": calib,
            "dref": dref,
            "dname": dname,
            "table": table,
        }
        fig_paths = F.write_all(out_dir, ctx)
    t = lap("figures", t)
    timings["total"] = round(time.perf_counter() - t0, 2)
    rep = {
        "results": str(inp["path"]),
        "survey": str(inp["survey"]),
        "n_galaxies": n,
        "n_fit": int(fit_idx.size),
        "columns": present,
        "methods_description": {
            "predicted": "top-ranked generated spectrum -> toolbox (a)",
            "predicted_at_z": "the same, indices measured at the catalogue z instead of its own fitted z",
            "observed": "observed spectrum with ivar -> toolbox (b, measurement ceiling)",
            "noiseless": "noiseless true spectrum (/spectra/model) -> toolbox (b, ceiling without noise)",
            "cnn": "supervised CNN from the image (c)",
            "photometric": "gradient boosting on image aperture photometry (c)",
            "retrieval": "nearest training spectrum in contrastive embedding -> toolbox (c)",
            "train_mean": "training-mean spectrum -> toolbox (c, constant)",
        },
        "table": table.rows,
        "calibration": _jsonable(cal_report),
        "notes": notes,
        "timings_s": timings,
        "figures": [str(p) for p in fig_paths],
    }
    write_report(report, rep, table.markdown(present))
    log(f"evaluate: {n} galaxies in {timings['total']:.1f} s -> {report}.json/.md")
    return rep


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_report(report, rep: dict, table_md: str) -> tuple[Path, Path]:
    """Atomically write ``<report>.json`` and ``<report>.md``."""
    base = Path(report)
    base.parent.mkdir(parents=True, exist_ok=True)
    js, md = base.with_name(base.name + ".json"), base.with_name(base.name + ".md")
    text_md = [
        "# Evaluation report\n",
        f"results: `{rep['results']}`  survey: `{rep['survey']}`  ",
        f"galaxies: {rep['n_galaxies']} (pPXF subset: {rep['n_fit']})\n",
        "Columns: " + "; ".join(f"**{m}** = {rep['methods_description'][m]}" for m in rep["columns"]) + "\n",
        table_md,
        "\n## Notes\n",
        *[f"- {s}" for s in rep["notes"]],
        "\n## Timings (s)\n",
        ", ".join(f"{k}: {v}" for k, v in rep["timings_s"].items()),
        "",
    ]
    for path, text in ((js, json.dumps(_jsonable(rep), indent=1)), (md, "\n".join(text_md))):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, path)
    return js, md
