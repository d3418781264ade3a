"""Benchmark of the generation chain (prints JSON).

1. Time per galaxy of the whole chain (N/k/M = 3/2/3) with the PAPER-size networks (random weights: speed
   does not depend on them): the fast default (params_generative.yml's generate.sampler/steps/alpha_bar_min)
   run whole, and the paper's ancestral sampler run for ``--paper-fraction`` (default 20 %, 1 = all) of its
   250 steps, the rest at the measured per-step cost (``paper_and_fast``); the split into the implementation's
   speed-up at equal steps and the step-count speed-up; against the released code's chain MEASURED in issue
   #13 (321 s per galaxy on an AVX2 EPYC, 2 threads), scaled to this CPU by the ratio of fp32 matmul peaks.
2. Fraction of the CPU's float32 matmul peak reached by one paper-size UNet forward (FLOPs from
   torch.utils.flop_counter over measured seconds).
3. ``--parts unet``: per stage, at the batch generate.py uses (generate.batch_galaxies x candidates): params,
   FLOPs per forward (attention included, models.flops), seconds per forward of the ``released`` and ``wide``
   layouts (fp32; bf16 too where the CPU has native bf16), timed INTERLEAVED (variant A, B, A, B, ...; min of
   ``--repeats``) so that the ratios between variants hold on a shared machine even when absolute times do
   not; "before" is the project's code before issue #13 (wide layout, unfused ResBlocks, cross-attention K/V
   projected at every step); fraction of the fp32 (bf16) matmul peak; the released code's quoted per-item
   times scaled to this machine by the ratio of fp32 matmul peaks. ``--profile`` adds the top ops by self
   CPU time.
Quality of the samplers against the paper's: benchmarks/sampler_equivalence.py (paired, reference models).

    python benchmarks/bench_generate.py [--threads 2] [--galaxies 4] [--paper-fraction 0.2]
        [--amp off bf16] [--parts timing peak unet]
        [--unet-batch 48 48] [--repeats 3] [--profile] [--compile] [--stages lr sr]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.preprocess import N_FULLRES, N_LOWRES  # noqa: E402
from diffusion.samplers import SAMPLERS, Sampler  # noqa: E402
from generation.chain import GenerationChain  # noqa: E402
from models.build import build_contrastive, build_denoiser, build_diffusion  # noqa: E402
from models.loading import LoadedModel  # noqa: E402
from models.precision import autocast_context, cpu_model_name  # noqa: E402
from utils.config import SAMPLING_KEYS, ContrastiveConfig, GenerateConfig, GenerativeConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The released code's whole chain, MEASURED in issue #13 (not by this script; never an imitation):
# N/k/M 3/2/3, paper-size networks, 4 galaxies per batch, float32, 2 threads, on an AVX2 EPYC whose fp32
# matmul peak is ~70 GFLOP/s. Per galaxy.
RELEASED_CHAIN = {"label": "released code, measured on an AVX2 EPYC, 2 threads (issue #13)",
                  "ancestral_250_s": 321.0, "ddim_10_s": 13.7, "per_step_s": 1.28,
                  "fp32_matmul_peak_gflops": 70.0}
# issue #13: the released code's forward per item, measured on an AVX2 EPYC whose fp32 matmul peak is ~70
# GFLOP/s with 2 threads (low-res at batch 16, super-resolution at batch 1)
RELEASED_FORWARD = {"lr": {"seconds_per_item": 0.0496, "batch": 16, "gflop": 2.60},
                    "sr": {"seconds_per_item": 0.41, "batch": 1, "gflop": 19.5},
                    "fp32_matmul_peak_gflops": 70.0}


def paper_chain(gen_cfg) -> GenerationChain:
    c = load_config(ROOT / "params_contrastive.yml", ContrastiveConfig)
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig)
    models = {}
    for role, stage in (("diffusion_lr", "lr"), ("diffusion_sr", "sr")):
        m = build_denoiser(g.model, stage).eval()
        models[role] = LoadedModel("paper-size (random weights)", "diffusion", stage, m, g, np.zeros(5),
                                   np.ones(5), build_diffusion(g.model))
    for role, stage in (("contrastive_lr", "lr"), ("contrastive_sr", "sr")):
        models[role] = LoadedModel("paper-size (random weights)", "contrastive", stage,
                                   build_contrastive(c.model).eval(), c, np.zeros(5), np.ones(5))
    return GenerationChain(models, gen_cfg, torch.device("cpu"))


# the paper's sampling settings: GenerateConfig's defaults for the generate.* sampling keys
PAPER = {k: getattr(GenerateConfig(), k) for k in (*SAMPLING_KEYS, *(f"lowres_{k}" for k in SAMPLING_KEYS))}


def time_chain(chain, images, settings: dict, amp="off") -> float:
    """Seconds per galaxy of one whole-chain run over ``images`` (after a 1-galaxy warm-up) with the
    ``generate.*`` sampling ``settings``."""
    for k, v in {**PAPER, **settings}.items():
        setattr(chain.g, k, v)
    chain.amp = amp
    ids = np.arange(images.shape[0])
    chain.run(images[:1], ids[:1])  # warm-up of kernels (oneDNN primitives)
    t0 = time.perf_counter()
    chain.run(images, ids)
    return (time.perf_counter() - t0) / images.shape[0]


@dataclass(frozen=True)
class _FirstSteps(Sampler):
    """A sampler that runs only the first ``first`` timesteps of its list (same work per step)."""
    first: int = 0

    def timesteps(self, diffusion, steps=None, spacing=None) -> list[int]:
        return super().timesteps(diffusion, steps, spacing)[: self.first]


@contextmanager
def first_ancestral_steps(first: int):
    """Within the block, the ancestral sampler runs only the first ``first`` of its T steps."""
    name, orig = "ancestral", SAMPLERS["ancestral"]
    SAMPLERS[name] = _FirstSteps(orig.fn, orig.spacing, orig.every_step, orig.options, first=first)
    try:
        yield
    finally:
        SAMPLERS[name] = orig


def paper_and_fast(chain, images, fraction: float, fast: dict, amp: str) -> dict:
    """Per galaxy: the paper's ancestral sampler (250 steps) and the fast default, both MEASURED.

    The fast default (``fast``: generate.* sampling settings) runs whole. The ancestral chain runs the
    first ``fraction`` of its 250 steps in each stage, and the first 10: every step is one denoiser forward
    per candidate, the same work whatever t is, so the per-step cost is (t_part - t_10) / (part - 10) and
    the 250-step time is the measured part plus the remaining steps at that cost (fraction = 1: measured
    whole, nothing added)."""
    n_anc = chain.m["diffusion_lr"].diffusion.num_timesteps
    part = max(20, round(fraction * n_anc))
    t_fast = time_chain(chain, images, fast, amp)
    with first_ancestral_steps(part):
        t_part = time_chain(chain, images, {}, amp)
    with first_ancestral_steps(10):
        t_10 = time_chain(chain, images, {}, amp)
    per_step = (t_part - t_10) / (part - 10)
    t_anc = t_part + (n_anc - part) * per_step
    return {"ancestral_steps_run": part, "ancestral_part_s": t_part, "ancestral_first_10_s": t_10,
            "per_step_s": per_step, "fixed_s": t_10 - 10 * per_step,
            f"ancestral_{n_anc}_s": t_anc, "fast_default_s": t_fast,
            "step_count_speedup": t_anc / t_fast}


def matmul_peak(dtype: torch.dtype) -> float:
    """Best FLOP/s of square matmuls (1024 and 2048, warmed up, best of 5 x 3): the CPU's practical peak."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(3):
                a @ b
            best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def unet_peak_fraction(threads: int) -> dict:
    """FLOPs of one paper-size UNet forward (torch.utils.flop_counter) over its measured seconds, as a
    fraction of the matmul peak of the same precision (float32, and bf16 under autocast)."""
    from torch.utils.flop_counter import FlopCounterMode
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig)
    peaks = {"off": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    out = {"matmul_peak_gflops": {"float32": peaks["off"] / 1e9, "bf16": peaks["bf16"] / 1e9}}
    for stage, length in (("lr", N_LOWRES), ("sr", N_FULLRES)):
        m = build_denoiser(g.model, stage).eval()
        b = 8
        x = torch.randn(b, length)
        t = torch.randint(0, 250, (b,))
        lowres = torch.randn(b, N_LOWRES) if stage == "sr" else None
        with torch.no_grad():
            ctx = m.encode_context(torch.randn(b, 5, 64, 64))
            with FlopCounterMode(display=False) as fc:
                m(x, t, context=ctx, lowres=lowres)
            flops = fc.get_total_flops()
            for amp, peak in peaks.items():
                with autocast_context(torch.device("cpu"), amp):
                    m(x, t, context=ctx, lowres=lowres)
                    best = float("inf")
                    for _ in range(3):
                        t0 = time.perf_counter()
                        m(x, t, context=ctx, lowres=lowres)
                        best = min(best, time.perf_counter() - t0)
                out[f"unet_{stage}_batch{b}" + ("" if amp == "off" else "_bf16")] = {
                    "gflop": flops / 1e9, "seconds": best, "gflops": flops / best / 1e9,
                    "fraction_of_peak": flops / best / peak}
    return out


def _time_interleaved(fns: dict, repeats: int) -> dict:
    """Min seconds of each callable over ``repeats`` rounds, the variants alternating within a round."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _top_ops(fn, n: int = 12) -> list[dict]:
    """The ``n`` ops with the most self CPU time in one call of ``fn`` (torch.profiler)."""
    with torch.profiler.profile() as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:n]]


def unet_parts(batches: dict, repeats: int, profile: bool, compile_: bool) -> dict:
    """Per stage: FLOPs, params and interleaved forward times of both layouts; fractions of the matmul
    peaks; the released code's quoted per-item times scaled to this machine (see the module docstring)."""
    from models import unet1d
    from models.flops import count_flops
    from models.precision import native_bf16
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig)
    bf16 = native_bf16("cpu")
    peaks = {"fp32": matmul_peak(torch.float32)}
    if bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    scale = RELEASED_FORWARD["fp32_matmul_peak_gflops"] / (peaks["fp32"] / 1e9)
    out = {"cpu": cpu_model_name(), "native_bf16": bf16,
           "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
           "released_code_time_scale": round(scale, 3), "repeats": repeats,
           "method": "min over repeats, variants interleaved; FLOPs counted at batch 1 x batch (linear)"}
    for stage, length in (("lr", N_LOWRES), ("sr", N_FULLRES)):
        if stage not in batches:
            continue
        b = batches[stage]
        x, t = torch.randn(b, length), torch.randint(0, 250, (b,))
        lowres = torch.randn(b, N_LOWRES) if stage == "sr" else None
        fns, row = {}, {"batch": b}
        for layout in ("released", "wide"):
            g.model.layout = layout
            m = build_denoiser(g.model, stage).eval()
            with torch.no_grad():
                kv = m.precompute_context(m.encode_context(torch.randn(b, 5, 64, 64)))
                flop1 = count_flops(m.unet, torch.randn(1, m.unet.in_channels, length), t[:1],
                                    m.encode_context(torch.randn(1, 5, 64, 64)))
            row[layout] = {"params": sum(p.numel() for p in m.parameters()),
                           "unet_gflop_per_item": round(flop1 / 1e9, 3)}
            nets = {layout: m}
            if compile_ and layout == "released":  # eager and compiled timed side by side, interleaved
                nets["released_compiled"] = torch.compile(m)
                row["released_compiled"] = dict(row["released"])
            for name, net in nets.items():
                for prec in ["fp32"] + (["bf16"] if bf16 else []):
                    def fwd(net=net, kv=kv, prec=prec, x=x, t=t, lowres=lowres):
                        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=prec == "bf16"):
                            return net(x, t, context=kv, lowres=lowres)
                    t0 = time.perf_counter()
                    fwd()  # warm-up (oneDNN primitives; compilation)
                    if name == "released_compiled":
                        row[name][f"{prec}_first_call_s"] = round(time.perf_counter() - t0, 1)
                    fns[(name, prec)] = fwd
            if layout == "wide":  # the project's code before issue #13: unfused ResBlocks, K/V every step
                kv_tokens = m.encode_context(torch.randn(b, 5, 64, 64)).detach()

                def before(m=m, x=x, t=t, lowres=lowres, tokens=kv_tokens):
                    unet1d.FUSED_RESBLOCK = False
                    try:
                        with torch.no_grad():
                            return m(x, t, context=tokens, lowres=lowres)
                    finally:
                        unet1d.FUSED_RESBLOCK = True
                before()
                fns[("before", "fp32")] = before
                row["before"] = dict(row["wide"])
        best = _time_interleaved(fns, repeats)
        for (layout, prec), sec in best.items():
            flops = row[layout]["unet_gflop_per_item"] * 1e9 * b
            row[layout][prec] = {"seconds_per_forward": round(sec, 3), "seconds_per_item": round(sec / b, 4),
                                 "gflops": round(flops / sec / 1e9, 1),
                                 "fraction_of_fp32_peak": round(flops / sec / peaks["fp32"], 3)}
            if prec == "bf16":
                row[layout][prec]["fraction_of_bf16_peak"] = round(flops / sec / peaks["bf16"], 3)
        ref = RELEASED_FORWARD[stage]
        ref_here = ref["seconds_per_item"] * scale
        row["released_code_seconds_per_item_scaled_here"] = round(ref_here, 4)
        for (layout, prec), sec in best.items():
            row[layout][prec]["speedup_vs_released_code_scaled"] = round(ref_here / (sec / b), 2)
        for other, prec in (("wide", "fp32"), ("before", "fp32"), ("before", "bf16")):
            if ("released", prec) in best:  # time ratio: > 1 = the released layout is faster
                ratio = best[(other, "fp32")] / best[("released", prec)]
                row[f"{other}_fp32_over_released_{prec}"] = round(ratio, 2)
        for prec in ("fp32", "bf16"):
            if ("released_compiled", prec) in best:  # > 1 = torch.compile is faster
                ratio = best[("released", prec)] / best[("released_compiled", prec)]
                row[f"released_{prec}_over_compiled_{prec}"] = round(ratio, 2)
        if profile:
            row["top_ops_released_fp32"] = _top_ops(fns[("released", "fp32")])
        out[stage] = row
        print(f"unet {stage}: done", file=sys.stderr)
    return out


