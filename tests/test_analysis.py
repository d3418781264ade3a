"""Tests of the spectroscopic toolbox (analysis/) on real SDSS fixtures and synthetic spectra."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from analysis import (
    BPT_NAMES,
    LICK_BANDS,
    classify,
    classify_fit,
    d4000,
    dn4000,
    fit_redshift,
    fit_redshifts,
    fit_spectrum,
    lick_indices,
)
from analysis.bpt import AGN, BPT_LINES, COMPOSITE, STAR_FORMING, UNCLASSIFIED
from analysis.indices import BREAK_BANDS, fill_short_gaps
from analysis.redshift import ZW_NODATA
from datasets.sdss_spec import ANY_BIT_MASK, SPPIXMASK, read_spec

DATA = os.path.join(os.path.dirname(__file__), "data", "sdss")
LITE = ["spec-0266-51602-0573", "spec-0266-51630-0623", "spec-1045-52725-0628", "spec-0266-51602-0001"]


@functools.cache
def spec(name):
    return read_spec(os.path.join(DATA, name + ".fits"))


@functools.cache
def fit(name):
    s = spec(name)
    return fit_spectrum(s.wave, s.flux, s.z, s.ivar)


def preprocess(s):
    """The paper's preprocessing: 4000-8500 A, 1 A cubic spline, sigma 2 A smoothing, mean 1 in 6900-6950."""
    w = s.wave
    keep = (w > 4000) & (w < 8500)
    grid = np.arange(4000.0, 8500.0)                       # round(min)..round(max): 4500 points
    f = CubicSpline(w[keep], s.flux[keep])(grid)
    f = gaussian_filter1d(f, 2.0)
    f /= f[(grid >= 6900) & (grid <= 6950)].mean()
    return grid, f


# ---------------------------------------------------------------- redshift
@pytest.mark.parametrize("name", LITE)
def test_redshift_matches_pipeline(name):
    s = spec(name)
    r = fit_redshift(s.wave, s.flux, s.ivar)
    assert r.zwarning == 0, r.message
    assert abs(r.z - s.z) < 1e-3
    assert 0 < r.z_err < 1e-3


@pytest.mark.parametrize("name", LITE)
def test_redshift_without_ivar(name):
    s = spec(name)
    r = fit_redshift(s.wave, s.flux)
    assert abs(r.z - s.z) < 1e-3


def test_redshift_boss_out_of_range_is_flagged():
    s = spec("spec-3586-55181-0003")            # z = 0.59, ZWARNING = 4 in the pipeline, outside 0-0.35
    assert s.meta["HDU2"] == "SPALL"
    r = fit_redshift(s.wave, s.flux, s.ivar)
    assert r.zwarning != 0 and r.message
    assert not r.ok


def test_redshift_no_coverage_is_nodata():
    w = np.linspace(3000.0, 3300.0, 300)
    r = fit_redshift(w, np.ones_like(w))
    assert r.zwarning & ZW_NODATA and np.isnan(r.z) and "wave" in r.message


def test_redshift_batch_equals_single():
    s = spec("spec-1045-52725-0628")
    grid, f = preprocess(s)
    batch = fit_redshifts(grid, np.vstack([f, 1.1 * f]))
    one = fit_redshift(grid, f)
    assert batch[0].z == pytest.approx(one.z, abs=1e-7)
    assert batch[1].z == pytest.approx(one.z, abs=1e-7)


# ---------------------------------------------------------------- pPXF
@pytest.mark.parametrize("name,tol", [("spec-0266-51602-0573", 0.15), ("spec-0266-51602-0001", 0.15),
                                      ("spec-1045-52725-0628", 0.15), ("spec-0266-51630-0623", 0.15)])
def test_sigma_matches_vdisp(name, tol):
    # 0623 is a BROADLINE AGN, but its host's stellar absorption lines are still well measured
    r = fit(name)
    vd = spec(name).meta["VDISP"]
    assert r.success, r.message
    assert abs(r.sigma_v - vd) / vd < tol
    assert 0 < r.sigma_v_err < 0.3 * r.sigma_v
    assert 0.5 < r.chi2_dof < 2.0
    assert 0.06 < r.age_lw < 18 and -0.8 < r.metallicity_lw < 0.3 and r.ebv >= 0


