"""generate.z_prior: the redshift-consistent selection (generation/chain.py) and the photometry-fed CNN."""
import re

import numpy as np
import pytest
import torch

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, SMOOTH_SIGMA
from generation.chain import LOWRES_SIGMA, candidate_redshifts, prior_rank_key
from generation.cli import main as generate_main
from tests.test_analysis import LITE, preprocess, spec
from tests.test_generate import _gen_args, trained  # noqa: F401  (module fixture reused)
from tests.test_training import _args
from training.cli import main as train_main
from utils.results_fits import read_spectra_fits


def test_prior_rank_key_orders_consistent_first_then_nearest_redshift():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.7]])
    z_cand = np.array([[0.30, 0.101, 0.11, np.nan, 0.16]])
    key = prior_rank_key(scores, z_cand, np.array([0.10]), width=0.03)
    order = torch.argsort(key[0], descending=True).tolist()
    # consistent (|dz|/1.1 <= 0.03): 0.101 (score 0.1) and 0.11 (0.5), by score; then 0.16, then 0.30;
    # the candidate without a redshift is last
    assert order == [2, 1, 4, 0, 3]
    torch.testing.assert_close(key[0, [1, 2]], scores[0, [1, 2]])
    # a galaxy without a prior keeps its plain contrastive ranking
    key = prior_rank_key(scores, z_cand, np.array([np.nan]), width=0.03)
    torch.testing.assert_close(key, scores)


@pytest.mark.parametrize("name", LITE)
def test_candidate_redshifts_of_preprocessed_sdss_spectra_at_both_resolutions(name):
    """The fitter reads a real spectrum's redshift off the chain's own grids (low-res = every 8th pixel)."""
    s = spec(name)
    grid, f = preprocess(s)            # linear flux (noisy real spectra can dip below 0: no log here)
    assert np.array_equal(grid, FULLRES_WAVE)
    full = f[None].astype(np.float32)
    z_full = candidate_redshifts(full, FULLRES_WAVE, SMOOTH_SIGMA)
    z_low = candidate_redshifts(full[:, ::8], LOWRES_WAVE, LOWRES_SIGMA)
    assert abs(z_full[0] - s.z) < 1e-3
    assert abs(z_low[0] - s.z) < 3e-3


