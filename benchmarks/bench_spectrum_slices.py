"""The contrastive spectrum encoder on a CPU with and without slicing the batch (``CPU_SLICE_PIXELS``)..

Times ``ContrastiveModel.encode_spectrum`` on a batch of full-res spectra in inference (the retrieval
baseline's and the chain's ranking calls), once with the batch sliced (the default) and once whole (the
slice limit lifted), and for comparison the whole-batch forward + backward of a training step on 2048-px
windows sliced by hand into the same number of pixels per call (training is not sliced), interleaved over
``--repeats`` rounds, best of each. Prints one JSON object, with the CPU's model name and bf16 support.

    .venv/bin/python benchmarks/bench_spectrum_slices.py [--threads 2] [--checkpoint reference]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models.contrastive as C  # noqa: E402
from models.precision import cpu_model_name, native_bf16  # noqa: E402


@contextmanager
def slicing(enabled: bool):
    """The default slice limit, or (``enabled=False``) none: whole batches."""
    keep = C.CPU_SLICE_PIXELS
    if not enabled:
        C.CPU_SLICE_PIXELS = 1 << 62
    try:
        yield
    finally:
        C.CPU_SLICE_PIXELS = keep


def best_time(fn, sliced: bool, repeats: int) -> float:
    with slicing(sliced):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128, help="full-res spectra per inference call")
    p.add_argument("--train-batch", type=int, default=64, help="2048-px windows per training step")
    p.add_argument("--checkpoint", default=None,
                   help="a full-res contrastive checkpoint ('reference' = the shipped one); default: the "
                        "CPU preset's architecture, freshly initialised")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.checkpoint:
        from models.loading import load_model
        from models.reference import reference_path
        path = reference_path("contrastive_sr") if a.checkpoint == "reference" else a.checkpoint
        model = load_model(path, "contrastive", "sr", "cpu", given_as="contrastive_sr").model
    else:
        model = C.ContrastiveModel(image_encoder="resnet18", image_width=16, spectrum_base=16,
                                   spectrum_mults=(1, 2, 4, 8))
    x = torch.randn(a.batch, 4500)
    crops = torch.randn(a.train_batch, 2048)

    def infer():
        model.eval()
        with torch.no_grad():
            return model.encode_spectrum(x)

    def train_step():  # sliced by hand like inference (encode_spectrum does not slice with autograd on)
        model.train()
        model.zero_grad(set_to_none=True)
        rows = max(1, min(len(crops), C.CPU_SLICE_PIXELS // crops.shape[-1]))
        z = torch.cat([model.spectrum_encoder(crops[s:s + rows]) for s in range(0, len(crops), rows)])
        z.square().sum().backward()

    out = {"cpu": cpu_model_name(), "bf16_native": native_bf16("cpu"), "threads": a.threads,
           "slice_pixels": C.CPU_SLICE_PIXELS, "checkpoint": a.checkpoint or "cpu-preset architecture"}
    sliced = infer()
    with slicing(False):
        whole = infer()
    out["inference_max_abs_difference"] = float((sliced - whole).abs().max())
    cases = (("inference_4500px", infer, a.batch), ("train_step_2048px", train_step, a.train_batch))
    for name, fn, n in cases:
        t_s, t_w = [], []
        for _ in range(a.repeats):  # interleaved: a loaded machine slows both alike
            t_s.append(best_time(fn, True, 1))
            t_w.append(best_time(fn, False, 1))
        out[name] = {"batch": n, "sliced_ms_per_spectrum": 1e3 * min(t_s) / n,
                     "whole_ms_per_spectrum": 1e3 * min(t_w) / n, "speedup": min(t_w) / min(t_s)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
