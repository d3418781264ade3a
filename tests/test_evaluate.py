"""evaluate.py / evaluation/ and the supervised CNN baseline (training/baseline.py)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from evaluation import metrics as M


# ----------------------------------------------------------------------------------------------------------
# metric functions against hand-computed values
# ----------------------------------------------------------------------------------------------------------
def test_sigma_nmad_bias_outliers_by_hand():
    zt = np.array([0.1, 0.1, 0.1, 0.1, 0.1])
    zp = np.array([0.1, 0.111, 0.089, 0.122, 0.3])  # dz = 0, .011, -.011, .022, .2
    # dz/(1+z) = 0, .01, -.01, .02, .1818; median dz = .011 -> |dz - med| = .011,0,.022,.011,.189
    # -> median .011
    assert M.sigma_nmad(zp, zt) == pytest.approx(1.48 * 0.011 / 1.1)
    assert M.z_bias(zp, zt) == pytest.approx(0.01)
    assert M.outlier_fraction(zp, zt) == pytest.approx(0.2)  # only 0.2/1.1 > 0.05
    assert M.outlier_fraction(np.r_[zp[:4], np.nan], zt) == pytest.approx(0.2)  # failed fit = outlier
    assert np.isnan(M.sigma_nmad([0.1, np.nan], [0.1, 0.1]))


def test_classification_metrics_by_hand():
    true = np.array([0, 0, 0, 0, 2, 2])
    pred = np.array([0, 0, 0, 2, 2, 0])
    assert M.accuracy(pred, true) == pytest.approx(4 / 6)
    assert M.balanced_accuracy(pred, true) == pytest.approx((3 / 4 + 1 / 2) / 2)
    cm = M.confusion_matrix(pred, true, [0, 1, 2, -1])
    assert cm[0, 0] == 3 and cm[0, 2] == 1 and cm[2, 2] == 1 and cm[2, 0] == 1 and cm.sum() == 6


def test_pearson_scatter_and_spectral_errors():
    x = np.arange(10.0)
    assert M.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert M.pearson(x, -x) == pytest.approx(-1.0)
    assert np.isnan(M.pearson(x, np.ones(10)))  # constant: undefined, not 0
    assert M.robust_scatter(x + 0.5, x) == pytest.approx(0.0)
    obs = np.ones((2, 4))
    e = M.spectral_errors(obs + np.array([[0.1], [0.2]]), obs, np.full((2, 4), 100.0))
    np.testing.assert_allclose(e["mse"], [0.01, 0.04])
    np.testing.assert_allclose(e["chi2n"], [1.0, 4.0])


def test_pit_and_coverage_on_calibrated_and_overconfident_toys():
    rng = np.random.default_rng(0)
    n, m = 4000, 40
    mu = rng.normal(size=n)
    truth = mu + rng.normal(size=n)  # truth ~ N(mu, 1)
    good = mu[:, None] + rng.normal(size=(n, m))  # calibrated samples
    narrow = mu[:, None] + 0.3 * rng.normal(size=(n, m))  # over-confident samples
    # the sample 16/84 percentiles of m draws cover 0.68 (m-1)/(m+1) of a calibrated truth, not 0.68
    assert M.expected_coverage(m) == pytest.approx(0.68 * 39 / 41)
    assert M.interval_coverage(good, truth) == pytest.approx(M.expected_coverage(m), abs=0.025)
    assert M.interval_coverage(good[:, :3], truth) == pytest.approx(M.expected_coverage(3), abs=0.025)
    assert M.interval_coverage(narrow, truth) < 0.35
    assert M.pit_uniformity(M.pit_values(good, truth)) < 0.03
    assert M.pit_uniformity(M.pit_values(narrow, truth)) > 0.15
    # M = 3 (what generate.py draws by default): the randomised PIT is still uniform when calibrated
    assert M.pit_uniformity(M.pit_values(good[:, :3], truth)) < 0.03
    assert M.pit_summary(M.pit_values(good[:, :3], truth))["shape"] == "flat"
    assert M.pit_summary(M.pit_values(narrow, truth))["shape"].startswith("U-shaped")
    assert M.pit_summary(M.pit_values(mu[:, None] + 3 * rng.normal(size=(n, m)), truth))["shape"].startswith(
        "hump")
    biased = M.pit_summary(M.pit_values(good - 1.5, truth))  # candidates too low: truths above them
    assert biased["shape"].startswith("biased high") and biased["mean_pit"] > 0.7


def test_pit_by_hand_ties_and_missing_values():
    s = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, np.nan], [5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [np.nan] * 3])
    t = np.array([2.5, 9.0, 5.0, np.nan, 1.0])
    p = M.pit_values(s, t, seed=3)
    assert 2 / 4 <= p[0] < 3 / 4  # 2 of 3 below: (2 + U) / 4
    assert 2 / 3 <= p[1] < 1.0  # NaN candidate ignored: M = 2, both below
    assert np.isnan(p[3]) and np.isnan(p[4])  # no truth / no candidate
    # truth tied with every candidate: a random position among them, so the PIT is uniform over galaxies
    ties = M.pit_values(np.full((4000, 3), 5.0), np.full(4000, 5.0), seed=0)
    assert M.pit_uniformity(ties) < 0.03
    np.testing.assert_array_equal(M.pit_values(s, t, seed=3), p)  # seeded


# ----------------------------------------------------------------------------------------------------------
# evaluate on tiny fake results from the synthetic survey
# ----------------------------------------------------------------------------------------------------------
def _fake_results(survey, path, mode="perfect", m=3, unusable_obs=()):
    from datasets.galaxy import build_cache
    from datasets.preprocess import FULLRES_WAVE
    from utils.results_fits import write_spectra_fits

    c = build_cache(survey)
    rows = c.indices("test")
    obs = np.asarray(c.flux_fullres[rows], np.float64)
    iv = np.asarray(c.ivar_fullres[rows])
    pred = obs.copy() if mode == "perfect" else obs[np.roll(np.arange(len(rows)), 3)]
    rng = np.random.default_rng(0)
    cand = pred[:, None] * (1 + 0.01 * rng.standard_normal((len(rows), m, 1)))
    obs[list(unusable_obs)] = np.nan  # as the positive-flux filter leaves a failed observed spectrum
    with h5py.File(survey) as f:
        ids = f["catalog/id"][:][rows]
    write_spectra_fits(
        path,
        {"id": ids, "status": np.array(["ok"] * len(rows)), "row": rows},
        {"flux_pred": pred, "flux_obs": obs, "ivar_obs": iv},
        FULLRES_WAVE,
        header={"input": str(survey), "config": {}},
        cubes={"FULLRES_CANDIDATES": (cand, FULLRES_WAVE)},
    )
    return path


def _lick_rho(rep):
    return np.median(
        [
            r["values"]["predicted"]
            for r in rep["table"]
            if r["quantity"].startswith("lick_") and r["metric"] == "pearson_rho_vs_observed"
        ]
    )


def _row(rep, section_start, quantity, metric):
    for r in rep["table"]:
        if r["section"].startswith(section_start) and r["quantity"] == quantity and r["metric"] == metric:
            return r["values"]
    raise KeyError((section_start, quantity, metric))


@pytest.fixture(scope="module")
def perfect_and_shuffled(synthetic_survey, tmp_path_factory):
    from evaluation.run import evaluate

    d = tmp_path_factory.mktemp("eval")
    out = {}
    for mode in ("perfect", "shuffled"):
        res = _fake_results(synthetic_survey, d / f"{mode}.fits", mode)
        out[mode] = evaluate(
            res,
            out_dir=d / f"fig_{mode}",
            report=d / f"rep_{mode}",
            max_fit=0,
            figures=mode == "perfect",
            log=lambda *a: None,
        )
    out["dir"] = d
    return out


def test_predicted_equal_observed_scores_perfectly(perfect_and_shuffled):
    rep = perfect_and_shuffled["perfect"]
    assert _row(rep, "spectrum", "flux", "mse_median")["predicted"] == 0.0
    # the mean of the M candidates (each the prediction times 1 + 1 % noise): its own row, small but not 0,
    # with the baselines' values of the flux row beside it
    mean_row = _row(rep, "spectrum", "flux (mean of the M candidates)", "mse_median")
    assert 0.0 < mean_row["predicted"] < 1e-3
    assert mean_row["train_mean"] == _row(rep, "spectrum", "flux", "mse_median")["train_mean"]
    assert _row(rep, "indices", "dn4000", "pearson_rho_vs_observed")["predicted"] == pytest.approx(
        1.0, abs=1e-3
    )
    # observed indices are measured at the ivar-weighted z fit, predicted ones at the unweighted fit, so weak
    # (synthetic: featureless) Lick indices differ slightly even for identical spectra
    assert _lick_rho(rep) > 0.7
    z_pred = _row(rep, "redshift", "z", "sigma_nmad")
    assert z_pred["predicted"] < 1e-3
    # at the catalogue z (= the fitted one to < 1e-3 here) the perfect prediction's Dn4000 is the observed one
    assert _row(rep, "indices", "dn4000", "pearson_rho_vs_observed")["predicted_at_z"] == pytest.approx(
        1.0, abs=1e-3
    )
    figs = {p.split("/")[-1] for p in rep["figures"]}
    assert {"eval_spectral_errors.png", "eval_redshift.png", "eval_lick.png", "eval_pit.png"} <= figs


def test_shuffled_prediction_scores_clearly_worse(perfect_and_shuffled):
    good, bad = perfect_and_shuffled["perfect"], perfect_and_shuffled["shuffled"]
    assert _row(bad, "spectrum", "flux", "mse_median")["predicted"] > 1e-3
    assert _row(bad, "spectrum", "flux (mean of the M candidates)", "mse_median")["predicted"] > 1e-3
    assert _row(bad, "indices", "dn4000", "pearson_rho_vs_observed")["predicted"] < 0.8
    assert _lick_rho(bad) < _lick_rho(good) - 0.3
    assert (
        _row(bad, "redshift", "z", "sigma_nmad")["predicted"]
        > 10 * _row(good, "redshift", "z", "sigma_nmad")["predicted"]
    )


def test_report_json_has_the_three_way_table(perfect_and_shuffled):
    rep = json.loads((perfect_and_shuffled["dir"] / "rep_perfect.json").read_text())
    assert {"predicted", "observed", "noiseless", "train_mean"} <= set(rep["columns"])
    row = _row(rep, "redshift", "z", "sigma_nmad")
    assert set(row) == {"predicted", "predicted_at_z", "observed", "noiseless", "cnn", "photometric",
                        "retrieval", "train_mean"}
    assert row["predicted_at_z"] is None  # measured AT the catalogue z: no redshift of its own
    assert row["train_mean"] > row["observed"]  # the constant baseline is worse than the ceiling
    assert "photometric" in rep["columns"] and row["photometric"] is not None
    assert rep["calibration"]["n_candidates"] == 3
    # the photometric baseline also predicts the Lick indices (fitted on the noiseless truth's)
    assert _row(rep, "indices", "lick_Hdelta_A", "pearson_rho")["photometric"] is not None
    main_table = (perfect_and_shuffled["dir"] / "rep_perfect.md").read_text().split("\n## ")[0]
    assert main_table.count("| redshift |") == 3


def test_report_names_the_best_baseline_and_the_chains_distance(perfect_and_shuffled):
    good, bad = perfect_and_shuffled["perfect"], perfect_and_shuffled["shuffled"]
    vs = {(r["section"], r["quantity"], r["metric"]): r for r in good["vs_best_baseline"]}
    z = vs[("redshift", "z", "sigma_nmad")]
    row = _row(good, "redshift", "z", "sigma_nmad")
    have = {m: row[m] for m in ("cnn", "photometric", "retrieval", "train_mean") if row[m] is not None}
    assert z["best_baseline"] == min(have, key=have.get) and z["baseline_value"] == min(have.values())
    assert z["difference"] == pytest.approx(row["predicted"] - z["baseline_value"])
    assert z["ratio"] == pytest.approx(row["predicted"] / z["baseline_value"]) and z["chain_better"]
    assert vs[("redshift", "z", "outlier_frac")]["ratio"] is None  # ratios only for sigma_NMAD / scatter
    assert not any(r["metric"].startswith(("bias", "pearson_rho_vs")) for r in good["vs_best_baseline"])
    bad_z = {(r["section"], r["metric"]): r for r in bad["vs_best_baseline"]}[("redshift", "sigma_nmad")]
    assert not bad_z["chain_better"]  # a shuffled prediction loses to the baselines
    md = (perfect_and_shuffled["dir"] / "rep_perfect.md").read_text()
    assert "## The chain vs the best baseline" in md and "| redshift | z | sigma_nmad |" in md
    # paired bootstrap intervals: the perfect chain's z is resolved better; the shuffled one's interval
    # holds its (positive) difference, whether or not this small survey resolves it
    lo, hi = z["ci95"]
    assert lo <= z["difference"] <= hi < 0 and z["resolved"]
    lo, hi = bad_z["ci95"]
    assert lo <= bad_z["difference"] <= hi and bad_z["difference"] > 0 and bad_z["resolved"] == (lo > 0)
    assert "(resolved)" in md and "95 % interval (paired)" in md
    # the PIT section: M, KS distance, histogram of the candidates' calibration
    cal = good["calibration"]
    assert cal["n_candidates"] == 3 and cal["measure_seconds"] >= 0
    assert cal["z"]["n"] > 0 and sum(cal["z"]["pit_histogram"]) == cal["z"]["n"]
    assert 0 <= cal["dn4000"]["pit_ks"] <= 1 and "## Calibration of the candidates (PIT)" in md


def test_paired_interval_resamples_the_same_galaxies():
    from evaluation import metrics as M
    from evaluation.metrics import paired_interval

    rng = np.random.default_rng(1)
    zt = rng.uniform(0.05, 0.2, 400)
    better = zt + rng.normal(0, 0.01, 400)
    worse = zt + rng.normal(0, 0.02, 400)
    lo, hi = paired_interval(M.sigma_nmad, (better, zt), (worse, zt), n_boot=300)
    assert lo < hi < 0                                   # resolved: 0.01 vs 0.02 on 400 galaxies
    # the same galaxies for both: a method against itself differs by exactly 0 in every draw
    assert paired_interval(M.sigma_nmad, (better, zt), (better, zt), n_boot=50) == (0.0, 0.0)
    # change= replaces the difference, on the same resamples: a ratio - 1 of ~0.5 - 1
    rlo, rhi = paired_interval(M.sigma_nmad, (better, zt), (worse, zt), n_boot=300,
                               change=lambda x, y: x / y - 1)
    assert -0.7 < rlo < -0.5 < rhi < -0.3
    # 12 galaxies do not resolve 0.010 against 0.012 (400 would: the same draws' interval is then below 0)
    close = zt + rng.normal(0, 0.012, 400)
    lo, hi = paired_interval(M.sigma_nmad, (better[:12], zt[:12]), (close[:12], zt[:12]), n_boot=300)
    assert lo < 0 < hi
    # misaligned arrays (e.g. a column scored on a subset) or undefined statistics give no interval
    assert paired_interval(M.sigma_nmad, (better, zt), (worse[:10], zt[:10])) is None
    assert paired_interval(M.pearson, (np.ones(50), zt[:50]), (better[:50], zt[:50]), n_boot=20) is None


def test_versus_best_baseline_interval_from_table_rows():
    from evaluation import metrics as M
    from evaluation.run import Table, versus_best_baseline

    rng = np.random.default_rng(2)
    truth = rng.normal(size=300)
    t = Table()
    t.add_stat("s", "q", "pearson_rho", "catalogue", M.pearson,
               {"predicted": (truth + rng.normal(0, 0.3, 300), truth),
                "cnn": (truth + rng.normal(0, 1.0, 300), truth)}, 300)
    t.add("s", "q", "scatter", "catalogue", {"predicted": 0.1, "cnn": 0.2}, 300)   # no per-galaxy data
    a, b = versus_best_baseline(t.rows, t.paired, n_boot=200)
    assert t.rows[0]["values"]["predicted"] > 0.9 and a["chain_better"] and a["resolved"]
    assert a["ci95"][0] > 0 and a["ci95"][0] <= a["difference"] <= a["ci95"][1]
    assert b["ci95"] is None and b["resolved"] is None


def test_versus_best_baseline_by_hand():
    from evaluation.run import versus_best_baseline

    rows = [{"section": "s", "quantity": "q", "metric": "scatter [dex]", "n": 5,
             "values": {"predicted": 0.2, "cnn": 0.1, "photometric": 0.4, "retrieval": None}},
            {"section": "s", "quantity": "q", "metric": "balanced_accuracy", "n": 5,
             "values": {"predicted": 0.9, "cnn": 0.6, "photometric": 0.7}},
            {"section": "s", "quantity": "q", "metric": "bias", "n": 5,
             "values": {"predicted": 0.0, "cnn": 1.0}},
            {"section": "s", "quantity": "q", "metric": "pearson_rho", "n": 5,
             "values": {"predicted": 0.5, "observed": 0.9}}]
    a, b = versus_best_baseline(rows)  # bias has no direction; the last row has no baseline
    assert (a["best_baseline"], a["difference"], a["ratio"], a["chain_better"]) == ("cnn", pytest.approx(0.1),
                                                                                   pytest.approx(2.0), False)
    assert (b["best_baseline"], b["difference"], b["ratio"], b["chain_better"]) == (
        "photometric", pytest.approx(0.2), None, True)


def test_ppxf_subset_fills_population_and_bpt_rows(synthetic_survey, tmp_path):
    from evaluation.run import evaluate

    res = _fake_results(synthetic_survey, tmp_path / "r.fits")
    rep = evaluate(
        res,
        out_dir=tmp_path,
        report=tmp_path / "rep",
        max_fit=2,
        workers=1,
        figures=False,
        log=lambda *a: None,
    )
    assert rep["n_fit"] == 2
    assert _row(rep, "populations", "pPXF", "success_frac")["predicted"] == 1.0
    assert _row(rep, "AGN", "AGN presence", "accuracy_vs_observed")["predicted"] == 1.0


def test_photometric_baseline_learns_z_from_the_images(synthetic_survey):
    from evaluation.baselines import photometric_predict

    with h5py.File(synthetic_survey) as f:
        split, z = f["split"][:], f["catalog/z"][:]
    rows = np.flatnonzero(split != 0)  # validation + test: never in the fit
    pred = photometric_predict(synthetic_survey, rows, seed=0)
    assert pred["n_train"] == int((split == 0).sum())
    assert np.all(np.isnan(pred["dn4000"]))  # no catalogue dn4000 in this survey: not fitted, NaN
    median = np.full(len(rows), np.median(z[split == 0]))
    assert M.sigma_nmad(pred["z"], z[rows]) < 0.7 * M.sigma_nmad(median, z[rows])
    # a smaller --pool-size fits on a seeded subset of the training split
    assert photometric_predict(synthetic_survey, rows, max_train=20, seed=0)["n_train"] == 20


def test_photometric_baseline_learns_lick_indices_from_the_images(synthetic_survey, tmp_path):
    """Lick targets: a mock's noiseless spectra measured as evaluate.py measures its reference; the
    synthetic continuum slope sets both the image colours and the indices, so held-out rows correlate."""
    from evaluation.baselines import noiseless_lick, photometric_predict
    from evaluation.measure import LICK_NAMES

    with h5py.File(synthetic_survey) as f:
        split, z = f["split"][:], f["catalog/z"][:]
    rows = np.flatnonzero(split != 0)
    pred = photometric_predict(synthetic_survey, rows, seed=0)
    ref = noiseless_lick(synthetic_survey, rows, z[rows])
    assert set(ref) == {f"lick_{n}" for n in LICK_NAMES}
    for k in ("lick_Hdelta_A", "lick_Mgb"):
        assert M.pearson(pred[k], ref[k]) > 0.5
    # no noiseless spectra (a real survey without MPA-JHU Lick columns): no Lick targets, no predictions
    bare = tmp_path / "bare.h5"
    shutil.copy(synthetic_survey, bare)
    with h5py.File(bare, "a") as f:
        del f["spectra/model"]
    assert noiseless_lick(bare, rows, z[rows]) == {}
    assert not any(k.startswith("lick_") for k in photometric_predict(bare, rows, seed=0))


def test_image_only_rows_score_the_photometric_column():
    from evaluation.run import Table, _image_only_rows

    rng = np.random.default_rng(0)
    n = 50
    truth = {"sigma_v": rng.uniform(50, 300, n), "ebv": rng.uniform(0, 0.5, n),
             "bpt_class": rng.integers(-1, 3, n)}
    phot = {"sigma_v": truth["sigma_v"].copy(), "ebv": rng.permutation(truth["ebv"]),
            "bpt_class": truth["bpt_class"].copy(), "agn": (truth["bpt_class"] == 2).astype(int)}
    t = Table()
    _image_only_rows(t, truth, phot, None, n)
    rows = {(r["quantity"], r["metric"]): r["values"] for r in t.rows}
    assert rows[("sigma_v", "pearson_rho")]["photometric"] == pytest.approx(1.0)
    assert rows[("sigma_v", "scatter [dex]")]["photometric"] == pytest.approx(0.0)
    assert abs(rows[("ebv", "pearson_rho")]["photometric"]) < 0.5  # shuffled: no correlation
    assert rows[("bpt_class (4 classes incl. -1)", "accuracy")]["photometric"] == 1.0
    assert rows[("AGN presence", "balanced_accuracy")]["photometric"] == 1.0
    assert ("age_lw", "pearson_rho") not in rows  # no truth, no row


def test_clear_errors(synthetic_survey, tmp_path):
    from evaluation.run import EvaluationError, load_inputs

    with pytest.raises(EvaluationError, match="nope.fits: file: does not exist"):
        load_inputs(tmp_path / "nope.fits")
    res = _fake_results(synthetic_survey, tmp_path / "r.fits")
    with pytest.raises(EvaluationError, match="missing.h5: file: survey does not exist"):
        load_inputs(res, tmp_path / "missing.h5")
    from tests.synthetic import write_synthetic_survey

    other = write_synthetic_survey(tmp_path / "other.h5", n=64, seed=0)
    with h5py.File(other, "r+") as f:
        f["catalog/id"][:] = f["catalog/id"][:] + 5
    with pytest.raises(EvaluationError, match=r"id: row \d+ has id \d+ but .*mismatched rows"):
        load_inputs(res, other)


def test_cli_returns_2_with_one_line_error(tmp_path, capsys):
    import evaluate

    assert evaluate.main(["--results", str(tmp_path / "none.fits")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "none.fits: file: does not exist" in err and "\n" not in err


# ----------------------------------------------------------------------------------------------------------
# the supervised CNN baseline
# ----------------------------------------------------------------------------------------------------------
def test_baseline_task_trains_and_loss_falls(synthetic_survey, tmp_path):
    import csv
    from pathlib import Path

    from training.baseline import BaselineTask
    from training.engine import train
    from utils.config import BaselineConfig, load_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(
        root / "params_baseline.yml",
        BaselineConfig,
        [
            f"data.path={synthetic_survey}",
            f"run.out_dir={tmp_path / 'run'}",
            "train.batch_size=8",
            "train.max_iterations=20",
            "run.log_every=1",
            "run.validate_every=20",
            "run.checkpoint_every=20",
            "validation.n_galaxies=8",
        ],
        preset="cpu",
    )
    metrics = train(0, cfg, BaselineTask())
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert np.isfinite(metrics["loss"]) and "z_sigma_nmad" in metrics
    # the checkpoint alone predicts in physical units (target standardisation stored in the model)
    from evaluation.baselines import cnn_predict

    pred = cnn_predict(tmp_path / "run" / "best.pt", synthetic_survey, np.arange(6))
    assert pred["z"].shape == (6,) and np.all((pred["agn_prob"] >= 0) & (pred["agn_prob"] <= 1))
    # physical units: the stored standardisation is the training split's z mean/std, and cnn_predict
    # applies it to the network's raw output (a missing or wrong de-standardisation fails here)
    import torch

    from datasets.schema import SPLIT_CODES
    from evaluation.baselines import _raw_images, _standardised
    from models.baseline import BaselineNet
    from models.checkpoint import load_checkpoint
    from training.baseline import baseline_targets

    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    sd = ck.get("ema_model") or ck["model"]
    t = baseline_targets(synthetic_survey)
    z_train = t["y"][t["split"] == SPLIT_CODES["train"], 0].astype(np.float64)
    z_train = z_train[np.isfinite(z_train)]
    assert float(sd["target_mean"][0]) == pytest.approx(z_train.mean(), rel=1e-5)
    assert float(sd["target_std"][0]) == pytest.approx(z_train.std(ddof=1), rel=1e-4)
    from utils.config import BaselineConfig, config_from_checkpoint_dict

    # the raw head output, recomputed independently of cnn_predict
    cfg_ck = config_from_checkpoint_dict(ck["run"]["config"], BaselineConfig, "ck")
    from datasets.photometry import N_FEATURES, image_features

    assert cfg_ck.model.photometry            # the cpu preset feeds the cutout's aperture photometry
    net = BaselineNet(cfg_ck.model.image_encoder, cfg_ck.model.image_width, photometry_features=N_FEATURES)
    net.load_state_dict(sd)
    net.eval()
    raw_imgs = _raw_images(synthetic_survey, np.arange(6))
    imgs = _standardised(raw_imgs, ck["run"]["band_mean"], ck["run"]["band_std"])
    with torch.no_grad():
        raw = net(imgs, torch.from_numpy(image_features(raw_imgs))).float()[:, 0].numpy().astype(np.float64)
    np.testing.assert_allclose(pred["z"], raw * z_train.std(ddof=1) + z_train.mean(), rtol=1e-4, atol=1e-6)


def test_compare_summarises_reports_side_by_side_with_exact_metric_names(tmp_path):
    from evaluation.compare import main as compare_main

    def rep(z):
        rows = [  # a "_vs_observed" row BEFORE the plain one must not be taken for it
            {"section": "indices", "quantity": "dn4000", "metric": "pearson_rho_vs_observed",
             "values": {"predicted": -1.0}},
            {"section": "indices", "quantity": "dn4000", "metric": "pearson_rho",
             "values": {"predicted": 0.7}},
            {"section": "redshift", "quantity": "z", "metric": "sigma_nmad",
             "values": {"predicted": z, "cnn": 0.02}},
            {"section": "calibration (M=8 candidates)", "quantity": "z",
             "metric": "pit_ks_distance (ideal 0)", "values": {"predicted": 0.15}},
        ]
        p = tmp_path / f"r{z}.json"
        p.write_text(json.dumps({"table": rows, "n_galaxies": 64, "results": "x.fits"}))
        return p

    out = tmp_path / "s.md"
    assert compare_main([f"quick={rep(0.1)}", f"reference={rep(0.018)}", "--out", str(out)]) == 0
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in out.read_text().splitlines() if ln.startswith("|")}
    assert lines["z sigma_NMAD"].split(" | ")[1:3] == ["0.1", "0.02"]
    assert lines["z sigma_NMAD"].split(" | ")[6] == "0.018"
    assert lines["Dn4000 rho"].split(" | ")[1] == "0.7" and "-1" not in lines["Dn4000 rho"]
    assert lines["z PIT KS distance"].split(" | ")[1] == "0.15"
    assert "Mgb rho" not in lines          # rows no report has are left out
    assert "chain against the best baseline" not in out.read_text()  # no vs_best_baseline entries
    assert compare_main(["no-equals-sign"]) == 2


def test_compare_shows_the_chain_against_the_best_baseline_with_its_interval(tmp_path):
    from evaluation.compare import main as compare_main

    vs = [{"section": "redshift", "quantity": "z", "metric": "sigma_nmad", "best_baseline": "photometric",
           "difference": 0.0138, "chain_better": False, "ci95": [0.0019, 0.023], "resolved": True},
          {"section": "spectrum", "quantity": "flux", "metric": "mse_median", "best_baseline": "train_mean",
           "difference": -0.0026, "chain_better": True, "ci95": [-0.0071, 0.0019], "resolved": False}]
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"table": [], "vs_best_baseline": vs, "n_galaxies": 48, "results": "x.fits"}))
    out = tmp_path / "s.md"
    assert compare_main([f"quick={p}", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## The chain against the best baseline" in text
    lines = {ln.split(" | ")[0].strip("| "): ln.strip("| ").split(" | ") for ln in text.splitlines()
             if ln.startswith("|")}
    assert lines["z sigma_NMAD"][1:] == ["photometric", "+0.0138 [+0.0019, +0.023]", "baseline better"]
    assert lines["spectrum MSE (median)"][1:] == ["train_mean", "-0.0026 [-0.0071, +0.0019]",
                                                  "chain better (not resolved)"]


def _benchmark(name):
    """benchmarks/<name>.py loaded as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chain_vs_prior_z_paired_bootstrap():
    paired = _benchmark("chain_vs_prior_z").paired
    rng = np.random.default_rng(3)
    zt = rng.uniform(0.05, 0.25, 400)
    sharp = zt + 0.01 * (1 + zt) * rng.standard_normal(400)
    broad = zt + 0.02 * (1 + zt) * rng.standard_normal(400)
    r = paired(sharp, broad, zt, boot=300)
    lo, hi = r["sigma_nmad_chain_vs_cnn"]["ci95"]
    assert -0.65 < lo < r["sigma_nmad_chain_vs_cnn"]["ratio_minus_1"] < hi < -0.3    # ~ -0.5, resolved
    same = paired(broad, broad, zt, boot=50)
    assert same["sigma_nmad_chain_vs_cnn"]["ci95"] == [0.0, 0.0]
    assert same["outlier_frac_chain_minus_cnn"]["difference"] == 0.0
    # the same numbers under other names (candidate_redshifts.py --against: "this" vs "other")
    named = paired(sharp, broad, zt, boot=300, names=("this", "other"))
    assert named["sigma_nmad_this_vs_other"] == r["sigma_nmad_chain_vs_cnn"]
    assert named["this"] == r["chain"] and "chain" not in named


