"""Training throughput of the four networks (prints JSON): samples/s of one optimisation step
(forward + backward + Adam) at the PAPER's architecture (batch 32) and at the CPU profile (its batch),
through the same task code the trainers use (training/tasks.py).

    python benchmarks/bench_training.py [--threads 2] [--steps 2] [--paper-batch 32] [--amp off bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.precision import autocast_context  # noqa: E402
from training.tasks import ContrastiveTask, DiffusionTask  # noqa: E402
from utils.config import ContrastiveConfig, GenerativeConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def step_time(task, cfg, batch_size: int, steps: int, amp: str = "off") -> dict:
    model = task.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    length = 563 if task.stage == "lr" else 4500
    batch = {"image": torch.randn(batch_size, 5, 64, 64), "spectrum": torch.randn(batch_size, length)}
    if task.stage == "sr" and isinstance(task, DiffusionTask):
        batch["lowres"] = torch.randn(batch_size, 563)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with autocast_context(torch.device("cpu"), amp):
            loss = task.loss(model, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up kernels and allocations
            times.append(time.perf_counter() - t0)
    s = sum(times) / len(times)
    return {"batch": batch_size, "seconds_per_step": s, "samples_per_s": batch_size / s,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "crop_length": task.crop_length}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--paper-batch", type=int, default=32)
    p.add_argument("--amp", nargs="*", default=["off", "bf16"], choices=["off", "bf16"],
                   help="precisions ('bf16' = bf16 autocast, which pays on CPUs with AVX512-BF16/AMX)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {"threads": a.threads}
    for profile in ("paper", "cpu"):
        preset = None if profile == "paper" else "cpu"
        for kind, cls, yml in (("contrastive", ContrastiveConfig, "params_contrastive.yml"),
                               ("diffusion", GenerativeConfig, "params_generative.yml")):
            for stage in ("lr", "sr"):
                cfg = load_config(ROOT / yml, cls, [f"train.stage={stage}"], preset)
                task = (ContrastiveTask(stage, cfg.train.crop_length) if kind == "contrastive"
                        else DiffusionTask(stage, cfg.model, cfg.train.crop_length))
                bs = a.paper_batch if profile == "paper" else cfg.train.batch_size
                for amp in a.amp:
                    key = f"{profile}/{kind}_{stage}" + ("" if amp == "off" else f"/{amp}")
                    out[key] = step_time(task, cfg, bs, a.steps, amp)
                    print(f"{key}: {out[key]}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