def test_starforming_fixture_is_bpt_star_forming():
    r = fit("spec-1045-52725-0628")
    L, E = r.lines, r.line_errors
    keys = ["[NII]6584", "Halpha", "[OIII]5007", "Hbeta"]
    code = classify(*[L[k] for k in keys], *[E[k] for k in keys])
    assert int(code) == STAR_FORMING, (BPT_NAMES[int(code)], {k: L[k] for k in keys})
    assert all(L[k] / E[k] > 10 for k in keys)
    # Balmer decrement above case B (dusty star-forming galaxy), below absurd
    assert 2.7 < L["Halpha"] / L["Hbeta"] < 10


def test_boss_fixture_fit_has_clear_outcome():
    s = spec("spec-3586-55181-0003")
    r = fit_spectrum(s.wave, s.flux, s.z, s.ivar)     # never raises
    assert isinstance(r.success, bool) and r.message
    assert r.library == "bc03"                        # rest frame starts at 2240 A: MIUSCAT cannot cover


def test_fit_out_of_template_range_fails_cleanly():
    w = np.linspace(4000, 4100, 200)
    r = fit_spectrum(w, np.ones_like(w), z=1.5)
    assert not r.success and "template range" in r.message


def test_preprocessed_spectrum_redshift_and_sigma():
    s = spec("spec-0266-51602-0001")
    grid, f = preprocess(s)
    assert grid.size == 4500 and grid[0] == 4000 and grid[-1] == 8499
    r = fit_redshift(grid, f, extra_sigma=2.0)
    assert abs(r.z - s.z) < 1e-3
    res = fit_spectrum(grid, f, r.z, extra_sigma=2.0)
    assert res.success, res.message
    assert abs(res.sigma_v - s.meta["VDISP"]) / s.meta["VDISP"] < 0.2


# ---------------------------------------------------------------- indices
def test_dn4000_of_a_step():
    # f_nu = 1 blueward of 3975 A and 1.7 redward (rest); f_lambda = f_nu / lambda^2
    z = 0.1
    wave = np.arange(3800.0, 4800.0, 0.5)
    rest = wave / (1 + z)
    fnu = np.where(rest < 3975.0, 1.0, 1.7)
    val, err = dn4000(wave, fnu / rest ** 2, z)
    assert val == pytest.approx(1.7, rel=1e-9)
    assert np.isnan(err)
    # flat f_lambda: ratio of <lambda^2> over the two bands, by hand
    (b0, b1), (r0, r1) = BREAK_BANDS["Dn4000"]
    expect = ((r1 ** 3 - r0 ** 3) / (r1 - r0)) / ((b1 ** 3 - b0 ** 3) / (b1 - b0))
    val, _ = dn4000(wave, np.ones_like(wave), z)
    assert val == pytest.approx(expect, rel=2e-4)
    assert 1.0 < d4000(wave, fnu / rest ** 2, z)[0] < 1.7 + 1e-9


def _gaussian_line_spectrum(name, ew, z, wave):
    (i0, i1), _, _, _ = LICK_BANDS[name]
    c = 0.5 * (i0 + i1)
    sig = 2.0
    rest = wave / (1 + z)
    return 1.0 - ew / (np.sqrt(2 * np.pi) * sig) * np.exp(-0.5 * ((rest - c) / sig) ** 2)


@pytest.mark.parametrize("name", ["Hbeta", "Mgb", "Fe5270", "NaD", "Hdelta_A"])
def test_lick_ew_of_gaussian_line(name):
    z = 0.08
    wave = np.arange(4000.0, 8500.0, 1.0)
    f = _gaussian_line_spectrum(name, 3.0, z, wave)
    val, _ = lick_indices(wave, f, z, names=[name])[name]
    assert val == pytest.approx(3.0, abs=0.01)


