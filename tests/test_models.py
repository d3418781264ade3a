"""Networks: shapes, parameter counts at the paper preset, attention behaviour, NT-Xent values."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.contrastive import ContrastiveModel, nt_xent, score, score_candidates
from models.flops import count_flops
from models.resnet1d import SpectrumResNet
from models.resnet2d import resnet18, resnet50
from models.unet1d import Attention, ConditionalDenoiser, SinusoidalTimeEmbedding, UNet1d, upsample_lowres

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL_UNET = dict(base=16, mults=(1, 2, 4, 8), attn_levels=(3,))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_resnet2d_shapes_and_sizes():
    x = torch.randn(2, 5, 64, 64)
    r18, r50 = resnet18(), resnet50()
    assert r18.forward_features(x).shape == (2, 512, 2, 2)
    assert r50.forward_features(x).shape == (2, 2048, 2, 2)
    assert r18(x).shape == (2, 512) and r50(x).shape == (2, 2048)
    assert 11.1e6 < n_params(r18) < 11.3e6
    assert 23.4e6 < n_params(r50) < 23.6e6
    with pytest.raises(ValueError, match="5"):
        r18(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("length", [563, 4500])
def test_spectrum_resnet_shapes(length):
    enc = SpectrumResNet(latent_dim=32, base=8, mults=(1, 2, 4))
    assert enc(torch.randn(2, length)).shape == (2, 32)
    assert enc(torch.randn(2, 1, length)).shape == (2, 32)


def test_paper_contrastive_size():
    model = ContrastiveModel()
    assert 19.5e6 < n_params(model.spectrum_encoder) < 20.0e6  # paper ~19.7 M
    image = n_params(model.image_trunk) + n_params(model.image_head)
    assert 23.7e6 < image < 24.2e6  # paper ~23.8 M with a 128-d head; ours is 256-d
    assert 42e6 < n_params(model) < 45e6


def test_contrastive_embeddings_unit_norm():
    model = ContrastiveModel(image_encoder="resnet18", latent_dim=16, spectrum_base=8, spectrum_mults=(1, 2))
    z_img, z_spec = model(torch.randn(2, 5, 64, 64), torch.randn(2, 563))
    assert z_img.shape == z_spec.shape == (2, 16)
    torch.testing.assert_close(z_img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(z_spec.norm(dim=-1), torch.ones(2))


def test_spectrum_encoder_slices_cpu_inference(monkeypatch):
    """In CPU inference the spectrum encoder sees the batch in slices of CPU_SLICE_PIXELS rows x pixels,
    with embeddings those of one call per spectrum; with autograd on (training) it sees the whole batch."""
    import models.contrastive as C

    torch.manual_seed(0)
    model = ContrastiveModel(image_encoder="resnet18", latent_dim=16, spectrum_base=8, spectrum_mults=(1, 2))
    x = torch.randn(7, 563)
    calls = []
    model.spectrum_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    monkeypatch.setattr(C, "CPU_SLICE_PIXELS", 2 * 563 + 100)   # 2 spectra per call
    with torch.no_grad():
        z = model.encode_spectrum(x)
        assert calls == [2, 2, 2, 1]
        one = torch.cat([model.encode_spectrum(x[i:i + 1]) for i in range(7)])
    torch.testing.assert_close(z, one, rtol=0, atol=1e-6)
    calls.clear()
    z_train = model.encode_spectrum(x)
    assert calls == [7] and z_train.requires_grad
    torch.testing.assert_close(z_train.detach(), z, rtol=0, atol=1e-6)


def test_nt_xent_hand_computed():
    z_img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_spec = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1)
    tau = 0.5
    z = torch.cat([z_img, z_spec])
    sim = (z @ z.T).tolist()
    partner = [2, 3, 0, 1]
    losses = []
    for i in range(4):
        denom = sum(math.exp(sim[i][j] / tau) for j in range(4) if j != i)
        losses.append(-math.log(math.exp(sim[i][partner[i]] / tau) / denom))
    expected = sum(losses) / 4
    assert nt_xent(z_img, z_spec, tau).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_prefers_matched_pairs():
    z_img = F.normalize(torch.randn(8, 16), dim=-1)
    z_spec = F.normalize(z_img + 0.1 * torch.randn(8, 16), dim=-1)
    matched = nt_xent(z_img, z_spec)
    shuffled = nt_xent(z_img, z_spec[torch.roll(torch.arange(8), 1)])
    assert matched < shuffled


def test_scores():
    z_img = F.normalize(torch.randn(3, 4), dim=-1)
    cand = F.normalize(torch.randn(3, 5, 4), dim=-1)
    s = score_candidates(z_img, cand)
    assert s.shape == (3, 5)
    torch.testing.assert_close(s[:, 2], score(z_img, cand[:, 2]))
    all_pairs = score_candidates(z_img, cand[:, 0])
    assert all_pairs.shape == (3, 3)
    torch.testing.assert_close(all_pairs.diagonal(), score(z_img, cand[:, 0]))


def test_time_embedding_varies_in_every_dim():
    emb = SinusoidalTimeEmbedding(64, 256, num_timesteps=250)
    feats = emb.features(torch.arange(250))
    assert torch.isfinite(feats).all()
    # Every feature takes many distinct values over t: nothing constant, nothing aliased to a few values.
    spread = feats.max(dim=0).values - feats.min(dim=0).values
    assert (spread > 0.1).all()
    assert all(len(torch.unique(feats[:, k].round(decimals=4))) > 20 for k in range(64))


@pytest.mark.parametrize("in_channels,length", [(1, 563), (2, 4500), (1, 37)])
def test_denoiser_shapes(in_channels, length):
    model = ConditionalDenoiser(in_channels=in_channels, **SMALL_UNET)
    x = torch.randn(2, length)
    lowres = torch.randn(2, 563) if in_channels == 2 else None
    eps = model(x, torch.tensor([0, 249]), images=torch.randn(2, 5, 64, 64), lowres=lowres)
    assert eps.shape == x.shape
    eps3 = model(x[:, None], torch.tensor([3, 4]), images=torch.randn(2, 5, 64, 64), lowres=lowres)
    assert eps3.shape == (2, 1, length)


def test_sr_denoiser_requires_lowres():
    model = ConditionalDenoiser(in_channels=2, **SMALL_UNET)
    low = ConditionalDenoiser(in_channels=1, **SMALL_UNET)
    assert n_params(model) - n_params(low) == 3 * 16  # only the init conv sees the extra channel
    with pytest.raises(ValueError, match="lowres"):
        model(torch.randn(1, 64), torch.tensor([1]), images=torch.randn(1, 5, 64, 64))


def test_upsample_lowres_is_linear_interpolation():
    # low-res pixel j IS full-res pixel 8j (every 8th point): interpolating the subsampled ramp gives the
    # ramp back exactly up to pixel 4496, and flat beyond the last low-res pixel
    full = torch.linspace(-1.0, 2.0, 4500)[None]
    up = upsample_lowres(full[:, ::8], 4500)
    assert up.shape == (1, 1, 4500)
    torch.testing.assert_close(up[0, 0, :4497], full[0, :4497], atol=1e-5, rtol=0)
    assert (up[0, 0, 4497:] == full[0, 4496]).all()
    same = torch.randn(2, 40)
    torch.testing.assert_close(upsample_lowres(same, 40)[:, 0], same)


def test_context_reuse_matches_images_and_candidates():
    model = ConditionalDenoiser(**SMALL_UNET).eval()
    images = torch.randn(2, 5, 64, 64)
    x = torch.randn(2, 3, 64)  # 2 galaxies x 3 candidates
    t = torch.tensor([10, 20, 30])
    with torch.no_grad():
        context = model.encode_context(images)
        assert context.shape == (2, 4, 512)
        a = model(x.reshape(6, 64), t.repeat(2), context=context.repeat_interleave(3, dim=0))
        for g in range(2):
            b = model(x[g], t, images=images[g : g + 1].expand(3, -1, -1, -1))
            torch.testing.assert_close(a[3 * g : 3 * g + 3], b, atol=1e-5, rtol=1e-5)


def test_cross_attention_depends_on_context_not_token_order():
    attn = Attention(64, context_dim=512, head_dim=32)
    assert attn.heads == 2
    x = torch.randn(2, 10, 64)
    ctx = torch.randn(2, 4, 512)
    out = attn(x, ctx)
    torch.testing.assert_close(attn(x, ctx[:, [2, 0, 3, 1]]), out, atol=1e-6, rtol=1e-5)
    assert (attn(x, torch.randn(2, 4, 512)) - out).abs().max() > 1e-3


def test_unet_heads_and_conditioning():
    unet = UNet1d(**SMALL_UNET, context_dim=512).eval()
    blocks = [m for m in unet.modules() if isinstance(m, Attention)]
    assert len(blocks) == 6  # self + cross in down level 3, bottleneck, up level 3
    assert all(b.heads == b.to_q.out_features // 32 for b in blocks)
    # Perturb the zero-initialised output projections so conditioning reaches the output.
    for name, p in unet.named_parameters():
        if "proj_out" in name:
            torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 100), torch.tensor([5, 100])
    ctx = torch.randn(2, 4, 512)
    with torch.no_grad():
        out = unet(x, t, ctx)
        torch.testing.assert_close(unet(x, t, ctx[:, [3, 1, 0, 2]]), out, atol=1e-5, rtol=1e-5)
        assert (unet(x, t, torch.randn(2, 4, 512)) - out).abs().max() > 1e-3
        assert (unet(x, torch.tensor([6, 101]), ctx) - out).abs().max() > 1e-4


def test_bf16_autocast_forward():
    """No float32 casts in the network: under bf16 autocast every module's floating output is bf16 (a
    ``.float()`` inside any module's forward, or a norm left in float32, shows up as a float32 output)."""
    model = ConditionalDenoiser(**SMALL_UNET)
    dtypes = []

    def hook(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            dtypes.append((type(module).__name__, out.dtype))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = model(torch.randn(2, 96), torch.tensor([1, 2]), images=torch.randn(2, 5, 64, 64))
    for h in handles:
        h.remove()
    assert eps.dtype == torch.bfloat16 and torch.isfinite(eps.float()).all()
    kinds = {n for n, _ in dtypes}
    assert len(dtypes) > 100 and {"Conv1d", "Conv2d", "Linear", "GroupNorm", "Attention"} <= kinds
    assert [n for n, d in dtypes if d != torch.bfloat16] == []


def test_paper_denoiser_size_and_train_step():
    torch.manual_seed(1)
    model = ConditionalDenoiser()  # paper preset: base 64, mults (1,2,4,8), attention at level 3 + mid
    total, encoder = n_params(model), n_params(model.image_encoder)
    assert 34e6 < total < 38e6  # paper ~35.9 M
    assert 11.1e6 < encoder < 11.3e6  # paper 11.2 M

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, images = torch.randn(2, 563), torch.randn(2, 5, 64, 64)
    t, noise = torch.tensor([3, 200]), torch.randn(2, 563)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.mse_loss(model(x, t, images=images), noise)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    # The transformers' zero-initialised output projections get gradients now, so everything behind them
    # (attention, feed-forward, the image encoder) trains from the second step on.
    proj_out = [p for n, p in model.named_parameters() if "proj_out.weight" in n]
    assert len(proj_out) == 3 and all(p.grad.abs().sum() > 0 for p in proj_out)
    opt.step()
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old) == bool((p.grad == 0).all())


