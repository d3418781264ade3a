"""One config path: YAML -> validated dataclasses -> code.

A YAML file holds the paper's settings as nested sections (``data``, ``model``, ``train``, ``run``, ...)
and an optional ``presets`` section: named lists of dotted overrides (``train.batch_size: 64``) that
make the same code run small, e.g. ``--preset cpu``. ``--set a.b=v`` overrides go on top. Unknown keys,
wrong types and impossible values are errors that name the file, the key and the value.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class ConfigError(ValueError):
    """Invalid configuration; the message names the file, the key and the value."""


# ----------------------------------------------------------------------------------------------------------
# Schemas
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    path: str = "data/mock_sdss.h5"   # survey HDF5 file (datasets/schema.py)
    preprocessing: str = "log"        # "log" (paper) or "none" (linear normalised flux)
    augment: bool = True              # resize 64->71, random crop 64, flips (training only)
    cache_dir: str | None = None      # preprocessed cache; default "<path>.cache"
    lowres: str = "subsample"         # low-res spectra: "subsample" = every 8th point (paper), "bin" = 8 A
                                      # bins (datasets.preprocess.lowres)

    def check(self, where):
        _choice(where, "data.preprocessing", self.preprocessing, ("log", "none"))
        _choice(where, "data.lowres", self.lowres, ("subsample", "bin"))
        if not self.path.strip():
            raise ConfigError(f"{where}: data.path: {self.path!r} is empty")


@dataclass
class ContrastiveModelConfig:
    image_encoder: str = "resnet50"
    image_width: int = 64             # ResNet base width (64 = standard)
    latent_dim: int = 256             # shared by both stages and by generate.py
    spectrum_base: int = 64
    spectrum_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    temperature: float = 0.05
    photometry: bool = False          # also feed the cutout's aperture photometry to the image encoder
                                      # (models/conditioning.py); false = the paper's image-only encoder

    def check(self, where):
        _choice(where, "model.image_encoder", self.image_encoder, ("resnet18", "resnet50"))
        _positive(where, "model.latent_dim", self.latent_dim)
        _positive(where, "model.temperature", self.temperature)
        _positive(where, "model.spectrum_base", self.spectrum_base)
        _positive(where, "model.image_width", self.image_width)
        _positive_list(where, "model.spectrum_mults", self.spectrum_mults)
        if self.spectrum_base % 8:
            raise ConfigError(f"{where}: model.spectrum_base: {self.spectrum_base} must be a multiple of 8 "
                              "(GroupNorm(8))")


@dataclass
class DiffusionModelConfig:
    image_encoder: str = "resnet18"
    image_width: int = 64
    base: int = 64
    mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    attn_levels: list[int] = field(default_factory=lambda: [3])  # 1-based levels with attention (paper: 3)
    mid_attn: bool = True             # transformer block in the bottleneck (paper: yes)
    head_dim: int = 32
    layout: str = "released"          # UNet block layout: "released" (the released network's compute) or
                                      # "wide" (2 blocks per level, ~1.7x the FLOPs); see docs/MODELS.md
    timesteps: int = 250
    schedule: str = "cosine"
    prediction: str = "eps"           # what the denoiser outputs: "eps" (the paper), "v" or "x0"; the
                                      # training target and how the samplers read it (diffusion/process.py)
    standardize: bool = False         # diffuse per-pixel standardised spectra (training mean/std kept in the
                                      # model); false = the paper's raw log flux
    image_encoder_init: str | None = None  # start the image encoder from the image trunk of a trained
                                      # contrastive (ranker) or baseline (CNN) checkpoint of the same
                                      # architecture; null = from scratch (paper)
    freeze_image_encoder: bool = False  # keep that encoder fixed (weights and BatchNorm statistics):
                                      # only the UNet and the photometry tokens train
    init_weights: str | None = None   # start every weight (and the data scaling) from a trained diffusion
                                      # checkpoint of this stage and architecture (EMA weights): a
                                      # fine-tune, not a resume (new optimiser, schedule, iteration 0)
    photometry: bool = False          # aperture-photometry tokens beside the ResNet's (conditioning.py)
    photometry_tokens: int = 4
    global_context: bool = False      # the mean of the context tokens is also added to the time embedding,
                                      # so every residual block sees the image (paper: cross-attention only)
    position_features: int = 0        # > 0: the UNet also sees 2n sinusoids of each pixel's log wavelength
                                      # (where lines sit at a given z; not in the paper: 0)
    lowres_noise: float = 0.0         # super-resolution: Gaussian noise of this std added to its normalised
                                      # low-res input, in training and sampling alike (conditioning
                                      # augmentation, Ho et al. 2022; not in the paper: 0)

    def check(self, where):
        _choice(where, "model.image_encoder", self.image_encoder, ("resnet18", "resnet50"))
        _choice(where, "model.schedule", self.schedule, ("cosine", "linear"))
        _choice(where, "model.prediction", self.prediction, ("eps", "v", "x0"))
        _choice(where, "model.layout", self.layout, ("released", "wide"))
        _positive(where, "model.timesteps", self.timesteps)
        _positive(where, "model.base", self.base)
        _positive(where, "model.image_width", self.image_width)
        _positive(where, "model.head_dim", self.head_dim)
        _positive(where, "model.photometry_tokens", self.photometry_tokens)
        if not 0 <= self.position_features <= 16:
            raise ConfigError(f"{where}: model.position_features: {self.position_features} must be in 0..16")
        if not 0 <= self.lowres_noise <= 5:
            raise ConfigError(f"{where}: model.lowres_noise: {self.lowres_noise} must be in 0..5")
        _positive_list(where, "model.mults", self.mults)
        if self.base % 8:
            raise ConfigError(f"{where}: model.base: {self.base} must be a multiple of 8 (GroupNorm(8))")
        for lvl in self.attn_levels:
            if not 1 <= lvl <= len(self.mults):
                raise ConfigError(f"{where}: model.attn_levels: level {lvl} outside 1..{len(self.mults)}")


@dataclass
class TrainConfig:
    stage: str = "lr"                 # "lr" (563-point low-res) or "sr" (4500-point full-res)
    batch_size: int = 512             # GLOBAL batch, split across ranks
    lr: float = 1e-4
    lr_end: float = 1e-6              # linear (polynomial power 1) decay to this
    weight_decay: float = 0.0
    epochs: int = 1000
    max_iterations: int | None = None  # stop early (CPU preset); the LR schedule spans this if set
    ema_decay: float | None = 0.9999
    ema_warmup: int = 0               # iterations over which the EMA momentum ramps up (0 = none)
    grad_clip: float | None = 1.0
    seed: int = 0
    amp: str = "auto"                 # "auto": bf16 autocast where native (models.precision); "bf16"; "off"
    compile: bool = False
    num_workers: int = 0
    loss_weighting: str = "uniform"   # diffusion: "uniform" epsilon MSE (paper) or "min_snr" (Min-SNR-gamma)
    min_snr_gamma: float = 5.0
    cond_dropout: float = 0.0         # diffusion: probability that a sample's image (and photometry)
                                      # tokens are replaced by the null condition (zeros), so the model also
                                      # learns the unconditional spectrum for classifier-free guidance
                                      # (generate.guidance); 0 = the paper
    crop_length: int | None = None    # train on random windows of this many spectral pixels (null = whole
                                      # spectrum, paper); the networks are convolutional and are applied to
                                      # whole spectra at validation and generation

    def check(self, where):
        _choice(where, "train.stage", self.stage, ("lr", "sr"))
        _choice(where, "train.amp", self.amp, ("auto", "bf16", "off"))
        _choice(where, "train.loss_weighting", self.loss_weighting, ("uniform", "min_snr"))
        _positive(where, "train.min_snr_gamma", self.min_snr_gamma)
        _positive(where, "train.batch_size", self.batch_size)
        _positive(where, "train.lr", self.lr)
        _positive(where, "train.epochs", self.epochs)
        if self.lr_end < 0 or self.lr_end > self.lr:
            raise ConfigError(f"{where}: train.lr_end: {self.lr_end} must be in [0, train.lr={self.lr}]")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"{where}: train.ema_decay: {self.ema_decay} must be in (0, 1) or null")
        if self.max_iterations is not None:
            _positive(where, "train.max_iterations", self.max_iterations)
        _non_negative(where, "train.weight_decay", self.weight_decay)
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"{where}: train.cond_dropout: {self.cond_dropout} must be in [0, 1)")
        _non_negative(where, "train.ema_warmup", self.ema_warmup)
        _non_negative(where, "train.num_workers", self.num_workers)
        if self.grad_clip is not None:
            _positive(where, "train.grad_clip", self.grad_clip)
        if self.crop_length is not None and (self.crop_length <= 0 or self.crop_length % 8):
            raise ConfigError(f"{where}: train.crop_length: {self.crop_length} must be a positive "
                              "multiple of 8")


@dataclass
class RunConfig:
    out_dir: str = "runs/{name}_{stage}"   # {name} and {stage} are filled in
    checkpoint_every: int = 1000      # iterations
    validate_every: int = 1000        # iterations (and at the end)
    log_every: int = 50
    n_saved: int = 2
    # metrics.csv is always written; TensorBoard logs go to <out_dir>/tb: null (default) = whenever
    # tensorboard is installed, true = asked for (a note if it is not installed), false = never
    tensorboard: bool | None = None
    resume: bool = True               # continue from the last checkpoint in out_dir if there is one

    def check(self, where):
        for k in ("checkpoint_every", "validate_every", "log_every", "n_saved"):
            _positive(where, f"run.{k}", getattr(self, k))
        try:
            self.out_dir.format(name="x", stage="lr")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"{where}: run.out_dir: {self.out_dir!r} has a bad placeholder ({e}); "
                              "only {name} and {stage} are filled in") from None


@dataclass
class ValidationConfig:
    n_galaxies: int = 512             # contrastive retrieval pool / diffusion sample subset
    n_samples: int = 4                # diffusion: samples per galaxy, best-of MSE
    sampler: str = "ddim"
    steps: int = 50
    alpha_bar_min: float = 0.0        # sample only the steps with alpha-bar >= this (0 = all T steps)
    figure_every: int = 1             # write the sample figure every N validations
    batchnorm_images: int = 2048      # training images on which the EMA model's BatchNorm statistics are
                                      # re-estimated before validation (models/batchnorm.py; 0 = off)

    def check(self, where):
        _positive(where, "validation.n_galaxies", self.n_galaxies)
        _non_negative(where, "validation.batchnorm_images", self.batchnorm_images)
        _positive(where, "validation.n_samples", self.n_samples)
        _positive(where, "validation.figure_every", self.figure_every)
        _sampler(where, "validation", self.sampler, self.steps, self.alpha_bar_min)


#: the per-stage sampling fields of ``generate``: each has a ``lowres_<key>`` twin for the low-res stage
SAMPLING_KEYS = ("sampler", "steps", "alpha_bar_min", "eta", "start", "guidance")


@dataclass
class GenerateConfig:
    input: str | None = None          # survey HDF5; default: data.path
    split: str = "test"               # which split of the input ("all" for every galaxy)
    limit: int | None = None          # at most this many galaxies (demo)
    output: str = "outputs/generated.fits"
    checkpoints: dict[str, str] = field(default_factory=lambda: {
        "diffusion_lr": "runs/diffusion_lr/best.pt", "diffusion_sr": "runs/diffusion_sr/best.pt",
        "contrastive_lr": "runs/contrastive_lr/best.pt", "contrastive_sr": "runs/contrastive_sr/best.pt",
        "baseline": "runs/baseline/best.pt"})    # baseline: read only with z_prior
    n_lowres: int = 3                 # N
    keep_lowres: int = 2              # k
    keep_policy: str = "top"          # "top": the k best-ranked low-res candidates (paper); "sample": the
                                      # best one + k-1 drawn at random among the consistent ones (chain.py);
                                      # "sample_all": ... among all the others
    n_fullres: int = 3                # M
    sampler: str = "ancestral"
    steps: int = 250
    alpha_bar_min: float | None = 0.0  # start where alpha-bar >= this (0 = at T-1, the paper; None = the
                                       # sampler's own: 0 for ancestral, 0.02 for ddim / dpmpp_2m)
    eta: float = 0.0                  # ddim only: 0 = deterministic, 1 = DDPM-like noise at every step
    start: str = "noise"              # with alpha_bar_min > 0: "noise" = begin at the first kept step from
                                      # N(0, I); "ancestral" = take the skipped steps as exact ancestral steps
                                      # from T-1 first; "ancestral:K" = the same in K respaced posterior
                                      # steps (diffusion/sampling.py)
    lowres_sampler: str | None = None  # the low-res stage's own sampler (None: generate.sampler) ...
    lowres_steps: int | None = None    # ... steps (None: generate.steps)
    lowres_alpha_bar_min: float | None = None  # ... and alpha_bar_min (None: generate.alpha_bar_min)
    lowres_eta: float | None = None    # ... and eta (None: generate.eta when the low-res stage uses
                                       # generate.sampler, else 0, the other sampler's default)
    lowres_start: str | None = None   # ... and start (None: generate.start)
    guidance: float = 1.0             # classifier-free guidance weight w: eps = eps_null + w (eps_image -
                                      # eps_null); 1 = none (the paper); needs a model trained with
                                      # train.cond_dropout > 0
    lowres_guidance: float | None = None  # ... the low-res stage's own w (None: generate.guidance)
    batch_galaxies: int = 16
    chunk_galaxies: int = 256         # streaming / resume granularity
    seed: int = 0
    figure: str | None = "figures/generated_examples.png"
    z_prior: str | None = None        # "baseline": redshift-consistent selection (not the paper; chain.py)
    z_prior_width: float = 0.02       # |z_cand - z_prior| / (1 + z_prior) counted as consistent
    prediction: str = "top"           # flux_pred: "top" = the top-ranked candidate (paper); "z_mean" = mean
                                      # of the full-res candidates whose fitted z is near the top one's;
                                      # "z_aligned" = the same, each first moved to the top one's z;
                                      # "consensus" = those near the low-res candidates' median z, moved there
    prediction_width: float = 0.003   # |z_cand - z_top| / (1 + z_top) averaged by "z_mean" / "z_aligned"
                                      # (z_consensus in place of z_top for "consensus")

    def check(self, where):
        for k in ("n_lowres", "keep_lowres", "n_fullres", "steps", "batch_galaxies", "chunk_galaxies"):
            _positive(where, f"generate.{k}", getattr(self, k))
        if self.limit is not None:
            _positive(where, "generate.limit", self.limit)
        _sampler(where, "generate", self.sampler, self.steps, self.stage_sampler("sr")["alpha_bar_min"],
                 {"eta": self.eta})
        lr = self.stage_sampler("lr")
        if lr != self.stage_sampler("sr"):
            _sampler(where, "generate.lowres", lr["sampler"],
                     self.steps if self.lowres_steps is None else self.lowres_steps, lr["alpha_bar_min"],
                     {"eta": lr["eta"]})
        if not self.output.strip():
            raise ConfigError(f"{where}: generate.output: {self.output!r} is empty")
        if self.split not in ("train", "val", "test", "all"):
            raise ConfigError(f"{where}: generate.split: {self.split!r} is not one of "
                              "['train', 'val', 'test', 'all']")
        if self.keep_lowres > self.n_lowres:
            raise ConfigError(f"{where}: generate.keep_lowres: {self.keep_lowres} > n_lowres={self.n_lowres}")
        for key in ("guidance", "lowres_guidance"):
            if getattr(self, key) is not None and not 0.0 <= getattr(self, key) <= 20.0:
                raise ConfigError(f"{where}: generate.{key}: {getattr(self, key)} must be in [0, 20]")
        from diffusion.sampling import START_MODES, parse_start
        for key in ("start", "lowres_start"):
            if key == "start" or self.lowres_start is not None:
                try:
                    parse_start(getattr(self, key))
                except ValueError:
                    raise ConfigError(f"{where}: generate.{key}: {getattr(self, key)!r} is not one of "
                                      f"{list(START_MODES)} (K an integer >= 1)") from None
        _choice(where, "generate.z_prior", self.z_prior, (None, "baseline"))
        _choice(where, "generate.keep_policy", self.keep_policy, ("top", "sample", "sample_all"))
        _positive(where, "generate.z_prior_width", self.z_prior_width)
        _choice(where, "generate.prediction", self.prediction, ("top", "z_mean", "z_aligned", "consensus"))
        _positive(where, "generate.prediction_width", self.prediction_width)
        need = {"diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr"}
        if not need <= set(self.checkpoints) <= need | {"baseline"}:
            raise ConfigError(f"{where}: generate.checkpoints: keys {sorted(self.checkpoints)}, "
                              f"expected {sorted(need)} (+ optional 'baseline')")
        if self.z_prior == "baseline" and "baseline" not in self.checkpoints:
            raise ConfigError(f"{where}: generate.checkpoints: no 'baseline' entry, which generate.z_prior: "
                              "baseline needs")

    def stage_sampler(self, stage: str) -> dict:
        """Sampler, steps, alpha_bar_min, eta, start and guidance of one stage ("lr" or "sr"): the lowres_*
        fields override the shared ones for the low-res stage where set."""
        own = {k: getattr(self, f"lowres_{k}") for k in SAMPLING_KEYS} if stage == "lr" else {}
        out = {k: getattr(self, k) for k in SAMPLING_KEYS}
        if own.get("sampler") not in (None, self.sampler):
            out["eta"] = 0.0   # the shared eta belongs to the shared sampler
        out.update({k: v for k, v in own.items() if v is not None})
        sampler = _samplers().get(out["sampler"])  # (an unknown name is check()'s one-line error)
        if out["alpha_bar_min"] is None:
            out["alpha_bar_min"] = sampler.alpha_bar_min if sampler else 0.0
        if sampler is not None and sampler.every_step:
            out["steps"] = None   # it visits every step whatever ``steps`` says (e.g. ancestral)
        return out


@dataclass
class ContrastiveConfig:
    name: str = "contrastive"
    data: DataConfig = field(default_factory=DataConfig)
    model: ContrastiveModelConfig = field(default_factory=ContrastiveModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class GenerativeConfig:
    name: str = "diffusion"
    data: DataConfig = field(default_factory=DataConfig)
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def check(self, where):
        if self.model.freeze_image_encoder and not (self.model.image_encoder_init or self.model.init_weights):
            raise ConfigError(f"{where}: model.freeze_image_encoder: true needs model.image_encoder_init or "
                              "model.init_weights (a frozen random encoder would never learn the images)")
        if self.model.lowres_noise and self.train.stage != "sr":
            raise ConfigError(f"{where}: model.lowres_noise: {self.model.lowres_noise} is for the "
                              "super-resolution stage (its low-res input), but train.stage is "
                              f"{self.train.stage!r}")
        if self.model.position_features and self.train.stage == "sr" and self.train.crop_length is not None:
            raise ConfigError(f"{where}: model.position_features: {self.model.position_features} needs whole "
                              f"spectra, but train.crop_length is {self.train.crop_length} (windows do not "
                              "say where they are): set one of them to 0 / null")


@dataclass
class BaselineModelConfig:
    image_encoder: str = "resnet18"   # image -> (z, Dn4000, sigma_v, AGN) CNN (training/baseline.py)
    image_width: int = 64             # used if models.resnet2d's constructor takes a width
    photometry: bool = False          # also feed the cutout's aperture photometry (models/conditioning.py)

    def check(self, where):
        _choice(where, "model.image_encoder", self.image_encoder, ("resnet18", "resnet50"))
        _positive(where, "model.image_width", self.image_width)


@dataclass
class BaselineConfig:
    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: BaselineModelConfig = field(default_factory=BaselineModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------
def _positive(where, key, value):
    if value is None or not value > 0:  # "not >" also catches NaN
        raise ConfigError(f"{where}: {key}: {value!r} must be > 0")


def _non_negative(where, key, value):
    if value is None or not value >= 0:
        raise ConfigError(f"{where}: {key}: {value!r} must be >= 0")


def _positive_list(where, key, values):
    if not values:
        raise ConfigError(f"{where}: {key}: {values!r} must be a non-empty list")
    for i, v in enumerate(values):
        _positive(where, f"{key}[{i}]", v)


def _samplers() -> dict:
    """``diffusion.samplers.SAMPLERS``, imported on first use: loading a config needs no torch until it
    has a sampler to check."""
    from diffusion.samplers import SAMPLERS
    return SAMPLERS


def _sampler(where, section, name, steps, alpha_bar_min, options=None):
    """Sampler name and options of ``section`` (validation or generate), checked when the config loads
    rather than at the first validation hours into a run. The names are those of
    ``diffusion.samplers.SAMPLERS``."""
    samplers = _samplers()
    _choice(where, f"{section}.sampler", name, tuple(samplers))
    _positive(where, f"{section}.steps", steps)
    if not 0.0 <= alpha_bar_min < 1.0:
        raise ConfigError(f"{where}: {section}.alpha_bar_min: {alpha_bar_min!r} must be in [0, 1)")
    for key, value in (options or {}).items():   # the sampler's own options; 0 = unset (NaN is not)
        if value:
            try:
                samplers[name].check_options({key: value})
            except ValueError as e:
                raise ConfigError(f"{where}: {section}.{key}: {value!r}: {name}: {e}") from None


def _choice(where, key, value, choices):
    if value not in choices:
        raise ConfigError(f"{where}: {key}: {value!r} is not one of {list(choices)}")


def _coerce(where: str, key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, key, value, a)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: {value!r} should be a list")
        return [_coerce(where, f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: {value!r} should be a mapping")
        return {str(k): _coerce(where, f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: {value!r} should be a number")
        if not np.isfinite(value):
            raise ConfigError(f"{where}: {key}: {value!r} should be a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: {value!r} should be an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: {value!r} should be true or false")
        return value
    if tp is str:
        if value is False and key.endswith(".amp"):  # YAML reads an unquoted `off` as false
            return "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: {value!r} should be a string")
        return value
    return value


def from_dict(cls, data: dict, where: str, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or '<top>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: {prefix}{unknown[0]}: unknown key (allowed: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        v = data[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, v, where, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(where, prefix + f.name, v, tp)
    obj = cls(**kwargs)
    return obj


def _check_all(obj, where):
    if hasattr(obj, "check"):
        obj.check(where)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _check_all(v, where)


def _set_dotted(d: dict, key: str, value: Any, where: str):
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {key}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 3e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not p for p in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: key: {key!r} is not a dotted name like train.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        msg = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"--set {text!r}: {key.strip()}: value {raw!r} is not valid YAML ({msg})") from None
    if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string; users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def _preset_chain(presets: dict, name: str, where: str) -> list[str]:
    """``name`` and the presets it ``extends`` (``presets.<name>.extends: <other>``), base first."""
    chain = [name]
    while isinstance(presets.get(chain[-1]), dict) and "extends" in presets[chain[-1]]:
        parent = presets[chain[-1]]["extends"]
        if parent not in presets:
            raise ConfigError(f"{where}: presets.{chain[-1]}.extends: {parent!r} is not a preset "
                              f"(have {sorted(presets)})")
        if parent in chain:
            raise ConfigError(f"{where}: presets.{chain[-1]}.extends: {parent!r} extends itself in a loop")
        chain.append(parent)
    return chain[::-1]


def load_config(path: str | Path, cls, overrides: list[str] | None = None, preset: str | None = None):
    """Load YAML ``path`` into dataclass ``cls``; apply ``presets[preset]`` then ``--set`` overrides."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: file: does not exist" if not path.exists() else
                          f"{where}: file: is a directory, not a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: file: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: <top>: expected a mapping")
    raw = copy.deepcopy(raw)
    presets = raw.pop("presets", {}) or {}
    parsed = [parse_override(t) for t in overrides or []]
    if preset is not None:
        if not isinstance(presets, dict) or preset not in presets:
            raise ConfigError(f"{where}: presets.{preset}: no such preset (have {sorted(presets)})")
        for name in _preset_chain(presets, preset, where):
            flat = dict(presets[name] or {})
            flat.pop("extends", None)
            by_stage = {k: flat.pop(k) for k in ("lr", "sr") if isinstance(flat.get(k), dict)}
            for key, value in flat.items():
                _set_dotted(raw, key, value, f"{where} presets.{name}")
            # a preset may hold stage-specific values (presets.<name>.lr / .sr), applied for the stage used
            stage = dict(parsed).get("train.stage", (raw.get("train") or {}).get("stage", "lr"))
            for key, value in (by_stage.get(stage) or {}).items():
                _set_dotted(raw, key, value, f"{where} presets.{name}.{stage}")
    for key, value in parsed:
        _set_dotted(raw, key, value, f"{where} --set")
    cfg = from_dict(cls, raw, where)
    _check_all(cfg, where)
    return cfg


def to_dict(cfg) -> dict:
    """Plain nested dict of a config dataclass (for YAML/JSON and checkpoints)."""
    return dataclasses.asdict(cfg)


def config_from_checkpoint_dict(d: dict, cls, where: str):
    """Rebuild a config saved in a checkpoint (validated like a file)."""
    if cls is GenerativeConfig and "layout" not in d.get("model", {"layout": None}):
        # diffusion checkpoints written before model.layout existed hold the "wide" UNet
        d = {**d, "model": {**d["model"], "layout": "wide"}}
    cfg = from_dict(cls, d, where)
    _check_all(cfg, where)
    return cfg


def resolve_out_dir(cfg) -> Path:
    """``run.out_dir`` with {name} and {stage} filled in."""
    return Path(cfg.run.out_dir.format(name=cfg.name, stage=cfg.train.stage))
