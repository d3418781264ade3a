"""Diffusion process and samplers: schedule invariants, q_sample, loss, sampler correctness, seeding."""


import pytest
import torch

from diffusion.process import GaussianDiffusion
from diffusion.samplers import (
    SAMPLERS,
    NoiseSource,
    ancestral,
    ancestral_step,
    ddim,
    ddim_step,
    dpmpp_2m,
    get_sampler,
    timesteps,
)
from diffusion.schedule import cosine_betas, linear_betas
from models.unet1d import UNet1d

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(250, "cosine")


def gaussian_eps_model(diffusion, mu, s):
    """Exact epsilon for data ~ N(mu, s^2) per coordinate (s = 0: a single point)."""

    def model_fn(x, t):
        a = diffusion.sqrt_alphas_cumprod[t].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        sg = diffusion.sqrt_one_minus_alphas_cumprod[t].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        return sg * (x - a * mu) / (a * a * s * s + sg * sg)

    return model_fn


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedule_invariants(name):
    d = GaussianDiffusion(250, name)
    betas, abar = d.betas.double(), d.alphas_cumprod.double()
    assert ((betas > 0) & (betas <= 0.999 + 1e-7)).all()
    assert (abar[1:] < abar[:-1]).all()
    torch.testing.assert_close(abar, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    assert abar[0] > 0.999 and abar[-1] < 1e-3


def test_cosine_matches_closed_form():
    # abar_t of Nichol & Dhariwal at the *end* of step t: f(t + 1) / f(0), not off by one.
    T, s = 250, 0.008
    betas = cosine_betas(T, s)
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * torch.pi / 2) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(abar[:-1], (f[1:] / f[0])[:-1], rtol=1e-10, atol=1e-12)
    assert betas.max() == pytest.approx(0.999)


def test_linear_betas_rescaled():
    assert linear_betas(1000)[0].item() == pytest.approx(1e-4)
    assert linear_betas(250)[-1].item() == pytest.approx(0.08)


def test_buffers_in_state_dict(diffusion):
    state = diffusion.state_dict()
    for key in [
        "betas",
        "alphas_cumprod",
        "posterior_variance",
        "posterior_mean_coef1",
        "sqrt_alphas_cumprod",
    ]:
        assert key in state
    assert diffusion.to(torch.float64).betas.dtype == torch.float64
    diffusion.float()


def test_q_sample_statistics(diffusion):
    x0 = torch.full((4000, 8), 0.5)
    for t in [0, 60, 249]:
        tv = torch.full((4000,), t)
        xt = diffusion.q_sample(x0, tv, torch.randn_like(x0))
        a = diffusion.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(0.5 * a**0.5, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - a, abs=0.01 + 0.03 * (1 - a))