def test_lowres_candidates_power_ratio_sees_shallow_lines():
    # benchmarks/lowres_candidates.py: the same spectra give 1; lines at half depth give ~1/4 (power);
    # the smooth continuum, removed by the running median, does not count
    mod = _benchmark("lowres_candidates")
    rng = np.random.default_rng(0)
    x = np.arange(563)
    lines = np.zeros((40, 563))
    for i in range(40):
        for c in rng.uniform(50, 550, 25):
            lines[i] -= 0.3 * np.exp(-0.5 * ((x - c) / 1.2) ** 2)
    cont = 1 + 0.5 * np.sin(x / 200.0)
    obs = cont + lines
    same = mod.band_ratios(obs, obs)
    assert all(v == 1.0 for v in same.values())
    half = mod.band_ratios(cont + 0.5 * lines, obs)
    assert all(0.2 < v < 0.3 for v in half.values()), half
    smooth_only = mod.band_ratios(np.broadcast_to(cont, obs.shape) + 0.0, obs)
    assert all(v < 0.01 for v in smooth_only.values()), smooth_only


def test_lowres_candidates_line_coherence_tells_lines_from_noise():
    # the truth's lines plus noise correlate with the truth; lines at random places (noise-like structure
    # of the same power) do not; a candidate whose fitted z is off is left out
    mod = _benchmark("lowres_candidates")
    rng = np.random.default_rng(1)
    x = np.arange(563)

    def lines(n):
        out = np.zeros((n, 563))
        for i in range(n):
            for c in rng.uniform(50, 550, 25):
                out[i] -= 0.3 * np.exp(-0.5 * ((x - c) / 1.2) ** 2)
        return 1 + out
    b = 30
    truth = lines(b)
    z = np.linspace(0.05, 0.2, b)
    obs = truth + 0.05 * rng.standard_normal((b, 563))
    cand = np.stack([truth + 0.05 * rng.standard_normal((b, 563)), lines(b)], axis=1)   # (B, 2, L)
    lz = np.stack([z, z], axis=1)
    lz[:5, 0] += 0.05                       # five right-line candidates at a wrong fitted z
    out = mod.line_coherence(cand, lz, np.zeros(b, int), obs, truth, z)
    assert out["top_draw_parent"]["n"] == b - 5 and out["top_draw_parent"]["median_corr"] > 0.8
    assert out["right_z_candidates"]["n"] == 2 * b - 5
    random_only = mod.line_coherence(cand, lz, np.ones(b, int), obs, truth, z)
    assert abs(random_only["top_draw_parent"]["median_corr"]) < 0.15
    assert out["observed_lowres"]["median_corr"] > 0.8
    assert abs(out["other_galaxy_nearest_z"]["median_corr"]) < 0.15   # these mock galaxies share no lines


