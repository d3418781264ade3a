"""The survey description (surveys/description.py) and the module-level names derived from it."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import photometry, preprocess, schema
from surveys.description import SDSS, SURVEY, SurveyDescription

ROOT = Path(__file__).resolve().parent.parent


def test_sdss_values_are_the_papers():
    assert SURVEY is SDSS
    assert (SDSS.bands, SDSS.n_bands, SDSS.image_size, SDSS.pixel_scale_arcsec) == ("ugriz", 5, 64, 0.396)
    assert SDSS.stage_lengths == {"lr": 563, "sr": 4500}
    assert [SDSS.spectrum_length(s) for s in ("lr", "sr")] == [563, 4500]
    assert SDSS.rgb_index == (3, 2, 1)  # i, r, g as red, green, blue
    with pytest.raises(ValueError, match="stage"):
        SDSS.spectrum_length("hr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        SDSS.bands = "grz"


def test_aliases_are_the_description_and_bit_identical_to_the_old_literals():
    # the literals the modules held before the description existed: same bytes, so same outputs
    old_loglam = 3.5800 + 1e-4 * np.arange(3838, dtype=np.float64)
    assert schema.sdss_loglam_grid().tobytes() == old_loglam.tobytes()
    assert preprocess.FULLRES_WAVE.tobytes() == np.arange(4000.0, 8500.0, 1.0).tobytes()
    assert (schema.BANDS, schema.N_BANDS, schema.IMAGE_SIZE) == ("ugriz", 5, 64)
    assert schema.PIXEL_SCALE_ARCSEC == 0.396
    assert (schema.LOGLAM0, schema.DLOGLAM, schema.N_LOGLAM) == (3.58, 1e-4, 3838)
    assert (preprocess.N_LOWRES, preprocess.N_FULLRES, preprocess.LOWRES_STEP) == (563, 4500, 8)
    assert preprocess.STAGE_LENGTHS == {"lr": preprocess.N_LOWRES, "sr": preprocess.N_FULLRES}
    assert preprocess.LOWRES_WAVE.size == SDSS.n_lowres
    assert (preprocess.WAVE_MIN, preprocess.WAVE_MAX) == (4000.0, 8500.0)
    assert photometry.ASINH_SOFTENING_NMGY.tolist() == [0.14, 0.09, 0.12, 0.18, 0.74]
    assert photometry.N_FEATURES == 6 * 9 + 5 * 5 + 4 + 3


def test_photometry_feature_count_follows_the_bands():
    x, names = photometry.photometric_features(photometry.measure_photometry(
        np.random.default_rng(0).normal(0.0, 0.01, (2, SDSS.n_bands, SDSS.image_size, SDSS.image_size))))
    assert x.shape == (2, photometry.N_FEATURES) and len(names) == photometry.N_FEATURES
    assert names[-3:] == ["size_r", "ellipticity_r", "offset_r"]


def test_a_new_survey_is_a_description():
    desi = dataclasses.replace(SDSS, name="DESI-like", bands="grz", rgb_bands="zrg", pixel_scale_arcsec=0.262,
                               asinh_softening_nmgy=(0.09, 0.12, 0.74), wave_start=3600.0, wave_step=0.8,
                               n_wave=7781, lowres_stride=8)
    assert desi.n_bands == 3 and desi.stage_lengths == {"lr": 973, "sr": 7781} and desi.rgb_index == (2, 1, 0)
    assert desi.wave_grid()[[0, -1]].tolist() == pytest.approx([3600.0, 9824.0])
    with pytest.raises(ValueError, match="asinh_softening_nmgy: 5 values for 3 bands"):
        dataclasses.replace(SDSS, bands="grz", rgb_bands="zrg")
    with pytest.raises(ValueError, match="rgb_bands: 3 of 'grz', got 'irg'"):
        dataclasses.replace(SDSS, bands="grz", asinh_softening_nmgy=(0.1, 0.1, 0.7))
    with pytest.raises(ValueError, match="reference_band: 'r' not in 'gz'"):
        dataclasses.replace(SDSS, bands="gz", rgb_bands="zgz", asinh_softening_nmgy=(0.1, 0.7))
    with pytest.raises(ValueError, match="image_size: must be > 0"):
        dataclasses.replace(SDSS, image_size=0)
    assert isinstance(desi, SurveyDescription)


@pytest.mark.parametrize("module", ["surveys.mock.make", "utils.make_mock", "surveys.sdss"])
def test_survey_clis_answer_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage: python -m ")
