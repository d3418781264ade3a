"""Photometric conditioning (model.photometry / model.global_context), preset inheritance and the shipped
reference models' loader."""
import json

import numpy as np
import pytest
import torch

from datasets.photometry import N_FEATURES, image_features, measure_photometry, photometric_features
from models.conditioning import PhotometryEncoder, set_photometry_statistics
from models.contrastive import ContrastiveModel
from models.unet1d import ConditionalDenoiser

pytestmark = pytest.mark.usefixtures("single_thread")


def _denoiser(**kw):
    torch.manual_seed(0)
    return ConditionalDenoiser(image_width=8, data_length=64, base=16, mults=(1, 2), attn_levels=(2,),
                               head_dim=8, num_timesteps=50, **kw).eval()


def test_image_features_shape_finite_and_flux_dependent():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 0.03, (3, 5, 64, 64)).astype(np.float32)
    y, x = np.mgrid[:64, :64]
    blob = np.exp(-((x - 31.5) ** 2 + (y - 31.5) ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    img[1] += 5 * blob  # a bright galaxy
    img[2] += 0.5 * blob  # the same galaxy 10x fainter
    f = image_features(img)
    assert f.shape == (3, N_FEATURES) and f.dtype == np.float32 and np.isfinite(f).all()
    # r-band magnitude in the 4" aperture: 2.5 mag fainter (10x flux), colours unchanged
    names = photometric_features(measure_photometry(img))[1]
    k = names.index("mag_r_r4")
    assert f[2, k] - f[1, k] == pytest.approx(2.5, abs=0.05)
    c = names.index("g-r_r4")
    assert f[2, c] == pytest.approx(f[1, c], abs=0.05)


def test_photometry_encoder_standardises_with_its_statistics():
    enc = PhotometryEncoder(4, dim=6, n_tokens=2)
    x = np.random.default_rng(1).normal(100.0, 5.0, (50, 4))
    x[:, 3] = 7.0  # a constant feature must not divide by ~0
    set_photometry_statistics(enc, x)
    assert torch.allclose(enc.feature_mean, torch.tensor(x.mean(0), dtype=torch.float32))
    assert enc.feature_std[3] == 1.0
    out = enc(torch.tensor(x[:3], dtype=torch.float32))
    assert out.shape == (3, 2, 6) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expected \(B, 4\)"):
        enc(torch.zeros(3, 5))


def test_denoiser_uses_photometry_tokens_and_global_context():
    m = _denoiser(photometry_features=N_FEATURES, photometry_tokens=3, global_context=True)
    # a trained-looking global-context projection (it starts at zero, i.e. exactly the paper model)
    torch.nn.init.normal_(m.unet.cond_proj.weight, std=0.5)
    img = torch.randn(2, 5, 64, 64)
    phot = torch.randn(2, N_FEATURES)
    ctx = m.encode_context(img, phot)
    assert ctx.shape[1] == 4 + 3  # 2x2 ResNet tokens + 3 photometry tokens
    x, t = torch.randn(2, 64), torch.tensor([10, 30])
    with torch.no_grad():
        a = m(x, t, images=img, photometry=phot)
        b = m(x, t, images=img, photometry=phot + 1.0)
        kv = m(x, t, context=m.precompute_context(ctx))
    assert not torch.allclose(a, b)  # the photometry reaches the output
    assert torch.allclose(a, kv, atol=1e-5)  # the K/V cache carries the pooled context too
    with pytest.raises(ValueError, match="photometry"):
        m.encode_context(img)


def test_switches_off_is_the_paper_model():
    plain = _denoiser()
    assert plain.photometry is None and plain.unet.cond_proj is None
    names = set(plain.state_dict())
    cond = _denoiser(photometry_features=N_FEATURES, global_context=True)
    extra = set(cond.state_dict()) - names
    assert extra and all(k.startswith(("photometry.", "unet.cond_proj.")) for k in extra)
    assert names <= set(cond.state_dict())


def test_contrastive_image_embedding_sees_photometry():
    torch.manual_seed(0)
    m = ContrastiveModel("resnet18", latent_dim=16, spectrum_base=8, spectrum_mults=(1, 2), image_width=8,
                         photometry_features=N_FEATURES).eval()
    img, phot = torch.randn(2, 5, 64, 64), torch.randn(2, N_FEATURES)
    with torch.no_grad():
        a, b = m.encode_image(img, phot), m.encode_image(img, phot * 2)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="photometry"):
        m.encode_image(img)


def test_preset_extends(tmp_path):
    from utils.config import ConfigError, GenerativeConfig, load_config
    cfg = load_config("params_generative.yml", GenerativeConfig, ["train.stage=sr"], "reference")
    assert cfg.model.photometry and cfg.model.global_context  # from the cpu preset it extends
    assert cfg.model.base == 16 and cfg.train.crop_length == 512
    assert cfg.train.ema_decay == 0.999  # its own value wins over cpu's
    bad = tmp_path / "p.yml"
    bad.write_text("name: x\npresets:\n  a: {extends: b}\n  b: {extends: a}\n")
    with pytest.raises(ConfigError, match=r"presets\.\w\.extends: .* loop"):
        load_config(bad, GenerativeConfig, [], "a")
    bad.write_text("name: x\npresets:\n  a: {extends: nope}\n")
    with pytest.raises(ConfigError, match=r"presets\.a\.extends: 'nope' is not a preset"):
        load_config(bad, GenerativeConfig, [], "a")


def _fake_reference(tmp_path):
    from models.reference import MANIFEST, sha256
    files = {}
    for role in ("diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr", "baseline"):
        p = tmp_path / f"{role}.pt"
        torch.save({"run": {}, "model": {"w": torch.zeros(3)}}, p)
        files[role] = {"file": p.name, "sha256": sha256(p)}
    (tmp_path / MANIFEST).write_text(json.dumps({"files": files}))
    return tmp_path


def test_reference_loader_checks_files_against_the_manifest(tmp_path):
    from models.reference import ReferenceError, reference_checkpoints, reference_path
    root = _fake_reference(tmp_path)
    assert set(reference_checkpoints(root)) == {"diffusion_lr", "diffusion_sr", "contrastive_lr",
                                                "contrastive_sr", "baseline"}
    (root / "diffusion_sr.pt").write_bytes(b"damaged")
    with pytest.raises(ReferenceError, match=r"diffusion_sr\.pt: sha256: .* does not match"):
        reference_path("diffusion_sr", root)
    (root / "baseline.pt").unlink()
    with pytest.raises(ReferenceError, match=r"baseline\.pt: file: missing"):
        reference_path("baseline", root)
    (root / "manifest.json").unlink()
    with pytest.raises(ReferenceError, match=r"manifest\.json: file: missing"):
        reference_path("baseline", root)


def test_export_of_one_role_keeps_the_other_entries(tmp_path):
    from models.checkpoint import save_checkpoint
    from models.reference import ReferenceError, export, load_manifest, reference_checkpoints
    (tmp_path / "ref").mkdir()
    root = _fake_reference(tmp_path / "ref")
    before = load_manifest(root)["files"]
    run = tmp_path / "runs" / "baseline"
    run.mkdir(parents=True)
    save_checkpoint({"run": {"format": 1, "config": {"name": "baseline"}, "survey_version": "mock-sdss/v2"},
                     "model": {"w": torch.ones(5000)}}, run / "best.pt")
    (run / "final_metrics.json").write_text(json.dumps({"z_sigma_nmad": 0.014}))
    m = export(tmp_path / "runs", root, roles=["baseline"])
    assert m["files"]["baseline"]["validation"] == {"z_sigma_nmad": 0.014}   # no metrics.csv: the final ones
    # with a metrics.csv: the validation logged at the exported (best) checkpoint's iteration
    save_checkpoint({"run": {"format": 1, "config": {"name": "baseline"}, "survey_version": "mock-sdss/v2"},
                     "model": {"w": torch.ones(5000)}, "trainer": {"iteration": 500}}, run / "best.pt")
    (run / "metrics.csv").write_text("time,iteration,loss,val_z_sigma_nmad\n1,500,0.3,\n2,500,,0.016\n"
                                     "3,3000,,0.014\n")
    m = export(tmp_path / "runs", root, roles=["baseline"])
    assert m["files"]["baseline"]["iteration"] == 500
    assert m["files"]["baseline"]["validation"] == {"iteration": 500, "z_sigma_nmad": 0.016}
    assert m["files"]["baseline"]["final_validation"] == {"z_sigma_nmad": 0.014}
    assert list(m["files"]) == ["diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr",
                                "baseline"]
    for role in ("diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr"):
        assert m["files"][role]["sha256"] == before[role]["sha256"]
    assert m["files"]["baseline"]["sha256"] != before["baseline"]["sha256"]
    assert m["files"]["baseline"]["commit"]
    assert load_manifest(root) == json.loads(json.dumps(m))
    reference_checkpoints(root)        # every file verifies against the rewritten manifest
    with pytest.raises(ReferenceError, match=r"--roles: \['cnn'\] not among"):
        export(tmp_path / "runs", root, roles=["cnn"])
    # a role's run elsewhere (a fine-tune): --source ROLE=DIR
    tuned = tmp_path / "runs" / "baseline_tuned"
    tuned.mkdir()
    save_checkpoint({"run": {"format": 1, "config": {"name": "baseline"}, "survey_version": "mock-sdss/v2"},
                     "model": {"w": torch.full((5000,), 2.0)}}, tuned / "best.pt")
    from models.reference import main
    assert main(["export", "--runs", str(tmp_path / "runs"), "--out", str(root), "--roles", "baseline",
                 "--source", f"baseline={tuned}"]) == 0
    assert load_manifest(root)["files"]["baseline"]["sha256"] != m["files"]["baseline"]["sha256"]
    assert main(["export", "--runs", str(tmp_path / "runs"), "--out", str(root), "--source", "cnn=x"]) == 2


def test_slim_state_halves_only_large_float_tensors():
    from models.reference import slim_state
    s = slim_state({"big": torch.randn(64, 128), "small": torch.randn(10), "count": torch.tensor(3)})
    assert s["big"].dtype == torch.float16 and s["small"].dtype == torch.float32
    assert s["count"].dtype == torch.int64


def test_generate_cli_checkpoints_flag(tmp_path, capsys):
    from generation.cli import main
    rc = main(["--checkpoints", str(tmp_path / "nowhere"), "--set", f"generate.output={tmp_path}/o.fits"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--checkpoints" in err and "nowhere" in err and len(err.strip().splitlines()) == 1