def chain_timing(a) -> dict:
    """The paper's sampler and the fast default, per galaxy, measured (``paper_and_fast``), against the
    released code's measured chain scaled to this CPU by the ratio of fp32 matmul peaks."""
    from models.precision import native_bf16
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig).generate
    fast = {k: getattr(g, k) for k in PAPER}
    for kv in a.fast or []:
        k, v = kv.split("=", 1)
        fast[k] = yaml.safe_load(v)
    if fast == PAPER:
        raise SystemExit("error: the fast default is the paper's sampler: pass --fast KEY=VALUE ...")
    chain = paper_chain(g)
    images = torch.rand(a.galaxies, 5, 64, 64)
    peak = matmul_peak(torch.float32) / 1e9
    scale = RELEASED_CHAIN["fp32_matmul_peak_gflops"] / peak
    released_here = {"ancestral_250_s": RELEASED_CHAIN["ancestral_250_s"] * scale,
                     "per_step_s": RELEASED_CHAIN["per_step_s"] * scale}
    out = {"cpu": cpu_model_name(), "threads": torch.get_num_threads(), "native_bf16": native_bf16("cpu"),
           "fp32_matmul_peak_gflops": round(peak, 1), "galaxies_per_batch": a.galaxies,
           "setting": f"N/k/M {g.n_lowres}/{g.keep_lowres}/{g.n_fullres}, paper-size networks (random "
                      "weights: speed does not depend on them), z_prior none, seconds per galaxy",
           "fast_default": fast, "released_code": RELEASED_CHAIN,
           "released_code_scaled_here": {k: round(v, 3) for k, v in released_here.items()},
           "released_code_scale": f"x {scale:.3f} = 70 GFLOP/s / this CPU's fp32 matmul peak"}
    for amp in a.amp:
        with torch.no_grad():
            r = paper_and_fast(chain, images, a.paper_fraction, fast, amp)
        fast_s = r["fast_default_s"]
        r["speedup_vs_released_code_scaled"] = {
            "fast_default_vs_released_250": released_here["ancestral_250_s"] / fast_s,
            "per_step_equal_steps": released_here["per_step_s"] / r["per_step_s"]}
        out["float32" if amp == "off" else amp] = {k: round(v, 4) if isinstance(v, float) else v
                                                   for k, v in r.items()}
        print(f"chain timing {amp}: done", file=sys.stderr)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--galaxies", type=int, default=4, help="galaxies per batch for the paper-size timing")
    p.add_argument("--fast", nargs="*", metavar="KEY=VALUE",
                   help="timing: the fast default's generate.* sampling settings (default: "
                        "params_generative.yml's), e.g. sampler=dpmpp_2m steps=10 alpha_bar_min=0.02")
    p.add_argument("--paper-fraction", dest="paper_fraction", type=float, default=0.2,
                   help="timing: fraction of the 250 ancestral steps run (>= 0.2; 1 = all)")
    p.add_argument("--amp", nargs="*", default=["off", "bf16"], choices=["off", "bf16"],
                   help="precisions to time (bf16 autocast pays on CPUs with native bf16, e.g. AVX512-BF16)")
    p.add_argument("--parts", nargs="*", default=["timing", "peak"], choices=["timing", "peak", "unet"])
    p.add_argument("--unet-batch", dest="unet_batch", type=int, nargs=2, default=None, metavar=("LR", "SR"),
                   help="batches of --parts unet (default: generate.batch_galaxies x n_lowres / n_fullres)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of --parts unet")
    p.add_argument("--profile", action="store_true", help="--parts unet: top ops by self CPU time")
    p.add_argument("--compile", action="store_true",
                   help="--parts unet: also time the released layout under torch.compile (inductor), "
                        "interleaved with its eager forward; the first call's time is reported")
    p.add_argument("--stages", nargs="*", default=["lr", "sr"], choices=["lr", "sr"],
                   help="--parts unet: the stages to time")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {"threads": a.threads}
    if "timing" in a.parts:
        out["chain"] = chain_timing(a)
    if "peak" in a.parts:
        out["unet_forward"] = unet_peak_fraction(a.threads)
    if "unet" in a.parts:
        gen = load_config(ROOT / "params_generative.yml", GenerativeConfig).generate
        lr_b, sr_b = a.unet_batch or (gen.batch_galaxies * gen.n_lowres, gen.batch_galaxies * gen.n_fullres)
        batches = {k: v for k, v in {"lr": lr_b, "sr": sr_b}.items() if k in a.stages}
        out["unet"] = unet_parts(batches, a.repeats, a.profile, a.compile)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
