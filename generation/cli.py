"""Command-line front end of generate.py."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from utils.config import ConfigError, GenerativeConfig, load_config, to_dict
from utils.launch import (
    ArgumentParser,
    OutputError,
    check_output_path,
    is_user_error,
    launch,
    report,
    threads_per_process,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = ArgumentParser(prog="generate.py", description="Images -> ranked full-resolution spectra "
                                "(Doorenbos et al. 2024).")
    p.add_argument("--config", default=str(ROOT / "params_generative.yml"))
    p.add_argument("--preset", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--checkpoints", default=None, metavar="reference|DIR",
                   help="the four models: 'reference' = the shipped reference models (models/reference/, "
                        "checked "
                        "against their manifest), or a directory holding <role>.pt / <role>/best.pt for the "
                        "roles diffusion_lr, diffusion_sr, contrastive_lr, contrastive_sr (default: "
                        "generate.checkpoints)")
    p.add_argument("--input", default=None, help="HDF5 with images (default: generate.input or data.path)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast: auto = where bf16 is native (CUDA with bf16, AVX512-BF16/AMX CPUs), "
                        "never on an emulating CPU")
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing generate.output and discard parts of a different run")
    p.add_argument("--stop-after-chunks", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _worker(local_rank, cfg, input_path, args, threads):
    from generation.run import generate
    torch.set_num_threads(threads)
    out = generate(cfg.generate, to_dict(cfg), input_path, amp=args.amp,
                   stop_after_chunks=args.stop_after_chunks, overwrite=args.overwrite)
    if out is not None and cfg.generate.figure and not args.no_figure:
        from generation.figures import generated_figure
        generated_figure(out, cfg.generate.figure, input_path)
        print(f"figure: {cfg.generate.figure}")
    if out is not None:
        print(f"wrote {out}")


def resolve_checkpoints(spec: str) -> dict[str, str]:
    """``--checkpoints``: "reference" or a directory -> {role: checkpoint path}, or a one-line error."""
    from models.reference import reference_checkpoints
    if spec == "reference":
        return reference_checkpoints()
    root = Path(spec)
    if not root.is_dir():
        raise ConfigError(f"--checkpoints: {spec!r} is neither 'reference' nor a directory")
    out = {}
    from generation.chain import OPTIONAL_ROLES, ROLES
    for role in (*ROLES, *OPTIONAL_ROLES):
        for cand in (root / f"{role}.pt", root / role / "best.pt"):
            if cand.is_file():
                out[role] = str(cand)
                break
        else:
            if role in ROLES:
                raise ConfigError(f"--checkpoints: {root}: no {role}.pt or {role}/best.pt")
    return out


def preflight(cfg, args) -> None:
    """Output paths and process counts, checked before any model is loaded or file written."""
    g = cfg.generate
    if args.checkpoints:
        g.checkpoints = resolve_checkpoints(args.checkpoints)
        if g.z_prior and "baseline" not in g.checkpoints:
            raise ConfigError(f"--checkpoints: {args.checkpoints}: no baseline.pt or baseline/best.pt, which "
                              f"generate.z_prior: {g.z_prior} needs")
    if args.nproc < 1:
        raise ConfigError(f"--nproc: {args.nproc} must be >= 1")
    out = check_output_path(g.output, args.overwrite, "generate.output")
    parts = out.with_name(out.name + ".parts")
    if parts.exists() and not parts.is_dir():
        raise OutputError(f"{parts}: generate.output: the resume directory is a file")
    if g.figure and not args.no_figure:
        check_output_path(g.figure, what="generate.figure", allow_existing=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, GenerativeConfig, args.overrides, args.preset)
        preflight(cfg, args)
    except ValueError as e:
        if not is_user_error(e):
            raise
        return report(e)
    input_path = args.input or cfg.generate.input or cfg.data.path
    threads = threads_per_process(args.nproc, args.threads)
    return launch(_worker, (cfg, input_path, args, threads), args.nproc, args.backend)
