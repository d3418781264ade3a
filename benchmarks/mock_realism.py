"""Realism statistics of a mock survey file against the SDSS facts (docs/MOCK.md, "Realism table").

``python benchmarks/mock_realism.py SURVEY.h5 [--json OUT.json] [--compare OLD.json]`` prints JSON with every
quantity of the
realism table, computed from the catalogue (noiseless truth columns) and the images (sky noise). It needs only
the survey file, so it also measures surveys written by older versions of the mock (columns a version lacks
are reported as null).

Definitions (chosen to match how the SDSS numbers were measured, see docs/MOCK.md):

- absolute magnitude M_r = mag_r - DM(z) - 2.5 log10(1+z) (Planck18; no colour k-correction), so colours are
  observed-frame, as in Strateva et al. (2001) and close to Baldry et al. (2004) at z ~ 0.1;
- red / blue: u - r above / below 2.22 (Strateva 2001); peak colour = median of each side in an M_r bin;
- red-sequence scatter: u - r residuals about a straight colour-magnitude fit of the red galaxies
  (2.22 < u-r < 3.5), -23 < M_r < -20, with a linear redshift term, at z < 0.1 and z > 0.1:
  ``sigma`` from the red side of the peak
  (median of the residuals above the mode / 0.6745; the green valley inflates the blue side, which
  Baldry et al. 2004 separate with a double-Gaussian fit) and, for reference, the NMAD of all of them;
- Hdelta_A spread at fixed Dn4000: 1.4826 x MAD of Hdelta_A in Dn4000 bins of 0.1 between 1.1 and 2.0
  (mean over bins with >= 20 galaxies), of the noiseless truth columns and, as SDSS measures it, of both
  indices measured (analysis.indices) on the noisy observed spectra of the first 2000 galaxies;
- strict post-starburst (E+A): Hdelta_A > 5 A and EW(Halpha) emission < 3 A (Goto 2007-like);
- BPT (a) all four lines S/N >= 3 (Kauffmann 2003 / Kewley 2001); (b) Brinchmann et al. (2004) scheme:
  low-S/N star-forming / low-S/N AGN from [NII]/Halpha alone (both S/N >= 2; log < -0.4 star-forming) when
  Hbeta or [OIII] is weak; unclassifiable otherwise;
- sky noise: 1.4826 x MAD of the outer 4-pixel frame of every cutout, median over cutouts (nanomaggies/px);
- neighbours: catalogue columns ``n_neighbours`` / ``nb_min_sep_arcsec`` / ``has_bright_star`` when present;
  overlapping = nearest neighbour within 6" (its light overlaps the target's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _nmad(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) > 2 else None


def _r(x, n=3):
    return None if x is None else round(float(x), n)


def absolute_r(mag_r, z):
    from astropy.cosmology import Planck18

    dm = Planck18.distmod(np.asarray(z)).value
    return mag_r - dm - 2.5 * np.log10(1 + z)


def bpt_stats(c) -> dict:
    x = np.log10(np.clip(c["flux_nii_6584"], 1e-30, None) / np.clip(c["flux_ha"], 1e-30, None))
    y = np.log10(np.clip(c["flux_oiii_5007"], 1e-30, None) / np.clip(c["flux_hb"], 1e-30, None))
    sn = {k: c[f"snr_{k}"] for k in ("hb", "oiii_5007", "ha", "nii_6584")}
    all4 = np.all([v >= 3 for v in sn.values()], axis=0)
    ka = np.where(x < 0.05, 0.61 / (x - 0.05) + 1.30, -np.inf)
    ke = np.where(x < 0.47, 0.61 / (x - 0.47) + 1.19, -np.inf)
    cls = np.where(y > ke, 2, np.where(y > ka, 1, 0))
    n4 = max(int(all4.sum()), 1)
    out = {
        "frac_all4_snr3": float(all4.mean()),
        "of_all4": {
            "sf": float((all4 & (cls == 0)).sum() / n4),
            "composite": float((all4 & (cls == 1)).sum() / n4),
            "agn": float((all4 & (cls == 2)).sum() / n4),
        },
    }
    out["of_all4"]["composite_plus_agn"] = out["of_all4"]["composite"] + out["of_all4"]["agn"]
    n2ok = (sn["ha"] >= 2) & (sn["nii_6584"] >= 2) & ~all4
    lowsf = n2ok & (x < -0.4)
    lowagn = n2ok & (x >= -0.4)
    out["brinchmann"] = {
        "sf": float((all4 & (cls == 0)).mean()),
        "low_sn_sf": float(lowsf.mean()),
        "composite": float((all4 & (cls == 1)).mean()),
        "agn": float((all4 & (cls == 2)).mean()),
        "low_sn_agn": float(lowagn.mean()),
        "unclassifiable": float((~all4 & ~n2ok).mean()),
    }
    # mixing sequence: classifiable galaxies between the two demarcations should not be a gap
    out["agn_frac_quartiles_composite"] = (
        [_r(q) for q in np.percentile(c["agn_frac"][all4 & (cls == 1)], [25, 50, 75])]
        if "agn_frac" in c and (all4 & (cls == 1)).sum() > 5
        else None
    )
    return out


def ew_halpha(wave, model, c):
    """Emission EW(Halpha) (A, rest) from the catalogue line flux over the model continuum next to it."""
    z = c["z"]
    lo = 6564.61 * (1 + z)
    ew = np.full(len(z), np.nan)
    for i in range(len(z)):
        side = (np.abs(wave - lo[i]) > 25 * (1 + z[i])) & (np.abs(wave - lo[i]) < 60 * (1 + z[i]))
        if side.sum() > 5:
            ew[i] = c["flux_ha"][i] / np.median(model[i, side]) / (1 + z[i])
    return ew


def sky_sigma(images) -> list:
    frame = np.ones(images.shape[-2:], bool)
    frame[4:-4, 4:-4] = False
    px = images[:, :, frame]  # (N, 5, n_frame)
    med = np.median(px, axis=2, keepdims=True)
    s = 1.4826 * np.median(np.abs(px - med), axis=2)
    return [_r(v, 4) for v in np.median(s, axis=0)]


def _load(path, max_images: int):
    """Catalogue, first ``max_images`` images, models, first observed spectra (and their count),
    wavelength and file attributes."""
    with h5py.File(path, "r") as f:
        c = {k: f["catalog"][k][:] for k in f["catalog"]}
        n_img = min(max_images, f["images"].shape[0])
        images = f["images"][:n_img]
        model = f["spectra/model"][:]
        n_meas = min(max_images, len(model))
        obs_flux, obs_ivar = f["spectra/flux"][:n_meas], f["spectra/ivar"][:n_meas]
        wave = 10 ** f["spectra/loglam"][:]
        attrs = dict(f.attrs)
    return c, images, model, obs_flux, obs_ivar, n_meas, wave, attrs


def _z_stats(z, r) -> dict:
    """Redshift distribution, bright nearby galaxies and the NMAD of predicting the median z."""
    return {
        "min": _r(z.min(), 4),
        "p05": _r(np.percentile(z, 5)),
        "median": _r(np.median(z)),
        "p95": _r(np.percentile(z, 95)),
        "max": _r(z.max()),
        "frac_lt_0.05": _r(np.mean(z < 0.05)),
        "frac_gt_0.2": _r(np.mean(z > 0.2)),
        "frac_0.03_0.2": _r(np.mean((z > 0.03) & (z < 0.2))),
        "frac_r_lt_16_at_z_lt_0.05": _r(np.mean(r[z < 0.05] < 16)) if (z < 0.05).any() else None,
        # predicting the median redshift vs. the spread: sigma_NMAD of (z - median)/(1+z)
        "nmad_dz_median_prediction": _nmad((z - np.median(z)) / (1 + z)),
    }


def _r_counts(r) -> dict:
    """Differential number counts slope d log N / d m in 15.0-17.5 and the r distribution."""
    bins = np.arange(15.0, 17.51, 0.5)
    h, _ = np.histogram(r, bins)
    slope = np.polyfit(0.5 * (bins[1:] + bins[:-1]), np.log10(np.clip(h, 1, None)), 1)[0]
    return {
        "dlogN_dm_15_17.5": _r(slope),
        "frac_r_lt_16": _r(np.mean(r < 16)),
        "median_r": _r(np.median(r)),
        "min_r": _r(r.min()),
    }


def _colour_stats(ur, gr, mr, z, red) -> dict:
    """Red fraction, red/blue peak colours in two M_r bins and the red-sequence scatter."""
    col = {"red_fraction_ur_2.22": _r(red.mean())}
    for lo, hi in ((-20, -21), (-21, -22)):
        sel = (mr <= lo) & (mr > hi)
        key = f"Mr_{lo}_{hi}"
        col[key] = {
            "n": int(sel.sum()),
            "red_frac": _r(red[sel].mean()),
            "ur_red": _r(np.median(ur[sel & red])),
            "ur_blue": _r(np.median(ur[sel & ~red])),
            "gr_red": _r(np.median(gr[sel & red])),
            "gr_blue": _r(np.median(gr[sel & ~red])),
        }
    rs = red & (ur < 3.5) & (mr < -20) & (mr > -23)
    # colour-magnitude relation with a linear redshift term (observed-frame colours redden with z)
    a_ = np.stack([np.ones(rs.sum()), mr[rs], z[rs]], 1)
    coef = np.linalg.lstsq(a_, ur[rs], rcond=None)[0]
    cmr = coef[0] + coef[1] * mr + coef[2] * z
    for name, zs in (("z_lt_0.1", z < 0.1), ("z_gt_0.1", z >= 0.1)):
        s = rs & zs
        if s.sum() > 20:
            res_ = ur[s] - cmr[s]
            col[f"red_seq_nmad_ur_{name}"] = _r(_nmad(res_))
            h_, e_ = np.histogram(res_, np.arange(-0.6, 0.8, 0.04))
            mode = e_[np.argmax(h_)] + 0.02
            col[f"red_seq_sigma_ur_{name}"] = _r(np.median(res_[res_ > mode] - mode) / 0.6745)
    return col


def _spread(dn_, hd_) -> list:
    """NMAD of Hdelta_A in Dn4000 bins of 0.1 between 1.1 and 2.0 (bins with >= 20 galaxies)."""
    out = []
    for lo in np.arange(1.1, 2.0, 0.1):
        s = (dn_ >= lo) & (dn_ < lo + 0.1)
        if s.sum() >= 20:
            out.append(_nmad(hd_[s]))
    return out


def _dn4000_hdelta(c, wave, model, obs_flux, obs_ivar, n_meas: int) -> tuple[dict, dict]:
    """The Dn4000 and Hdelta_A sections: noiseless truth columns and indices measured on the noisy spectra."""
    z = c["z"]
    dn, hd = c["dn4000"], c["lick_Hdelta_A"]
    hb = np.arange(1.0, 2.31, 0.05)
    hist, _ = np.histogram(dn, hb)
    young, old = hb[:-1] < 1.55, hb[:-1] >= 1.55
    spreads = _spread(dn, hd)
    # as SDSS measures them: on the noisy observed spectra (first n_meas galaxies)
    from analysis.indices import dn4000, lick_indices

    zz = z[:n_meas]
    dn_obs = dn4000(wave, obs_flux.astype(np.float64), zz, obs_ivar.astype(np.float64))[0]
    hd_obs = lick_indices(
        wave, obs_flux.astype(np.float64), zz, obs_ivar.astype(np.float64), names=["Hdelta_A"]
    )["Hdelta_A"][0]
    spreads_obs = _spread(np.asarray(dn_obs), np.asarray(hd_obs))
    hist_obs, _ = np.histogram(np.asarray(dn_obs), hb)
    ew = ew_halpha(wave, model, c)
    dn_stats = {
        "peak_young": _r(hb[:-1][young][np.argmax(hist[young])] + 0.025),
        "peak_old": _r(hb[:-1][old][np.argmax(hist[old])] + 0.025),
        "max_frac_in_0.05_bin": _r(hist.max() / len(dn)),
        "peak_young_measured_noisy": _r(hb[:-1][young][np.argmax(hist_obs[young])] + 0.025),
        "peak_old_measured_noisy": _r(hb[:-1][old][np.argmax(hist_obs[old])] + 0.025),
        "median_gt_1.6": _r(np.median(dn[dn > 1.6])),
        "frac_1.20_1.25": _r(np.mean((dn >= 1.2) & (dn < 1.25))),
        "frac_lt_1.55": _r(np.mean(dn < 1.55)),
    }
    hd_stats = {
        "p95_dn_lt_1.3": _r(np.percentile(hd[dn < 1.3], 95)) if (dn < 1.3).sum() > 5 else None,
        "median_dn_lt_1.3": _r(np.median(hd[dn < 1.3])) if (dn < 1.3).sum() > 5 else None,
        "median_dn_gt_1.8": _r(np.median(hd[dn > 1.8])) if (dn > 1.8).sum() > 5 else None,
        "max": _r(hd.max()),
        "spread_nmad_at_fixed_dn4000": _r(np.mean(spreads)),
        "spread_nmad_at_fixed_dn4000_measured_noisy": _r(np.mean(spreads_obs)),
        "frac_post_starburst_strict": _r(np.mean((hd > 5) & (ew < 3)), 4),
        "frac_hdA_gt_5": _r(np.mean(hd > 5), 4),
    }
    return dn_stats, hd_stats


def _sigma_v_stats(c, red) -> dict:
    """Velocity dispersion distribution, of ellipticals (red galaxies without morphology) and blue ones."""
    sv = c["sigma_v"]
    ell = (c["morphology"] == 0) if "morphology" in c else red
    hs, _ = np.histogram(sv, np.arange(0, 500, 2))
    return {
        "median": _r(np.median(sv), 1),
        "p05": _r(np.percentile(sv, 5), 1),
        "p95": _r(np.percentile(sv, 95), 1),
        "max": _r(sv.max(), 1),
        "median_ellipticals": _r(np.median(sv[ell]), 1),
        "p95_ellipticals": _r(np.percentile(sv[ell], 95), 1),
        "median_blue": _r(np.median(sv[~red]), 1),
        "max_frac_in_2kms_bin": _r(hs.max() / len(sv), 4),
    }


def _neighbour_stats(c) -> dict:
    """Neighbours in the cutouts (and, when the catalogue has them, separations and bright stars)."""
    nb = {
        "frac_with_neighbour": _r(
            np.mean(c["n_neighbours"] > 0) if "n_neighbours" in c else np.mean(c["has_neighbour"] > 0)
        )
    }
    if "nb_min_sep_arcsec" in c:
        sep = c["nb_min_sep_arcsec"]
        has = np.isfinite(sep)
        nb.update(
            {
                "mean_n_neighbours": _r(np.mean(c["n_neighbours"])),
                "frac_overlapping_sep_lt_6arcsec": _r(np.mean(has & (sep < 6.0))),
                "min_sep_arcsec": _r(np.nanmin(sep) if has.any() else None),
                "frac_bright_star": _r(np.mean(c["has_bright_star"]), 4),
            }
        )
    return nb


def realism(path, max_images: int = 2000) -> dict:
    c, images, model, obs_flux, obs_ivar, n_meas, wave, attrs = _load(path, max_images)
    z, r = c["z"], c["mag_r"]
    ur = c["mag_u"] - c["mag_r"]
    gr = c["mag_g"] - c["mag_r"]
    mr = absolute_r(r, z)
    red = ur > 2.22
    res = {
        "file": str(path),
        "n": int(len(z)),
        "mock_version": int(attrs.get("mock_version", 1)),
        "seed": int(attrs.get("seed", -1)),
    }
    res["z"] = _z_stats(z, r)
    res["r_counts"] = _r_counts(r)
    res["colours"] = _colour_stats(ur, gr, mr, z, red)
    res["dn4000"], res["hdelta"] = _dn4000_hdelta(c, wave, model, obs_flux, obs_ivar, n_meas)
    res["sigma_v"] = _sigma_v_stats(c, red)
    res["bpt"] = bpt_stats(c)
    res["sky_sigma_nmgy_ugriz"] = sky_sigma(images)
    res["neighbours"] = _neighbour_stats(c)
    return res


def _g(d, path):
    for k in path.split("/"):
        if d is None or k not in d:
            return None
        d = d[k]
    return d


def _f(v, fmt="{:.2f}"):
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "/".join(_f(x, fmt) for x in v)
    return fmt.format(v)


# (quantity, SDSS fact with its source (docs/MOCK.md), [(label, json path, format), ...])
TABLE = [
    (
        "redshift median (5-95 %)",
        "~0.10; ~0.03-0.2 (Strauss+02)",
        [("", "z/median", "{:.3f}"), (" (", "z/p05", "{:.3f}"), ("-", "z/p95", "{:.3f}"), (")", None, "")],
    ),
    (
        "redshift range; fraction 0.03-0.2",
        "~0.01-0.3; most (Strauss+02)",
        [("", "z/min", "{:.3f}"), ("-", "z/max", "{:.2f}"), ("; ", "z/frac_0.03_0.2", "{:.2f}")],
    ),
    (
        "r < 16 among z < 0.05",
        "bright galaxies present (Strauss+02)",
        [("", "z/frac_r_lt_16_at_z_lt_0.05", "{:.2f}")],
    ),
    (
        "spread of z about its median, NMAD of dz/(1+z)",
        "(for the issue's 'predict the median' baseline)",
        [("", "z/nmad_dz_median_prediction", "{:.3f}")],
    ),
    (
        "r counts d log N / dm (15-17.5); frac r < 16",
        "~0.5-0.6 (Yasuda+01, ~); ~0.1",
        [("", "r_counts/dlogN_dm_15_17.5", "{:.2f}"), ("; ", "r_counts/frac_r_lt_16", "{:.3f}")],
    ),
    ("red fraction (u-r > 2.22)", "~half (Strateva+01)", [("", "colours/red_fraction_ur_2.22", "{:.2f}")]),
    (
        "u-r blue / red peak, M_r -20..-21",
        "1.6-2.0 / 2.5-2.8 (Baldry+04)",
        [("", "colours/Mr_-20_-21/ur_blue", "{:.2f}"), (" / ", "colours/Mr_-20_-21/ur_red", "{:.2f}")],
    ),
    (
        "u-r blue / red peak, M_r -21..-22",
        "1.6-2.0 / 2.5-2.8, redder (Baldry+04)",
        [("", "colours/Mr_-21_-22/ur_blue", "{:.2f}"), (" / ", "colours/Mr_-21_-22/ur_red", "{:.2f}")],
    ),
    (
        "g-r blue / red, M_r -20..-21",
        "~0.45-0.7 / ~0.8-1.0 observed at z~0.1 (Blanton+03, Strateva+01, ~)",
        [("", "colours/Mr_-20_-21/gr_blue", "{:.2f}"), (" / ", "colours/Mr_-20_-21/gr_red", "{:.2f}")],
    ),
    (
        "g-r blue / red, M_r -21..-22",
        "~0.45-0.7 / ~0.8-1.05 (~)",
        [("", "colours/Mr_-21_-22/gr_blue", "{:.2f}"), (" / ", "colours/Mr_-21_-22/gr_red", "{:.2f}")],
    ),
    (
        "red-sequence u-r scatter z<0.1 / z>0.1 (sigma; NMAD)",
        "~0.1-0.15 at all z (Baldry+04)",
        [
            ("", "colours/red_seq_sigma_ur_z_lt_0.1", "{:.2f}"),
            (" / ", "colours/red_seq_sigma_ur_z_gt_0.1", "{:.2f}"),
            ("; ", "colours/red_seq_nmad_ur_z_lt_0.1", "{:.2f}"),
            (" / ", "colours/red_seq_nmad_ur_z_gt_0.1", "{:.2f}"),
        ],
    ),
    (
        "Dn4000 peaks young / old: noiseless; measured; median of Dn > 1.6",
        "~1.3 (broad) / ~1.85 (Kauffmann+03)",
        [
            ("", "dn4000/peak_young", "{:.3f}"),
            (" / ", "dn4000/peak_old", "{:.3f}"),
            ("; ", "dn4000/peak_young_measured_noisy", "{:.3f}"),
            (" / ", "dn4000/peak_old_measured_noisy", "{:.3f}"),
            ("; ", "dn4000/median_gt_1.6", "{:.2f}"),
        ],
    ),
    (
        "Dn4000: largest fraction in one 0.05 bin",
        "broad peak, no spike",
        [("", "dn4000/max_frac_in_0.05_bin", "{:.3f}")],
    ),
    (
        "Hdelta_A young (Dn<1.3: median, 95 %) / old (Dn>1.8)",
        "~+6-7 A young to ~-2 A old (Kauffmann+03)",
        [
            ("", "hdelta/median_dn_lt_1.3", "{:.1f}"),
            (", ", "hdelta/p95_dn_lt_1.3", "{:.1f}"),
            (" / ", "hdelta/median_dn_gt_1.8", "{:.1f}"),
        ],
    ),
    (
        "Hdelta_A spread at fixed Dn4000: noiseless; measured",
        "~1-2 A (Kauffmann+03, measured)",
        [
            ("", "hdelta/spread_nmad_at_fixed_dn4000", "{:.2f}"),
            ("; ", "hdelta/spread_nmad_at_fixed_dn4000_measured_noisy", "{:.2f}"),
        ],
    ),
    (
        "strict post-starburst (Hd_A > 5 A, EW(Ha) < 3 A)",
        "~0.1-1 % (Goto 07, ~)",
        [("", "hdelta/frac_post_starburst_strict", "{:.4f}")],
    ),
    (
        "sigma_v median ellipticals (95 %); max",
        "~150-200, to ~350 km/s",
        [
            ("", "sigma_v/median_ellipticals", "{:.0f}"),
            (" (", "sigma_v/p95_ellipticals", "{:.0f}"),
            ("); ", "sigma_v/max", "{:.0f}"),
        ],
    ),
    (
        "sigma_v median of blue galaxies",
        "late types mostly < ~100 km/s",
        [("", "sigma_v/median_blue", "{:.0f}")],
    ),
    (
        "sigma_v largest fraction in one 2 km/s bin",
        "continuous, no pile-up",
        [("", "sigma_v/max_frac_in_2kms_bin", "{:.3f}")],
    ),
    ("BPT: all four lines S/N >= 3", "~40-50 % (Brinchmann+04)", [("", "bpt/frac_all4_snr3", "{:.2f}")]),
    (
        "BPT of those: SF / composite / AGN",
        "~0.60 / ~0.20 / ~0.20 (Kauffmann+03)",
        [
            ("", "bpt/of_all4/sf", "{:.2f}"),
            (" / ", "bpt/of_all4/composite", "{:.2f}"),
            (" / ", "bpt/of_all4/agn", "{:.2f}"),
        ],
    ),
    (
        "BPT with low-S/N classes: unclassifiable",
        "~30-35 % (Brinchmann+04)",
        [("", "bpt/brinchmann/unclassifiable", "{:.2f}")],
    ),
    (
        "BPT with low-S/N classes: SF, low-S/N SF, comp, AGN, low-S/N AGN",
        "(Brinchmann+04 scheme)",
        [
            ("", "bpt/brinchmann/sf", "{:.2f}"),
            (", ", "bpt/brinchmann/low_sn_sf", "{:.2f}"),
            (", ", "bpt/brinchmann/composite", "{:.2f}"),
            (", ", "bpt/brinchmann/agn", "{:.2f}"),
            (", ", "bpt/brinchmann/low_sn_agn", "{:.2f}"),
        ],
    ),
    (
        "AGN share of fibre Halpha in composites (quartiles)",
        "mixing sequence (Kauffmann+03)",
        [("", "bpt/agn_frac_quartiles_composite", "{:.2f}")],
    ),
    (
        "sky noise per pixel u/g/r/i/z [nanomaggy]",
        "r ~0.025-0.03 (from sky, 53.9 s, gain)",
        [("", "sky_sigma_nmgy_ugriz", "{:.3f}")],
    ),
    (
        "cutouts with >= 1 other source",
        "roughly half (~)",
        [("", "neighbours/frac_with_neighbour", "{:.2f}")],
    ),
    (
        'nearest neighbour within 6" (overlapping); bright star',
        "some; now and then",
        [
            ("", "neighbours/frac_overlapping_sep_lt_6arcsec", "{:.2f}"),
            ("; ", "neighbours/frac_bright_star", "{:.3f}"),
        ],
    ),
]


def markdown_rows(new: dict, old: dict) -> str:
    """The realism table (quantity | SDSS fact | mock v2 | mock v1) from two result dicts."""
    out = ["| quantity | SDSS fact (source) | mock v2 | mock v1 |", "|---|---|---|---|"]
    for name, fact, parts in TABLE:
        cells = []
        for res in (new, old):
            txt = ""
            for lab, path, fmt in parts:
                txt += lab + ("" if path is None else _f(_g(res, path), fmt))
            cells.append(txt)
        out.append(f"| {name} | {fact} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument(
        "--compare", default=None, help="JSON of another survey (mock v1): print the markdown table"
    )
    a = ap.parse_args(argv)
    if not Path(a.survey).exists():
        print(f"mock_realism: {a.survey}: file does not exist", file=sys.stderr)
        return 2
    res = realism(a.survey)
    txt = json.dumps(res, indent=1)
    print(txt)
    if a.json:
        Path(a.json).write_text(txt + "\n")
    if a.compare:
        print(markdown_rows(res, json.loads(Path(a.compare).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