def test_lowres_line_prior_partial_sampling_returns_what_an_oracle_denoiser_knows():
    # benchmarks/lowres_line_prior.py: noised to t0 and sampled back with a denoiser that knows x0 exactly,
    # the sample is x0; the noised input is not
    import importlib.util
    import sys
    from pathlib import Path

    import torch

    from diffusion.process import GaussianDiffusion
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("lowres_line_prior", bench / "lowres_line_prior.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    diff = GaussianDiffusion(num_timesteps=250)
    x0 = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))

    class Oracle:   # the partial process keeps the timesteps' values, so t here is the full process's
        def __call__(self, x, t, context=None):
            return diff.predict_eps(x, t, x0)

        def clip_range(self):
            return None
    for t0 in (10, 100):
        noisy, sample = mod.partial_sample(Oracle(), diff, None, x0, t0, [1, 2, 3])
        torch.testing.assert_close(sample, x0, atol=1e-4, rtol=1e-4)
        abar = diff.alphas_cumprod[t0]
        assert abs(float((noisy - x0).std() / ((1 - abar) / abar).sqrt()) - 1) < 0.05   # noised to t0


def test_cnn_agn_decision_thresholds_at_the_training_prevalence(tmp_path):
    """Balanced accuracy is maximised by p(AGN) > prevalence, not > 0.5: with 10 % AGN and a calibrated
    probability of 0.3 for every AGN (0.05 for the rest) the 0.5 rule never says AGN."""
    from evaluation.metrics import agn_decision
    from evaluation.truth import train_agn_fraction

    prob = np.r_[np.full(10, 0.3), np.full(90, 0.05)]
    truth = np.r_[np.ones(10, int), np.zeros(90, int)]
    assert M.balanced_accuracy((prob > 0.5).astype(int), truth) == 0.5
    assert M.balanced_accuracy(agn_decision(prob, 0.1), truth) == 1.0
    assert np.array_equal(agn_decision(prob, float("nan")), (prob > 0.5).astype(int))  # unknown: 0.5
    # the prevalence counts the TRAIN split only (bpt_class 2 = AGN)
    from datasets.schema import SPLIT_CODES, write_column
    from tests.synthetic import write_synthetic_survey

    path = write_synthetic_survey(tmp_path / "s.h5", n=64, seed=0)
    with h5py.File(path, "a") as f:
        train = f["split"][:] == SPLIT_CODES["train"]
        bpt = np.where(train, 0, 2)
        bpt[np.flatnonzero(train)[:12]] = 2
        bpt[np.flatnonzero(train)[12:15]] = -1           # unclassifiable: not AGN
        write_column(f, "bpt_class", bpt.astype(np.int8), "", "BPT class")
    assert train_agn_fraction(path) == pytest.approx(12 / train.sum())


