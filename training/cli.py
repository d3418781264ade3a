"""Command-line front end shared by train_contrastive.py and train_generative.py."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.config import (
    BaselineConfig,
    ConfigError,
    ContrastiveConfig,
    GenerativeConfig,
    load_config,
    resolve_out_dir,
    to_dict,
)
from utils.launch import ArgumentParser, OutputError, is_user_error, launch, report, threads_per_process

ROOT = Path(__file__).resolve().parent.parent


def parse_args(kind: str, argv=None):
    default = ROOT / {"contrastive": "params_contrastive.yml", "baseline": "params_baseline.yml"}.get(
        kind, "params_generative.yml")
    p = ArgumentParser(prog=f"train_{kind}.py",
                       description=f"Train the {kind} networks (Doorenbos et al. 2024).")
    p.add_argument("--config", default=str(default), help="YAML config (default: %(default)s)")
    p.add_argument("--preset", default=None, help="apply the config's presets.<name> overlay, e.g. 'cpu'")
    p.add_argument("--stage", choices=["lr", "sr"], default=None,
                   help="low-res (563 points) or super-resolution/full-res (4500 points); "
                        "same as --set train.stage=")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=64 (repeatable)")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node (DDP)")
    p.add_argument("--backend", default=None, help="torch.distributed backend: gloo (CPU) or nccl (GPU); "
                   "default: none for --nproc 1, else nccl on CUDA and gloo on CPU")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though the config differs from the checkpoint's (the new values apply "
                        "from the resume point and are recorded in config.yaml and the checkpoints); "
                        "architecture, stage and batch size can never change")
    p.add_argument("--stop-iteration", type=int, default=None,
                   help="checkpoint and stop at this iteration (to test resuming)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    return p.parse_args(argv)


def load(kind: str, args):
    cls = {"contrastive": ContrastiveConfig, "baseline": BaselineConfig}.get(kind, GenerativeConfig)
    overrides = list(args.overrides)
    if args.stage:
        overrides.append(f"train.stage={args.stage}")
    if args.no_resume:
        overrides.append("run.resume=false")
    return load_config(args.config, cls, overrides, args.preset)


def _worker(local_rank, kind, cfg, stop_iteration, threads, allow_config_change=False):
    from training.engine import train
    from training.tasks import ContrastiveTask, DiffusionTask
    torch.set_num_threads(threads)
    if kind == "baseline":
        from training.baseline import BaselineTask
        task = BaselineTask()
    else:
        task = (ContrastiveTask(cfg.train.stage, cfg.train.crop_length) if kind == "contrastive"
                else DiffusionTask(cfg.train.stage, cfg.model, cfg.train.crop_length))
    return train(local_rank, cfg, task, stop_iteration=stop_iteration,
                 allow_config_change=allow_config_change)


# config keys a resumed run must share with its checkpoint: they fix the weights' shapes and meaning
RESUME_KEYS = ("model", "train.stage", "train.crop_length", "data.preprocessing", "data.lowres")


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d


def _first_difference(old, new, key: str):
    """The first dotted key (and its two values) where two nested config dicts differ, else None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            diff = _first_difference(old.get(k), new.get(k), f"{key}.{k}")
            if diff:
                return diff
        return None
    return None if old == new else (key, old, new)


def preflight(kind: str, cfg, args) -> None:
    """Validate everything a run needs before anything is written: the output directory, the survey
    (building its preprocessed cache, which the run then reuses), the split sizes, the
    ``model.image_encoder_init`` checkpoint and — when resuming — that the checkpoint in ``run.out_dir`` was
    made with the same model shapes."""
    from datasets.galaxy import build_cache
    from models.checkpoint import CheckpointError, load_checkpoint
    from training.engine import stored_config

    out = resolve_out_dir(cfg)
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{out}: run.out_dir: {p} is a file, not a directory")
            break
    cache = build_cache(cfg.data.path, cfg.data.cache_dir)
    n_train = len(cache.indices("train"))
    if n_train < cfg.train.batch_size:
        raise ConfigError(f"{cfg.data.path}: train.batch_size: {cfg.train.batch_size} is larger than the "
                          f"training split ({n_train} usable galaxies)")
    if cfg.train.batch_size % max(args.nproc, 1):
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is not divisible by --nproc "
                          f"{args.nproc}")
    if not len(cache.indices("val")):
        raise ConfigError(f"{cfg.data.path}: split: the validation split is empty (after dropping spectra "
                          "with non-positive flux)")
    init = getattr(cfg.model, "image_encoder_init", None)
    if init:  # a readable contrastive or baseline checkpoint whose weights fit its own config
        from training.tasks import image_trunk
        image_trunk(init)
    last = out / "last.pt"
    if cfg.run.resume and last.exists():
        ckpt = load_checkpoint(last)
        run, old = ckpt["run"], stored_config(ckpt)
        want = "contrastive" if kind == "contrastive" else "baseline" if kind == "baseline" else "diffusion"
        if run.get("kind") != want:
            raise CheckpointError(f"{last}: run.kind: {run.get('kind')!r}, expected {want!r} (a checkpoint "
                                  "of another model in this run directory; use another run.out_dir)")
        new = to_dict(cfg)
        for key in RESUME_KEYS:
            diff = _first_difference(_get(old, key), _get(new, key), key)
            if diff:
                raise CheckpointError(f"{last}: {diff[0]}: {diff[1]!r} in the checkpoint, {diff[2]!r} now; "
                                      "cannot resume with changed shapes (use --no-resume or another "
                                      "run.out_dir)")


def main(kind: str, argv=None) -> int:
    args = parse_args(kind, argv)
    try:
        cfg = load(kind, args)
        if args.nproc < 1:
            raise ConfigError(f"--nproc: {args.nproc} must be >= 1")
        preflight(kind, cfg, args)
    except ValueError as e:
        if not is_user_error(e):
            raise
        return report(e)
    threads = threads_per_process(args.nproc, args.threads)
    return launch(_worker, (kind, cfg, args.stop_iteration, threads, args.allow_config_change), args.nproc,
                  args.backend)
