"""The supervised image -> properties baseline's targets, loss and training task (the network, a ResNet-18
with 3 regression heads and 1 classifier, is models/baseline.py).

Targets (read from the survey catalogue at build time; ``baseline_targets``):
z; Dn4000 (catalogue ``dn4000``/``d4000_n`` if present, else ``analysis.dn4000`` of the noiseless
``/spectra/model`` — or the observed flux — at the catalogue z); sigma_v (km/s, fitted as log10);
AGN = ``bpt_class == 2`` (binary cross-entropy). Regression targets are standardised with the TRAINING
split's mean/std, stored as buffers in the model so a checkpoint alone predicts in physical units.
A missing column or a NaN target masks that head for that galaxy. Plugged into ``training.engine.train``
(same data order, checkpoints, resume) through :class:`BaselineTask`.
"""

from __future__ import annotations

import functools

import h5py
import numpy as np
import torch
from torch import nn

from datasets.galaxy import ImageAugment
from datasets.schema import SPLIT_CODES
from models.build import build_baseline
from training.tasks import init_photometry


def _dn4000_from_spectra(f, z: np.ndarray, chunk: int = 1024) -> np.ndarray:
    from analysis import dn4000

    wave = 10.0 ** f["spectra/loglam"][:]
    key = "spectra/model" if "spectra/model" in f else "spectra/flux"
    out = np.full(z.size, np.nan)
    for s in range(0, z.size, chunk):
        flux = f[key][s : s + chunk].astype(np.float64)
        ivar = None if key == "spectra/model" else f["spectra/ivar"][s : s + chunk].astype(np.float64)
        out[s : s + chunk] = dn4000(wave, flux, z[s : s + chunk], ivar=ivar)[0]
    return out


@functools.lru_cache(maxsize=4)
def _targets_cached(path: str, mtime_ns: int) -> dict:
    with h5py.File(path, "r") as f:
        cat = f["catalog"]
        n = cat["z"].shape[0]
        z = cat["z"][:].astype(np.float64)
        if "dn4000" in cat:
            dn = cat["dn4000"][:].astype(np.float64)
        elif "d4000_n" in cat:
            dn = cat["d4000_n"][:].astype(np.float64)
        else:
            dn = _dn4000_from_spectra(f, z)
        sig = np.full(n, np.nan)
        for name in ("sigma_v", "vdisp"):
            if name in cat:
                sig = cat[name][:].astype(np.float64)
                break
        with np.errstate(divide="ignore", invalid="ignore"):
            lsig = np.where(sig > 0, np.log10(np.where(sig > 0, sig, 1.0)), np.nan)
        agn = np.full(n, np.nan)
        if "bpt_class" in cat:
            agn = (cat["bpt_class"][:] == 2).astype(np.float64)
        elif "bptclass" in cat:
            b = cat["bptclass"][:]
            agn = np.where(np.isfinite(b), ((b == 4) | (b == 5)).astype(np.float64), np.nan)
        split = f["split"][:]
    y = np.stack([z, np.where(dn <= -9999, np.nan, dn), lsig, agn], axis=1)
    return {"y": y.astype(np.float32), "split": split}


def baseline_targets(path) -> dict:
    """``y`` (N, 4) float32 [z, Dn4000, log10 sigma_v, AGN 0/1] (NaN = unknown) and ``split`` (N,)."""
    import os

    return _targets_cached(str(path), os.stat(path).st_mtime_ns)


def baseline_loss(out: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Masked MSE of the standardised regressions + masked BCE of the AGN logit (NaN targets ignored)."""
    yr = (y[:, :3] - mean) / std
    m = torch.isfinite(yr)
    se = torch.where(m, (out[:, :3] - torch.nan_to_num(yr)) ** 2, torch.zeros_like(yr))
    loss = se.sum() / m.sum().clamp(min=1)
    ma = torch.isfinite(y[:, 3])
    if ma.any():
        loss = loss + nn.functional.binary_cross_entropy_with_logits(out[ma, 3], y[ma, 3])
    return loss


class BaselineTask:
    """Supervised multi-task CNN; validation = loss, z sigma_NMAD, Dn4000/sigma_v scatter, AGN accuracy."""

    kind = "baseline"
    resolution = "lowres"  # the spectrum in the batch is unused; low-res is the cheapest read
    with_lowres = False
    score_name = "loss"
    score_sign = -1.0

    def build_model(self, cfg):
        from evaluation.truth import train_agn_fraction

        t = baseline_targets(cfg.data.path)
        self.agn_prevalence = train_agn_fraction(cfg.data.path)
        self._y = torch.from_numpy(t["y"])
        train = torch.from_numpy(t["split"] == SPLIT_CODES["train"])
        yt = self._y[train, :3].double()
        mean = torch.stack(
            [
                c[torch.isfinite(c)].mean()
                if torch.isfinite(c).any()
                else torch.tensor(0.0, dtype=torch.float64)
                for c in yt.T
            ]
        ).float()
        std = torch.stack(
            [
                c[torch.isfinite(c)].std()
                if torch.isfinite(c).sum() > 1
                else torch.tensor(1.0, dtype=torch.float64)
                for c in yt.T
            ]
        ).float()
        model = build_baseline(cfg.model)
        model.target_mean.copy_(torch.nan_to_num(mean))
        model.target_std.copy_(torch.nan_to_num(std, nan=1.0).clamp(min=1e-6))
        return model

    def init_model(self, model, train_ds, cfg):
        init_photometry(model, train_ds)

    def _targets(self, index: torch.Tensor, device) -> torch.Tensor:
        return self._y[index.cpu()].to(device)

    def loss(self, model, batch, generator):
        raw = model.module if hasattr(model, "module") else model
        y = self._targets(batch["index"], batch["image"].device)
        out = model(batch["image"], batch.get("photometry"))
        return baseline_loss(out, y, raw.target_mean, raw.target_std)

    @torch.no_grad()
    def validate(self, model, val_ds, cfg, device, figure=None):
        from evaluation.metrics import agn_decision, balanced_accuracy, robust_scatter, sigma_nmad

        rows = np.arange(min(cfg.validation.n_galaxies, len(val_ds)))
        model.eval()
        outs, ys = [], []
        for s in range(0, len(rows), 128):
            b = val_ds[rows[s : s + 128]]
            phot = b["photometry"].to(device) if "photometry" in b else None
            outs.append(model(ImageAugment()(b["image"], train=False).to(device), phot).float().cpu())
            ys.append(self._targets(b["index"], "cpu"))
        out, y = torch.cat(outs), torch.cat(ys)
        loss = float(baseline_loss(out, y, model.target_mean.cpu(), model.target_std.cpu()))
        reg = (out[:, :3] * model.target_std.cpu() + model.target_mean.cpu()).numpy()
        y = y.numpy()
        m = {
            "loss": loss,
            "z_sigma_nmad": sigma_nmad(reg[:, 0], y[:, 0]),
            "dn4000_scatter": robust_scatter(reg[:, 1], y[:, 1]),
            "log_sigma_v_scatter": robust_scatter(reg[:, 2], y[:, 2]),
        }
        ok = np.isfinite(y[:, 3])
        if ok.any():
            m["agn_balanced_accuracy"] = balanced_accuracy(
                agn_decision(torch.sigmoid(out[ok, 3]).numpy(), self.agn_prevalence), y[ok, 3].astype(int)
            )
        return {k: (float(v) if np.isfinite(v) else float("nan")) for k, v in m.items()}