def test_predict_x0_inverts_q_sample(diffusion):
    x0, noise = torch.randn(5, 1, 30), torch.randn(5, 1, 30)
    t = torch.tensor([0, 10, 100, 200, 240])
    xt = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(diffusion.predict_x0(xt, t, noise), x0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(diffusion.predict_eps(xt, t, x0), noise, atol=1e-3, rtol=1e-3)


def test_training_loss_draws_all_timesteps(diffusion):
    seen = []

    def model_fn(x, t, context=None):
        assert context == "ctx"
        seen.append(t)
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        loss = diffusion.training_loss(model_fn, torch.randn(256, 16), generator=g, context="ctx")
        assert loss.item() == pytest.approx(1.0, abs=0.05)  # eps = 0 scores E[noise^2] = 1
    t = torch.cat(seen)
    assert t.min() == 0 and t.max() == 249
    assert len(torch.unique(t)) == 250
    counts = torch.bincount(t, minlength=250).float()
    # Uniform: ~20 per bin, Poisson scatter 1 / sqrt(20) = 0.22 of the mean; halves balanced to ~1 %.
    assert counts.std() / counts.mean() < 0.3
    assert abs(counts[:125].sum() - counts[125:].sum()) / counts.sum() < 0.03
    per_sample = diffusion.training_loss(model_fn, torch.randn(3, 16), reduction="none", context="ctx")
    assert per_sample.shape == (3,)


def test_training_loss_zero_for_exact_model(diffusion):
    x0 = torch.full((8, 1, 12), 0.3)
    loss = diffusion.training_loss(gaussian_eps_model(diffusion, 0.3, 0.0), x0)
    assert loss.item() < 1e-6


def test_min_snr_weighting_scales_each_sample_by_min_snr_gamma_over_snr(diffusion):
    """Min-SNR-5: the epsilon MSE of a sample at step t is multiplied by min(SNR_t, 5) / SNR_t, which is 1
    wherever SNR_t <= 5 (high noise) and 5 / SNR_t below that (down-weighting the low-noise steps)."""
    x0 = torch.randn(6, 16)
    noise = torch.randn(6, 16)
    t = torch.tensor([0, 20, 60, 120, 200, 249])

    def zero(x, t):
        return torch.zeros_like(x)  # loss = mean(noise^2) per sample, whatever t
    plain = diffusion.training_loss(zero, x0, t=t, noise=noise, reduction="none")
    weighted = diffusion.training_loss(zero, x0, t=t, noise=noise, reduction="none", weighting="min_snr")
    abar = diffusion.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    expected = plain.double() * snr.clamp(max=5.0) / snr
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-5, atol=0)
    high_noise = snr <= 5
    assert high_noise.any() and (~high_noise).any()  # the steps above span both regimes
    torch.testing.assert_close(weighted[high_noise], plain[high_noise])
    assert (weighted[~high_noise] < plain[~high_noise]).all()
    assert weighted[0] < 0.01 * plain[0]  # t = 0: SNR ~ 1e4
    with pytest.raises(ValueError, match="weighting='snr'"):
        diffusion.training_loss(zero, x0, weighting="snr")


