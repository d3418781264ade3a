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
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from evaluation import metrics as M
from evaluation.measure import FIT_QUANTITIES, LICK_NAMES, fit_populations, measure_cheap
from evaluation.metrics import N_BOOTSTRAP, paired_interval
from evaluation.truth import load_truth
from utils.files import jsonable, write_text

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


def noiseless_spectra(survey, rows) -> np.ndarray:
    """The noiseless true spectra (``/spectra/model``, mock surveys) of ``rows``, preprocessed like the
    observed ones: (len(rows), 4500) normalised linear flux."""
    from datasets.preprocess import preprocess_spectra

    uniq, inv = np.unique(rows, return_inverse=True)
    with h5py.File(survey, "r") as f:
        pp = preprocess_spectra(f["spectra/loglam"][:], f["spectra/model"][uniq])
    return pp["flux"].astype(np.float64)[inv]


# ----------------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------------
def _nanmedian(x) -> float:
    """Median ignoring NaN (galaxies without an observed spectrum); NaN, silently, if all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(x))


def _nanmean(x) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x))


def _cell(x):
    return None if x is None or not np.isfinite(x) else float(x)


class Table:
    """Rows of (section, quantity, metric, reference) -> value per method, plus the reference's own value.

    Rows added with :meth:`add_stat` also keep each method's per-galaxy arrays (``paired``, by row index),
    from which :func:`versus_best_baseline` bootstraps the chain-minus-baseline difference over galaxies."""

    def __init__(self):
        self.rows = []
        self.paired = {}   # row index -> (stat, {method: per-galaxy arrays}), not written to the report

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

    def add_stat(self, section, quantity, metric, reference, stat, data: dict, n=None, reference_value=None):
        """A row whose value per method is ``stat(*data[method])``: ``data`` maps each method to a tuple of
        galaxy-aligned arrays of equal length (e.g. (z_pred, z_true)), kept for the paired bootstrap."""
        self.add(section, quantity, metric, reference, {m: stat(*a) for m, a in data.items()}, n,
                 reference_value)
        self.paired[len(self.rows) - 1] = (stat, data)

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
    table.add_stat(section, q, "pearson_rho", ref_name, M.pearson, {m: (a, r) for m, a in v.items()}, n)
    table.add_stat(section, q, "scatter" + sfx, ref_name, M.robust_scatter, {m: (a, r) for m, a in v.items()},
                   n)
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
        table.add_stat(sec, "AGN presence", "balanced_accuracy", "catalogue", M.balanced_accuracy,
                       {m: (a, at) for m, a in agn.items()}, n, reference_value=at.mean())


# ----------------------------------------------------------------------------------------------------------
# the evaluation data: what every section reads
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EvalData:
    """Everything the sections of the evaluation read and the figures draw, for the ``n`` evaluated galaxies.

    Filled in stages by :func:`evaluate`: inputs (:func:`load_eval_data`), baselines (:func:`add_baselines`),
    measurements (:func:`measure_spectra`, :func:`measure_candidates`, :func:`fit_subset`), then the scoring
    sections add what the figures need (references, masks, per-galaxy errors).
    """

    # inputs
    results_path: Path
    survey: Path
    wave: np.ndarray                      # (L,) Angstrom
    rows: np.ndarray                      # (n,) survey rows of the evaluated ('ok') galaxies
    truth: dict                           # catalogue truth per column (evaluation.truth.load_truth)
    spectra: dict                         # column -> (n, L) normalised flux; train_mean (1, L)
    ivar_obs: np.ndarray | None           # (n, L) or None
    header: dict                          # the results header (config, checkpoints)
    cubes: dict                           # the results cubes (FULLRES_CANDIDATES ...), all result rows
    ok: np.ndarray                        # (rows of the results,) which rows are evaluated
    notes: list = field(default_factory=list)
    # baselines
    cnn: dict | None = None               # training/baseline.py predictions (z, dn4000, sigma_v, agn)
    phot: dict | None = None              # evaluation/photometric.py predictions
    # measurements
    meas: dict = field(default_factory=dict)     # column -> {z, dn4000, lick_*} per galaxy
    calib: dict | None = None             # z / dn4000 of every candidate, (n, M) each, and their PITs
    fit_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # the pPXF subset
    fits: dict = field(default_factory=dict)     # column -> pPXF results on the subset
    # set by the scoring sections (figures read them)
    errs: dict = field(default_factory=dict)     # column -> per-galaxy mse / chi2n
    lick_mask: np.ndarray | None = None
    refs: dict = field(default_factory=dict)
    dref: np.ndarray | None = None        # the Dn4000 reference and its name
    dname: str = ""
    fit_truth: dict = field(default_factory=dict)
    mzr: dict | None = None
    bpt: dict | None = None

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def has_observed(self) -> np.ndarray:
        """(n,) bool: the galaxy has a usable observed spectrum (a failed positive-flux filter leaves NaN)."""
        return np.isfinite(self.spectra["observed"]).all(axis=1)

    @cached_property
    def candidates(self) -> np.ndarray | None:
        """(n, M, L) float64 full-res candidates of the evaluated rows (converted once), or None."""
        cube = self.cubes.get("FULLRES_CANDIDATES")
        return None if cube is None else cube[0][self.ok].astype(np.float64)

    @property
    def morph(self):
        return self.truth.get("morphology")


def load_eval_data(results, survey=None) -> EvalData:
    """Read the results and their survey (checked by :func:`load_inputs`), the truth and the spectra."""
    inp = load_inputs(results, survey)
    res, ok = inp["results"], inp["ok"]
    rows = inp["rows"][ok]
    notes = []
    if (~ok).any():
        notes.append(
            f"{int((~ok).sum())} of {len(ok)} rows skipped (status != 'ok' or non-finite prediction)"
        )
    spectra = {
        "predicted": res["spectra"]["flux_pred"][ok].astype(np.float64),
        "observed": res["spectra"]["flux_obs"][ok].astype(np.float64),
    }
    ivar_obs = res["spectra"]["ivar_obs"][ok].astype(np.float64) if "ivar_obs" in res["spectra"] else None
    zp = res["header"].get("z_prior", "none")
    if zp not in (None, "none"):
        w = ((res["header"].get("config") or {}).get("generate") or {}).get("z_prior_width")
        notes.append(f"generated with generate.z_prior={zp} (width {w}): candidates whose own redshift "
                     "disagrees with the CNN's photo-z were ranked last, so the predicted column's z is not "
                     "independent of the CNN's")
    pred = res["header"].get("prediction", "top")
    if pred in ("z_mean", "z_aligned"):
        w = res["header"].get("prediction_width")
        notes.append(f"generated with generate.prediction={pred} (width {w}): the predicted column is the "
                     "mean of the full-res candidates whose fitted z agrees with the top-ranked one's"
                     + (", each moved to the top one's z first" if pred == "z_aligned" else "")
                     + ", not a single draw")
    elif pred == "consensus":
        w = res["header"].get("prediction_width")
        notes.append(f"generated with generate.prediction=consensus (width {w}): the predicted column is the "
                     "mean of the full-res candidates near the median redshift of the low-res candidates, "
                     "each moved to that redshift, not a single draw")
    if ivar_obs is None:
        notes.append("ivar_obs missing: chi2/N not computed, observed spectra measured without weights")
    if inp["has_model"]:
        spectra["noiseless"] = noiseless_spectra(inp["survey"], rows)
    else:
        notes.append("survey has no /spectra/model: no 'noiseless' column")
    return EvalData(results_path=inp["path"], survey=inp["survey"], wave=res["wave"], rows=rows,
                    truth=load_truth(inp["survey"], rows), spectra=spectra, ivar_obs=ivar_obs,
                    header=res["header"], cubes=res["cubes"], ok=ok, notes=notes)


def add_baselines(d: EvalData, baselines=(), retrieval=True, photometric=True, pool_size=5000, seed=0,
                  cache_dir=None):
    """The (c) columns: training-mean and retrieved spectra, CNN and photometric predictions. ``cache_dir``:
    reuse the photometric fit and the retrieval pool's embeddings across evaluations (evaluation/cache.py)."""
    from datasets.galaxy import build_cache
    from evaluation import baselines as B

    try:
        cache = build_cache(d.survey)
        pool = B.train_pool(cache, pool_size, seed)
        d.spectra["train_mean"] = B.train_mean_spectrum(cache, pool)[None, :]
    except Exception as e:  # a survey without a training split still gets the rest of the evaluation
        cache = None
        d.notes.append(f"train_mean/retrieval baselines skipped: {type(e).__name__}: {e}")
    cfg = d.header.get("config") or {}
    ck_sr = (cfg.get("generate", {}).get("checkpoints", {}) or d.header.get("checkpoints", {})).get(
        "contrastive_sr"
    )
    if retrieval and cache is not None:
        if ck_sr and Path(ck_sr).exists():
            d.spectra["retrieval"] = B.retrieve(ck_sr, d.survey, cache, d.rows, pool,
                                                  cache_dir=cache_dir)["flux"]
        else:
            d.notes.append(f"retrieval baseline skipped: contrastive_sr checkpoint {ck_sr!r} not found")
    for path in baselines or ():
        d.cnn = B.cnn_predict(path, d.survey, d.rows)
    if not baselines:
        d.notes.append("cnn baseline skipped: no --baselines checkpoint (train_baseline.py --preset cpu)")
    if photometric:
        d.phot = B.photometric_predict(d.survey, d.rows, pool_size, seed, cache_dir)
        d.notes.append(f"photometric baseline fitted on {d.phot['n_train']} training galaxies (--pool-size)")