def test_photometric_fit_cache_reuses_the_fit_and_keys_on_its_inputs(synthetic_survey, tmp_path, monkeypatch):
    """evaluate.py --cache: the second evaluation of a survey loads the fit instead of refitting, with the
    same predictions; another seed, pool size or a touched survey file is another entry."""
    import os

    import evaluation.photometric as P
    from evaluation.baselines import photometric_predict

    with h5py.File(synthetic_survey) as f:
        rows = np.flatnonzero(f["split"][:] != 0)
    cache = tmp_path / "cache"
    fresh = photometric_predict(synthetic_survey, rows, seed=0)
    first = photometric_predict(synthetic_survey, rows, seed=0, cache_dir=cache)
    assert len(list(cache.glob("photometric-*.pkl"))) == 1
    fits = []
    real_fit = P.fit_photometric
    monkeypatch.setattr(P, "fit_photometric", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    again = photometric_predict(synthetic_survey, rows, seed=0, cache_dir=cache)
    assert fits == []  # loaded, not refitted
    for k in fresh:
        assert np.array_equal(np.asarray(fresh[k]), np.asarray(again[k]), equal_nan=True), k
        assert np.array_equal(np.asarray(first[k]), np.asarray(again[k]), equal_nan=True), k
    photometric_predict(synthetic_survey, rows, seed=1, cache_dir=cache)
    photometric_predict(synthetic_survey, rows, max_train=20, seed=0, cache_dir=cache)
    assert len(fits) == 2 and len(list(cache.glob("photometric-*.pkl"))) == 3
    copy = tmp_path / "copy.h5"
    shutil.copy(synthetic_survey, copy)
    photometric_predict(copy, rows, seed=0, cache_dir=cache)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten survey: a new entry
    photometric_predict(copy, rows, seed=0, cache_dir=cache)
    assert len(fits) == 4 and len(list(cache.glob("photometric-*.pkl"))) == 5


def test_cache_entry_is_written_atomically_and_a_damaged_one_recomputed(tmp_path):
    from evaluation.cache import cached, entry_path

    calls = []
    value, hit = cached(tmp_path, "thing", {"a": 1}, lambda: calls.append(1) or {"x": np.arange(3)})
    entry = entry_path(tmp_path, "thing", {"a": 1})
    assert not hit and calls == [1] and [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temp left
    value, hit = cached(tmp_path, "thing", {"a": 1}, lambda: calls.append(1))
    assert hit and calls == [1] and np.array_equal(value["x"], np.arange(3))
    entry_path(tmp_path, "thing", {"a": 1}).write_bytes(b"\x80\x05truncated")
    value, hit = cached(tmp_path, "thing", {"a": 1}, lambda: calls.append(1) or 7)
    assert not hit and value == 7 and calls == [1, 1]
    assert cached(None, "thing", {"a": 1}, lambda: 8) == (8, False)  # no cache directory: always computed


def test_fill_cache_command_names_a_missing_file(tmp_path, capsys):
    from evaluation.baselines import main

    assert main(["--survey", str(tmp_path / "nope.h5"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.h5" in err and "--survey" in err
    survey = tmp_path / "s.h5"
    survey.write_bytes(b"")
    assert main(["--survey", str(survey), "--cache", str(tmp_path / "c"), "--threads", "0"]) == 2
    assert "--threads: 0" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_fill_cache_command_fits_the_photometric_baseline_once(synthetic_survey, tmp_path, capsys,
                                                               monkeypatch):
    """demo.sh fills the cache in one lane and reads it in the other: the second call reads the fit (no
    second fit) and says so."""
    import evaluation.photometric as P
    from evaluation.baselines import main

    fits = []
    real_fit = P.fit_photometric
    monkeypatch.setattr(P, "fit_photometric", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    argv = ["--survey", str(synthetic_survey), "--cache", str(tmp_path / "c"), "--threads", "1"]
    assert main(argv) == 0
    assert "fitted ->" in capsys.readouterr().err and fits == [1]
    assert main(argv) == 0
    assert "already in" in capsys.readouterr().err and fits == [1]


def test_retrieval_pool_cache_reuses_embeddings_and_keys_on_checkpoint_and_pool(synthetic_survey, tmp_path,
                                                                               monkeypatch):
    """evaluate.py --cache for the retrieval baseline: the pool's full-res embeddings are computed once per
    (ranker checkpoint, survey, pool) and reused with the same retrieved spectra; another pool or another
    checkpoint file (different bytes) is another entry."""
    import torch

    import evaluation.baselines as B
    from datasets.galaxy import build_cache
    from models.contrastive import ContrastiveModel
    from models.reference import reference_path

    ranker = reference_path("contrastive_sr")
    cache = build_cache(synthetic_survey)
    rows = cache.indices("test")
    pool = B.train_pool(cache, 1000, seed=0)
    encoded = []
    real = ContrastiveModel.encode_spectrum
    monkeypatch.setattr(ContrastiveModel, "encode_spectrum",
                        lambda self, x: encoded.append(len(x)) or real(self, x))
    store = tmp_path / "cache"
    fresh = B.retrieve(ranker, synthetic_survey, cache, rows, pool)
    assert sum(encoded) == len(pool)
    first = B.retrieve(ranker, synthetic_survey, cache, rows, pool, cache_dir=store)
    again = B.retrieve(ranker, synthetic_survey, cache, rows, pool, cache_dir=store)
    assert sum(encoded) == 2 * len(pool)  # the cached call embedded nothing
    for out in (first, again):
        assert np.array_equal(out["train_row"], fresh["train_row"])
        assert np.array_equal(out["score"], fresh["score"])
    B.retrieve(ranker, synthetic_survey, cache, rows, pool[:-3], cache_dir=store)  # another pool
    other = tmp_path / "other.pt"
    torch.save(torch.load(ranker, weights_only=True), other)  # same weights, other bytes: another sha256
    B.retrieve(other, synthetic_survey, cache, rows, pool, cache_dir=store)
    assert sum(encoded) == 4 * len(pool) - 3
    assert len(list(store.glob("retrieval_pool-*.pkl"))) == 3


def test_missing_observed_spectra_are_not_counted_as_ceiling_outliers(synthetic_survey, tmp_path,
                                                                     perfect_and_shuffled):
    """The observed column's z outlier fraction counts only galaxies that have an observed spectrum (a NaN
    flux_obs has no redshift to get wrong); the predicted spectra of the same galaxies still count."""
    from evaluation.run import evaluate

    # with every observed spectrum: the ivar-weighted fits of 2 of the 8 synthetic test galaxies are
    # outliers (rows 1 and 6); the perfect prediction (a copy, fitted without ivar) has none
    base = _row(perfect_and_shuffled["perfect"], "redshift", "z", "outlier_frac")
    assert base["observed"] == 2 / 8 and base["predicted"] == 0.0, base
    res = _fake_results(synthetic_survey, tmp_path / "r.fits", unusable_obs=(0, 3))  # two good fits lost
    rep = evaluate(res, out_dir=tmp_path / "fig", report=tmp_path / "rep", max_fit=0, figures=False,
                   log=lambda *a: None)
    out = _row(rep, "redshift", "z", "outlier_frac")
    assert out["observed"] == pytest.approx(2 / 6) and out["predicted"] == 0.0, out  # observed was 4 / 8
    assert any("6 of 8 galaxies with a usable observed spectrum" in n for n in rep["notes"]), rep["notes"]