def test_timesteps_spacings(diffusion):
    for spacing in ["uniform", "quadratic", "logsnr"]:
        for n in [1, 2, 7, 50, 249, 250]:
            ts = timesteps(diffusion, n, spacing)
            assert len(ts) == n and ts[0] == 249 and all(a > b for a, b in zip(ts, ts[1:]))
            assert n == 1 or ts[-1] == 0
    assert timesteps(diffusion, None) == list(range(249, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        timesteps(diffusion, 251)


def test_ddim_eta1_full_steps_matches_ancestral_mean(diffusion):
    eps_fn = gaussian_eps_model(diffusion, 0.4, 0.7)
    x = torch.randn(3, 1, 20)
    for t in range(249, -1, -1):
        eps = eps_fn(x, torch.full((3,), t))
        mean_a, std_a = ancestral_step(diffusion, x, t, eps, variance="posterior")
        mean_d, std_d = ddim_step(diffusion, x, t, t - 1, eps, eta=1.0)
        torch.testing.assert_close(mean_d, mean_a, atol=2e-5, rtol=1e-4)
        assert std_d == pytest.approx(std_a.flatten()[0].item(), rel=1e-4, abs=1e-7)
        if t > 0:
            # Paper's ancestral variance beta_t >= posterior variance; same mean.
            mean_b, std_b = ancestral_step(diffusion, x, t, eps)
            torch.testing.assert_close(mean_b, mean_a)
            assert std_b.flatten()[0] ** 2 == pytest.approx(diffusion.betas[t].item(), rel=1e-5)
        x = mean_a + std_a * torch.randn_like(x)


def test_ddim_eta1_reproduces_ancestral_trajectory(diffusion):
    eps_fn = gaussian_eps_model(diffusion, -0.2, 0.5)
    shape = (2, 1, 16)
    a = ancestral(eps_fn, shape, diffusion, noise=NoiseSource([5, 6]), variance="posterior")
    d = ddim(eps_fn, shape, diffusion, timesteps(diffusion, 250), noise=NoiseSource([5, 6]), eta=1.0)
    torch.testing.assert_close(d, a, atol=1e-4, rtol=1e-4)


def test_ancestral_prefix_is_the_chain_stopped_early(diffusion):
    # the first k of the T steps (bench_generate times a fraction of the chain this way): exactly those k
    # model calls, ending in the state the whole chain has after its k-th step (same noise)
    eps_fn = gaussian_eps_model(diffusion, -0.2, 0.5)
    every = timesteps(diffusion, 250)
    calls, seen = [], {}

    def counted(x, t):
        calls.append(int(t[0]))
        return eps_fn(x, t)

    def recording(x, t):
        seen.setdefault(int(t[0]), x.clone())
        return eps_fn(x, t)

    part = ancestral(counted, (2, 1, 16), diffusion, every[:7], noise=NoiseSource([5, 6]))
    assert calls == every[:7]
    ancestral(recording, (2, 1, 16), diffusion, noise=NoiseSource([5, 6]))
    torch.testing.assert_close(part, seen[every[7]], atol=0, rtol=0)


def test_point_mass_recovered_in_few_steps(diffusion):
    model = gaussian_eps_model(diffusion, 1.3, 0.0)
    x_T = NoiseSource([0, 1]).randn((2, 1, 10))
    for name, steps in [("ddim", 1), ("ddim", 3), ("dpmpp_2m", 3), ("dpmpp_2m", 10)]:
        sampler = SAMPLERS[name]
        out = sampler(model, x_T, diffusion, sampler.timesteps(diffusion, steps))
        torch.testing.assert_close(out, torch.full_like(out, 1.3), atol=1e-3, rtol=0)


def test_ode_samplers_converge_for_gaussian_data(diffusion):
    mu, s = 0.7, 0.3
    model = gaussian_eps_model(diffusion, mu, s)
    x_T = NoiseSource(range(4)).randn((4, 32)).double()
    a_T = diffusion.sqrt_alphas_cumprod[-1].double()
    s_T = diffusion.sqrt_one_minus_alphas_cumprod[-1].double()
    # Probability-flow ODE of a Gaussian is affine: the exact endpoint of x_T.
    exact = mu + s * (x_T - a_T * mu) / torch.sqrt(a_T**2 * s**2 + s_T**2)

    def err(sampler, steps):
        spacing = "logsnr" if sampler is dpmpp_2m else "uniform"
        x0 = sampler(model, x_T, diffusion, timesteps(diffusion, steps, spacing))
        return (x0 - exact).abs().max().item()

    assert err(dpmpp_2m, 10) < 0.02
    assert err(dpmpp_2m, 10) < err(ddim, 10) / 5
    assert err(ddim, 250) < err(ddim, 50) < err(ddim, 10)
    assert err(ddim, 250) < 0.01


def test_ancestral_samples_data_distribution(diffusion):
    mu, s = -0.5, 0.4
    model = gaussian_eps_model(diffusion, mu, s)
    x = ancestral(model, (400, 16), diffusion, noise=NoiseSource(range(400)))
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(s, abs=0.02)


@pytest.mark.parametrize("name,opts", [("ancestral", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m", {})])
def test_batch_composition_independence(diffusion, name, opts):
    # An elementwise model is batch-invariant bit for bit, so any difference would come from the sampler.
    model = gaussian_eps_model(diffusion, 0.1, 0.6)
    sampler = get_sampler(name)
    ts = sampler.timesteps(diffusion, 10)  # every step for ancestral: data of the sampler, not a branch here
    assert len(ts) == (250 if name == "ancestral" else 10)

    def run(seeds):
        return sampler(model, (len(seeds), 1, 24), diffusion, ts, NoiseSource(seeds), **opts)

    both = run([11, 22])
    assert torch.equal(both[0:1], run([11]))
    assert torch.equal(both[1:2], run([22]))
    assert torch.equal(run([22, 11, 33])[1:2], run([11]))
    assert not torch.allclose(both[0], both[1])


def test_batch_composition_independence_with_unet():
    # A real network adds only float round-off between batch sizes (different kernel blocking).
    d = GaussianDiffusion(20)
    unet = UNet1d(base=8, mults=(1, 2), attn_levels=(), mid_attn=False, num_timesteps=20).eval()
    for p in unet.parameters():
        p.data.mul_(0.3)  # keep the untrained network's eps O(1) so x0 does not blow up

    def run(seeds):
        with torch.no_grad():
            return ddim(unet, (len(seeds), 1, 24), d, timesteps(d, 5), NoiseSource(seeds), eta=1.0)

    torch.testing.assert_close(run([11, 22])[1:2], run([22]), atol=1e-5, rtol=1e-5)


def test_sampler_registry_and_errors(diffusion):
    assert set(SAMPLERS) == {"ancestral", "ddim", "dpmpp_2m"}
    with pytest.raises(ValueError, match="sampler="):
        get_sampler("euler")
    with pytest.raises(ValueError, match="NoiseSource"):
        ddim(lambda x, t: x, (2, 3), diffusion, timesteps(diffusion, 5))
    with pytest.raises(ValueError, match="2 seeds"):
        NoiseSource([1, 2]).randn((3, 4))
    with pytest.raises(ValueError, match="ancestral"):
        ancestral(lambda x, t: x, torch.zeros(1, 3), diffusion, timesteps(diffusion, 10))
    with pytest.raises(ValueError, match="ancestral"):
        ancestral(lambda x, t: x, torch.zeros(1, 3), diffusion, [])
    with pytest.raises(ValueError, match="eta=1.5"):
        get_sampler("ddim").check_options({"eta": 1.5})
    with pytest.raises(ValueError, match="not an option"):
        get_sampler("dpmpp_2m").check_options({"eta": 0.5})
    # steps above a (truncated) process's T are capped; None = every step
    assert SAMPLERS["ddim"].timesteps(diffusion, 1000) == list(range(249, -1, -1))
    assert SAMPLERS["dpmpp_2m"].timesteps(diffusion, 10) == timesteps(diffusion, 10, "logsnr")


def test_tiny_unet_overfits_fixed_spectra():
    torch.manual_seed(0)
    d = GaussianDiffusion(50)
    unet = UNet1d(base=8, mults=(1, 2), attn_levels=(), mid_attn=False, num_timesteps=50)
    wave = torch.linspace(0, 1, 32)
    x0 = torch.stack([torch.sin(6 * wave + k) * 0.5 + 0.2 * k for k in range(8)])[:, None]
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(100):
        loss = d.training_loss(unet, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first


def test_truncated_process_keeps_the_schedule_up_to_alpha_bar_min():
    from diffusion.process import GaussianDiffusion
    d = GaussianDiffusion(250, "cosine")
    assert d.truncated(0.0) is d
    t = d.truncated(0.02)
    keep = int((d.alphas_cumprod >= 0.02).sum())
    assert t.num_timesteps == keep and 200 < keep < 250
    torch.testing.assert_close(t.alphas_cumprod, d.alphas_cumprod[:keep], rtol=1e-5, atol=1e-7)
    assert float(t.alphas_cumprod[-1]) >= 0.02 and float(d.alphas_cumprod[keep]) < 0.02
    with pytest.raises(ValueError, match="fewer than 2"):
        d.truncated(0.99999)


class _GaussianDenoiser:
    """A stand-in for ``ConditionalDenoiser`` in ``sample_conditional``: the exact epsilon of N(mu, s^2)."""

    def __init__(self, diffusion, mu, s):
        self.eps = gaussian_eps_model(diffusion, mu, s)

    def precompute_context(self, context):
        return context

    def __call__(self, x, t, context=None, lowres=None):
        return self.eps(x, t)

    def clip_range(self):
        return None

    def denormalize(self, x):
        return x


def test_ancestral_start_removes_the_truncation_prior_mismatch(diffusion):
    from diffusion.sampling import sample_conditional
    mu, s = 0.8, 0.2
    model = _GaussianDenoiser(diffusion, mu, s)
    ctx = torch.zeros(400, 1, 1)

    def draw(start, alpha_bar_min=0.3, seeds=range(400), sampler="dpmpp_2m"):
        return sample_conditional(model, diffusion, ctx[:len(seeds)], 16, list(seeds), sampler, 10,
                                  alpha_bar_min=alpha_bar_min, start=start)

    # from N(0, I) at alpha-bar a^2 = 0.3 the ODE maps the wrong marginal:
    # mean mu - s a mu / sqrt(a^2 s^2 + 1 - a^2)
    a = 0.3 ** 0.5
    x = draw("noise")
    assert x.mean().item() == pytest.approx(mu - s * a * mu / (a * a * s * s + 1 - a * a) ** 0.5, abs=0.02)
    # the 100+ skipped steps taken as exact ancestral steps first: the data distribution
    x = draw("ancestral")
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(s, abs=0.02)
    # still one noise stream per item (batch composition does not matter), and nothing skipped = no head
    torch.testing.assert_close(draw("ancestral", seeds=[5, 7])[1:], draw("ancestral", seeds=[7]), rtol=0,
                               atol=0)
    assert torch.equal(draw("ancestral", 0.0, [3, 4]), draw("noise", 0.0, [3, 4]))
    with pytest.raises(ValueError, match="start='exact'"):
        draw("exact", seeds=[1])


def test_respaced_ancestral_start_takes_k_calls_and_keeps_the_data_mean(diffusion):
    """start="ancestral:K": the skipped steps in K posterior steps (DDIM eta = 1) on a respaced schedule."""
    from diffusion.sampling import parse_start, sample_conditional
    mu, s = 0.8, 0.2
    model = _GaussianDenoiser(diffusion, mu, s)
    calls = []
    eps = model.eps
    model.eps = lambda x, t: calls.append(int(t[0])) or eps(x, t)
    ctx = torch.zeros(400, 1, 1)
    skipped = diffusion.num_timesteps - diffusion.truncated(0.3).num_timesteps
    for k in (1, 4, 12):
        calls.clear()
        x = sample_conditional(model, diffusion, ctx, 16, list(range(400)), "dpmpp_2m", 10, alpha_bar_min=0.3,
                               start=f"ancestral:{k}")
        head = [t for t in calls if t >= diffusion.num_timesteps - skipped]
        assert len(head) == k and head[0] == diffusion.num_timesteps - 1
        assert head == sorted(set(head), reverse=True)
        # the mean is exact for any K (E[x0 | x_t] is linear here); the noise start misses it by ~0.1
        assert x.mean().item() == pytest.approx(mu, abs=0.02)
        assert x.std().item() == pytest.approx(s, abs=0.03)
    assert parse_start("ancestral:23") == ("ancestral", 23) and parse_start("noise") == ("noise", None)
    for bad in ("ancestral:0", "ancestral:", "ancestral:x", "noise:3"):
        with pytest.raises(ValueError, match="start="):
            parse_start(bad)


class _TokenGaussianDenoiser(_GaussianDenoiser):
    """Each item's data ~ N(mu, s^2) with mu its (single, scalar) context token: the null condition (zero
    token) is N(0, s^2)."""

    def __init__(self, diffusion, s):
        self.diffusion, self.s = diffusion, s

    def null_context(self, context):
        return torch.zeros_like(context)

    def __call__(self, x, t, context=None, lowres=None):
        return gaussian_eps_model(self.diffusion, context.reshape(-1, 1), self.s)(x, t)


@pytest.mark.parametrize("sampler", ["ancestral", "dpmpp_2m"])
def test_classifier_free_guidance_extrapolates_from_the_null_condition(diffusion, sampler):
    """eps = eps_null + w (eps - eps_null): for Gaussians of one width the guided process samples the mean
    mu_null + w (mu - mu_null); w = 1 is the plain conditional model, w = 0 the null condition."""
    from diffusion.sampling import sample_conditional
    model = _TokenGaussianDenoiser(diffusion, 0.2)
    ctx = torch.full((300, 1, 1), 0.8)
    seeds = list(range(300))

    def draw(context, **kw):
        return sample_conditional(model, diffusion, context, 16, seeds, sampler, 10, **kw)
    plain = draw(ctx)
    assert plain.mean().item() == pytest.approx(0.8, abs=0.02)
    assert torch.equal(draw(ctx, guidance=1.0), plain)           # w = 1: one call per step, no change
    guided = draw(ctx, guidance=2.5)
    assert guided.mean().item() == pytest.approx(2.0, abs=0.03)    # 0 + 2.5 (0.8 - 0)
    assert guided.std().item() == pytest.approx(0.2, abs=0.02)
    torch.testing.assert_close(draw(ctx, guidance=0.0), draw(torch.zeros_like(ctx)), rtol=0, atol=1e-6)


def test_lowres_noise_augments_the_super_resolution_input_the_same_way_per_item(diffusion):
    """model.lowres_noise: sample_conditional hands the denoiser normalised low-res + s * noise, the noise
    seeded per item (batch composition does not matter) and off the diffusion's own stream; 0 = unchanged."""
    from diffusion.sampling import lowres_noise, sample_conditional
    from models.unet1d import ConditionalDenoiser

    class Recorder(_GaussianDenoiser):
        def __init__(self, diffusion, s_aug):
            super().__init__(diffusion, 0.0, 1.0)
            self.lowres_noise, self.seen = s_aug, []

        def normalize_lowres(self, lowres):
            return lowres * 2.0

        augment_lowres = ConditionalDenoiser.augment_lowres

        def __call__(self, x, t, context=None, lowres=None):
            self.seen.append(lowres.clone())
            return super().__call__(x, t, context, lowres)

    low = torch.linspace(-1, 1, 8).repeat(3, 1)
    ctx = torch.zeros(3, 1, 1)

    def run(s_aug, seeds=(11, 12, 13), lr=low):
        m = Recorder(diffusion, s_aug)
        x = sample_conditional(m, diffusion, ctx[:len(seeds)], 16, list(seeds), "dpmpp_2m", 4, lowres=lr)
        assert all(torch.equal(v, m.seen[0]) for v in m.seen)   # one augmented input for every step
        return x, m.seen[0]

    x0, seen0 = run(0.0)
    assert torch.equal(seen0, low * 2.0)                  # off: the normalised input, untouched
    x3, seen3 = run(0.3)
    torch.testing.assert_close(seen3, low * 2.0 + 0.3 * lowres_noise([11, 12, 13], 8), rtol=0, atol=1e-6)
    assert 0.15 < (seen3 - seen0).std().item() < 0.45
    assert torch.equal(x3, x0)  # the diffusion's own noise is not consumed by the augmentation
    _, seen_one = run(0.3, seeds=(12,), lr=low[:1])
    torch.testing.assert_close(seen_one[0], seen3[1], rtol=0, atol=0)
    assert not torch.equal(lowres_noise([11], 8), lowres_noise([12], 8))


def test_lowres_noise_config_checks():
    from pathlib import Path

    from utils.config import ConfigError, GenerativeConfig, load_config
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "params_generative.yml", GenerativeConfig,
                      ["train.stage=sr", "model.lowres_noise=0.3"], "cpu")
    assert cfg.model.lowres_noise == 0.3
    with pytest.raises(ConfigError, match=r"model.lowres_noise: 0.3 is for the super-resolution stage"):
        load_config(root / "params_generative.yml", GenerativeConfig,
                    ["train.stage=lr", "model.lowres_noise=0.3"], "cpu")
    with pytest.raises(ConfigError, match=r"model.lowres_noise: -1.0 must be in 0..5"):
        load_config(root / "params_generative.yml", GenerativeConfig,
                    ["train.stage=sr", "model.lowres_noise=-1"], "cpu")


def test_lowres_noise_in_the_training_loss():
    """DiffusionTask.loss adds model.lowres_noise x N(0, 1) (from the iteration's generator) to the
    normalised low-res input the super-resolution denoiser sees; without it the input is exact."""
    from pathlib import Path

    from models.build import build_denoiser
    from training.tasks import DiffusionTask
    from utils.config import GenerativeConfig, load_config
    root = Path(__file__).resolve().parents[1]
    seen = {}
    for s_aug in (0.0, 0.5):
        cfg = load_config(root / "params_generative.yml", GenerativeConfig,
                          ["train.stage=sr", f"model.lowres_noise={s_aug}", "model.photometry=false",
                           "model.global_context=false"], "cpu")
        task = DiffusionTask("sr", cfg.model, crop_length=None)
        model = build_denoiser(cfg.model, "sr")
        assert model.lowres_noise == s_aug
        forward = model.forward

        def record(x, t, *a, lowres=None, _f=forward, _s=s_aug, **k):
            seen.setdefault(_s, []).append(lowres.detach().clone())
            return _f(x, t, *a, lowres=lowres, **k)
        model.forward = record
        batch = {"spectrum": torch.randn(2, 4500), "lowres": torch.randn(2, 563),
                 "image": torch.randn(2, 5, 64, 64)}
        for _ in range(2):
            task.loss(model, batch, torch.Generator().manual_seed(3))
        exact = model.normalize_lowres(batch["lowres"])
        first, again = seen[s_aug][0], seen[s_aug][1]
        assert torch.equal(first, again)                           # the generator decides the noise
        if s_aug == 0:
            assert torch.equal(first, exact)
        else:
            assert (first - exact).std().item() == pytest.approx(0.5, rel=0.1)


def _as_prediction(d: GaussianDiffusion, eps_fn, prediction: str):
    """An epsilon model rewritten to output ``prediction`` (v or x0) of the same implied x0."""
    def out_fn(x, t):
        eps = eps_fn(x, t)
        x0 = d.predict_x0(x, t, eps)
        if prediction == "x0":
            return x0
        return d.training_target(x0, t, eps) if prediction == "v" else eps
    return out_fn


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_predictions_give_the_epsilon_models_samples(prediction):
    """model.prediction: the training target for (x0, t, noise) read back by eps_from_output is the noise;
    a v or x0 model carrying the same information as an epsilon model samples the same spectra (the
    samplers take eps_model(model_fn)); an epsilon model is passed through untouched (the paper's path)."""
    d_eps, d = GaussianDiffusion(250, "cosine"), GaussianDiffusion(250, "cosine", prediction=prediction)
    x0, noise = torch.randn(250, 16).double(), torch.randn(250, 16).double()
    t = torch.arange(250)
    target = d.training_target(x0, t, noise)
    back = d.eps_from_output(d.q_sample(x0, t, noise), t, target)
    # float32 schedule buffers: x0 -> eps at t = 0 divides by sqrt(1 - abar_0) ~ 6e-3
    torch.testing.assert_close(back[1:], noise[1:], atol=2e-4, rtol=0)
    torch.testing.assert_close(back[:1], noise[:1], atol=5e-2, rtol=0)
    if prediction == "v":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
        abar = d.alphas_cumprod.double()[:, None]
        torch.testing.assert_close(target, abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-5, rtol=0)
    else:
        assert torch.equal(target, x0)
    eps_fn = gaussian_eps_model(d_eps, 0.7, 0.3)
    assert d_eps.eps_model(eps_fn) is eps_fn
    wrapped = d.eps_model(_as_prediction(d, eps_fn, prediction))
    x_T = NoiseSource(range(4)).randn((4, 32))
    for name in ("ddim", "dpmpp_2m", "ancestral"):
        sampler = SAMPLERS[name]
        steps = sampler.timesteps(d, 10 if name != "ancestral" else None)
        a = sampler(wrapped, x_T, d, steps, noise=NoiseSource(range(4)))
        b = sampler(eps_fn, x_T, d_eps, steps, noise=NoiseSource(range(4)))
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    assert d.truncated(0.02).prediction == prediction
    with pytest.raises(ValueError, match="prediction='x_0'"):
        GaussianDiffusion(10, prediction="x_0")


def test_min_snr_weights_the_implied_x0_error_alike_for_eps_v_and_x0():
    """train.loss_weighting: min_snr puts min(SNR_t, 5) on the implied x0 error whatever the denoiser
    outputs, so the three parameterisations differ only in what the network is asked to produce."""
    x0, noise = torch.randn(6, 16), torch.randn(6, 16)
    t = torch.tensor([1, 20, 60, 120, 200, 249])
    err = 0.1 * torch.randn(6, 16)                               # the same x0 error for all three
    losses = {}
    for prediction in ("eps", "v", "x0"):
        d = GaussianDiffusion(250, "cosine", prediction=prediction)
        x_t = d.q_sample(x0, t, noise)

        def out_fn(x, tt, d=d, x_t=x_t):
            x0_hat = x0 + err
            eps_hat = d.predict_eps(x_t, tt, x0_hat)
            return {"eps": eps_hat, "x0": x0_hat, "v": d.training_target(x0_hat, tt, eps_hat)}[d.prediction]
        losses[prediction] = d.training_loss(out_fn, x0, t=t, noise=noise, reduction="none",
                                             weighting="min_snr")
    snr = GaussianDiffusion(250).snr(t)
    expected = snr.clamp(max=5.0) * (err ** 2).mean(dim=1)
    for prediction, loss in losses.items():
        torch.testing.assert_close(loss, expected, rtol=2e-3, atol=0, msg=prediction)