@pytest.fixture(scope="module")
def baseline_ck(synthetic_survey, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    tiny = ["model.image_width=8", "model.photometry=true", "train.batch_size=16", "validation.n_galaxies=8",
            "run.log_every=2"]
    assert train_main("baseline", _args(synthetic_survey, out, tiny, 3)) == 0
    return str(out / "best.pt")


def test_baseline_with_photometry_trains_and_predicts(synthetic_survey, baseline_ck):
    from evaluation.baselines import cnn_predict
    from models.loading import load_model

    lm = load_model(baseline_ck, "baseline")
    assert lm.model.photometry is not None
    # the training split's feature statistics were set (not the defaults 0 / 1)
    assert lm.model.photometry.feature_mean.abs().sum() > 0
    out = cnn_predict(baseline_ck, synthetic_survey, np.arange(6))
    assert out["z"].shape == (6,) and np.isfinite(out["z"]).all()


def test_chain_with_z_prior_selects_consistent_candidates(synthetic_survey, trained, baseline_ck,  # noqa: F811
                                                          tmp_path):
    ck = dict(trained, baseline=baseline_ck)
    out = tmp_path / "gen.fits"
    width = 0.05
    assert generate_main(_gen_args(synthetic_survey, ck, out, ["generate.z_prior=baseline",
                                                              f"generate.z_prior_width={width}"])) == 0
    res = read_spectra_fits(out)
    t = res["table"]
    assert res["header"]["z_prior"] == "baseline" and "baseline" in res["header"]["checkpoint_sha256"]
    assert t["z_prior"].shape == (10,) and np.isfinite(t["z_prior"]).all()
    assert t["lowres_z"].shape == (10, 3) and t["fullres_z"].shape == (10, 3)
    # the written redshifts are those of the written candidates
    lr_cube = res["cubes"]["LOWRES_CANDIDATES"][0].astype(np.float32)
    np.testing.assert_allclose(candidate_redshifts(lr_cube, LOWRES_WAVE, LOWRES_SIGMA), t["lowres_z"],
                               atol=2e-4)
    # kept = the k best by the prior's key; top = the best full-res candidate by it
    scores = torch.tensor(t["lowres_scores"].astype(np.float32))
    key = prior_rank_key(scores, t["lowres_z"], t["z_prior"], width)
    np.testing.assert_array_equal(np.sort(key.topk(2, dim=1).indices.numpy(), 1), np.sort(t["kept"], 1))
    scores = torch.tensor(t["fullres_scores"].astype(np.float32))
    key = prior_rank_key(scores, t["fullres_z"], t["z_prior"], width)
    np.testing.assert_array_equal(key.argmax(1).numpy(), t["top"])


def test_z_prior_settings_are_checked_before_work(synthetic_survey, trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "x.fits"
    assert generate_main(_gen_args(synthetic_survey, trained, out, ["generate.z_prior=photoz"])) == 2
    assert "generate.z_prior: 'photoz' is not one of [None, 'baseline']" in capsys.readouterr().err
    ck = dict(trained, baseline=str(tmp_path / "nope.pt"))
    assert generate_main(_gen_args(synthetic_survey, ck, out, ["generate.z_prior=baseline"])) == 2
    assert "nope.pt: file: does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_z_consistent_mean_averages_only_candidates_that_agree_with_the_top_one():
    from generation.chain import z_consistent_mean
    cands = np.stack([np.full((3, 4), v, np.float32) for v in (1.0, 2.0, 4.0)], axis=1)  # (B=3, M=3, L=4)
    z = np.array([[0.100, 0.1002, 0.20],     # top 0: 1 agrees (2e-4 <= 0.003 x 1.1), 2 not
                  [np.nan, 0.10, 0.10],      # top 0 has no z: alone
                  [0.10, 0.10, 0.10]])       # top 2: all three agree
    out = z_consistent_mean(cands, z, np.array([0, 0, 2]), width=0.003)
    np.testing.assert_allclose(out[:, 0], [1.5, 1.0, 7 / 3], rtol=1e-6)
    assert out.shape == (3, 4) and out.dtype == np.float32


def test_z_aligned_mean_moves_candidates_to_the_top_ones_redshift():
    from datasets.preprocess import FULLRES_WAVE
    from generation.chain import z_aligned_mean, z_consistent_mean

    def spectrum(z):  # one narrow absorption line (sigma 2 A) at 5000 A rest
        return 1.0 - 0.5 * np.exp(-0.5 * ((FULLRES_WAVE - 5000.0 * (1 + z)) / 2.0) ** 2)
    z = np.array([[0.1000, 0.1015, 0.0985, 0.2]])            # the last one disagrees: not averaged
    cands = np.stack([spectrum(v) for v in z[0]])[None].astype(np.float32)
    top = np.array([0])
    aligned = z_aligned_mean(cands, z, top, width=0.003)
    plain = z_consistent_mean(cands, z, top, width=0.003)
    line = np.abs(FULLRES_WAVE - 5500.0) < 20
    assert np.abs(aligned - cands[0, 0]).max() < 0.02          # the line where the top one has it, as deep
    assert aligned[0, line].min() < 0.53                       # (linear interpolation: within 2 % of depth)
    assert plain[0, line].min() > 0.75                          # unaligned: 7.5 A apart, the line smeared
    assert aligned.shape == (1, 4500) and aligned.dtype == np.float32
    # at the red end a candidate at higher z has nothing to give: the others are averaged there
    flat = np.stack([np.full(4500, v, np.float32) for v in (1.0, 2.0, 4.0)])[None]
    out = z_aligned_mean(flat, np.array([[0.1, 0.1029, 0.1]]), np.array([0]), width=0.003)
    np.testing.assert_allclose(out[0, [0, -1]], [7 / 3, 2.5], rtol=1e-6)


def test_consensus_z_is_the_median_of_the_candidates_the_prior_allows():
    from generation.chain import consensus_z
    zl = np.array([[0.10, 0.11, 0.12, 0.30, np.nan],       # prior 0.11: 0.30 is not consistent
                   [0.50, 0.52, 0.54, np.nan, np.nan],     # prior 0.10: none consistent -> all finite ones
                   [np.nan] * 5])                          # no redshift at all
    out = consensus_z(zl, np.array([0.11, 0.10, 0.2]), width=0.02)
    np.testing.assert_allclose(out[:2], [0.11, 0.52])
    assert np.isnan(out[2])
    np.testing.assert_allclose(consensus_z(zl[:1]), [0.115])  # no prior: all four


def test_z_target_mean_moves_the_draws_near_the_target_onto_it():
    from datasets.preprocess import FULLRES_WAVE
    from generation.chain import z_target_mean

    def spectrum(z):  # one narrow absorption line (sigma 2 A) at 5000 A rest
        return 1.0 - 0.5 * np.exp(-0.5 * ((FULLRES_WAVE - 5000.0 * (1 + z)) / 2.0) ** 2)
    z = np.array([[0.1000, 0.1015, 0.0985, 0.2]])           # the last one is far from the target
    cands = np.stack([spectrum(v) for v in z[0]])[None].astype(np.float32)
    out = z_target_mean(cands, z, np.array([0.1008]), np.array([3]), width=0.01)
    line = np.abs(FULLRES_WAVE - 5000.0 * 1.1008) < 1.5
    assert out[0, line].min() < 0.53                          # all three near ones land on 5504 A, as deep
    assert np.abs(out[0] - spectrum(0.1008)).max() < 0.02
    # none within the width: the nearest one alone, moved; no target: the top one as drawn
    np.testing.assert_allclose(z_target_mean(cands, z, np.array([0.19]), np.array([0]), 0.001)[0],
                               spectrum(0.19), atol=0.02)
    np.testing.assert_array_equal(z_target_mean(cands, z, np.array([np.nan]), np.array([2]), 0.01)[0],
                                  cands[0, 2])
    # a flat spectrum moved past the grid's end: covered pixels keep their value, the uncovered edge too
    flat = np.stack([np.full(4500, v, np.float32) for v in (1.0, 2.0)])[None]
    out = z_target_mean(flat, np.array([[0.1, 0.105]]), np.array([0.09]), np.array([0]), width=0.02)
    np.testing.assert_allclose(out[0, [0, 2000]], [1.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(out[0, -1], 1.5, rtol=1e-6)


@pytest.mark.parametrize("mode", ["z_mean", "z_aligned", "consensus"])
def test_chain_prediction_z_mean_without_prior(synthetic_survey, trained, tmp_path, capsys, mode):  # noqa: F811
    from generation.chain import consensus_z, z_aligned_mean, z_consistent_mean, z_target_mean
    out = tmp_path / "gen.fits"
    assert generate_main(_gen_args(synthetic_survey, trained, out, [f"generate.prediction={mode}",
                                                                   "generate.prediction_width=0.01"])) == 0
    res = read_spectra_fits(out)
    t, cands = res["table"], res["cubes"]["FULLRES_CANDIDATES"][0]
    assert res["header"]["prediction"] == mode and "z_prior" not in t
    assert t["fullres_z"].shape == (10, 3)
    if mode == "consensus":
        assert t["lowres_z"].shape == (10, 3)
        np.testing.assert_allclose(t["z_consensus"], consensus_z(t["lowres_z"]))
        zt = t["z_consensus"][:, None]
        expect = z_target_mean(cands, t["fullres_z"], t["z_consensus"], t["top"], 0.01)
        # benchmarks/repredict.py re-derives the prediction from the stored candidates, as generate.py would
        from tests.test_evaluate import _benchmark
        rp = _benchmark("repredict")
        again = rp.repredict(read_spectra_fits(out), "consensus", 0.01)
        np.testing.assert_allclose(again["spectra"]["flux_pred"], res["spectra"]["flux_pred"], rtol=1e-6)
        assert rp.main([str(out), str(tmp_path / "top.fits"), "--prediction", "top"]) == 0
        top = read_spectra_fits(tmp_path / "top.fits")
        np.testing.assert_array_equal(top["spectra"]["flux_pred"], cands[np.arange(10), t["top"]])
        assert top["header"]["prediction"] == "top" and top["header"]["repredicted_from"] == "consensus"
    else:
        assert "lowres_z" not in t
        zt = t["fullres_z"][np.arange(10), t["top"]][:, None]
        average = z_aligned_mean if mode == "z_aligned" else z_consistent_mean
        expect = average(cands, t["fullres_z"], t["top"], 0.01)
    np.testing.assert_allclose(res["spectra"]["flux_pred"], expect, rtol=1e-6)
    # some galaxies did average several draws (else this would only re-test "top")
    assert ((np.abs(t["fullres_z"] - zt) <= 0.01 * (1 + zt)).sum(1) > 1).any()
    assert not generate_main(_gen_args(synthetic_survey, trained, tmp_path / "y.fits",
                                       ["generate.prediction=median"])) == 0
    err = capsys.readouterr().err
    assert "generate.prediction: 'median' is not one of ['top', 'z_mean', 'z_aligned', 'consensus']" in err


def test_stage_samplers_and_their_checks():
    from tests.test_generate import ROOT
    from utils.config import ConfigError, GenerativeConfig, load_config
    params = ROOT / "params_generative.yml"
    cfg = load_config(params, GenerativeConfig, overrides=[
        "generate.sampler=ddim", "generate.steps=10", "generate.eta=1.0", "generate.alpha_bar_min=0.02",
        "generate.lowres_sampler=ancestral", "generate.lowres_alpha_bar_min=0.0"]).generate
    # the low-res stage: its own sampler, the shared steps (ancestral visits all T anyway), no ddim eta
    # ancestral visits all T steps: the results header must not say "steps: 10" (it did)
    assert cfg.stage_sampler("lr") == {"sampler": "ancestral", "steps": None, "alpha_bar_min": 0.0,
                                       "eta": 0.0, "start": "noise", "guidance": 1.0}
    assert cfg.stage_sampler("sr") == {"sampler": "ddim", "steps": 10, "alpha_bar_min": 0.02, "eta": 1.0,
                                       "start": "noise", "guidance": 1.0}
    # classifier-free guidance: the low-res stage's own weight, or the shared one
    g = load_config(params, GenerativeConfig, overrides=["generate.lowres_guidance=2.0"]).generate
    assert (g.stage_sampler("lr")["guidance"], g.stage_sampler("sr")["guidance"]) == (2.0, 1.0)
    # the low-res stage's own start (the skipped steps taken exactly), or the shared one
    g = load_config(params, GenerativeConfig, overrides=["generate.lowres_start=ancestral"]).generate
    assert (g.stage_sampler("lr")["start"], g.stage_sampler("sr")["start"]) == ("ancestral", "noise")
    g = load_config(params, GenerativeConfig, overrides=["generate.start=ancestral"]).generate
    assert (g.stage_sampler("lr")["start"], g.stage_sampler("sr")["start"]) == ("ancestral", "ancestral")
    g = load_config(params, GenerativeConfig, overrides=["generate.lowres_start=ancestral:4"]).generate
    assert (g.stage_sampler("lr")["start"], g.stage_sampler("sr")["start"]) == ("ancestral:4", "noise")
    plain = load_config(params, GenerativeConfig).generate
    assert plain.stage_sampler("lr") == plain.stage_sampler("sr")
    # alpha_bar_min null = each sampler's own start: the few-step ones skip the near-pure-noise end
    own = load_config(params, GenerativeConfig, overrides=[
        "generate.alpha_bar_min=null", "generate.sampler=dpmpp_2m",
        "generate.lowres_sampler=ancestral"]).generate
    assert (own.stage_sampler("lr")["alpha_bar_min"], own.stage_sampler("sr")["alpha_bar_min"]) == (0.0, 0.02)
    # the low-res stage's own eta: a stochastic DDIM low-res stage under a deterministic DDIM one, and a
    # low-res DDIM with eta under the ancestral super-resolution
    ddim10 = ["generate.sampler=ddim", "generate.steps=10"]
    for over, want in (([*ddim10, "generate.lowres_eta=0.5"], (0.5, 0.0)),
                       (["generate.lowres_sampler=ddim", "generate.lowres_steps=10",
                         "generate.lowres_eta=1.0"], (1.0, 0.0))):
        g = load_config(params, GenerativeConfig, overrides=over).generate
        assert (g.stage_sampler("lr")["eta"], g.stage_sampler("sr")["eta"]) == want
    for bad, words in ((["generate.lowres_sampler=bogus"], "generate.lowres.sampler"),
                       (["generate.lowres_eta=0.5"], "generate.lowres.eta"),
                       (["generate.lowres_steps=0", "generate.lowres_sampler=ddim"], "generate.lowres.steps"),
                       (["generate.lowres_alpha_bar_min=1.5"], "generate.lowres.alpha_bar_min"),
                       (["generate.start=exact"], "generate.start: 'exact'"),
                       (["generate.lowres_start=exact"], "generate.lowres_start: 'exact'"),
                       (["generate.lowres_start=ancestral:0"], "generate.lowres_start: 'ancestral:0' is not"),
                       (["generate.lowres_guidance=-1"], "generate.lowres_guidance: -1.0 must be in [0, 20]"),
                       (["generate.guidance=50"], "generate.guidance: 50.0 must be in [0, 20]")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(params, GenerativeConfig, overrides=bad)


def test_spread_keep_keeps_the_best_and_a_seeded_sample_of_the_consistent_rest():
    import torch

    from generation.chain import prior_rank_key, spread_keep
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0],
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]])
    # galaxy 0: candidates 0-5 consistent with the prior, 6-7 not; galaxy 1: only 0 and 7 consistent
    z = np.array([[0.1] * 6 + [0.3, 0.31], [0.1, 0.3, 0.31, 0.32, 0.33, 0.34, 0.35, 0.1]])
    key = prior_rank_key(scores, z, np.array([0.1, 0.1]), 0.02)
    kept = spread_keep(key, 3, [11, 12]).numpy()
    assert kept[0, 0] == 1 and kept[1, 0] == 0                    # slot 0: the best-ranked, as top-k has it
    assert set(kept[0, 1:]) <= {0, 2, 3, 4, 5} and len(set(kept[0])) == 3   # a sample of the consistent rest
    assert kept[1, 1] == 7 and kept[1, 2] == 1          # too few consistent: the best of the rest fill
    # seeded per galaxy: the same galaxy keeps the same candidates in another batch, another seed differs
    np.testing.assert_array_equal(spread_keep(key[:1], 3, [11]).numpy(), kept[:1])
    draws = {tuple(spread_keep(key[:1], 3, [s]).numpy()[0, 1:]) for s in range(20)}
    assert len(draws) > 3                                         # not the top-k in disguise
    assert all(1 not in d and 6 not in d and 7 not in d for d in draws)
    # sample_all: the same best one, the others drawn among ALL the rest (the prior's outcasts too)
    wide = {tuple(spread_keep(key[:1], 3, [s], among_all=True).numpy()[0]) for s in range(40)}
    assert all(d[0] == 1 and 1 not in d[1:] for d in wide)
    assert any(6 in d or 7 in d for d in wide)


def test_chain_keep_policy_sample(synthetic_survey, trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "gen.fits"
    assert generate_main(_gen_args(synthetic_survey, trained, out, ["generate.keep_policy=sample"])) == 0
    res = read_spectra_fits(out)
    t = res["table"]
    assert res["header"]["keep_policy"] == "sample"
    np.testing.assert_array_equal(t["kept"][:, 0], np.argmax(t["lowres_scores"], axis=1))  # the best first
    assert (t["kept"] >= 0).all() and all(len(set(r)) == r.size for r in t["kept"])
    assert not generate_main(_gen_args(synthetic_survey, trained, tmp_path / "y.fits",
                                       ["generate.keep_policy=random"])) == 0
    assert ("generate.keep_policy: 'random' is not one of ['top', 'sample', 'sample_all']"
            in capsys.readouterr().err)


def test_chain_guidance_needs_a_model_trained_with_a_null_condition(synthetic_survey, trained, tmp_path,  # noqa: F811
                                                                     capsys):
    assert generate_main(_gen_args(synthetic_survey, trained, tmp_path / "g.fits",
                                   ["generate.lowres_guidance=2.0"])) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "generative_lr/best.pt: train.cond_dropout: 0, but generate.lowres_guidance is 2.0" in err
    # a low-res model fine-tuned from the tiny one with a null condition (model.init_weights): guided
    from tests.test_generate import TINY_DIFFUSION
    out = tmp_path / "cfg_lr"
    assert train_main("generative", _args(synthetic_survey, out, TINY_DIFFUSION, 2, [
        "train.stage=lr", "model.standardize=true", "train.cond_dropout=0.5",
        f"model.init_weights={trained['diffusion_lr']}"])) == 0
    ck = {**trained, "diffusion_lr": str(out / "best.pt")}
    for w in (1.0, 2.0):
        assert generate_main(_gen_args(synthetic_survey, ck, tmp_path / f"g{w}.fits",
                                       [f"generate.lowres_guidance={w}"])) == 0
    one, two = (read_spectra_fits(tmp_path / f"g{w}.fits") for w in (1.0, 2.0))
    assert two["header"]["lowres_sampling"]["guidance"] == 2.0 and two["header"]["guidance"] == 1.0
    a, b = (r["cubes"]["LOWRES_CANDIDATES"][0] for r in (one, two))
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4   # the guided low-res candidates differ


def test_reference_recalibrate_rewrites_batchnorm_statistics(synthetic_survey, baseline_ck, tmp_path):
    import json
    import shutil

    import torch

    from models.loading import load_model
    from models.reference import MANIFEST, load_manifest, main, reference_path, sha256
    root = tmp_path / "ref"
    root.mkdir()
    shutil.copy(baseline_ck, root / "baseline.pt")
    entry = {"file": "baseline.pt", "sha256": sha256(root / "baseline.pt")}
    (root / MANIFEST).write_text(json.dumps({"files": {"baseline": entry}}))
    before = load_model(root / "baseline.pt", "baseline").model.state_dict()
    assert main(["recalibrate", "--survey", str(synthetic_survey), "--dir", str(root), "--roles", "baseline",
                 "--n", "32"]) == 0
    entry = load_manifest(root)["files"]["baseline"]
    assert entry["batchnorm"]["images"] == 32 and entry["sha256"] == sha256(root / "baseline.pt")
    after = load_model(reference_path("baseline", root), "baseline").model.state_dict()
    stats = [k for k in before if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)          # new statistics
    weights = [k for k in before if k not in stats and not k.endswith("num_batches_tracked")]
    assert all(torch.allclose(before[k].float(), after[k].float(), rtol=1e-3, atol=1e-3) for k in weights)


def test_validation_recalibrates_the_ema_batchnorm_statistics_only(synthetic_survey, tmp_path):
    """validation.batchnorm_images: the saved EMA model carries BatchNorm statistics of its own weights
    (not the trained model's copied ones); the weights themselves are those of a run without it."""
    from models.checkpoint import load_checkpoint
    tiny = ["model.image_width=8", "model.photometry=true", "train.batch_size=16", "validation.n_galaxies=8",
            "run.log_every=2", "train.ema_decay=0.9"]
    ck = {}
    for n in (0, 32):
        out = tmp_path / f"bn{n}"
        sets = tiny + [f"validation.batchnorm_images={n}"]
        assert train_main("baseline", _args(synthetic_survey, out, sets, 3)) == 0
        ck[n] = load_checkpoint(out / "last.pt")
    stats = [k for k in ck[0]["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k, v in ck[0]["model"].items():
        assert torch.equal(v, ck[32]["model"][k]), k                      # training unchanged
    for k in stats:
        assert torch.equal(ck[0]["ema_model"][k], ck[0]["model"][k])      # off: the copied statistics
        assert not torch.equal(ck[32]["ema_model"][k], ck[32]["model"][k])  # on: the EMA weights' own