def measure_spectra(d: EvalData) -> None:
    """Redshift, Lick indices and Dn4000 of every spectrum column; the baselines' direct predictions."""
    for m, flux in d.spectra.items():
        d.meas[m] = measure_cheap(d.wave, flux, d.ivar_obs if m == "observed" else None)
        if m == "train_mean":
            d.meas[m] = {k: np.repeat(v, d.n) for k, v in d.meas[m].items()}
    if d.cnn is not None:
        d.meas["cnn"] = {"z": d.cnn["z"], "dn4000": d.cnn["dn4000"]}
    if d.phot is not None:
        d.meas["photometric"] = {"z": d.phot["z"], "dn4000": d.phot["dn4000"]} | {
            k: v for k, v in d.phot.items() if k.startswith("lick_")}
    if "predicted" in d.spectra and "z" in d.truth:
        # the predicted spectra's indices at the catalogue redshift (e.g. a photo-z in practice): separates
        # what the spectrum's shape says from whether its redshift can be read off it
        d.meas["predicted_at_z"] = measure_cheap(d.wave, d.spectra["predicted"],
                                                 z=d.truth["z"].astype(np.float64))


def measure_candidates(d: EvalData) -> None:
    """z and Dn4000 of every one of the M full-res candidates (distributions for the calibration)."""
    cand = d.candidates
    if cand is None:
        d.notes.append("no FULLRES_CANDIDATES cube: calibration skipped")
        return
    t0 = time.perf_counter()
    nm = cand.shape[1]
    # all n x M candidates in one batched call (the redshift scan and the indices are vectorised)
    cm = measure_cheap(d.wave, cand.reshape(d.n * nm, -1))
    d.calib = {"n_candidates": nm, "z": cm["z"].reshape(d.n, nm), "dn4000": cm["dn4000"].reshape(d.n, nm),
               "measure_seconds": round(time.perf_counter() - t0, 2)}