def test_narrow_models_for_cpu_presets():
    enc = resnet18(width=8)
    assert enc.forward_features(torch.randn(2, 5, 64, 64)).shape == (2, 64, 2, 2)
    assert Attention(16, head_dim=32).heads == 1  # below one head's width: a single head
    with pytest.raises(ValueError, match="head_dim"):
        Attention(48, head_dim=32)
    model = ConditionalDenoiser(image_width=8, base=8, mults=(1, 2, 4), attn_levels=(2,))
    assert model.encode_context(torch.randn(2, 5, 64, 64)).shape == (2, 4, 64)
    assert model(torch.randn(2, 50), torch.tensor([0, 9]), images=torch.randn(2, 5, 64, 64)).shape == (2, 50)
    con = ContrastiveModel("resnet18", latent_dim=8, spectrum_base=8, spectrum_mults=(1, 2), image_width=8)
    assert con.encode_image(torch.randn(2, 5, 64, 64)).shape == (2, 8)


@pytest.mark.parametrize("layout", ["released", "wide"])
def test_cross_attention_kv_cache_matches_tokens(layout):
    # the image tokens are fixed while sampling: their keys/values projected once must give the same output
    model = ConditionalDenoiser(layout=layout, **SMALL_UNET).eval()
    for name, p in model.named_parameters():
        if "proj_out" in name:  # zero-initialised: perturb so cross-attention reaches the output
            torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(3, 563), torch.tensor([1, 100, 249])
    with torch.no_grad():
        context = model.encode_context(torch.randn(3, 5, 64, 64))
        kv = model.precompute_context(context)
        assert len(kv) == 3  # down, bottleneck and up transformers
        out = model(x, t, context=context)
        torch.testing.assert_close(model(x, t, context=kv), out, atol=1e-6, rtol=1e-6)
        assert (model(x, t, context=model.precompute_context(context.flip(0))) - out).abs().max() > 1e-3


