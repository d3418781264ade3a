"""Schema, preprocessing (against hand-computed values), cache and datasets."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from datasets.galaxy import (
    DatasetError,
    EpochBatchSampler,
    GalaxyDataset,
    ImageAugment,
    build_cache,
    make_loader,
)
from datasets.preprocess import (
    FULLRES_WAVE,
    LOWRES_WAVE,
    N_FULLRES,
    N_LOWRES,
    lowres,
    preprocess_spectra,
    to_linear,
    to_model_space,
)
from datasets.schema import (
    N_LOGLAM,
    SurveyFileError,
    assign_split,
    create_survey,
    read_catalog,
    sdss_loglam_grid,
    validate_survey,
    write_column,
)
from tests.synthetic import write_synthetic_survey

LOGLAM = sdss_loglam_grid()
WAVE = 10 ** LOGLAM


# --- preprocessing -------------------------------------------------------------------------------------
def test_grids_have_the_papers_sizes():
    assert N_FULLRES == 4500 and FULLRES_WAVE[0] == 4000 and FULLRES_WAVE[-1] == 8499
    assert N_LOWRES == 563 and LOWRES_WAVE[1] - LOWRES_WAVE[0] == 8 and LOWRES_WAVE[-1] == 8496


def test_constant_flux_gives_unit_normalised_flux_and_zero_log():
    out = preprocess_spectra(LOGLAM, np.full((2, N_LOGLAM), 7.0))
    np.testing.assert_allclose(out["flux"], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["norm"], 7.0, rtol=1e-9)
    np.testing.assert_allclose(to_model_space(out["flux"], "log"), 0.0, atol=1e-6)
    assert out["valid"].all()


def test_linear_flux_is_reproduced_and_normalised_by_the_6900_6950_window():
    # f = a + b*lambda: a cubic spline reproduces it exactly, a Gaussian smoothing leaves it unchanged
    # away from the edges, and the normalisation is its mean over 6900..6949 A: a + b*6924.5
    a, b = 3.0, 2e-3
    out = preprocess_spectra(LOGLAM, (a + b * WAVE)[None])
    expected = (a + b * FULLRES_WAVE) / (a + b * 6924.5)
    np.testing.assert_allclose(out["norm"][0], a + b * 6924.5, rtol=1e-7)
    np.testing.assert_allclose(out["flux"][0, 20:-20], expected[20:-20], rtol=1e-6)


def test_smoothing_is_a_2_angstrom_gaussian():
    # a narrow emission line sampled finely enough: the processed profile equals the spline-resampled
    # line convolved with a sigma = 2 px Gaussian (hand-computed with scipy on the same 1 A grid)
    line = 1.0 + 50.0 * np.exp(-0.5 * ((WAVE - 6000.0) / 1.5) ** 2)
    out = preprocess_spectra(LOGLAM, line[None])
    from scipy.interpolate import CubicSpline
    keep = (WAVE > 4000) & (WAVE < 8500)
    ref = gaussian_filter1d(CubicSpline(WAVE[keep], line[keep])(FULLRES_WAVE), 2.0)
    ref /= ref[(FULLRES_WAVE >= 6900) & (FULLRES_WAVE < 6950)].mean()
    np.testing.assert_allclose(out["flux"][0], ref, rtol=1e-5)
    # the smoothed peak is lower and wider than the input's (sigma 1.5 A -> 2.5 A)
    assert out["flux"][0].max() < 50 * 1.5 / 2.5 + 1.5


def test_lowres_is_every_8th_point_and_log_roundtrip():
    x = np.arange(4500.0)[None]
    assert lowres(x).shape == (1, 563) and lowres(x)[0, 1] == 8.0
    f = np.random.default_rng(0).uniform(0.5, 2.0, (3, 4500))
    np.testing.assert_allclose(to_linear(to_model_space(f, "log"), "log"), f, rtol=1e-12)
    t = torch.from_numpy(np.log(f))
    np.testing.assert_allclose(to_linear(t, "log").numpy(), f, rtol=1e-12)


def test_lowres_bin_keeps_a_narrow_lines_flux_wherever_it_falls():
    # a 1-pixel line: subsampling sees it only when it sits on one of the 563 kept pixels; the 8 A bins keep
    # its whole flux (1 per bin width 8) and its position within the bin (shared with the neighbour on a
    # bin edge)
    for offset in range(8):
        x = np.zeros((1, 4500))
        x[0, 800 + offset] = 8.0
        sub, binned = lowres(x), lowres(x, "bin")
        assert binned.shape == (1, 563)
        assert sub[0, 100] == (8.0 if offset == 0 else 0.0)
        np.testing.assert_allclose(binned.sum(), 1.0)
        assert binned[0, 100] >= binned[0, 101] if offset <= 4 else binned[0, 101] > binned[0, 100]
    # a straight line is unchanged at the bin centres (symmetric kernel), the ends repeat the edge pixel
    ramp = np.arange(4500.0)
    np.testing.assert_allclose(lowres(ramp, "bin")[1:-1], ramp[::8][1:-1])
    assert lowres(ramp.astype(np.float32), "bin").dtype == np.float32
    with pytest.raises(ValueError, match="data.lowres: 'median'"):
        lowres(ramp, "median")


def test_dataset_lowres_bin_mode_and_older_caches(synthetic_survey, tmp_path):
    ds = GalaxyDataset(synthetic_survey, "val", "fullres", "none", with_lowres=True, cache_dir=tmp_path / "c",
                       lowres_mode="bin")
    b = ds[np.arange(4)]
    torch.testing.assert_close(b["lowres"], torch.from_numpy(lowres(b["spectrum"].numpy(), "bin")))
    lr = GalaxyDataset(synthetic_survey, "val", "lowres", "none", cache_dir=tmp_path / "c", lowres_mode="bin")
    torch.testing.assert_close(lr[np.arange(4)]["spectrum"], b["lowres"])
    # a cache written before the mode existed gets the file derived on first use
    f = ds.cache.root / "flux_lowres_bin.npy"
    kept = np.load(f)
    f.unlink()
    again = build_cache(synthetic_survey, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.lowres("bin"), kept)
    assert f.exists() and not list(f.parent.glob("*.partial*"))
    with pytest.raises(DatasetError, match="data.lowres: 'odd'"):
        again.lowres("odd")


def test_nonpositive_flux_is_flagged_invalid():
    flux = np.ones((3, N_LOGLAM))
    flux[1, 2000:2300] = -5.0   # a negative stretch survives smoothing
    flux[2] = 0.0
    out = preprocess_spectra(LOGLAM, flux)
    assert out["valid"].tolist() == [True, False, False]


def test_masked_pixels_are_interpolated_and_ivar_carried():
    flux = np.ones((1, N_LOGLAM)) * 4.0
    ivar = np.ones((1, N_LOGLAM)) * 25.0
    flux[0, 1500] = 1e6   # a masked cosmic ray
    ivar[0, 1500] = 0.0
    out = preprocess_spectra(LOGLAM, flux, ivar)
    np.testing.assert_allclose(out["flux"], 1.0, atol=1e-6)
    # ivar in normalised units: 25 * norm^2, zero next to the masked pixel
    iv = out["ivar"][0]
    assert np.isclose(np.median(iv), 25 * 16, rtol=1e-5)
    assert (iv == 0).sum() >= 1 and (iv == 0).sum() <= 3


def test_grid_not_covering_the_range_is_a_clear_error():
    with pytest.raises(ValueError, match="does not cover 4000-8500"):
        preprocess_spectra(LOGLAM[:1000], np.ones((1, 1000)))


# --- schema -----------------------------------------------------------------------------------------------
def test_split_is_fixed_seed_and_sized_like_the_paper():
    s = assign_split(10000, seed=0)
    assert (s == 1).sum() == 512 and (s == 2).sum() == 1000 and (s == 0).sum() == 8488
    np.testing.assert_array_equal(s, assign_split(10000, seed=0))
    assert (s != assign_split(10000, seed=1)).any()
    with pytest.raises(ValueError, match="cannot hold"):
        assign_split(500, seed=0)


def test_schema_round_trip(tmp_path, synthetic_survey):
    info = validate_survey(synthetic_survey, check_values=True)
    assert info["n_galaxies"] == 64 and info["split_counts"] == {"train": 48, "val": 8, "test": 8}
    cat = read_catalog(synthetic_survey)
    assert cat["id"][0] == 1000 and cat["z"].min() > 0.05
    with h5py.File(synthetic_survey) as f:
        assert f.attrs["schema_version"] == 1 and f["spectra/loglam"].shape == (N_LOGLAM,)
        assert f["catalog/ra"].attrs["unit"] == "deg"


def _tiny(path, n=20, **overrides):
    with create_survey(path, n, survey="t") as f:
        f["images"][:] = overrides.get("images", np.ones((n, 5, 64, 64), np.float32))
        f["spectra/flux"][:] = overrides.get("flux", np.ones((n, N_LOGLAM), np.float32))
        f["spectra/ivar"][:] = 1.0
        f["split"][:] = assign_split(n, 0, n_val=2, test_fraction=0.1)
        for c in ("id", "ra", "dec", "z"):
            write_column(f, c, np.arange(n))


def test_bad_files_give_one_line_errors_naming_the_field(tmp_path):
    with pytest.raises(SurveyFileError, match=r"missing\.h5: file: does not exist"):
        validate_survey(tmp_path / "missing.h5")
    good = tmp_path / "good.h5"
    _tiny(good)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(SurveyFileError, match="trunc.h5: file: not a readable HDF5"):
        validate_survey(trunc)
    img = np.ones((20, 5, 64, 64), np.float32)
    img[3, 2, 10, 10] = np.nan
    with pytest.raises(SurveyFileError, match="images: galaxy row 3 has NaN/inf"):
        _tiny(tmp_path / "nan.h5", images=img)
    assert not (tmp_path / "nan.h5").exists() and not (tmp_path / "nan.h5.partial").exists()
    flux = np.ones((20, N_LOGLAM), np.float32)
    flux[7] = -1
    with pytest.raises(SurveyFileError, match="spectra/flux: galaxy row 7 has no positive flux"):
        _tiny(tmp_path / "neg.h5", flux=flux)
    with h5py.File(good, "a") as f:
        del f["images"]
        f.create_dataset("images", data=np.ones((20, 3, 64, 64), np.float32))
    with pytest.raises(SurveyFileError, match=r"images: shape \(20, 3, 64, 64\)"):
        validate_survey(good)


def test_failed_build_leaves_nothing_under_the_final_name(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with create_survey(path, 10, survey="t"):
            raise RuntimeError("killed")
    assert not path.exists() and not path.with_name("x.h5.partial").exists()


# --- cache and datasets -----------------------------------------------------------------------------------
def test_cache_matches_direct_preprocessing_and_train_band_stats(synthetic_survey, tmp_path):
    cache = build_cache(synthetic_survey, cache_dir=tmp_path / "c")
    with h5py.File(synthetic_survey) as f:
        direct = preprocess_spectra(f["spectra/loglam"][:], f["spectra/flux"][:5], f["spectra/ivar"][:5])
        img = f["images"][:]
        split = f["split"][:]
    np.testing.assert_allclose(cache.flux_fullres[:5], direct["flux"], rtol=1e-6)
    np.testing.assert_allclose(cache.flux_lowres[:5], direct["flux"][:, ::8], rtol=1e-6)
    train = img[split == 0].astype(np.float64)
    mean = train.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(cache.meta["band_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(cache.meta["band_std"], train.std(axis=(0, 2, 3)), rtol=1e-5)
    std_train = cache.images[np.flatnonzero(split == 0)].astype(np.float64)
    np.testing.assert_allclose(std_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    # a second call reuses the cache (same directory, no rebuild)
    again = build_cache(synthetic_survey, cache_dir=tmp_path / "c")
    assert again.root == cache.root


def test_dataset_items_and_batches(synthetic_survey, tmp_path):
    ds = GalaxyDataset(synthetic_survey, "train", "lowres", cache_dir=tmp_path / "c")
    assert len(ds) == 48
    item = ds[0]
    assert item["image"].shape == (5, 64, 64) and item["spectrum"].shape == (563,)
    batch = ds[np.array([5, 2, 9])]
    assert batch["image"].shape == (3, 5, 64, 64)
    torch.testing.assert_close(batch["spectrum"][1], ds[2]["spectrum"])
    full = GalaxyDataset(synthetic_survey, "val", "fullres", "none", with_lowres=True, with_ivar=True,
                         cache_dir=tmp_path / "c")
    b = full[np.arange(4)]
    assert b["spectrum"].shape == (4, 4500) and b["lowres"].shape == (4, 563) and b["ivar"].shape == (4, 4500)
    torch.testing.assert_close(b["lowres"], b["spectrum"][:, ::8])
    assert len(set(full.rows) & set(ds.rows)) == 0


def test_dataset_bad_input(synthetic_survey, tmp_path):
    with pytest.raises(DatasetError, match="resolution: 'mid'"):
        GalaxyDataset(synthetic_survey, "train", "mid", cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="split: 'dev'"):
        GalaxyDataset(synthetic_survey, "dev", cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="nope.h5: file: does not exist"):
        GalaxyDataset(tmp_path / "nope.h5")
    path = tmp_path / "notest.h5"
    write_synthetic_survey(path, n=40, n_val=4, test_fraction=0.0)
    with pytest.raises(DatasetError, match="split: 'test' is empty"):
        GalaxyDataset(path, "test", cache_dir=tmp_path / "c2")


def test_sampler_is_deterministic_resumable_and_splits_global_batches():
    s = EpochBatchSampler(40, 8, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2)
    s.skip(2)
    np.testing.assert_array_equal(np.concatenate(list(s)), np.concatenate(full[2:]))
    s.set_epoch(3)
    assert not np.array_equal(np.concatenate(list(s)), np.concatenate(full))
    parts = [list(EpochBatchSampler(40, 8, seed=3, rank=r, world_size=2)) for r in range(2)]
    for r in parts:
        assert all(len(b) == 4 for b in r)
    merged = [np.concatenate([parts[0][i], parts[1][i]]) for i in range(len(parts[0]))]
    ref = list(EpochBatchSampler(40, 8, seed=3))
    for a, b in zip(merged, ref):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DatasetError, match="not divisible"):
        EpochBatchSampler(40, 9, world_size=2)


def test_loader_yields_batched_dicts(synthetic_survey, tmp_path):
    ds = GalaxyDataset(synthetic_survey, "train", cache_dir=tmp_path / "c")
    batches = list(make_loader(ds, EpochBatchSampler(len(ds), 16, seed=0)))
    assert len(batches) == 3 and batches[0]["image"].shape == (16, 5, 64, 64)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == sorted(ds.rows.tolist())


def test_augmentation_crops_flips_and_is_reproducible():
    aug = ImageAugment()
    x = torch.arange(2 * 5 * 64 * 64, dtype=torch.float32).reshape(2, 5, 64, 64)
    ev = aug(x, train=False)
    assert ev.shape == (2, 5, 64, 64)
    # evaluation is the centre crop of the 71-px resize, computed independently
    ref = torch.nn.functional.interpolate(x, size=(71, 71), mode="bilinear", antialias=True)[:, :, 3:67, 3:67]
    torch.testing.assert_close(ev, ref)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = aug(x, True, g1), aug(x, True, g2)
    torch.testing.assert_close(a, b)
    # every augmented image is some crop (possibly flipped) of the resized image
    big = torch.nn.functional.interpolate(x, size=(71, 71), mode="bilinear", antialias=True)
    found = 0
    for i in range(2):
        for dy in range(8):
            for dx in range(8):
                crop = big[i, :, dy:dy + 64, dx:dx + 64]
                for c in (crop, crop.flip(1), crop.flip(2), crop.flip(1).flip(2)):
                    if torch.allclose(c, a[i]):
                        found += 1
    assert found == 2


def test_rank_zero_derives_the_lowres_file_before_the_other_ranks_start(synthetic_survey, tmp_path,
                                                                       monkeypatch):
    # under DDP, rank 0 builds the cache and the binned low-res file of an older cache before the barrier
    # the other ranks wait at, so they do not all derive it at once
    from training import engine
    from training.tasks import DiffusionTask
    from utils.config import GenerativeConfig, load_config
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "params_generative.yml", GenerativeConfig, preset="cpu", overrides=[
        f"data.path={synthetic_survey}", f"data.cache_dir={tmp_path / 'c'}", "data.lowres=bin",
        "train.batch_size=8"])
    seen = []
    monkeypatch.setattr(engine.idist, "barrier", lambda: seen.append(
        [f.name for f in (tmp_path / "c").glob("*/flux_lowres_*.npy")]))
    engine.setup_data(cfg, DiffusionTask("sr", cfg.model), rank=0, world=1)
    assert seen == [["flux_lowres_bin.npy"]]
