"""Catalogue-scale generation: streaming input, resumable chunks, process sharding, FITS output.

The input (a survey file of the project's schema, or any HDF5 with an ``images`` dataset (N, 5, 64, 64)
in nanomaggies and optionally ``catalog/id``, ``ra``, ``dec``, ``z``) is read in chunks of
``generate.chunk_galaxies``. Each finished chunk is written atomically to ``<output>.parts/`` and skipped
when a killed run is restarted; ranks of a distributed run take chunks round-robin; when every chunk
exists, rank 0 merges them into the final FITS file (one row per galaxy, each galaxy exactly once) and
removes the parts. A galaxy whose image has NaN/inf pixels is flagged (``status`` column, with the reason)
and gets no spectrum, while the rest complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import ignite.distributed as idist
import numpy as np
import torch
from tqdm import tqdm

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, N_FULLRES, N_LOWRES, preprocess_spectra
from datasets.schema import IMAGE_SIZE, N_BANDS, SPLIT_CODES
from generation.chain import GenerationChain, GenerationError, load_chain
from utils.config import to_dict

STATUS_OK = "ok"


class ImageSource:
    """Lazy reader of the galaxies to generate for (validates shape and selection before any work)."""

    def __init__(self, path, split: str = "test", limit: int | None = None):
        self.path = str(path)
        if not Path(path).exists():
            raise GenerationError(f"{path}: file: does not exist")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise GenerationError(f"{path}: file: not a readable HDF5 file: {e}") from None
        with f:
            if "images" not in f:
                raise GenerationError(f"{path}: images: missing")
            shape = f["images"].shape
            if len(shape) != 4 or shape[1:] != (N_BANDS, IMAGE_SIZE, IMAGE_SIZE):
                raise GenerationError(f"{path}: images: shape {shape}, expected (N, {N_BANDS}, {IMAGE_SIZE}, "
                                      f"{IMAGE_SIZE}) (u,g,r,i,z cutouts of 64x64 px)")
            n = shape[0]
            if split == "all":
                rows = np.arange(n)
            else:
                if "split" not in f:
                    raise GenerationError(f"{path}: split: missing, so generate.split={split!r} cannot be "
                                          "selected (use split: all)")
                if split not in SPLIT_CODES:
                    raise GenerationError(f"generate.split: {split!r} is not one of "
                                          f"{list(SPLIT_CODES) + ['all']}")
                rows = np.flatnonzero(f["split"][:] == SPLIT_CODES[split])
            if limit is not None:
                rows = rows[:limit]
            if rows.size == 0:
                raise GenerationError(f"{path}: split: no galaxies selected (split={split!r})")
            cat = f["catalog"] if "catalog" in f else {}
            self.ids = cat["id"][:][rows] if "id" in cat else rows.astype(np.int64)
            self.columns = {c: cat[c][:][rows] for c in ("ra", "dec", "z") if c in cat}
            self.has_spectra = "spectra/flux" in f and "spectra/loglam" in f
            self.loglam = f["spectra/loglam"][:] if self.has_spectra else None
        self.rows = rows

    def __len__(self):
        return int(self.rows.size)

    def read(self, sel: slice) -> dict:
        """Images (and observed spectra where present) of the selected galaxies, in file order."""
        rows = self.rows[sel]
        with h5py.File(self.path, "r") as f:
            out = {"images": f["images"][np.sort(rows)]}
            if self.has_spectra:
                out["flux"] = f["spectra/flux"][np.sort(rows)]
                out["ivar"] = f["spectra/ivar"][np.sort(rows)]
        order = np.argsort(np.argsort(rows))  # rows may be unsorted (a custom selection): restore order
        return {k: v[order] for k, v in out.items()}


def _part_path(parts: Path, c: int) -> Path:
    return parts / f"part_{c:06d}.npz"


def _save_part(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def process_chunk(chain: GenerationChain, src: ImageSource, sel: slice, batch: int) -> dict:
    """Run the chain over one chunk; bad galaxies are flagged, not fatal."""
    data = src.read(sel)
    ids = src.ids[sel]
    images = data["images"]
    n = len(ids)
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    status = np.where(finite, STATUS_OK, "image has NaN/inf pixels").astype("U40")
    g = chain.g
    out = {"lowres_candidates": np.full((n, g.n_lowres, N_LOWRES), np.nan, np.float32),
           "lowres_scores": np.full((n, g.n_lowres), np.nan, np.float32),
           "kept": np.full((n, g.keep_lowres), -1, np.int16),
           "fullres_candidates": np.full((n, g.n_fullres, N_FULLRES), np.nan, np.float32),
           "fullres_parent": np.full((n, g.n_fullres), -1, np.int16),
           "fullres_scores": np.full((n, g.n_fullres), np.nan, np.float32),
           "top": np.full(n, -1, np.int16), "flux_pred": np.full((n, N_FULLRES), np.nan, np.float32)}
    good = np.flatnonzero(finite)
    for s in range(0, good.size, batch):
        idx = good[s:s + batch]
        res = chain.run(torch.from_numpy(images[idx]), ids[idx])
        for k, v in res.items():
            out[k][idx] = v
    out["status"] = status
    out["id"] = ids
    if src.has_spectra:
        pre = preprocess_spectra(src.loglam, data["flux"], data["ivar"])
        out["flux_obs"] = np.where(pre["valid"][:, None], pre["flux"], np.nan).astype(np.float32)
        out["ivar_obs"] = np.where(pre["valid"][:, None], pre["ivar"], 0).astype(np.float32)
    return out


def generate(gen_cfg, cfg_dict: dict, input_path, device=None, amp: str = "auto", progress: bool = True,
             stop_after_chunks: int | None = None) -> Path | None:
    """Run the chain over ``input_path`` and write ``gen_cfg.output``; returns its path (rank 0)."""
    rank, world = idist.get_rank(), idist.get_world_size()
    device = device or idist.device()
    src = ImageSource(input_path, gen_cfg.split, gen_cfg.limit)   # bad input fails here, before any work
    chain = load_chain(gen_cfg, device, amp)
    output = Path(gen_cfg.output)
    parts = output.with_name(output.name + ".parts")
    n_chunks = -(-len(src) // gen_cfg.chunk_galaxies)
    manifest = {"input": str(Path(input_path).resolve()), "n_galaxies": len(src),
                "chunk_galaxies": gen_cfg.chunk_galaxies, "generate": to_dict(gen_cfg)}
    if rank == 0:
        parts.mkdir(parents=True, exist_ok=True)
        mpath = parts / "manifest.json"
        if mpath.exists() and json.loads(mpath.read_text()) != json.loads(json.dumps(manifest)):
            shutil.rmtree(parts)   # parts of a different run/config: start over rather than mix
            parts.mkdir(parents=True)
        mpath.write_text(json.dumps(manifest, indent=1))
    idist.barrier()
    mine = [c for c in range(n_chunks) if c % world == rank and not _part_path(parts, c).exists()]
    bar = tqdm(total=len(src), desc=f"generating (rank {rank})", unit="gal", disable=not progress,
               initial=len(src) - sum(min(gen_cfg.chunk_galaxies, len(src) - c * gen_cfg.chunk_galaxies)
                                      for c in mine) if world == 1 else 0)
    t0 = time.perf_counter()
    done = 0
    for i, c in enumerate(mine):
        if stop_after_chunks is not None and i >= stop_after_chunks:
            return None
        sel = slice(c * gen_cfg.chunk_galaxies, (c + 1) * gen_cfg.chunk_galaxies)
        _save_part(_part_path(parts, c), process_chunk(chain, src, sel, gen_cfg.batch_galaxies))
        n_sel = len(src.ids[sel])
        done += n_sel
        bar.update(n_sel)
        bar.set_postfix(gal_per_s=f"{done / (time.perf_counter() - t0):.3g}")
    bar.close()
    idist.barrier()
    if rank != 0:
        return None
    merged = _merge(parts, n_chunks)
    table = {"id": merged.pop("id"), "status": merged.pop("status"),
             "row": src.rows.astype(np.int64), **{k: v for k, v in src.columns.items()}}
    scores = merged["fullres_scores"]
    top = np.maximum(merged["top"], 0)[:, None].astype(int)
    table["score_top"] = np.take_along_axis(scores, top, 1)[:, 0]
    table["top"] = merged.pop("top")
    for k in ("lowres_scores", "kept", "fullres_scores", "fullres_parent"):
        table[k] = merged.pop(k)
    spectra = {"flux_pred": merged.pop("flux_pred")}
    for k in ("flux_obs", "ivar_obs"):
        if k in merged:
            spectra[k] = merged.pop(k)
    header = {"checkpoints": dict(gen_cfg.checkpoints), "sampler": gen_cfg.sampler, "steps": gen_cfg.steps,
              "seed": gen_cfg.seed, "n_lowres": gen_cfg.n_lowres, "keep_lowres": gen_cfg.keep_lowres,
              "n_fullres": gen_cfg.n_fullres, "input": str(input_path), "split": gen_cfg.split,
              "preprocessing": chain.preprocessing, "flux": "normalised linear flux (mean 1 in 6900-6950 A, "
              "observed frame, 2 A Gaussian smoothing)", "config": cfg_dict}
    from utils.results_fits import write_spectra_fits
    cubes = {"LOWRES_CANDIDATES": (merged.pop("lowres_candidates"), LOWRES_WAVE),
             "FULLRES_CANDIDATES": (merged.pop("fullres_candidates"), FULLRES_WAVE)}
    write_spectra_fits(output, table, spectra, FULLRES_WAVE, header=header, units={"flux_pred": "",
                       "flux_obs": "", "ivar_obs": ""}, cubes=cubes)
    shutil.rmtree(parts)
    return output


def _merge(parts: Path, n_chunks: int) -> dict:
    missing = [c for c in range(n_chunks) if not _part_path(parts, c).exists()]
    if missing:
        raise GenerationError(f"{parts}: chunks {missing[:5]} missing after all ranks finished")
    chunks = [dict(np.load(_part_path(parts, c))) for c in range(n_chunks)]
    return {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}