def test_released_layout_has_the_released_compute():
    # issue #13: the released network (36.0 M parameters) spends 2.60 / 19.5 GFLOP per forward at 563 / 4500
    # points (batch 1, attention included); the default layout must match both within 5 %
    for stage, length, gflop in (("lr", 563, 2.60), ("sr", 4500, 19.5)):
        model = ConditionalDenoiser(in_channels=2 if stage == "sr" else 1).eval()
        assert model.unet.layout == "released"
        assert abs(n_params(model) / 36.0e6 - 1) < 0.05
        lowres = torch.randn(1, 563) if stage == "sr" else None
        flops = count_flops(model, torch.randn(1, length), torch.tensor([7]),
                            images=torch.randn(1, 5, 64, 64), lowres=lowres)
        assert abs(flops / 1e9 / gflop - 1) < 0.05, (stage, flops)
    wide = ConditionalDenoiser(layout="wide").eval()
    wide_flops = count_flops(wide, torch.randn(1, 563), torch.tensor([7]), images=torch.randn(1, 5, 64, 64))
    assert 1.6 < wide_flops / 1e9 / 2.60 < 1.8  # the project's first layout: ~1.7x at the same size
    with pytest.raises(ValueError, match="layout"):
        UNet1d(layout="narrow")


@pytest.mark.parametrize("length", [5, 31, 64, 563])
def test_released_layout_any_length(length):
    # unpadded stride-2 convs at 4 levels need >= 31 points: shorter inputs are padded and cropped back
    unet = UNet1d(**SMALL_UNET).eval()
    assert unet(torch.randn(2, 1, length), torch.tensor([1, 2])).shape == (2, 1, length)


