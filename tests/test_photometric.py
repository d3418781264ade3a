"""Aperture photometry and the gradient-boosted photometric predictor (evaluation.photometric)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from datasets.schema import IMAGE_SIZE, PIXEL_SCALE_ARCSEC
from evaluation import metrics as M
from evaluation import photometric as P

C = (IMAGE_SIZE - 1) / 2.0  # the default aperture centre


def _gaussian(flux, sigma_px, xc=C, yc=C, sigma_y=None):
    """Pixel-integrated (exact) 2-D Gaussian image, (64, 64), total flux ``flux`` (if it fits the cutout)."""
    sigma_y = sigma_px if sigma_y is None else sigma_y
    edges = np.arange(IMAGE_SIZE + 1) - 0.5

    def cdf(e, c, s):
        return 0.5 * (1 + erf((e - c) / (np.sqrt(2) * s)))

    px = np.diff(cdf(edges, xc, sigma_px))
    py = np.diff(cdf(edges, yc, sigma_y))
    return flux * py[:, None] * px[None, :]


def _batch(*images):
    """(N, 5, 64, 64) with every band equal to the given image."""
    return np.stack([np.repeat(im[None], 5, axis=0) for im in images]).astype(np.float32)


def test_circle_weights_area_and_gaussian_aperture_fluxes():
    w = P.circle_weights(10.0, (C, C))
    assert w.sum() == pytest.approx(np.pi * 100, rel=2e-3)
    assert w.min() == 0 and w.max() == 1
    flux = 40.0
    ph = P.measure_photometry(_batch(_gaussian(flux, 6.0), _gaussian(flux, 2.5)))
    r_px = np.asarray(P.APERTURE_RADII_ARCSEC) / PIXEL_SCALE_ARCSEC
    expected = flux * (1 - np.exp(-(r_px[None, :] ** 2) / (2 * np.array([[6.0], [2.5]]) ** 2)))
    np.testing.assert_allclose(ph["flux"][0, 2], expected[0], rtol=0.01)  # every aperture, extended source
    # compact source: pixel values are pixel averages, so apertures of ~1 px radius under-read a peaked
    # profile by a few % (pixelisation, as in any pixel-based photometry); from 2.5" on it is < 0.5 %
    np.testing.assert_allclose(ph["flux"][1, 2, 2:], expected[1, 2:], rtol=0.005)
    assert ph["flux"][:, :, -1] == pytest.approx(np.full((2, 5), flux), rel=0.01)  # large aperture: all
    np.testing.assert_allclose(ph["area"], np.pi * r_px**2, rtol=5e-3)  # 16x16 sub-sampled pixel areas


def test_point_source_flux_recovered():
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    img[32, 32] = 7.0  # a point source in one pixel, 0.7 px from the centre
    ph = P.measure_photometry(_batch(img))
    assert ph["flux"][0, 0, -1] == pytest.approx(7.0, rel=1e-6)
    assert ph["flux"][0, 0, 0] == pytest.approx(7.0, rel=1e-6)  # 1" = 2.5 px radius holds the pixel


def test_background_pedestal_removed():
    rng = np.random.default_rng(0)
    img = _gaussian(25.0, 3.0)
    noise = rng.normal(0, 0.01, (2, IMAGE_SIZE, IMAGE_SIZE))
    clean = P.measure_photometry(_batch(img + noise[0], img + noise[1]))
    pedestal = _batch(img + noise[0] + 0.5, img + noise[1] - 0.2)
    ph = P.measure_photometry(pedestal)
    np.testing.assert_allclose(ph["sky"][:, 0] - clean["sky"][:, 0], [0.5, -0.2], atol=1e-6)
    np.testing.assert_allclose(ph["flux"], clean["flux"], atol=1e-4)
    # without the sky subtraction a 0.5 nmgy/px pedestal would add 0.5 x area to the 9" aperture
    assert 0.5 * ph["area"][-1] > 100 * np.abs(ph["flux"] - clean["flux"]).max()
    assert ph["flux"][0, 0, -1] == pytest.approx(25.0, rel=0.01)


def test_moments_size_and_ellipticity():
    ph = P.measure_photometry(_batch(_gaussian(30, 2.0), _gaussian(30, 4.0), _gaussian(30, 4.0, sigma_y=2.0),
                                     _gaussian(30, 2.0, xc=C + 3)))
    size, ell = ph["size"], ph["ellipticity"]
    assert size[1] > 1.5 * size[0]
    assert ell[0] < 0.01 and ell[1] < 0.01 and ell[2] > 0.3
    # the Gaussian weight pulls the centroid towards the centre by sw^2 / (sw^2 + sigma^2)
    sw2 = (P.MOMENT_SIGMA_ARCSEC / PIXEL_SCALE_ARCSEC) ** 2
    assert ph["offset"][3] == pytest.approx(3 * sw2 / (sw2 + 4) * PIXEL_SCALE_ARCSEC, rel=0.01)
    # and shrinks the trace moment the same way: 2 sigma^2 sw^2 / (sigma^2 + sw^2) for a circular Gaussian
    assert size[0] == pytest.approx(np.sqrt(2 * 4 * sw2 / (4 + sw2)) * PIXEL_SCALE_ARCSEC, rel=0.01)
    assert ph["offset"][0] < 0.01


def test_asinh_magnitude():
    f = np.array([1.0, 100.0])
    np.testing.assert_allclose(P.asinh_mag(f, 0.01), 22.5 - 2.5 * np.log10(f), atol=1e-3)
    m = P.asinh_mag(np.array([-1.0, 0.0, 1.0]), 0.1)
    assert np.isfinite(m).all() and m[0] > m[1] > m[2]


def test_features_shape_names_and_bad_input():
    ph = P.measure_photometry(_batch(_gaussian(30, 2.0), _gaussian(5, 3.0)))
    x, names = P.photometric_features(ph)
    assert x.shape == (2, len(names)) and len(set(names)) == len(names)
    assert np.isfinite(x).all()
    g_r = x[:, names.index("g-r_r1.5")]
    np.testing.assert_allclose(g_r, 0.0, atol=1e-3)  # equal bright fluxes in every band: zero colour
    with pytest.raises(ValueError, match="shape"):
        P.measure_photometry(np.zeros((2, 3, 64, 64)))


def test_spearman():
    x = np.arange(10.0)
    assert M.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert M.spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert np.isnan(M.spearman(x, np.ones(10)))


# ----------------------------------------------------------------------------------------------------------
# on a small mock built with the current builder
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    from evaluation.truth import load_truth
    from surveys.mock.build import build_survey

    path = tmp_path_factory.mktemp("phot") / "mock.h5"
    build_survey(path, 320, seed=5, n_val=32, test_fraction=0.2, workers=1, progress=False)
    x, names = P.survey_features(path)
    return path, x, names, load_truth(path, np.arange(len(x)))


def test_features_finite_on_mock_and_rows_order(mock):
    path, x, names, truth = mock
    assert x.shape == (320, len(names))
    assert np.isfinite(x).all()
    rows = np.array([5, 2, 5, 300])
    # the same rows in another batch: equal up to float32 BLAS blocking (~1e-7 mag)
    np.testing.assert_allclose(P.survey_features(path, rows)[0], x[rows], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(P.survey_features(path)[0], x)  # same batch: bit-identical
    # brighter galaxies (catalogue r) have brighter large-aperture r photometry
    assert M.spearman(x[:, names.index("mag_r_r9")], truth["mag_r"]) > 0.9
    with pytest.raises(ValueError, match="rows: value 320"):
        P.survey_features(path, np.array([320]))


def test_gradient_boosting_beats_median_on_mock(mock):
    path, x, names, truth = mock
    from datasets.schema import open_survey

    with open_survey(path) as f:
        split = f["split"][:]
    tr, te = split != 2, split == 2
    fast = {"max_iter": 60, "learning_rate": 0.15}  # seconds, not a tuned model
    targets = {k: truth[k][tr] for k in ("z", "dn4000", "sigma_v", "bpt_class", "id")}
    model = P.fit_photometric(x[tr], targets, seed=0, params=fast)
    assert set(model.regressors) == {"z", "dn4000", "sigma_v"} and set(model.classifiers) == {"bpt_class"}
    pred = P.predict(model, x[te])
    z = truth["z"][te]
    gb, med = M.sigma_nmad(pred["z"], z), M.sigma_nmad(np.full(te.sum(), np.median(truth["z"][tr])), z)
    assert gb < 0.8 * med, (gb, med)
    assert M.pearson(pred["dn4000"], truth["dn4000"][te]) > 0.5
    assert np.all(pred["sigma_v"] > 10)  # km/s, back from the log10 fit
    assert set(np.unique(pred["bpt_class"])) <= set(np.unique(truth["bpt_class"]))
    assert pred["bpt_class_proba"].shape == (te.sum(), len(pred["bpt_class_classes"]))
    np.testing.assert_array_equal(pred["agn"], pred["bpt_class"] == 2)
    print(f"z sigma_NMAD: GB {gb:.4f}, median {med:.4f}")
    again = P.predict(P.fit_photometric(x[tr], targets, seed=0, params=fast, classification=()), x[te])
    np.testing.assert_array_equal(again["z"], pred["z"])  # deterministic
    with pytest.raises(ValueError, match="fitted on"):
        P.predict(model, x[te][:, :5])


def test_classifier_is_class_balanced():
    # a rare class (~6 %) that one feature separates only partly: the evaluation scores balanced accuracy,
    # and an unweighted fit would almost never predict the rare class
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 3))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 4.0)))).astype(np.int64) * 2  # 0 or 2 ("AGN")
    tr = np.arange(6000) < 4000
    model = P.fit_photometric(x[tr], {"bpt_class": y[tr]}, seed=0, regression=(),
                              params={"max_iter": 60})
    pred = P.predict(model, x[~tr])
    assert 0.02 < y.mean() / 2 < 0.12
    assert balanced_accuracy_score(y[~tr] == 2, pred["agn"] == 1) > 0.65
