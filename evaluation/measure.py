"""The spectroscopic toolbox (``analysis``) run over whole sets of preprocessed spectra.

Everything here CALLS the toolbox; nothing re-implements a measurement. Spectra are the project's
preprocessed ones: FULLRES_WAVE (4000-8499 A, 1 A, observed frame, vacuum), Gaussian-smoothed with
sigma = 2 A on top of the SDSS instrumental resolution, normalised -> ``extra_sigma=2.0`` for fits.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from analysis.indices import READOUT_LICK as LICK_NAMES  # noqa: F401  (re-exported for evaluation/)
from datasets.preprocess import SMOOTH_SIGMA

FIT_QUANTITIES = ("sigma_v", "age_lw", "metallicity_lw", "ebv")
BPT_LINES = ("[NII]6584", "Halpha", "[OIII]5007", "Hbeta")


def measure_cheap(wave, flux, ivar=None, z=None, chunk: int = 256) -> dict[str, np.ndarray]:
    """Redshift (``fit_redshifts``), Lick indices and Dn4000 of every spectrum (vectorised).

    Parameters
    ----------
    wave : (L,) Angstrom. flux : (N, L) normalised linear flux. ivar : (N, L) or None.
    z : (N,) redshifts at which to measure the indices (no redshift is fitted then); None = each
        spectrum's own fitted z (the paper's read-out: everything comes from the spectrum itself).

    Returns
    -------
    dict of (N,) arrays: ``dn4000``, ``dn4000_err``, ``lick_<Name>`` for LICK_NAMES and, when ``z`` is None,
    the fit's ``z``, ``z_err`` and ``zwarning``.
    """
    from analysis import dn4000, fit_redshifts, lick_indices

    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    n = flux.shape[0]
    out = {}
    if z is None:
        out = {"z": np.full(n, np.nan), "z_err": np.full(n, np.nan), "zwarning": np.zeros(n, dtype=np.int64)}
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            iv = None if ivar is None else np.asarray(ivar[sl], dtype=np.float64)
            res = fit_redshifts(wave, flux[sl], iv, extra_sigma=SMOOTH_SIGMA)
            out["z"][sl] = [r.z for r in res]
            out["z_err"][sl] = [r.z_err for r in res]
            out["zwarning"][sl] = [r.zwarning for r in res]
    zz = out["z"] if z is None else np.asarray(z, dtype=np.float64)
    zsafe = np.where(np.isfinite(zz), zz, 0.1)  # NaN z: measured at a dummy z, then blanked below
    d, de = dn4000(wave, flux, zsafe, ivar=ivar)
    lick = lick_indices(wave, flux, zsafe, ivar=ivar, names=list(LICK_NAMES))
    bad = ~np.isfinite(zz)
    out["dn4000"] = np.where(bad, np.nan, d)
    out["dn4000_err"] = np.where(bad, np.nan, de)
    for name in LICK_NAMES:
        out[f"lick_{name}"] = np.where(bad, np.nan, np.asarray(lick[name][0], dtype=np.float64))
    return out


def _fit_one(args):
    from analysis import fit_spectrum

    wave, flux, ivar, z = args
    r = fit_spectrum(wave, flux, z, ivar=ivar, extra_sigma=SMOOTH_SIGMA)
    lines = {k: (r.lines.get(k, np.nan), r.line_errors.get(k, np.nan)) for k in BPT_LINES}
    return {
        "success": bool(r.success),
        "message": r.message,
        **{q: getattr(r, q) for q in FIT_QUANTITIES},
        "lines": lines,
        # a BPT line from a gas component at a pPXF sigma bound is not a measurement (analysis.fitting)
        "gas_at_bound": any(r.line_at_bound.get(k, False) for k in BPT_LINES),
    }


def _fit_all(jobs, workers):
    if workers <= 1 or len(jobs) < 4:
        return [_fit_one(j) for j in jobs]
    import multiprocessing as mp

    old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in old})  # one BLAS thread per worker process: no oversubscription
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_fit_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fit_populations(wave, spectra: dict, z: dict, ivar: dict | None = None, workers: int = 2) -> dict:
    """pPXF (``analysis.fit_spectrum``) of several sets of spectra in one worker pool.

    Parameters
    ----------
    spectra : method -> (n, L) flux. z : method -> (n,) redshift to fit at (NaN: not fitted).
    ivar : method -> (n, L) or None. workers : processes (the template cache lives per process, so the
        pool is shared by all methods).

    Returns
    -------
    method -> dict of (n,) arrays: FIT_QUANTITIES, ``success``, ``bpt_class`` (``analysis.classify`` of
    the fitted [NII]/Halpha/[OIII]/Hbeta with their errors, S/N >= 3; unclassifiable where a line's gas
    component is at a pPXF sigma bound, ``gas_at_bound``) and ``line_<name>``.
    """
    from analysis import classify

    ivar = ivar or {}
    jobs, owner = [], []
    for m, flux in spectra.items():
        iv = ivar.get(m)
        for i in range(len(flux)):
            if np.isfinite(z[m][i]):
                jobs.append(
                    (
                        np.asarray(wave, np.float64),
                        np.asarray(flux[i], np.float64),
                        None if iv is None else np.asarray(iv[i], np.float64),
                        float(z[m][i]),
                    )
                )
                owner.append((m, i))
    results = _fit_all(jobs, workers)
    out = {}
    for m, flux in spectra.items():
        n = len(flux)
        d = {q: np.full(n, np.nan) for q in FIT_QUANTITIES}
        d["success"] = np.zeros(n, dtype=bool)
        d["gas_at_bound"] = np.zeros(n, dtype=bool)
        for name in BPT_LINES:
            d[f"line_{name}"] = np.full(n, np.nan)
            d[f"line_err_{name}"] = np.full(n, np.nan)
        out[m] = d
    for (m, i), r in zip(owner, results):
        d = out[m]
        d["success"][i] = r["success"]
        d["gas_at_bound"][i] = r["gas_at_bound"]
        if not r["success"]:
            continue
        for q in FIT_QUANTITIES:
            d[q][i] = r[q]
        if "unreliable" in r["message"]:
            d["sigma_v"][i] = np.nan  # at the pPXF bound: not a measurement
        for name, (v, e) in r["lines"].items():
            d[f"line_{name}"][i] = v
            d[f"line_err_{name}"][i] = e
    for d in out.values():
        args = [d[f"line_{k}"] for k in BPT_LINES] + [d[f"line_err_{k}"] for k in BPT_LINES]
        cls = np.asarray(
            classify(
                *[np.nan_to_num(a, nan=0.0) for a in args[:4]],
                *[np.nan_to_num(a, nan=np.inf) for a in args[4:]],
                unreliable=d["gas_at_bound"],
            ),
            dtype=np.int64,
        )
        d["bpt_class"] = np.where(d["success"], cls, -1)
    return out