def test_bf16_auto_only_with_native_bf16(monkeypatch, tmp_path):
    import models.precision as precision
    from models.precision import autocast_context

    # /proc/cpuinfo parsing: the flags line of the first processor
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert "amx_bf16" in precision.cpu_flags(str(info))
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert precision.cpu_model_name(str(info)) == "X"
    assert precision.cpu_model_name(str(tmp_path / "missing")) == "unknown"

    cpu = torch.device("cpu")
    for flags, native in ((("avx2", "fma"), False), (("avx2", "avx512f", "avx512bw"), False),
                          (("avx512f", "avx512_bf16"), True), (("avx512f", "amx_bf16"), True)):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert precision.native_bf16(cpu) is native
        assert precision.use_bf16("auto", cpu) is native
        assert precision.use_bf16("bf16", cpu) and not precision.use_bf16("off", cpu)
        ctx = autocast_context(cpu, "auto")
        with ctx:
            y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
        assert (y.dtype == torch.bfloat16) is native, flags
    with pytest.raises(ValueError, match="amp"):
        precision.use_bf16("fp16", cpu)


def test_fused_resblock_matches_reference_arithmetic(monkeypatch):
    import models.unet1d as unet1d

    model = ConditionalDenoiser(**SMALL_UNET).train()
    for name, p in model.named_parameters():
        if "norm" in name:  # non-trivial GroupNorm affine, which the fused path folds into the FiLM
            torch.nn.init.normal_(p)
    x, t, images = torch.randn(3, 100), torch.tensor([1, 50, 200]), torch.randn(3, 5, 64, 64)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(unet1d, "FUSED_RESBLOCK", fused)
        model.zero_grad()
        y = model(x, t, images=images)
        y.square().mean().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_checkpoints_without_layout_rebuild_the_wide_unet():
    from utils.config import GenerativeConfig, config_from_checkpoint_dict, to_dict

    saved = to_dict(GenerativeConfig())
    assert saved["model"]["layout"] == "released"  # the default for new runs
    del saved["model"]["layout"]  # a checkpoint written before model.layout existed
    assert config_from_checkpoint_dict(saved, GenerativeConfig, "ckpt.pt: run.config").model.layout == "wide"