def fit_subset(d: EvalData, max_fit: int, workers: int, seed: int) -> None:
    """pPXF populations and emission lines on a seeded random subset of ``max_fit`` galaxies."""
    n = d.n
    rng = np.random.default_rng(seed)
    d.fit_idx = np.sort(rng.choice(n, min(max_fit, n), replace=False)) if max_fit > 0 else np.zeros(0, int)
    if not d.fit_idx.size:
        return
    idx = d.fit_idx
    fspec = {m: (s[idx] if m != "train_mean" else s) for m, s in d.spectra.items() if m != "noiseless"}
    fz = {m: (d.meas[m]["z"][idx] if m != "train_mean" else d.meas[m]["z"][:1]) for m in fspec}
    d.fits = fit_populations(d.wave, fspec, fz,
                             ivar={"observed": None if d.ivar_obs is None else d.ivar_obs[idx]},
                             workers=workers)
    if "train_mean" in d.fits:
        d.fits["train_mean"] = {k: np.repeat(v, idx.size) for k, v in d.fits["train_mean"].items()}
    d.notes.append(
        f"pPXF fits on a seeded subset of {idx.size} galaxies (--max-fit); noiseless spectra "
        "are not pPXF-fitted (time budget)"
    )


# ----------------------------------------------------------------------------------------------------------
# the sections of the table (in report order)
# ----------------------------------------------------------------------------------------------------------
def spectrum_section(table: Table, d: EvalData) -> None:
    """MSE and chi2/N of the spectra against the observed ones, overall and per morphology."""
    obs = d.spectra["observed"]
    for m in ("predicted", "noiseless", "retrieval", "train_mean"):
        if m in d.spectra:
            s = d.spectra[m] if m != "train_mean" else np.broadcast_to(d.spectra[m], obs.shape)
            d.errs[m] = M.spectral_errors(s, obs, d.ivar_obs)
    errs, sec = d.errs, "spectrum"
    n_obs = int(d.has_observed.sum())  # galaxies without a usable observed spectrum have no error
    per_galaxy = {m: (e["mse"],) for m, e in errs.items()}
    table.add_stat(sec, "flux", "mse_median", "observed", _nanmedian, per_galaxy, n_obs)
    table.add_stat(sec, "flux", "mse_mean", "observed", _nanmean, per_galaxy, n_obs)
    if d.candidates is not None and "predicted" in errs:
        # the mean of the M draws estimates E[spectrum | image], the MSE-optimal point prediction that the
        # training-mean and retrieval baselines are (a single draw carries its own noise, MSE ~2x the
        # conditional variance); its lines blur where the draws' redshifts disagree: science reads one draw
        mean_m = M.spectral_errors(d.candidates.mean(axis=1), obs, d.ivar_obs)["mse"]
        table.add_stat(sec, "flux (mean of the M candidates)", "mse_median", "observed", _nanmedian,
                       per_galaxy | {"predicted": (mean_m,)}, n_obs)
    table.add(sec, "flux", "chi2n_median", "observed",
              {m: np.nanmedian(e["chi2n"]) if np.isfinite(e["chi2n"]).any() else np.nan
               for m, e in errs.items()}, d.n)
    if d.morph is not None and "predicted" in errs:
        for code, name in ((0, "elliptical"), (1, "spiral"), (2, "uncertain")):
            sel = d.morph == code
            if sel.any():
                table.add_stat(sec, f"flux ({name})", "mse_median", "observed", _nanmedian,
                               {m: (e["mse"][sel],) for m, e in errs.items()}, int(sel.sum()))


