"""Which low-res sampler keeps the paper's redshifts? The low-res stage alone, several samplers (prints JSON).

The chain's redshift is decided in its low-res stage: super-resolution keeps the redshift of the low-res
spectrum it refines (``candidate_redshifts.py``: ``sr_keeps_parent_z``), and the redshift-consistent
selection can only choose among the low-res candidates. So a sampler for that stage can be screened
without the expensive full-res stage: for the first ``--galaxies`` test galaxies it draws ``--n`` low-res
candidates per galaxy with each setting (the chain's own code: ``GenerationChain._sample``, the same
per-galaxy seeds as generate.py), fits every candidate's redshift (``candidate_redshifts``) and reports,
against the catalogue z:

* ``candidate_outlier_frac`` / ``candidate_sigma_nmad``: over all candidates;
* ``selected_outlier_frac`` / ``selected_sigma_nmad``: of the candidate the chain would rank first (the
  low-res contrastive score, after the z prior when the preset has one);
* ``model_calls``: low-res denoiser calls per candidate; ``seconds``: wall time of the setting.

Each setting is a list of ``generate.*`` overrides (KEY=VALUE, without the ``generate.`` prefix) applied to
the low-res stage, e.g.::

    python benchmarks/lowres_sampler_screen.py --checkpoints reference --survey mock.h5 --galaxies 200 \\
        --n 4 \\
        --setting sampler=ancestral \\
        --setting sampler=dpmpp_2m steps=10 alpha_bar_min=0.02 \\
        --setting sampler=dpmpp_2m steps=10 alpha_bar_min=0.02 start=ancestral

``head=K`` in a setting is shorthand for ``start=ancestral`` with the alpha_bar_min that skips exactly the
K noisiest steps (so the first K steps are ancestral ones).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.preprocess import LOWRES_WAVE, N_LOWRES, to_linear  # noqa: E402
from datasets.schema import open_survey  # noqa: E402
from diffusion.sampling import galaxy_seed, item_seeds  # noqa: E402
from evaluation.metrics import outlier_fraction, sigma_nmad  # noqa: E402
from generation.chain import LOWRES_SIGMAS, candidate_redshifts, load_chain, prior_rank_key  # noqa: E402
from generation.cli import resolve_checkpoints  # noqa: E402
from generation.run import ImageSource  # noqa: E402
from models.precision import cpu_model_name  # noqa: E402
from utils.config import SAMPLING_KEYS as STAGE_KEYS  # noqa: E402  (generate.lowres_<key> a setting may set)
from utils.config import GenerativeConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def head_alpha_bar_min(alphas_cumprod: torch.Tensor, k: int) -> float:
    """The alpha_bar_min that skips exactly the ``k`` noisiest steps (alpha-bar decreases with t)."""
    T = alphas_cumprod.numel()
    if not 0 < k < T - 1:
        raise SystemExit(f"error: head={k} must be in [1, {T - 2}]")
    return float(alphas_cumprod[T - k - 1])


def apply_setting(g, setting: list[str], alphas_cumprod) -> dict:
    """Set the low-res stage of ``g`` (a GenerateConfig) from KEY=VALUE items; returns what was set."""
    done = {}
    for kv in setting:
        key, value = kv.split("=", 1)
        value = yaml.safe_load(value)
        if key == "head":
            done.update(start="ancestral", alpha_bar_min=head_alpha_bar_min(alphas_cumprod, int(value)),
                        head=int(value))
            continue
        done[key] = value
    for key in STAGE_KEYS:
        setattr(g, f"lowres_{key}", done.get(key))
    unknown = set(done) - {*STAGE_KEYS, "head"}
    if unknown:
        raise SystemExit(f"error: --setting: unknown keys {sorted(unknown)}")
    return done


def model_calls(sp: dict, diffusion) -> int:
    """Low-res denoiser calls per candidate for the stage sampler ``sp`` (``stage_sampler`` output)."""
    T = diffusion.num_timesteps
    kept = diffusion.truncated(sp["alpha_bar_min"]).num_timesteps
    calls = kept if sp["steps"] is None else min(int(sp["steps"]), kept)
    return calls + (T - kept if sp["start"] == "ancestral" else 0)


def screen(chain, batches: list, z_true: np.ndarray, n: int) -> dict:
    """Draw ``n`` low-res candidates per galaxy of ``batches`` (``prepare``) with ``chain``'s low-res stage
    settings."""
    g = chain.g
    zs, sel_z = [], []
    t0 = time.perf_counter()
    for images, phot, gseeds in batches:
        with torch.no_grad():
            lr = chain._sample("diffusion_lr", images, item_seeds(gseeds, n), photometry=phot)
            key = chain._rank("contrastive_lr", images, lr, n, phot)
            b = images.shape[0]
            lin = to_linear(lr.reshape(b, n, N_LOWRES), chain.preprocessing).cpu().numpy()
            zl = candidate_redshifts(lin, LOWRES_WAVE, LOWRES_SIGMAS[chain.lowres_mode])
            if chain.z_prior:
                zp = chain.m["baseline"].model.predict(images, phot)["z"].astype(np.float64)
                key = prior_rank_key(key, zl, zp, g.z_prior_width)
        zs.append(zl)
        sel_z.append(zl[np.arange(b), key.argmax(1).cpu().numpy()])
    seconds = time.perf_counter() - t0
    zl, zsel = np.concatenate(zs), np.concatenate(sel_z)
    zrep = np.repeat(z_true, n)
    return {"candidate_outlier_frac": outlier_fraction(zl.ravel(), zrep),
            "candidate_sigma_nmad": sigma_nmad(zl.ravel(), zrep),
            "selected_outlier_frac": outlier_fraction(zsel, z_true),
            "selected_sigma_nmad": sigma_nmad(zsel, z_true), "seconds": round(seconds, 1)}


def prepare(chain, src: ImageSource, batch: int) -> list:
    """The galaxies of ``src`` read and prepared once for every setting: (images, photometry, seeds) per
    batch."""
    out = []
    for b0 in range(0, len(src), batch):
        sel = slice(b0, min(b0 + batch, len(src)))
        imgs = torch.from_numpy(src.read(sel)["images"])
        out.append((chain.prepare_images(imgs), chain.photometry_features(imgs),
                    [galaxy_seed(chain.g.seed, int(i)) for i in src.ids[sel]]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="reference", help="'reference' or a directory (generate.py's)")
    p.add_argument("--preset", default="reference")
    p.add_argument("--survey", required=True)
    p.add_argument("--galaxies", type=int, default=200)
    p.add_argument("--n", type=int, default=4, help="low-res candidates per galaxy")
    p.add_argument("--batch", type=int, default=16, help="galaxies per batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    p.add_argument("--setting", nargs="+", action="append", required=True, metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(ROOT / "params_generative.yml", GenerativeConfig, [f"data.path={a.survey}"], a.preset)
    g = cfg.generate
    g.checkpoints = resolve_checkpoints(a.checkpoints)
    chain = load_chain(g, torch.device("cpu"), a.amp)
    diffusion = chain.m["diffusion_lr"].diffusion
    src = ImageSource(a.survey, "test", a.galaxies)
    with open_survey(a.survey) as f:
        z_true = f["catalog/z"][:][src.rows].astype(np.float64)
    out = {"cpu": cpu_model_name(), "threads": a.threads, "checkpoints": a.checkpoints, "preset": a.preset,
           "survey": str(a.survey), "galaxies": len(src), "candidates_per_galaxy": a.n,
           "z_prior": g.z_prior or "none", "settings": []}
    batches = prepare(chain, src, a.batch)
    for setting in a.setting:
        asked = apply_setting(g, setting, diffusion.alphas_cumprod)
        sp = g.stage_sampler("lr")
        row = {"setting": asked, "stage_sampler": sp, "model_calls": model_calls(sp, diffusion),
               **screen(chain, batches, z_true, a.n)}
        out["settings"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
