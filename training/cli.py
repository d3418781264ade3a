"""Command-line front end shared by train_contrastive.py and train_generative.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from utils.config import BaselineConfig, ConfigError, ContrastiveConfig, GenerativeConfig, load_config
from utils.launch import launch, threads_per_process

ROOT = Path(__file__).resolve().parent.parent


def parse_args(kind: str, argv=None):
    default = ROOT / {"contrastive": "params_contrastive.yml", "baseline": "params_baseline.yml"}.get(
        kind, "params_generative.yml")
    p = argparse.ArgumentParser(description=f"Train the {kind} networks (Doorenbos et al. 2024).")
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


def main(kind: str, argv=None) -> int:
    args = parse_args(kind, argv)
    try:
        cfg = load(kind, args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = threads_per_process(args.nproc, args.threads)
    return launch(_worker, (kind, cfg, args.stop_iteration, threads, args.allow_config_change), args.nproc,
                  args.backend)