def test_lick_vectorised_matches_single_and_nan_outside():
    rng = np.random.default_rng(1)
    wave = np.arange(4000.0, 8500.0, 1.0)
    zs = rng.uniform(0.02, 0.15, 20)
    flux = np.vstack([_gaussian_line_spectrum("Mgb", 4.0, z, wave) for z in zs])
    flux *= rng.uniform(0.5, 2.0, (20, 1))
    out = lick_indices(wave, flux, zs)
    np.testing.assert_allclose(out["Mgb"][0], 4.0, atol=0.02)
    single = lick_indices(wave, flux[3], zs[3])
    for k in ("Mgb", "Fe5335", "Mg2", "NaD"):
        assert single[k][0] == pytest.approx(out[k][0][3], rel=1e-12)
    # bands outside 4000-8499 A observed give NaN, no crash: Dn4000 (blue band from 3851 A rest)
    # at z = 0.01, TiO2 (red band to 6417 A rest) at z = 0.4
    edge = lick_indices(wave, flux[:2], [0.01, 0.4], names=["TiO2", "Mgb"])
    dn = dn4000(wave, flux[:2], [0.01, 0.4])[0]
    assert np.isnan(dn[0]) and np.isfinite(dn[1])
    assert np.isfinite(edge["TiO2"][0][0]) and np.isnan(edge["TiO2"][0][1])
    assert np.all(np.isfinite(edge["Mgb"][0]))


def test_errors_scale_with_ivar():
    z = 0.05
    wave = 10 ** np.arange(np.log10(3800), np.log10(9000), 1e-4)
    f = _gaussian_line_spectrum("Fe5270", 2.0, z, wave)
    ivar = np.full_like(f, 100.0)
    a = lick_indices(wave, f, z, ivar=ivar, names=["Fe5270", "Mg2"])
    b = lick_indices(wave, f, z, ivar=4 * ivar, names=["Fe5270", "Mg2"])
    for k in a:
        assert a[k][1] > 0
        assert a[k][1] / b[k][1] == pytest.approx(2.0, rel=1e-9)
    d1, d2 = dn4000(wave, f, z, ivar)[1], dn4000(wave, f, z, 4 * ivar)[1]
    assert d1 / d2 == pytest.approx(2.0, rel=1e-9)
    # Monte Carlo check of the Fe5270 error
    rng = np.random.default_rng(0)
    noisy = f + rng.normal(0, 0.1, (400, f.size))
    vals = lick_indices(wave, noisy, z, names=["Fe5270"])["Fe5270"][0]
    assert np.std(vals) == pytest.approx(a["Fe5270"][1], rel=0.15)


def test_lick_on_real_spectrum_is_sensible():
    s = spec("spec-0266-51602-0001")
    out = lick_indices(s.wave, s.flux, s.z, s.ivar)
    mgb, err = out["Mgb"]
    assert 1.0 < mgb < 6.0 and 0 < err < 1.0
    assert 0.05 < out["Mg2"][0] < 0.4
    val, e = dn4000(s.wave, s.flux, s.z, s.ivar)
    assert 1.1 < val < 2.3 and 0 < e < 0.1


# ---------------------------------------------------------------- BPT
def test_bpt_classify_regions():
    # (x, y) points: SF, composite, AGN (Seyfert), AGN (LINER, x > 0.47)
    x = np.array([-0.6, -0.2, -0.2, 0.6])
    y = np.array([-0.3, -0.1, 0.9, 0.0])
    ha = np.ones(4)
    hb = np.ones(4)
    codes = classify(10 ** x, ha, 10 ** y, hb)
    assert codes.tolist() == [STAR_FORMING, COMPOSITE, AGN, AGN]
    # low S/N or missing line -> unclassified
    hb_err = np.array([0.1, 1.0, 0.1, 0.1])
    codes = classify(10 ** x, ha, 10 ** y, hb, 10 ** x / 10, ha / 10, 10 ** y / 10, hb_err)
    assert codes.tolist() == [STAR_FORMING, UNCLASSIFIED, AGN, AGN]
    assert classify(np.nan, 1.0, 1.0, 1.0) == UNCLASSIFIED