def redshift_section(table: Table, d: EvalData) -> None:
    """sigma_NMAD, bias and outlier fraction of every column's redshift against the catalogue."""
    sec, zt = "redshift", d.truth["z"].astype(np.float64)
    zv = {m: v["z"] for m, v in d.meas.items() if "z" in v}
    table.add_stat(sec, "z", "sigma_nmad", "catalogue", M.sigma_nmad, {m: (v, zt) for m, v in zv.items()},
                   d.n)
    table.add(sec, "z", "bias", "catalogue", {m: M.z_bias(v, zt) for m, v in zv.items()}, d.n)
    frac = {m: (v, zt) for m, v in zv.items()}  # a NaN z is a failed fit: an outlier
    has_obs = d.has_observed
    if "observed" in zv and not has_obs.all():  # ... but a missing observed spectrum has no z to get wrong
        frac["observed"] = (zv["observed"][has_obs], zt[has_obs])
        d.notes.append(f"observed column's z outlier fraction over the {int(has_obs.sum())} of {d.n} "
                       "galaxies with a usable observed spectrum")
    table.add_stat(sec, "z", "outlier_frac", "catalogue", M.outlier_fraction, frac, d.n)


def _reference(d: EvalData, key):
    if key in d.truth:
        return d.truth[key].astype(np.float64), "catalogue"
    if "noiseless" in d.meas:
        return d.meas["noiseless"][key], "noiseless"
    return d.meas["observed"][key], "observed"


def indices_section(table: Table, d: EvalData) -> None:
    """Dn4000 and Lick indices (the paper excludes spirals for the Lick comparison)."""
    d.lick_mask = np.ones(d.n, bool) if d.morph is None else (d.morph != 1)
    if d.morph is None:
        d.notes.append("no morphology column: Lick statistics include every galaxy")
    d.dref, d.dname = _reference(d, "dn4000")
    d.refs["dn4000"] = (d.dref, d.dname)
    _regression_rows(table, "indices", "dn4000", d.dref, d.dname,
                     {m: v.get("dn4000") for m, v in d.meas.items()})
    for name in LICK_NAMES:
        key = f"lick_{name}"
        r, rn = _reference(d, key)
        _regression_rows(table, "indices (non-spiral)" if d.morph is not None else "indices", key, r, rn,
                         {m: v.get(key) for m, v in d.meas.items()}, mask=d.lick_mask)


