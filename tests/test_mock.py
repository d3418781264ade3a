"""Physics and contract tests of the embedded mock SDSS survey (utils.mock, utils.make_mock)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from datasets.schema import sdss_loglam_grid, validate_survey
from utils.make_mock import main as make_mock_main
from utils.mock import simulate as S
from utils.mock.build import build_survey
from utils.mock.sed import LINES, calzetti_k, load_templates, rest_loglam, sfh_weights

N = 64


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    path = tmp_path_factory.mktemp("mock") / "mock.h5"
    build_survey(path, N, seed=3, n_val=8, test_fraction=0.1, workers=1, progress=False)
    with h5py.File(path, "r") as f:
        data = {"images": f["images"][:], "flux": f["spectra/flux"][:], "ivar": f["spectra/ivar"][:],
                "model": f["spectra/model"][:], "split": f["split"][:],
                "cat": {k: f["catalog"][k][:] for k in f["catalog"]}}
    return path, data


def _colours(z, age_start, tau=0.5, met=0.0):
    """Total g-r and u-r of a single-component galaxy (no dust) through the mock's photometry."""
    n = len(z)
    w, _, _ = sfh_weights(np.full(n, age_start), np.full(n, tau), np.zeros(n), np.full(n, met), np.ones(n))
    sed = w.astype(np.float32) @ load_templates()["flux"]
    mags = S.nmgy_to_mag(S.fnu_to_nmgy((sed[:, None, :] * S.band_weights(np.asarray(z))).sum(-1)))
    return mags[:, 1] - mags[:, 2], mags[:, 0] - mags[:, 2]


def test_colours_redden_with_age_and_redshift():
    z = np.full(4, 0.1)
    gr, ur = [], []
    for t in (1.0, 3.0, 6.0, 12.0):  # formation lookback time (older population)
        a, b = _colours(z[:1], t)
        gr.append(a[0])
        ur.append(b[0])
    assert np.all(np.diff(gr) > 0) and np.all(np.diff(ur) > 0), (gr, ur)
    gz, uz = _colours(np.array([0.05, 0.10, 0.15]), 10.0)  # an old SED: k-correction reddens g-r, u-r
    assert np.all(np.diff(gz) > 0) and np.all(np.diff(uz) > 0), (gz, uz)
    assert 0.6 < gz[1] < 1.2 and 2.2 < uz[1] < 3.3  # red-sequence colours at z = 0.1


def test_calzetti_reference_values():
    # k(lambda) of Calzetti et al. (2000) with R_V = 4.05: k(B=4400 A) - k(V=5500 A) = 1 by construction
    kb, kv = calzetti_k(np.array([4400.0, 5500.0]))
    assert abs((kb - kv) - 1.0) < 0.05 and abs(kv - 4.05) < 0.1


def test_templates_extended_smoothly():
    t = load_templates()
    w = 10 ** rest_loglam()
    j = np.searchsorted(w, 3327.5)  # just inside the first vacuum template pixel
    ratio = t["flux"][:, j - 3] / t["flux"][:, j + 3]
    assert np.all(np.isfinite(t["flux"])) and np.all(t["flux"] > 0)
    assert np.all(np.abs(np.log(ratio)) < 0.3)  # no jump at the blue edge of the BC03 coverage


def test_emission_lines_at_redshifted_vacuum_wavelengths(survey):
    _, d = survey
    wave = 10 ** sdss_loglam_grid()
    c = d["cat"]
    i = int(np.argmax(c["flux_ha"] / c["mag_r"]))  # strongest Halpha
    z = c["z"][i]
    model = d["model"][i].astype(float)
    for name in ("ha", "oiii_5007", "hb"):
        lam = LINES[name] * (1 + z)
        win = np.abs(wave - lam) < 12
        cont = np.median(model[(np.abs(wave - lam) > 25) & (np.abs(wave - lam) < 60)])
        peak = wave[win][np.argmax(model[win] - cont)]
        assert abs(peak - lam) < 1.5 * lam * 1e-4 * np.log(10) + 0.3, (name, peak, lam)
    # air wavelength would be 1.8 A off at Halpha: make sure we are not there by accident
    assert abs(LINES["ha"] - 6562.8) > 1.5