# ---------------------------------------------------------------- pixel mask (issue #11, item 8)
def _raw_columns(name):
    """flux, ivar and wavelength straight from the FITS file (no and_mask applied)."""
    from astropy.io import fits
    with fits.open(os.path.join(DATA, name + ".fits")) as h:
        d = h[1].data
        return (10.0 ** np.asarray(d["loglam"], float), np.asarray(d["flux"], float),
                np.asarray(d["ivar"], float))


def test_read_spec_masks_only_bits_that_mean_bad_data(tmp_path):
    from astropy.io import fits
    name = "spec-0266-51630-0623"
    with fits.open(os.path.join(DATA, name + ".fits")) as h:
        mask = np.asarray(h[1].data["and_mask"]).astype(np.int64)
        ivar = np.asarray(h[1].data["ivar"], float)
        # the file's own flags here are BRIGHTSKY only (informational): the pixels keep the file's ivar
        assert np.all(mask[mask != 0] == 1 << SPPIXMASK["BRIGHTSKY"]) and (mask != 0).sum() == 19
        np.testing.assert_array_equal(spec(name).ivar, ivar)
        assert (read_spec(os.path.join(DATA, name + ".fits"), bad_mask=ANY_BIT_MASK).ivar == 0).sum() == 19
        # bits that mean bad data drop the pixel, informational ones do not
        new = mask.copy()
        new[100:103] |= 1 << SPPIXMASK["FULLREJECT"]
        new[200] |= 1 << SPPIXMASK["BADSKYCHI"]
        new[300] |= 1 << SPPIXMASK["NODATA"]
        new[400:410] |= 1 << SPPIXMASK["NEARBADPIXEL"]
        new[500:510] |= (1 << SPPIXMASK["MANYBADCOLUMNS"]) | (1 << SPPIXMASK["SCATTEREDLIGHT"])
        h[1].data["and_mask"] = new.astype(h[1].data["and_mask"].dtype)
        out = tmp_path / "masked.fits"
        h.writeto(out)
    s = read_spec(out)
    dropped = np.flatnonzero(s.ivar == 0)
    assert dropped.tolist() == [100, 101, 102, 200, 300]
    np.testing.assert_array_equal(s.ivar[400:410], ivar[400:410])
    np.testing.assert_array_equal(s.and_mask, new)


def test_index_nan_before_the_mask_fix_is_now_finite_and_matches_file_ivar():
    """Fe5270 of 0623: the 5577 A sky line (BRIGHTSKY) sits in its blue continuum. Dropping every
    flagged pixel (the old read_spec) made it NaN; now it is finite and equals the index measured from
    the file's own flux/ivar columns, and its error carries the sky noise."""
    name = "spec-0266-51630-0623"
    s = spec(name)
    old = read_spec(os.path.join(DATA, name + ".fits"), bad_mask=ANY_BIT_MASK)
    before = lick_indices(old.wave, old.flux, old.z, old.ivar, names=["Fe5270"], max_interp=0)["Fe5270"]
    assert np.isnan(before[0])
    val, err = lick_indices(s.wave, s.flux, s.z, s.ivar, names=["Fe5270"])["Fe5270"]
    w, f, iv = _raw_columns(name)
    ref, ref_err = lick_indices(w, f, s.z, iv, names=["Fe5270"], max_interp=0)["Fe5270"]
    assert np.isfinite(val) and val == pytest.approx(ref, abs=1e-9) and err == pytest.approx(ref_err)
    assert 1.0 < val < 5.0 and 0 < err < 1.0
    # the indices of the other real spectra are all finite (none was before for 0623's Fe5270)
    for n in LITE[1:]:
        t = spec(n)
        out = lick_indices(t.wave, t.flux, t.z, t.ivar, names=["Hbeta", "Mgb", "Fe5270", "Fe5335", "Mg2"])
        assert all(np.isfinite(v[0]) for v in out.values()), (n, out)