def populations_section(table: Table, d: EvalData) -> None:
    """sigma_v, age, [M/H], E(B-V) of the pPXF subset (and the image-only baselines on the same galaxies)."""
    if not d.fits:
        return
    sec, idx = "populations (pPXF subset)", d.fit_idx
    for q in FIT_QUANTITIES:
        if q in d.truth:
            r, rn = d.truth[q][idx].astype(np.float64), "catalogue"
        else:
            r, rn = d.fits["observed"][q], "observed"
            d.notes.append(f"no catalogue {q}: scored against the observed-spectrum fit")
        d.fit_truth[q] = (r, rn)
        vals = {m: f[q] for m, f in d.fits.items()}
        if q == "sigma_v" and d.cnn is not None:
            vals["cnn"] = d.cnn["sigma_v"][idx]
        if d.phot is not None and q in d.phot:
            vals["photometric"] = d.phot[q][idx]
        _regression_rows(table, sec, q, r, rn, vals)
    table.add(sec, "pPXF", "success_frac", "", {m: np.mean(f["success"]) for m, f in d.fits.items()},
              idx.size)


def bimodality_mzr_section(table: Table, d: EvalData) -> None:
    """Quiescent fraction and Dn4000 distribution distance; the mass-metallicity relation (pPXF subset)."""
    from scipy.stats import ks_2samp

    sec, dref = "bimodality / MZR", d.dref
    qf = {m: np.nanmean(v["dn4000"] > QUIESCENT_DN4000) if np.isfinite(v["dn4000"]).any() else np.nan
          for m, v in d.meas.items()}
    table.add(sec, "dn4000", f"quiescent_frac (Dn4000>{QUIESCENT_DN4000})", d.dname, qf, d.n,
              reference_value=np.mean(dref[np.isfinite(dref)] > QUIESCENT_DN4000))

    def ks(a):
        a, b = a[np.isfinite(a)], dref[np.isfinite(dref)]
        return ks_2samp(a, b).statistic if a.size > 2 and b.size > 2 else np.nan

    table.add(sec, "dn4000", "ks_distance_to_reference", d.dname,
              {m: ks(v["dn4000"]) for m, v in d.meas.items()}, d.n)
    if d.fits and "log_mstar" not in d.truth:
        d.notes.append("no log_mstar column: mass-metallicity relation skipped")
    if not d.fits or "log_mstar" not in d.truth:
        return
    lm = d.truth["log_mstar"][d.fit_idx].astype(np.float64)
    if "bpt_class" in d.truth:
        sf, sf_def = d.truth["bpt_class"][d.fit_idx] == 0, "catalogue bpt_class == 0"
    else:
        sf, sf_def = dref[d.fit_idx] < QUIESCENT_DN4000, f"reference Dn4000 < {QUIESCENT_DN4000}"

    def slope(met):
        ok_ = sf & np.isfinite(met) & np.isfinite(lm)
        return np.polyfit(lm[ok_], met[ok_], 1)[0] if ok_.sum() >= 5 else np.nan

    met_ref, met_name = d.fit_truth["metallicity_lw"]
    d.mzr = {"sf": sf, "log_mstar": lm, "definition": sf_def}
    q = "metallicity_lw vs log_mstar (SF)"
    table.add(sec, q, "mzr_slope", met_name, {m: slope(f["metallicity_lw"]) for m, f in d.fits.items()},
              int(sf.sum()), reference_value=slope(met_ref))
    table.add(sec, q, "mzr_pearson_rho", met_name,
              {m: M.pearson(f["metallicity_lw"][sf], lm[sf]) for m, f in d.fits.items()},
              int(sf.sum()), reference_value=M.pearson(met_ref[sf], lm[sf]))