def _fake_checkpoint(path, kind, stage, cfg, model, ema=None):
    """A galspec checkpoint of ``model`` (the keys load_model reads) written with save_checkpoint."""
    from models.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from utils.config import to_dict
    ck = {"model": model.state_dict(), "run": {"format": CHECKPOINT_FORMAT, "kind": kind, "stage": stage,
                                               "config": to_dict(cfg), "band_mean": [0.0] * 5,
                                               "band_std": [1.0] * 5}}
    if ema is not None:
        ck["ema_model"] = ema.state_dict()
    save_checkpoint(ck, path)
    return path


def test_load_model_every_kind_and_image_encoder_init(tmp_path):
    from models.build import build_model
    from models.checkpoint import CheckpointError
    from models.loading import load_model
    from training.tasks import init_image_encoder
    from utils.config import BaselineConfig, ContrastiveConfig, GenerativeConfig

    c = ContrastiveConfig()
    c.model.image_encoder, c.model.image_width, c.model.spectrum_base = "resnet18", 8, 8
    trained, ema = build_model("contrastive", c.model), build_model("contrastive", c.model)
    path = _fake_checkpoint(tmp_path / "c.pt", "contrastive", "sr", c, trained, ema)
    lm = load_model(path, "contrastive", "sr")
    assert lm.kind == "contrastive" and lm.stage == "sr" and lm.diffusion is None and not lm.model.training
    for k, v in lm.model.state_dict().items():  # the EMA weights where present
        torch.testing.assert_close(v, ema.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"c\.pt: run\.stage: 'sr', but it is given as contrastive_lr"):
        load_model(path, "contrastive", "lr")
    with pytest.raises(CheckpointError, match=r"run\.kind: 'contrastive', but it is given as baseline"):
        load_model(path, "baseline")

    g = GenerativeConfig()
    g.model.image_encoder, g.model.image_width, g.model.base, g.model.timesteps = "resnet18", 8, 8, 10
    den = build_model("diffusion", g.model, "lr")
    init_image_encoder(den, path)  # model.image_encoder_init: the TRAINED trunk, not the EMA one
    for k, v in den.image_encoder.state_dict().items():
        torch.testing.assert_close(v, trained.image_trunk.state_dict()[k], rtol=0, atol=0)
    dl = load_model(_fake_checkpoint(tmp_path / "d.pt", "diffusion", "lr", g, den), "diffusion", "lr")
    assert dl.diffusion.num_timesteps == 10 and dl.model.clip_range() is None
    assert dl.diffusion.prediction == "eps"
    g.model.prediction = "v"   # the noise process rebuilt from the checkpoint reads the network's output as v
    dv = load_model(_fake_checkpoint(tmp_path / "v.pt", "diffusion", "lr", g, den), "diffusion")
    assert dv.diffusion.prediction == "v"

    b = BaselineConfig()
    b.model.image_width = 8
    net = build_model("baseline", b.model)
    net.target_mean.fill_(2.0)
    bl = load_model(_fake_checkpoint(tmp_path / "b.pt", "baseline", "lr", b, net), "baseline")
    assert float(bl.model.target_mean[0]) == 2.0
    init_image_encoder(den, tmp_path / "b.pt")  # or the CNN baseline's trunk (a supervised pretext)
    for k, v in den.image_encoder.state_dict().items():
        torch.testing.assert_close(v, net.encoder.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"d\.pt: run\.kind: 'diffusion', but it is given as "
                                              r"model\.image_encoder_init \(needs a contrastive or baseline"):
        init_image_encoder(den, tmp_path / "d.pt")
    # several acceptable kinds: one read, and the checkpoint's own kind comes back
    assert load_model(tmp_path / "b.pt", ("contrastive", "baseline")).kind == "baseline"
    assert load_model(path, ("contrastive", "baseline"), "sr").kind == "contrastive"