def test_fill_short_gaps_interpolates_linearly_and_leaves_long_runs():
    wave = np.arange(20.0)
    flux = np.vstack([3.0 + 0.5 * wave, 3.0 + 0.5 * wave])
    var = np.vstack([np.full(20, 1.0), np.linspace(1.0, 2.0, 20)])
    good = np.ones((2, 20), bool)
    good[0, 4:7] = False        # run of 3: filled
    good[0, 10:16] = False      # run of 6: too long
    good[1, :2] = False         # at the edge: no left neighbour
    bad_flux = np.where(good, flux, -99.0)
    f, v, g, filled = fill_short_gaps(wave, bad_flux, var, good, max_interp=5)
    assert filled[0].nonzero()[0].tolist() == [4, 5, 6] and not filled[1].any()
    np.testing.assert_allclose(f[0, 4:7], flux[0, 4:7], rtol=1e-12)
    t = (wave[4:7] - 3.0) / 4.0
    np.testing.assert_allclose(v[0, 4:7], (1 - t) ** 2 + t ** 2)
    assert not g[0, 10:16].any() and not g[1, :2].any() and np.all(f[0, 10:16] == -99.0)
    f0, _, g0, filled0 = fill_short_gaps(wave, bad_flux, var, good, max_interp=0)
    assert not filled0.any() and np.array_equal(g0, good) and f0 is bad_flux


def test_indices_interpolate_short_masked_runs_analytic():
    """A smooth analytic spectrum (line + linear continuum) with short masked runs in the index and both
    continua gives the unmasked value (linear interpolation is exact there up to the line's curvature);
    a masked run longer than max_interp in a narrow band makes the index NaN."""
    z = 0.05
    wave = 10 ** np.arange(np.log10(3800), np.log10(9000), 1e-4)
    f = _gaussian_line_spectrum("Mgb", 3.0, z, wave) * (1.0 + 1e-4 * (wave - 5000.0))
    ivar = np.full_like(f, 400.0)
    ref = lick_indices(wave, f, z, ivar, names=["Mgb", "CN2"], return_interp=True)
    assert ref["Mgb"][2] == 0.0
    (i0, i1), (b0, b1), (r0, r1), _ = LICK_BANDS["Mgb"]
    iv = ivar.copy()
    for lam in (0.5 * (b0 + b1), i0 + 3.0, 0.5 * (r0 + r1)):       # 4-pixel runs in all three bands
        k = np.searchsorted(wave, lam * (1 + z))
        iv[k:k + 4] = 0.0
    got = lick_indices(wave, f, z, iv, names=["Mgb"], return_interp=True)["Mgb"]
    assert got[0] == pytest.approx(ref["Mgb"][0], abs=0.02) and 0.1 < got[2] < 0.3
    # without interpolation the 4-pixel hole in the 19 A blue continuum does not yet cost the band
    # (coverage >= 80 %), but the same hole in CN2's 12.5 A blue band does
    (cb0, cb1) = LICK_BANDS["CN2"][1]
    k = np.searchsorted(wave, 0.5 * (cb0 + cb1) * (1 + z))
    iv2 = ivar.copy()
    iv2[k - 2:k + 3] = 0.0                                          # 5 pixels ~ 5 A of 12.5 A
    assert np.isnan(lick_indices(wave, f, z, iv2, names=["CN2"], max_interp=0)["CN2"][0])
    assert lick_indices(wave, f, z, iv2, names=["CN2"])["CN2"][0] == pytest.approx(ref["CN2"][0], abs=2e-3)
    iv2[k - 6:k + 7] = 0.0                                          # 13 pixels: too long to fill -> NaN
    assert np.isnan(lick_indices(wave, f, z, iv2, names=["CN2"])["CN2"][0])
    d_ref = dn4000(wave, f, z, ivar)[0]
    kb = np.searchsorted(wave, 3900.0 * (1 + z))
    iv3 = ivar.copy()
    iv3[kb:kb + 5] = 0.0
    assert dn4000(wave, f, z, iv3)[0] == pytest.approx(d_ref, rel=1e-3)