def bpt_section(table: Table, d: EvalData) -> None:
    """BPT class and AGN presence of the pPXF subset's emission lines (plus the image-only classifiers)."""
    if not d.fits:
        return
    sec, idx = "AGN (BPT, pPXF subset)", d.fit_idx
    if "bpt_class" in d.truth:
        bt, bn = d.truth["bpt_class"][idx].astype(np.int64), "catalogue"
    else:
        bt, bn = d.fits["observed"]["bpt_class"], "observed"
        d.notes.append("no catalogue bpt_class: BPT scored against the observed-spectrum classes")
    cls = {m: f["bpt_class"] for m, f in d.fits.items()}
    agn = {m: (c == 2).astype(int) for m, c in cls.items()}
    if d.cnn is not None:
        agn["cnn"] = d.cnn["agn"][idx]
    if d.phot is not None and "bpt_class" in d.phot:
        cls["photometric"] = d.phot["bpt_class"][idx]
        agn["photometric"] = d.phot["agn"][idx]
    at, k, q4 = (bt == 2).astype(int), idx.size, "bpt_class (4 classes incl. -1)"
    table.add_stat(sec, q4, "accuracy", bn, M.accuracy, {m: (c, bt) for m, c in cls.items()}, k)
    table.add_stat(sec, q4, "balanced_accuracy", bn, M.balanced_accuracy,
                   {m: (c, bt) for m, c in cls.items()}, k)
    table.add_stat(sec, "AGN presence", "accuracy", bn, M.accuracy, {m: (a, at) for m, a in agn.items()}, k,
                   reference_value=at.mean())
    table.add_stat(sec, "AGN presence", "balanced_accuracy", bn, M.balanced_accuracy,
                   {m: (a, at) for m, a in agn.items()}, k)
    ao = agn["observed"]
    table.add(sec, "AGN presence", "accuracy_vs_observed", "observed",
              {m: M.accuracy(a, ao) for m, a in agn.items() if m != "observed"}, k)
    d.bpt = {"truth": bt, "classes": cls, "reference": bn}


def calibration_section(table: Table, d: EvalData, seed: int) -> dict | None:
    """Coverage, PIT and width of the z and Dn4000 distributions over the M candidates; returns the
    report's ``calibration`` entry."""
    calib, n = d.calib, d.n
    if calib is None:
        return None
    sec = f"calibration (M={calib['n_candidates']} candidates)"
    cal_report = {"n_candidates": calib["n_candidates"], "measure_seconds": calib["measure_seconds"]}
    for q, r, rn in (("z", d.truth["z"].astype(np.float64), "catalogue"), ("dn4000", d.dref, d.dname)):
        s = calib[q]
        pit = M.pit_values(s, r, seed=seed)
        cov = M.interval_coverage(s, r)
        with warnings.catch_warnings():  # a galaxy whose M values are all NaN: its median is NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(s, axis=1)
            width = np.nanmedian(np.nanpercentile(s, 84, axis=1) - np.nanpercentile(s, 16, axis=1))
        calib[f"pit_{q}"] = pit
        ideal = M.expected_coverage(calib["n_candidates"])
        cal_report[q] = {"coverage_16_84": cov, "pit_ks": M.pit_uniformity(pit),
                         "median_width_68": float(width), "coverage_if_calibrated": ideal,
                         **M.pit_summary(pit)}
        table.add(sec, q, f"coverage_16_84 (calibrated: {ideal:.3f})", rn, {"predicted": cov}, n,
                  reference_value=ideal)
        table.add(sec, q, "pit_ks_distance (ideal 0)", rn, {"predicted": M.pit_uniformity(pit)}, n)
        table.add(sec, q, "median_68_width", rn, {"predicted": width}, n)
        if q == "z":
            table.add(sec, "z (candidate median)", "sigma_nmad", rn, {"predicted": M.sigma_nmad(med, r)}, n)
        else:
            table.add(sec, "dn4000 (candidate median)", "pearson_rho", rn, {"predicted": M.pearson(med, r)},
                      n)
    d.notes.append(
        f"calibration uses M={calib['n_candidates']} candidates per galaxy: with so few samples the "
        "16/84 percentiles are crude and a perfectly calibrated sampler covers only 0.68 (M-1)/(M+1) "
        f"of the truths ({M.expected_coverage(calib['n_candidates']):.2f} for this M; the reference "
        "value of the coverage rows); "
        "the randomised PIT histogram is exact for any M"
    )
    return cal_report


def score(d: EvalData, seed: int) -> tuple[Table, dict | None]:
    """Every section of the one table, in report order; returns the table and the calibration entry."""
    table = Table()
    spectrum_section(table, d)
    redshift_section(table, d)
    indices_section(table, d)
    populations_section(table, d)
    bimodality_mzr_section(table, d)
    bpt_section(table, d)
    if d.phot is not None:
        _image_only_rows(table, d.truth, d.phot, d.cnn, d.n)
    return table, calibration_section(table, d, seed)