def test_bpt_class_matches_line_ratios(survey):
    _, d = survey
    c = d["cat"]
    x = np.log10(c["flux_nii_6584"] / c["flux_ha"])
    y = np.log10(c["flux_oiii_5007"] / c["flux_hb"])
    ok = np.all([c[f"snr_{q}"] >= 3 for q in ("hb", "oiii_5007", "ha", "nii_6584")], axis=0)
    assert np.array_equal(c["bpt_class"] == -1, ~ok)
    ka = np.where(x < 0.05, 0.61 / (x - 0.05) + 1.30, -np.inf)
    ke = np.where(x < 0.47, 0.61 / (x - 0.47) + 1.19, -np.inf)
    cls = c["bpt_class"]
    assert np.all(y[cls == 0] <= ka[cls == 0])
    assert np.all((y[cls == 1] > ka[cls == 1]) & (y[cls == 1] <= ke[cls == 1]))
    assert np.all(y[cls == 2] > ke[cls == 2])
    # fixed intrinsic doublet ratios (observed: + differential dust and fibre fraction, < 5 %)
    assert np.allclose(c["flux_oiii_5007"] / c["flux_oiii_4959"], 2.98, rtol=0.05)
    assert np.allclose(c["flux_nii_6584"] / c["flux_nii_6548"], 3.0, rtol=0.05)


def test_truth_indices_follow_stellar_age(survey):
    """The catalogue's Dn4000 and Lick indices agree with an independent measurement of the stored
    noiseless spectra, and they behave as stellar populations do: Balmer absorption (Hdelta_A) weakens and
    Mg b and the 4000 A break strengthen with light-weighted age."""
    from scipy.stats import spearmanr

    from analysis.indices import READOUT_LICK
    _, d = survey
    c = d["cat"]
    wave = 10 ** sdss_loglam_grid()
    # an independent measurement (not analysis.indices, which wrote the catalogue): the step-function
    # pixels supersampled on a 0.01 A rest-frame grid, plain means over the bands, the continuum line
    # evaluated on that grid (not at pixel centres: <= 0.02 A apart where strong emission lines sit in a band)
    from analysis.indices import BREAK_BANDS, LICK_BANDS
    model = d["model"].astype(np.float64)
    edges = np.r_[wave[0] - 0.5 * (wave[1] - wave[0]), 0.5 * (wave[1:] + wave[:-1]), wave[-1]]

    def band(lo, hi, fnu=False):
        lam = np.arange(lo + 0.005, hi, 0.01)[None, :]
        f = np.take_along_axis(model, np.searchsorted(edges, lam * (1 + c["z"][:, None])) - 1, axis=1)
        return lam, (f * lam ** 2 if fnu else f)

    fb, fr = band(*BREAK_BANDS["Dn4000"][0], True)[1], band(*BREAK_BANDS["Dn4000"][1], True)[1]
    np.testing.assert_allclose(c["dn4000"], fr.mean(1) / fb.mean(1), rtol=2e-4)
    for name in READOUT_LICK:
        (i0, i1), (b0, b1), (r0, r1), kind = LICK_BANDS[name]
        cb, cr = band(b0, b1)[1].mean(1), band(r0, r1)[1].mean(1)
        lam, fi = band(i0, i1)
        cont = cb[:, None] + (cr - cb)[:, None] * (lam - 0.5 * (b0 + b1)) / (0.5 * (r0 + r1 - b0 - b1))
        ratio = (fi / cont).mean(1)
        ref = (i1 - i0) * (1 - ratio) if kind == "A" else -2.5 * np.log10(ratio)
        np.testing.assert_allclose(c[f"lick_{name}"], ref, atol=0.02 if kind == "A" else 3e-4, err_msg=name)
    age = np.log10(c["age_lw"])
    assert spearmanr(age, c["lick_Hdelta_A"]).statistic < -0.5
    assert spearmanr(age, c["lick_Mgb"]).statistic > 0.5
    assert spearmanr(age, c["dn4000"]).statistic > 0.7


