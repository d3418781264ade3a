"""Command-line front end of generate.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from utils.config import ConfigError, GenerativeConfig, load_config, to_dict
from utils.launch import launch, threads_per_process

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Images -> ranked full-resolution spectra "
                                "(Doorenbos et al. 2024).")
    p.add_argument("--config", default=str(ROOT / "params_generative.yml"))
    p.add_argument("--preset", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--input", default=None, help="HDF5 with images (default: generate.input or data.path)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast: auto = on CUDA only")
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--stop-after-chunks", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _worker(local_rank, cfg, input_path, args, threads):
    from generation.run import generate
    torch.set_num_threads(threads)
    out = generate(cfg.generate, to_dict(cfg), input_path, amp=args.amp,
                   stop_after_chunks=args.stop_after_chunks)
    if out is not None and cfg.generate.figure and not args.no_figure:
        from generation.figures import generated_figure
        generated_figure(out, cfg.generate.figure, input_path)
        print(f"figure: {cfg.generate.figure}")
    if out is not None:
        print(f"wrote {out}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, GenerativeConfig, args.overrides, args.preset)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    input_path = args.input or cfg.generate.input or cfg.data.path
    threads = threads_per_process(args.nproc, args.threads)
    return launch(_worker, (cfg, input_path, args, threads), args.nproc, args.backend)