BASELINES = ("cnn", "photometric", "retrieval", "train_mean")
#: metric (its first word) -> +1 higher is better, -1 lower is better; other metrics have no "best"
#: (bias, fractions judged against a reference value, *_vs_observed diagnostics, calibration rows)
METRIC_DIRECTION = {"pearson_rho": 1, "accuracy": 1, "balanced_accuracy": 1, "sigma_nmad": -1,
                    "outlier_frac": -1, "scatter": -1, "mse_median": -1, "mse_mean": -1, "chi2n_median": -1,
                    "ks_distance_to_reference": -1}
RATIO_METRICS = ("sigma_nmad", "scatter")  # scale metrics: also predicted / best as a ratio


def versus_best_baseline(rows: list[dict], paired: dict | None = None, n_boot: int = N_BOOTSTRAP,
                         seed: int = 0) -> list[dict]:
    """Per table row with a direction (``METRIC_DIRECTION``), the best of the baselines present
    (``BASELINES``) and how far the chain (``predicted``) is from it: ``difference`` = predicted - best,
    ``ratio`` = predicted / best for sigma_NMAD and scatter, ``chain_better`` True when the chain wins.

    For rows with per-galaxy data (``paired``: :attr:`Table.paired`) also ``ci95``, the 95 % paired
    bootstrap interval of the difference (:func:`paired_interval`), and ``resolved``: the interval
    excludes 0, i.e. the sample resolves which of the two is better; else both are None."""
    paired = paired or {}
    out = []
    for k, r in enumerate(rows):
        base = r["metric"].split(" ")[0]
        sign, pred = METRIC_DIRECTION.get(base, 0), r["values"].get("predicted")
        have = {m: r["values"][m] for m in BASELINES if r["values"].get(m) is not None}
        if not sign or pred is None or not have:
            continue
        best = max(have, key=lambda m: sign * have[m])
        v = have[best]
        ci = None
        if k in paired and "predicted" in paired[k][1] and best in paired[k][1]:
            stat, data = paired[k]
            ci = paired_interval(stat, data["predicted"], data[best], n_boot, seed + k)
        out.append({"section": r["section"], "quantity": r["quantity"], "metric": r["metric"], "n": r["n"],
                    "predicted": pred, "best_baseline": best, "baseline_value": v, "difference": pred - v,
                    "ratio": pred / v if base in RATIO_METRICS and v != 0 else None,
                    "chain_better": bool(sign * (pred - v) > 0),
                    "ci95": None if ci is None else list(ci),
                    "resolved": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)})
    return out


def pit_markdown(cal: dict) -> str:
    """The report's PIT table: per quantity M, n, KS distance (and its 5 % noise level), histogram, shape."""
    lines = [f"M = {cal['n_candidates']} full-res candidates per galaxy, z (analysis.fit_redshifts) and "
             f"Dn4000 measured on each ({cal.get('measure_seconds', float('nan')):.1f} s for all of them). "
             "PIT = (k + U)/(M + 1), k candidates below the truth (ties at a random position), "
             "U ~ U(0, 1): flat for a calibrated sampler at any M. Figure: eval_pit.png.\n",
             "| quantity | M | n | PIT KS distance | KS 5 % level (n) | mean PIT | PIT histogram (10 bins) | "
             "shape |", "|" + " --- |" * 8]
    for q in ("z", "dn4000"):
        r = cal.get(q)
        if not r:
            continue
        hist = " ".join(str(c) for c in r["pit_histogram"])
        lines.append(f"| {q} | {cal['n_candidates']} | {r['n']} | {r['pit_ks']:.3f} | {r['ks_5pct']:.3f} | "
                     f"{r['mean_pit']:.2f} | {hist} | {r['shape']} |")
    return "\n".join(lines)


def versus_markdown(vs: list[dict]) -> str:
    """The report's "chain vs the best baseline" table."""
    def f(v):
        return "—" if v is None else f"{v:.4g}"

    lines = ["| section | quantity | metric | predicted (chain) | best baseline | its value | "
             "chain − best | 95 % interval (paired) | chain / best | chain better |", "|" + " --- |" * 10]
    for r in vs:
        ci = r.get("ci95")
        better = "yes" if r["chain_better"] else "no"
        if r.get("resolved") is not None:
            better += " (resolved)" if r["resolved"] else " (not resolved)"
        lines.append(f"| {r['section']} | {r['quantity']} | {r['metric']} | {f(r['predicted'])} | "
                     f"{r['best_baseline']} | {f(r['baseline_value'])} | {f(r['difference'])} | "
                     f"{'—' if ci is None else f'[{ci[0]:.3g}, {ci[1]:.3g}]'} | {f(r['ratio'])} | {better} |")
    return "\n".join(lines)