def test_indices_interpolate_short_masked_runs_real():
    """Masking 4 good pixels at every position in the bands of a real spectrum keeps the index finite and
    moves it by an rms well below its 1-sigma error, and by less than skipping the pixels would."""
    s = spec("spec-0266-51602-0001")
    for n in ("Mgb", "Fe5270", "Hbeta"):
        ref, err = lick_indices(s.wave, s.flux, s.z, s.ivar, names=[n])[n]
        _, (b0, _), (_, r1), _ = LICK_BANDS[n]
        k0, k1 = np.searchsorted(s.wave, [b0 * (1 + s.z), r1 * (1 + s.z)])
        d_interp, d_skip = [], []
        for k in range(k0, k1 - 4):
            iv = s.ivar.copy()
            iv[k:k + 4] = 0.0
            d_interp.append(lick_indices(s.wave, s.flux, s.z, iv, names=[n])[n][0] - ref)
            skip = lick_indices(s.wave, s.flux, s.z, iv, names=[n], max_interp=0, min_good=0.5)[n][0]
            d_skip.append(skip - ref)
        rms_i, rms_s = np.sqrt(np.mean(np.square(d_interp))), np.sqrt(np.mean(np.square(d_skip)))
        assert np.isfinite(rms_i) and rms_i < 0.75 * err and rms_i < rms_s, (n, rms_i, rms_s, err)


# ---------------------------------------------------------------- gas at a pPXF bound (issue #11, item 8)
def test_classify_unreliable_lines_are_unclassified():
    x, y = np.array([-0.6, -0.2, 0.6]), np.array([-0.3, 0.9, 0.0])
    one = np.ones(3)
    assert classify(10 ** x, one, 10 ** y, one).tolist() == [STAR_FORMING, AGN, AGN]
    codes = classify(10 ** x, one, 10 ** y, one, unreliable=np.array([False, True, False]))
    assert codes.tolist() == [STAR_FORMING, UNCLASSIFIED, AGN]


def test_bound_hitting_gas_component_is_flagged_and_not_classified():
    """Broad (sigma 2500 km/s) fake lines added to the line-free LRG 0573 drive both pPXF gas components
    to the 1000 km/s bound. Their 'lines' have S/N > 3 and would read as an AGN; the fit flags them and
    the BPT does not classify from them."""
    s = spec("spec-0266-51602-0573")
    add = np.zeros_like(s.wave)
    for lam, amp in ((6564.6, 3.0), (6585.3, 3.0), (5008.2, 3.0), (4862.7, 1.5)):
        mu = lam * (1 + s.z)
        add += amp * np.exp(-0.5 * ((s.wave - mu) / (mu * 2500.0 / 299792.458)) ** 2)
    r = fit_spectrum(s.wave, s.flux + add, s.z, s.ivar)
    assert r.success and r.gas_at_bound == {"balmer": True, "forbidden": True}, r.gas_sigmas
    assert r.gas_sigmas["forbidden"] == pytest.approx(1000.0, rel=0.01)
    assert all(r.line_at_bound[k] for k in BPT_LINES) and "bound" in r.message
    naive = int(classify(*[r.lines[k] for k in BPT_LINES], *[r.line_errors[k] for k in BPT_LINES]))
    assert naive != UNCLASSIFIED                   # the S/N cut alone would have classified it
    assert classify_fit(r) == UNCLASSIFIED
    # the evaluation's population fits keep it out of the BPT as well
    from evaluation.measure import fit_populations
    out = fit_populations(s.wave, {"m": (s.flux + add)[None]}, {"m": np.array([s.z])}, {"m": s.ivar[None]},
                          workers=1)["m"]
    assert out["success"][0] and out["gas_at_bound"][0] and out["bpt_class"][0] == UNCLASSIFIED
    assert out["line_[NII]6584"][0] / out["line_err_[NII]6584"][0] > 3


def test_real_gas_components_are_not_flagged():
    r = fit("spec-1045-52725-0628")                # star-forming: narrow lines, sigma ~ 80 km/s
    assert r.gas_at_bound == {"balmer": False, "forbidden": False}
    assert 30 < r.gas_sigmas["balmer"] < 300 and 30 < r.gas_sigmas["forbidden"] < 300
    assert classify_fit(r) == STAR_FORMING
    assert classify_fit(fit("spec-0266-51602-0001")) == COMPOSITE
