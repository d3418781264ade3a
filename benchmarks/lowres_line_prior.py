"""Does the low-res diffusion model know where a galaxy's absorption lines go? (prints JSON)

    python benchmarks/lowres_line_prior.py --checkpoints reference --survey runs/reference/mock_ref.h5
        [--n 48] [--t0 10 25 50 100 150] [--threads 1]

For the first ``--n`` test galaxies that are not spirals (mock survey: needs ``/spectra/model``), the
OBSERVED low-res spectrum (as the model of ``--checkpoints`` was trained on it: ``data.lowres``) is noised
to step t0 of the model's own process, x_t0 = sqrt(abar) x0 + sqrt(1 - abar) eps, and the model, given the
galaxy's image, runs the paper's ancestral sampler from t0 to 0 (an SDEdit-style partial sampling). The
small-scale structure of the result (spectrum minus its 15-pixel running median, as in
``lowres_candidates.py``) is correlated with that of the NOISELESS true low-res spectrum, per galaxy, and
the median is reported beside the same correlation of the input x_t0 / sqrt(abar) (what the noised
spectrum still shows of the lines) and of the observed spectrum (the noise-limited ceiling).

A model that has learnt where lines sit relative to the continuum and the redshift that x_t0 still shows
raises the correlation above its input's: it puts back lines that the noise hid. A model that has not
learnt it leaves the correlation where the input had it (it keeps the structure it was given and adds
structure of its own). The first case is what sharp, coherent generated spectra need.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lowres_candidates import highpass, row_correlation  # noqa: E402

from datasets.galaxy import build_cache  # noqa: E402
from datasets.preprocess import lowres, to_linear, to_model_space  # noqa: E402
from diffusion.process import GaussianDiffusion  # noqa: E402
from diffusion.samplers import NoiseSource, ancestral  # noqa: E402
from evaluation.run import noiseless_spectra  # noqa: E402
from generation.chain import load_chain  # noqa: E402
from generation.cli import resolve_checkpoints  # noqa: E402
from utils.config import GenerativeConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def partial_sample(model, diffusion: GaussianDiffusion, kv, x0: torch.Tensor, t0: int,
                   seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``x0`` (B, L; the diffusion's data space) to step ``t0`` and sample back to 0 with the
    ancestral sampler. Returns (x_t0 / sqrt(abar_t0), the sample), both in data space."""
    noise = NoiseSource(seeds, device=x0.device)
    t = torch.full((x0.shape[0],), t0, dtype=torch.long, device=x0.device)
    x_t = diffusion.q_sample(x0, t, noise.randn(tuple(x0.shape)))
    first = GaussianDiffusion(betas=diffusion.betas[: t0 + 1].double(), schedule=diffusion.schedule)
    net = diffusion.eps_model(lambda x, tt: model(x, tt, context=kv).float())
    out = ancestral(net, x_t, first.to(x0.device), noise=noise, clip_x0=model.clip_range())
    return x_t / diffusion.alphas_cumprod[t0].sqrt(), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", default="reference", help="'reference' or a directory (generate.py's)")
    p.add_argument("--survey", default=str(ROOT / "runs/reference/mock_ref.h5"))
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--t0", type=int, nargs="+", default=[10, 25, 50, 100, 150])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    g = load_config(ROOT / "params_generative.yml", GenerativeConfig, preset="reference").generate
    g.checkpoints = resolve_checkpoints(a.checkpoints)
    chain = load_chain(g, torch.device("cpu"))
    lm = chain.m["diffusion_lr"]
    c = build_cache(a.survey)
    test = c.indices("test")
    with h5py.File(a.survey, "r") as f:
        if "spectra/model" not in f:
            raise SystemExit(f"{a.survey}: spectra/model: missing (needs a mock survey's noiseless spectra)")
        morph = f["catalog/morphology"][:]
    sel = test[morph[test] != 1][: a.n]
    mode = chain.lowres_mode
    obs = np.asarray(c.lowres(mode)[sel], np.float64)
    truth_hp = highpass(lowres(noiseless_spectra(a.survey, sel), mode))
    imgs = torch.from_numpy(np.ascontiguousarray(c.images[sel]))

    def corr(x):
        return round(float(np.median(row_correlation(highpass(x), truth_hp))), 3)

    def linear(x):
        return to_linear(lm.model.denormalize(x), chain.preprocessing).numpy().astype(np.float64)

    out = {"benchmark": "lowres_line_prior", "checkpoints": a.checkpoints, "survey": a.survey, "lowres": mode,
           "n_galaxies": int(len(sel)), "observed_corr": corr(obs), "t0": {}}
    with torch.no_grad():
        kv = lm.model.precompute_context(
            lm.model.encode_context(chain.prepare_images(imgs), chain.photometry_features(imgs)))
        x0 = lm.model.normalize(torch.from_numpy(to_model_space(obs, chain.preprocessing).astype(np.float32)))
        for t0 in a.t0:
            noisy, sample = partial_sample(lm.model, lm.diffusion, kv, x0, t0, [int(i) for i in sel])
            abar = float(lm.diffusion.alphas_cumprod[t0])
            out["t0"][str(t0)] = {"alpha_bar": round(abar, 4),
                                  "noise_over_data_std": round(float(np.sqrt((1 - abar) / abar)), 3),
                                  "input_corr": corr(linear(noisy)), "denoised_corr": corr(linear(sample))}
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