def test_a_frozen_image_encoder_keeps_its_weights_and_batchnorm_statistics_while_the_unet_trains():
    from models.build import build_model
    from utils.config import ConfigError, GenerativeConfig

    g = GenerativeConfig()
    g.model.image_encoder, g.model.image_width, g.model.base, g.model.timesteps = "resnet18", 8, 8, 10
    den = build_model("diffusion", g.model, "lr")
    den.freeze_image_encoder()
    enc0 = {k: v.clone() for k, v in den.image_encoder.state_dict().items()}
    unet0 = {k: v.clone() for k, v in den.unet.state_dict().items()}
    opt = torch.optim.Adam(den.parameters(), lr=1e-2, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    den.train()
    assert den.training and den.unet.training and not den.image_encoder.training
    for _ in range(2):
        x = torch.randn(4, 1, 563, generator=gen)
        images = torch.randn(4, 5, 64, 64, generator=gen) * 3 + 1  # BatchNorm would move its statistics
        loss = den(x, torch.randint(0, 10, (4,), generator=gen), images=images).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in den.image_encoder.state_dict().items():  # weights and running statistics unchanged
        torch.testing.assert_close(v, enc0[k], rtol=0, atol=0)
    assert all(p.grad is None for p in den.image_encoder.parameters())
    assert any(not torch.equal(v, unet0[k]) for k, v in den.unet.state_dict().items())
    # the BatchNorm re-estimation of the EMA weights leaves the frozen encoder's statistics alone (the UNet
    # trained with them); without the freeze it changes them
    from models.batchnorm import recalibrate_batchnorm
    assert recalibrate_batchnorm(den, [(images, None)]) == 0
    for k, v in den.image_encoder.state_dict().items():
        torch.testing.assert_close(v, enc0[k], rtol=0, atol=0)
    free = build_model("diffusion", g.model, "lr")
    free.load_state_dict(den.state_dict())
    assert recalibrate_batchnorm(free, [(images, None)]) == 4
    assert not torch.equal(free.image_encoder.stem[1].running_mean, enc0["stem.1.running_mean"])
    # freezing a randomly initialised encoder is refused with the field named
    g.train.stage = "lr"
    g.model.freeze_image_encoder = True
    with pytest.raises(ConfigError, match=r"model\.freeze_image_encoder: true needs model\.image_enc"):
        g.check("params_generative.yml")
    # a model built from such a config (in training, or loaded from its checkpoint) comes frozen
    built = build_model("diffusion", g.model, "lr")
    assert not any(p.requires_grad for p in built.image_encoder.parameters())
    assert all(p.requires_grad for p in built.unet.parameters())
    assert recalibrate_batchnorm(built, [(images, None)]) == 0


def test_position_features_see_where_each_pixel_is_and_leave_the_paper_model_alone():
    import numpy as np

    from models.unet1d import position_encoding
    from utils.config import ConfigError, GenerativeConfig, load_config
    wave = np.linspace(3800.0, 9200.0, 563)
    enc = position_encoding(wave, 8)
    assert enc.shape == (16, 563)
    torch.testing.assert_close(enc[:8] ** 2 + enc[8:] ** 2, torch.ones(8, 563))
    # the slowest pair turns by half a cycle over the grid: its cosine falls from 1 to -1 monotonically, so
    # it alone tells every pixel's place
    assert enc[8, 0] == 1 and abs(float(enc[8, -1]) + 1) < 1e-6 and (enc[8].diff() < 0).all()
    # pixels are told apart: no two columns alike
    assert torch.cdist(enc.T, enc.T).add(torch.eye(563) * 9).min() > 0.05
    plain = ConditionalDenoiser(in_channels=1, **SMALL_UNET)
    pos = ConditionalDenoiser(in_channels=1, position_features=4, wave=np.linspace(3800, 9200, 37),
                              data_length=37, **SMALL_UNET)
    # the paper's model is untouched: no extra input channel, no extra state
    assert plain.unet.in_channels == 1 and plain.position is None and "position" not in plain.state_dict()
    assert pos.unet.in_channels == 9 and pos.in_channels == 1 and "position" not in pos.state_dict()
    assert n_params(pos) - n_params(plain) == 8 * 3 * 16
    assert pos(torch.randn(2, 37), torch.tensor([0, 5]), images=torch.randn(2, 5, 64, 64)).shape == (2, 37)
    with pytest.raises(ValueError, match="position_features.*37-pixel.*got 36"):
        pos(torch.randn(2, 36), torch.tensor([0, 5]), images=torch.randn(2, 5, 64, 64))
    root = Path(__file__).resolve().parents[1]
    msg = "model.position_features: 4 needs whole spectra.*crop_length is 512"
    with pytest.raises(ConfigError, match=msg):
        load_config(root / "params_generative.yml", GenerativeConfig, overrides=[
            "model.position_features=4", "train.stage=sr", "train.crop_length=512"])
    with pytest.raises(ConfigError, match="model.position_features: 20 must be in 0..16"):
        load_config(root / "params_generative.yml", GenerativeConfig,
                    overrides=["model.position_features=20"])


def test_recalibrate_batchnorm_gives_the_weights_their_own_statistics():
    """Running statistics from other weights (EMA) or a few heavy-tailed batches shift eval-mode outputs;
    after recalibration eval mode matches a training-mode forward over the same data, parameters untouched."""
    from models.batchnorm import recalibrate_batchnorm
    from models.resnet2d import resnet18

    torch.manual_seed(0)
    net = resnet18(in_channels=5, width=8)
    for m in net.modules():                              # statistics that belong to other weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 2)
            m.running_var.uniform_(0.1, 5)
    x = torch.randn(256, 5, 32, 32) * torch.rand(256, 1, 1, 1) * 3      # heavy-ish tails across images
    params = {k: v.clone() for k, v in net.named_parameters()}
    net.train()
    with torch.no_grad():
        ref = net.forward_features(x)                    # every BatchNorm on the whole set's statistics
    net.eval()
    with torch.no_grad():
        before = net.forward_features(x)
    n = recalibrate_batchnorm(net, ((x[s:s + 64], None) for s in range(0, 256, 64)),
                              forward=lambda im, ph: net.forward_features(im))
    assert n == 256 and not net.training
    with torch.no_grad():
        after = net.forward_features(x)
    err = lambda a: float((a - ref).abs().mean() / ref.abs().mean())  # noqa: E731
    assert err(before) > 1.0 and err(after) < 0.1, (err(before), err(after))   # 2.5 -> 0.06
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # a network without BatchNorm is left alone
    lin = torch.nn.Linear(3, 2)
    assert recalibrate_batchnorm(lin, [(torch.randn(4, 3), None)], forward=lambda a, b: lin(a)) == 0


def test_null_condition_and_init_weights(tmp_path):
    """train.cond_dropout's null condition: the dropped samples see all-zero tokens (and a zero pooled
    token), the others their own; model.init_weights starts a run from a trained denoiser's EMA weights and
    buffers."""
    from models.build import build_model
    from models.checkpoint import CheckpointError
    from training.tasks import init_weights
    from utils.config import GenerativeConfig

    torch.manual_seed(0)
    g = GenerativeConfig()
    g.model.image_encoder, g.model.image_width, g.model.base, g.model.timesteps = "resnet18", 8, 8, 10
    g.model.global_context = True
    den = build_model("diffusion", g.model, "lr").eval()
    with torch.no_grad():   # cond_proj starts at zero: give the pooled token a say
        den.unet.cond_proj.weight.normal_()
    x, t, images = torch.randn(3, 563), torch.tensor([1, 5, 9]), torch.randn(3, 5, 64, 64)
    with torch.no_grad():
        tokens = den.encode_context(images)
        plain = den(x, t, context=tokens)
        null = den(x, t, context=den.null_context(tokens))
        mixed = den(x, t, images=images, drop_context=torch.tensor([False, True, False]))
    assert (null - plain).abs().amax(-1).min() > 1e-3     # the condition matters for every row
    torch.testing.assert_close(mixed[[0, 2]], plain[[0, 2]], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], null[1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="drop_context needs the image tokens"):
        den(x, t, context=den.precompute_context(tokens), drop_context=torch.tensor([True] * 3))

    den.data_mean.fill_(0.25)          # buffers (the data scaling) come along
    path = _fake_checkpoint(tmp_path / "d.pt", "diffusion", "lr", g, den, ema=den)
    fresh = build_model("diffusion", g.model, "lr")
    init_weights(fresh, path, "lr")
    for k, v in den.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"run\.stage: 'lr', but it is given as model\.init_weights"):
        init_weights(fresh, path, "sr")
    g.model.base = 16
    with pytest.raises(CheckpointError, match=r"d\.pt: model\.init_weights: does not fit model\.\*"):
        init_weights(build_model("diffusion", g.model, "lr"), path, "lr")
