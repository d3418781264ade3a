"""Samplers for ``GaussianDiffusion``; every one has the same signature::

    sampler(model_fn, x, diffusion, ts=None, noise=None, **options) -> x_0

``model_fn(x_t, t) -> eps`` with ``t`` a (B,) long tensor; bind conditioning with a closure, e.g.
``lambda x, t: denoiser(x, t, context=ctx)``. ``x`` is either the starting noise x_T or a shape, in which
case x_T is drawn from ``noise``. ``ts`` is the explicit, strictly decreasing list of timesteps to visit
(``timesteps(diffusion, steps, spacing)``; default: every step). ``noise`` is a ``NoiseSource``: one
generator per item, seeded by the caller, so an item's result never depends on which other items share
its batch.

- ``ancestral``: DDPM ancestral sampling with sigma_t^2 = beta_t (the paper's sampler); each update is one
  posterior step, so its list is every step of the process.
- ``ddim``: DDIM (Song et al. 2021) with configurable eta and step list; eta = 1 at T steps has the
  same per-step mean as ``ancestral`` (and the posterior variance).
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the data prediction,
  deterministic; good quality in 10-25 steps (log-SNR spacing).

``SAMPLERS`` maps each name to a :class:`Sampler`: the function plus, as data, the timestep list it uses
for a number of steps (``Sampler.timesteps``: its default spacing, or every step for ``ancestral``) and
the options it takes, so callers never branch on a sampler's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffusion.process import GaussianDiffusion

__all__ = [
    "NoiseSource",
    "SPACINGS",
    "timesteps",
    "ancestral_step",
    "ddim_step",
    "ancestral",
    "ddim",
    "dpmpp_2m",
    "Sampler",
    "SAMPLERS",
    "get_sampler",
]

SPACINGS = ("uniform", "quadratic", "logsnr")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoiseSource:
    """Per-item Gaussian noise: item i draws only from its own ``torch.Generator`` seeded with ``seeds[i]``.

    Draws are made on the CPU in float32 and then moved, so they are also independent of the device.

    Parameters
    ----------
    seeds : sequence of int
        One seed per batch item (e.g. ``base_seed + galaxy_index * n_candidates + k``).
    device, dtype
        Where and in which dtype to return noise.
    """

    def __init__(
        self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]
        self.device = torch.device(device)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal tensor of ``shape``; ``shape[0]`` must equal the number of seeds."""
        shape = tuple(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"NoiseSource has {len(self.generators)} seeds but was asked for shape {shape}")
        draws = [torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise with ``x``'s shape, on ``x``'s device and dtype."""
        return self.randn(x.shape).to(x.device, x.dtype)


def timesteps(diffusion: GaussianDiffusion, steps: int | None = None, spacing: str = "uniform") -> list[int]:
    """Descending, strictly decreasing list of ``steps`` integer timesteps from T - 1 down to 0.

    Parameters
    ----------
    diffusion : GaussianDiffusion
        The process (its T, and its schedule for "logsnr" spacing).
    steps : int, optional
        Number of model evaluations (default T: every step).
    spacing : {"uniform", "quadratic", "logsnr"}
        "uniform" in t; "quadratic" puts more steps at low noise (DDIM paper's CIFAR-10 choice);
        "logsnr" is uniform in lambda = log(alpha / sigma), which multistep solvers need: uniform-t
        steps on the cosine schedule make the last lambda increment ~10x the previous one, and the
        second-order extrapolation then overshoots.
    """
    T = diffusion.num_timesteps
    steps = T if steps is None else int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be in [1, T={T}]")
    if steps == 1:
        return [T - 1]
    if spacing == "uniform":
        ts = np.round(np.linspace(0, T - 1, steps))
    elif spacing == "quadratic":
        ts = np.round(np.linspace(0, np.sqrt(T - 1), steps) ** 2)
    elif spacing == "logsnr":
        abar = diffusion.alphas_cumprod.double().cpu().numpy()
        lam = 0.5 * np.log(abar / (1 - abar))  # decreasing in t
        target = np.linspace(lam[0], lam[-1], steps)
        ts = np.abs(lam[None, :] - target[:, None]).argmin(axis=1)
    else:
        raise ValueError(f"spacing={spacing!r}: expected one of {list(SPACINGS)}")
    ts = np.clip(ts.astype(np.int64), 0, T - 1)
    # Rounding can merge neighbours where steps are dense: push duplicates down from the top, then up
    # from the bottom; since steps <= T this always ends with distinct steps in [0, T - 1].
    for i in range(steps - 2, -1, -1):
        ts[i] = min(ts[i], ts[i + 1] - 1)
    ts[0] = max(ts[0], 0)
    for i in range(1, steps):
        ts[i] = max(ts[i], ts[i - 1] + 1)
    return ts[::-1].tolist()


def _start(x, noise: NoiseSource | None, diffusion: GaussianDiffusion) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if noise is None:
        raise ValueError("a shape was given for x but no NoiseSource to draw x_T from")
    return noise.randn(tuple(x)).to(diffusion.betas.device)


def _draw(noise: NoiseSource | None, like: torch.Tensor) -> torch.Tensor:
    return noise.randn_like(like) if noise is not None else torch.randn_like(like)


def _tvec(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _x0_and_eps(diffusion, x, t, eps, clip_x0):
    x0 = diffusion.predict_x0(x, t, eps)
    if clip_x0 is not None:  # a bound c (clip to [-c, c]) or a data range (lo, hi)
        lo, hi = (-clip_x0, clip_x0) if isinstance(clip_x0, (int, float)) else clip_x0
        x0 = x0.clamp(lo, hi)
        eps = diffusion.predict_eps(x, t, x0)
    return x0, eps


def ancestral_step(
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    t: int,
    eps: torch.Tensor,
    clip_x0: float | None = None,
    variance: str = "beta",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of p(x_{t-1} | x_t) for the ancestral sampler (std = 0 at t = 0).

    ``variance="beta"`` uses sigma_t^2 = beta_t (the paper); ``"posterior"`` the posterior variance.
    """
    tv = _tvec(t, x)
    x0, _ = _x0_and_eps(diffusion, x, tv, eps, clip_x0)
    mean, post_var = diffusion.q_posterior(x0, x, tv)
    if t == 0:
        return mean, torch.zeros_like(post_var)
    var = diffusion.betas[t].to(x.dtype) if variance == "beta" else post_var
    return mean, torch.as_tensor(var).sqrt().expand_as(post_var)


def ddim_step(
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    t: int,
    t_prev: int,
    eps: torch.Tensor,
    eta: float = 0.0,
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Mean and std of the DDIM update from ``t`` to ``t_prev`` (``t_prev = -1`` means the data)."""
    tv = _tvec(t, x)
    x0, eps = _x0_and_eps(diffusion, x, tv, eps, clip_x0)
    abar = diffusion.alphas_cumprod.double()
    a_t = float(abar[t])
    a_prev = float(abar[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean = np.sqrt(a_prev) * x0 + np.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    return mean, float(sigma)


def _every_step(diffusion: GaussianDiffusion) -> list[int]:
    return list(range(diffusion.num_timesteps - 1, -1, -1))


def ancestral(
    model_fn: ModelFn,
    x,
    diffusion: GaussianDiffusion,
    ts: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    *,
    clip_x0: float | None = None,
    variance: str = "beta",
) -> torch.Tensor:
    """DDPM ancestral sampling over every step T - 1, ..., 0.

    ``ts``, if given, must be that list or its first k entries (T - 1, ..., T - k: the chain stopped after
    k posterior steps, e.g. to time a fraction of it); skipping steps is ddim's job."""
    every = _every_step(diffusion)
    ts = every if ts is None else list(ts)
    if not ts or ts != every[: len(ts)]:
        raise ValueError(f"ancestral sampling takes the steps T-1, T-2, ... of "
                         f"T={diffusion.num_timesteps} in order, got {len(ts)} timesteps starting at "
                         f"{ts[:1]}; use ddim to skip steps")
    x = _start(x, noise, diffusion)
    for t in ts:
        mean, std = ancestral_step(diffusion, x, t, model_fn(x, _tvec(t, x)), clip_x0, variance)
        x = mean + std * _draw(noise, x) if t > 0 else mean
    return x


def ddim(
    model_fn: ModelFn,
    x,
    diffusion: GaussianDiffusion,
    ts: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    *,
    eta: float = 0.0,
    clip_x0: float | None = None,
    end: int = -1,
) -> torch.Tensor:
    """DDIM sampling over timesteps ``ts`` (default every step); eta = 0 is deterministic. The last step
    goes to ``end`` (-1 = the data; t >= 0 stops at x_t, e.g. to hand over to another sampler)."""
    ts = _every_step(diffusion) if ts is None else list(ts)
    x = _start(x, noise, diffusion)
    for t, t_prev in zip(ts, ts[1:] + [end]):
        mean, sigma = ddim_step(diffusion, x, t, t_prev, model_fn(x, _tvec(t, x)), eta, clip_x0)
        x = mean + sigma * _draw(noise, x) if sigma > 0 else mean
    return x


def dpmpp_2m(
    model_fn: ModelFn,
    x,
    diffusion: GaussianDiffusion,
    ts: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    *,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): deterministic multistep solver of the probability-flow ODE in x_0-prediction form,
    over timesteps ``ts`` (default: 20 log-SNR-spaced steps).

    With ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, ``lambda = log(alpha / sigma)`` and ``h`` the
    lambda increment, each step is ``x <- sigma_s / sigma_t * x - alpha_s * expm1(-h) * D`` where ``D`` is
    the current x_0 prediction, extrapolated with the previous one (second order) after the first step.
    The last step goes to sigma = 0 and returns the final x_0 prediction.
    """
    ts = timesteps(diffusion, min(20, diffusion.num_timesteps), "logsnr") if ts is None else list(ts)
    x = _start(x, noise, diffusion)
    abar = diffusion.alphas_cumprod.double()
    alpha = abar.sqrt()
    sigma = (1 - abar).sqrt()
    lam = torch.log(alpha / sigma)
    old_x0, h_last = None, None
    for i, t in enumerate(ts):
        x0, _ = _x0_and_eps(diffusion, x, _tvec(t, x), model_fn(x, _tvec(t, x)), clip_x0)
        if i == len(ts) - 1:
            return x0
        s = ts[i + 1]
        h = float(lam[s] - lam[t])
        if old_x0 is None:
            d = x0
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = float(sigma[s] / sigma[t]) * x - float(alpha[s] * np.expm1(-h)) * d
        old_x0, h_last = x0, h
    return x


@dataclass(frozen=True)
class Sampler:
    """A sampler function with, as data, how it visits the process.

    Attributes
    ----------
    fn : callable
        The sampler (signature in the module docstring).
    spacing : str
        Default spacing of its timestep list (one of ``SPACINGS``).
    every_step : bool
        It visits every step of the process whatever ``steps`` says (ancestral: each update is one
        posterior step).
    options : tuple of str
        Keyword options it takes besides ``clip_x0``.
    alpha_bar_min : float
        Where it starts by default (``GaussianDiffusion.truncated``): the few-step samplers skip the cosine
        schedule's near-pure-noise end (alpha-bar < 0.02, the last 23 of 250 steps), whose huge first step
        they do not survive (measured: docs/BENCHMARKS.md); ancestral takes every step.
    """
    fn: Callable[..., torch.Tensor]
    spacing: str = "uniform"
    every_step: bool = False
    options: tuple[str, ...] = ()
    alpha_bar_min: float = 0.0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)

    def timesteps(self, diffusion: GaussianDiffusion, steps: int | None = None,
                  spacing: str | None = None) -> list[int]:
        """The timestep list for ``steps`` model evaluations (capped at the process's T; None = every step)
        with ``spacing`` (default: the sampler's own)."""
        if self.every_step or steps is None:
            return _every_step(diffusion)
        return timesteps(diffusion, min(int(steps), diffusion.num_timesteps), spacing or self.spacing)

    def check_options(self, options: dict) -> None:
        """A one-line ValueError for an option this sampler does not take or a value out of range."""
        for key, value in options.items():
            if key not in self.options:
                raise ValueError(f"{key}={value!r}: not an option of this sampler (it takes "
                                 f"{list(self.options) or 'none'})")
        eta = options.get("eta", 0.0)
        if not 0.0 <= eta <= 1.0:  # "not" also catches NaN
            raise ValueError(f"eta={eta!r}: must be in [0, 1]")
        if options.get("variance", "beta") not in ("beta", "posterior"):
            raise ValueError(f"variance={options['variance']!r}: expected 'beta' or 'posterior'")


SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(ancestral, every_step=True, options=("variance",)),
    "ddim": Sampler(ddim, spacing="uniform", options=("eta",), alpha_bar_min=0.02),
    "dpmpp_2m": Sampler(dpmpp_2m, spacing="logsnr", alpha_bar_min=0.02),
}


def get_sampler(name: str) -> Sampler:
    """Look up a sampler by name, with a one-line error listing the valid names."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r}: expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
