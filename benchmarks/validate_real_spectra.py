"""The toolbox on real SDSS spectra against the SDSS pipeline's own measurements, before/after the
masking and gas-bound fixes of issue #11; prints one JSON object.

Run: .venv/bin/python benchmarks/validate_real_spectra.py  (~1 min on 2 cores)

Spectra: the five fixtures in tests/data/sdss plus, when the installed pPXF package ships them, its two
SDSS DR18 example spectra (ppxf/spectra/NGC3073_SDSS_DR18.fits, NGC3522_SDSS_DR18.fits; read in place,
not copied).

References (independent of this toolbox; from each file's HDU2 SPECOBJ and HDU3 SPZLINE):
* z: pipeline Z. Agreement: ZWARNING 0 and |c dz/(1+z)| < 50 km/s.
* sigma_v: pipeline VDISP (if > 0 and the pipeline's VDISP_ERR > 0). Agreement: |d| < max(2 sigma combined,
  10 % of VDISP).
* line fluxes Hbeta, [OIII]5007, Halpha, [NII]6584: SPZLINE LINEAREA (+- LINEAREA_ERR) of H_beta,
  [O_III] 5007, H_alpha, [N_II] 6583. Agreement: both S/N < 3, or both >= 3 and |d| < max(3 sigma
  combined, 20 %). "after" counts a line from a gas component at a pPXF sigma bound as not measured.
  SPZLINE's Balmer fluxes carry no stellar-absorption correction (pPXF's do), so Hbeta/Halpha differ
  where the stars have strong Balmer absorption: a limit of the reference, not of either fit.
* BPT class: ``analysis.classify`` of the SPZLINE fluxes and errors (S/N >= 3). Agreement: same class.
No independent Lick/Dn4000 values are in the files: for the indices the script reports how many of Dn4000
+ the 8 read-out Lick indices are finite, and the values.

"before" = the old behaviour: every and_mask bit masks the pixel (``bad_mask=ANY_BIT_MASK``), no gap
interpolation (``max_interp=0``), BPT from the S/N cut alone (gas at a pPXF sigma bound not flagged).
"after" = the defaults.

A second section measures the gap interpolation: for every position of a run of 2, 4 or 5 masked pixels
inside the bands of six read-out indices of two fixtures, the rms change of the index in units of its
error, with interpolation and with the masked pixels simply skipped (the old in-band behaviour).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np
from astropy.io import fits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import BPT_NAMES, classify, classify_fit, dn4000, fit_redshift, fit_spectrum, lick_indices  # noqa: E402
from analysis.bpt import BPT_LINES  # noqa: E402
from analysis.indices import LICK_BANDS, READOUT_LICK  # noqa: E402
from datasets.sdss_spec import ANY_BIT_MASK, BAD_PIXEL_MASK, read_spec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_KMS = 299792.458
SPZ_NAMES = {"Hbeta": "H_beta", "[OIII]5007": "[O_III] 5007", "Halpha": "H_alpha", "[NII]6584": "[N_II] 6583"}


def spectra_paths():
    paths = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "sdss", "spec-*.fits")))
    try:
        import ppxf
        paths += sorted(glob.glob(os.path.join(os.path.dirname(ppxf.__file__), "spectra", "*SDSS*.fits")))
    except ImportError:
        pass
    return paths


def references(path):
    with fits.open(path) as h:
        hdu2 = h[2].data[0]
        ref = {"Z": float(hdu2["Z"]), "ZWARNING": int(hdu2["ZWARNING"]), "VDISP": float(hdu2["VDISP"]),
               "VDISP_ERR": float(hdu2["VDISP_ERR"]), "SUBCLASS": str(hdu2["SUBCLASS"]).strip()}
        lines = {}
        if len(h) > 3 and h[3].name == "SPZLINE":
            names = np.char.strip(np.asarray(h[3].data["LINENAME"]).astype(str))
            for ours, theirs in SPZ_NAMES.items():
                j = np.flatnonzero(names == theirs)
                if j.size:
                    lines[ours] = (float(h[3].data["LINEAREA"][j[0]]), float(h[3].data["LINEAREA_ERR"][j[0]]))
    ref["lines"] = lines
    if len(lines) == 4:
        f = [lines[k][0] for k in BPT_LINES]
        e = [lines[k][1] if lines[k][1] > 0 else np.inf for k in BPT_LINES]
        ref["bpt"] = int(classify(*f, *e))
    return ref


def measure(path, after):
    s = read_spec(path, bad_mask=BAD_PIXEL_MASK if after else ANY_BIT_MASK)
    interp = {} if after else {"max_interp": 0}
    z = fit_redshift(s.wave, s.flux, s.ivar)
    lick = lick_indices(s.wave, s.flux, s.z, s.ivar, names=READOUT_LICK, **interp)
    out = {"n_masked": int((s.ivar == 0).sum()), "z": z.z, "zwarning": int(z.zwarning),
           "Dn4000": float(dn4000(s.wave, s.flux, s.z, s.ivar, **interp)[0]),
           **{k: lick[k][0] for k in READOUT_LICK}}
    r = fit_spectrum(s.wave, s.flux, s.z, s.ivar)
    flagged = {k for k in BPT_LINES if after and r.line_at_bound.get(k, False)}
    out.update(fit_ok=bool(r.success), message=r.message, sigma_v=r.sigma_v, sigma_v_err=r.sigma_v_err,
               age_lw=r.age_lw, gas_sigmas=r.gas_sigmas, gas_at_bound=r.gas_at_bound,
               lines={k: (np.nan, np.nan) if k in flagged else
                      (r.lines.get(k, np.nan), r.line_errors.get(k, np.nan)) for k in BPT_LINES})
    if after:
        out["bpt"] = classify_fit(r)
    else:
        out["bpt"] = int(classify(*[out["lines"][k][0] for k in BPT_LINES],
                                  *[out["lines"][k][1] for k in BPT_LINES])) if r.success else -1
    return out


def agreement(m, ref):
    """name -> True/False for each quantity with a reference (None where there is none)."""
    a = {}
    dv = C_KMS * abs(m["z"] - ref["Z"]) / (1 + ref["Z"])
    a["z"] = bool(ref["ZWARNING"] == 0 and m["zwarning"] == 0 and dv < 50) if ref["ZWARNING"] == 0 else None
    if ref["VDISP"] > 0 and ref["VDISP_ERR"] > 0 and m["fit_ok"] and ref["ZWARNING"] == 0:
        d = abs(m["sigma_v"] - ref["VDISP"])
        a["sigma_v"] = bool(d < max(2 * np.hypot(m["sigma_v_err"], ref["VDISP_ERR"]), 0.1 * ref["VDISP"]))
    for k, (fr, er) in ref["lines"].items():
        if ref["ZWARNING"] != 0 or er <= 0:
            continue
        f, e = m["lines"][k]
        det_ref, det = fr / er >= 3, np.isfinite(f) and e > 0 and f / e >= 3
        if not det_ref and not det:
            a[k] = True
        elif det_ref and det:
            a[k] = bool(abs(f - fr) < max(3 * np.hypot(e, er), 0.2 * abs(fr)))
        else:
            a[k] = False
    if "bpt" in ref and ref["ZWARNING"] == 0:
        a["bpt"] = bool(m["bpt"] == ref["bpt"])
    return a


def interpolation_robustness():
    names = ["Mgb", "Fe5270", "Fe5335", "Hbeta", "Hdelta_A", "NaD"]
    out = {}
    for fn in ("spec-0266-51602-0001", "spec-0266-51630-0623"):
        s = read_spec(os.path.join(ROOT, "tests", "data", "sdss", fn + ".fits"))
        for run in (2, 4, 5):
            ri, rs = [], []
            for n in names:
                ref, err = lick_indices(s.wave, s.flux, s.z, s.ivar, names=[n])[n]
                _, (b0, _), (_, r1), _ = LICK_BANDS[n]
                k0, k1 = np.searchsorted(s.wave, [b0 * (1 + s.z), r1 * (1 + s.z)])
                di, ds = [], []
                for k in range(k0, k1 - run):
                    iv = s.ivar.copy()
                    iv[k:k + run] = 0.0
                    di.append(lick_indices(s.wave, s.flux, s.z, iv, names=[n])[n][0] - ref)
                    ds.append(lick_indices(s.wave, s.flux, s.z, iv, names=[n], max_interp=0,
                                           min_good=0.5)[n][0] - ref)
                ri.append(np.sqrt(np.mean(np.square(di))) / err)
                rs.append(np.sqrt(np.nanmean(np.square(ds))) / err)
            out[f"{fn[5:]}_run{run}"] = {"indices": names, "rms_over_err_interp": [round(x, 2) for x in ri],
                                         "rms_over_err_skip": [round(x, 2) for x in rs]}
    return out


def _round(x):
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(f"{x:.5g}")
    return x


def main():
    t0 = time.perf_counter()
    rows, tally = [], {"before": {}, "after": {}}
    for p in spectra_paths():
        ref = references(p)
        row = {"file": os.path.basename(p), "ref": ref}
        for when in ("before", "after"):
            m = measure(p, when == "after")
            m["bpt_name"] = BPT_NAMES[m["bpt"]]
            m["agree"] = agreement(m, ref)
            m["n_indices_finite"] = int(sum(np.isfinite(m[k]) for k in ("Dn4000", *READOUT_LICK)))
            row[when] = m
            t = tally[when]
            for k, v in m["agree"].items():
                if v is not None:
                    t.setdefault(k, [0, 0])
                    t[k][0] += int(v)
                    t[k][1] += 1
            t.setdefault("indices_finite", [0, 0])
            t["indices_finite"][0] += m["n_indices_finite"]
            t["indices_finite"][1] += 1 + len(READOUT_LICK)
        rows.append(row)
    for t in tally.values():
        t["total_agree"] = [sum(v[0] for k, v in t.items() if k != "indices_finite"),
                            sum(v[1] for k, v in t.items() if k != "indices_finite")]
    out = {"n_spectra": len(rows), "tally_agree_of_compared": tally, "spectra": rows,
           "interpolation": interpolation_robustness(),
           "seconds": round(time.perf_counter() - t0, 1), "n_cpu": os.cpu_count()}
    print(json.dumps(_round(out)))


if __name__ == "__main__":
    main()
