"""Benchmark the paper-size networks on CPU; prints one JSON object.

For the low-res and super-resolution denoisers (image encoding included) and the low-/full-res
contrastive models: parameter count, FLOPs per item (torch.utils.flop_counter, which counts a
multiply-add as 2 FLOPs) and forward wall time at each batch size, plus the fraction of the machine's
measured matmul peak that the forward achieves.

    .venv/bin/python benchmarks/bench_networks.py [--threads 2] [--batch-sizes 1 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.contrastive import ContrastiveModel  # noqa: E402
from models.unet1d import ConditionalDenoiser  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, repeats: int) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def bench(name, model, make_call, batch_sizes, peak):
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    flop1 = flops(make_call(1))
    entry = {"params": n_params, "gflop_per_item": flop1 / 1e9, "gmac_per_item": flop1 / 2e9, "forward": {}}
    timed(make_call(1), 1)  # warm-up: oneDNN primitive creation
    for b in batch_sizes:
        seconds = timed(make_call(b), 2 if b == 1 else 1)
        entry["forward"][str(b)] = {
            "seconds": round(seconds, 4),
            "items_per_s": round(b / seconds, 2),
            "fraction_of_fp32_peak": round(b * flop1 / seconds / peak, 3),
        }
    print(f"{name}: done", file=sys.stderr)
    return entry


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    peak32 = matmul_peak(torch.float32)
    # Small bf16 problem: CPUs without AVX512-BF16/AMX emulate bf16 matmul at well under 1 GFLOP/s.
    peak16 = matmul_peak(torch.bfloat16, n=512, repeats=2)
    out = {
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "matmul_peak_gflops": {"float32": round(peak32 / 1e9, 1), "bfloat16": round(peak16 / 1e9, 1)},
        "models": {},
    }

    def denoiser_call(model, length, lowres):
        def make(b):
            x, t = torch.randn(b, length), torch.full((b,), 100)
            images = torch.randn(b, 5, 64, 64)
            lr = torch.randn(b, 563) if lowres else None
            return lambda: model(x, t, images=images, lowres=lr)

        return make

    def contrastive_call(model, length):
        def make(b):
            images, spec = torch.randn(b, 5, 64, 64), torch.randn(b, length)
            return lambda: model(images, spec)

        return make

    low = ConditionalDenoiser(in_channels=1)
    out["models"]["denoiser_lowres_563"] = bench(
        "denoiser_lowres", low, denoiser_call(low, 563, False), args.batch_sizes, peak32
    )
    del low
    sr = ConditionalDenoiser(in_channels=2)
    out["models"]["denoiser_sr_4500"] = bench(
        "denoiser_sr", sr, denoiser_call(sr, 4500, True), args.batch_sizes, peak32
    )
    del sr
    con = ContrastiveModel()
    for length in (563, 4500):
        out["models"][f"contrastive_{length}"] = bench(
            f"contrastive_{length}", con, contrastive_call(con, length), args.batch_sizes, peak32
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