METHOD_DESCRIPTIONS = {
    "predicted": "top-ranked generated spectrum -> toolbox (a)",
    "predicted_at_z": "the same, indices measured at the catalogue z instead of its own fitted z",
    "observed": "observed spectrum with ivar -> toolbox (b, measurement ceiling)",
    "noiseless": "noiseless true spectrum (/spectra/model) -> toolbox (b, ceiling without noise)",
    "cnn": "supervised CNN from the image (c)",
    "photometric": "gradient boosting on image aperture photometry (c)",
    "retrieval": "nearest training spectrum in contrastive embedding -> toolbox (c)",
    "train_mean": "training-mean spectrum -> toolbox (c, constant)",
}


class _Laps:
    """Wall time of each stage (the report's ``timings_s``), logged as it ends."""

    def __init__(self, log):
        self.log, self.timings = log, {}
        self.t0 = self.t = time.perf_counter()

    def __call__(self, name):
        self.timings[name] = round(time.perf_counter() - self.t, 2)
        self.log(f"evaluate: {name}: {self.timings[name]:.1f} s")
        self.t = time.perf_counter()

    def total(self):
        self.timings["total"] = round(time.perf_counter() - self.t0, 2)
        return self.timings["total"]


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
    cache_dir=None,
) -> dict:
    """Run the evaluation; write ``<report>.json``/``.md`` and ``<out_dir>/eval_*.png``; return the report."""
    lap = _Laps(log)
    d = load_eval_data(results, survey)
    lap("load")
    add_baselines(d, baselines, retrieval, photometric, pool_size, seed, cache_dir)
    lap("baselines")
    measure_spectra(d)
    lap("redshift_indices")
    measure_candidates(d)
    lap("candidates")
    fit_subset(d, max_fit, workers, seed)
    lap("ppxf")
    table, cal_report = score(d, seed)
    versus = versus_best_baseline(table.rows, table.paired, seed=seed)  # with paired bootstrap intervals
    lap("table")
    present = [m for m in METHODS if m in d.meas or m in d.fits]
    fig_paths = []
    if figures:
        from evaluation import figures as F

        fig_paths = F.write_all(out_dir, d)
    lap("figures")
    lap.total()
    rep = {
        "results": str(d.results_path),
        "survey": str(d.survey),
        "n_galaxies": d.n,
        "n_fit": int(d.fit_idx.size),
        "columns": present,
        "methods_description": dict(METHOD_DESCRIPTIONS),
        "table": table.rows,
        "vs_best_baseline": versus,
        "calibration": jsonable(cal_report),
        "notes": d.notes,
        "timings_s": lap.timings,
        "figures": [str(p) for p in fig_paths],
    }
    write_report(report, rep, table.markdown(present))
    log(f"evaluate: {d.n} galaxies in {lap.timings['total']:.1f} s -> {report}.json/.md")
    return rep


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
    ]
    if rep.get("vs_best_baseline"):
        text_md += [
            "\n## The chain vs the best baseline\n",
            "Per quantity and metric, the best of the baselines present (" + ", ".join(BASELINES) + ") and "
            "how far the chain's `predicted` column is from it (difference; ratio for sigma_NMAD and "
            "scatter; \"chain better\" follows the metric's direction: higher rho/accuracy, lower "
            "scatter/sigma_NMAD/outliers/MSE/KS). The interval is the 95 % percentile interval of chain − "
            f"best over {N_BOOTSTRAP} bootstrap resamples of the galaxies, the same galaxies for both "
            "(\"resolved\": it excludes 0).\n",
            versus_markdown(rep["vs_best_baseline"]),
        ]
    if rep.get("calibration"):
        text_md += ["\n## Calibration of the candidates (PIT)\n", pit_markdown(rep["calibration"])]
    text_md += [
        "\n## Notes\n",
        *[f"- {s}" for s in rep["notes"]],
        "\n## Timings (s)\n",
        ", ".join(f"{k}: {v}" for k, v in rep["timings_s"].items()),
        "",
    ]
    write_text(js, json.dumps(jsonable(rep), indent=1))
    write_text(md, "\n".join(text_md))
    return js, md