def test_fibre_and_magnitudes(survey):
    _, d = survey
    c = d["cat"]
    assert np.all((c["fibre_frac_r"] > 0) & (c["fibre_frac_r"] < 1))
    assert np.all(c["fibermag_r"] > c["mag_r"])
    assert np.all((c["mag_r"] > 14.0) & (c["mag_r"] < 17.77))
    assert np.all((c["z"] > 0.05) & (c["z"] < 0.15))
    assert 0.3 < np.median(c["fibermag_r"] - c["mag_r"]) < 2.5


def test_image_flux_matches_catalogue(survey):
    _, d = survey
    c = d["cat"]
    for b, band in enumerate("gri"):
        k = b + 1
        ok = c["has_neighbour"] == 0
        flux = d["images"][ok, k].sum((1, 2))
        cat = 10 ** ((22.5 - c[f"mag_{band}"][ok]) / 2.5)
        ratio = flux / cat
        # cutout aperture misses < ~10 % of very extended disks; noise is ~1 % at these fluxes
        assert 0.85 < np.median(ratio) < 1.03, (band, np.median(ratio))
        assert np.all(ratio > 0.6) and np.all(ratio < 1.15)


def test_spectrum_noise_and_ivar(survey):
    _, d = survey
    resid = (d["flux"] - d["model"]) * np.sqrt(d["ivar"])
    assert 0.9 < np.std(resid) < 1.1  # ivar = 1/variance of the noise actually added
    assert 5 < np.median(d["cat"]["snr_median"]) < 40


def test_file_valid_and_split(survey):
    path, d = survey
    info = validate_survey(path, check_values=True)
    assert info["n_galaxies"] == N
    assert info["split_counts"] == {"train": N - 8 - 6, "val": 8, "test": 6}
    with h5py.File(path, "r") as f:
        for col in f["catalog"]:
            assert "unit" in f["catalog"][col].attrs and f["catalog"][col].attrs["description"] != ""


def test_deterministic_blocks():
    a = S.simulate_block(5, 0, n=4)
    b = S.simulate_block(5, 0, n=4)
    c = S.simulate_block(6, 0, n=4)
    for k in ("images", "flux", "ivar", "model"):
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["flux"], c["flux"])
    assert not np.array_equal(a["images"], c["images"])


def test_workers_and_chunk_do_not_change_output(tmp_path):
    p1, p2 = tmp_path / "a.h5", tmp_path / "b.h5"
    build_survey(p1, 70, seed=1, n_val=5, workers=1, chunk=64, progress=False)
    build_survey(p2, 70, seed=1, n_val=5, workers=2, chunk=1000, progress=False)
    with h5py.File(p1, "r") as f, h5py.File(p2, "r") as g:
        for k in ("images", "spectra/flux", "spectra/ivar", "spectra/model", "split", "catalog/z"):
            assert np.array_equal(f[k][:], g[k][:]), k


@pytest.mark.parametrize("argv,msg", [
    (["--n", "0"], "--n: must be > 0"),
    (["--n", "-5"], "--n: must be > 0"),
    (["--n", "100"], "cannot hold --n-val 512"),
])
def test_bad_arguments(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_mock_main(argv + ["--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg in err
    with pytest.raises(ValueError, match="must be > 0|cannot hold"):
        build_survey(tmp_path / "y.h5", int(argv[1]) if int(argv[1]) <= 0 else 10, n_val=512)
    assert not (tmp_path / "x.h5").exists()
