"""Catalogue truth for the evaluated galaxies, under one set of names for mock and real SDSS surveys.

Standard names: z, dn4000, sigma_v (km/s), age_lw (Gyr), metallicity_lw ([M/H]), ebv, log_mstar,
morphology (0 elliptical, 1 spiral, 2 uncertain), bpt_class (0 SF, 1 composite, 2 AGN, -1 unclassifiable),
lick_<Name> (Lick indices in the toolbox's names). The mock writes most of them directly; a real SDSS
survey (surveys/sdss) carries MPA-JHU columns, mapped here (d4000_n -> dn4000, lgm_tot_p50 -> log_mstar,
bptclass -> bpt_class, lick_hb -> lick_Hbeta, ...). Missing columns are simply absent from the result;
the caller reports what it had to skip.

Lick truth comes only from MPA-JHU columns. The mock's own ``lick_<Name>`` columns are measured at the
native resolution of its noiseless spectra and are deliberately not loaded. For a mock, evaluate.py
measures those noiseless spectra (``/spectra/model``) after the same preprocessing (2 A smoothing) as
the predicted and observed ones. That makes the reference resolution-matched.
"""

from __future__ import annotations

import h5py
import numpy as np

#: MPA-JHU (surveys/sdss) column -> (standard name, converter)
SDSS_MAP = {
    "d4000_n": "dn4000",
    "lgm_tot_p50": "log_mstar",
    "vdisp": "sigma_v",
    "velocity_dispersion": "sigma_v",
    "lick_hd_a": "lick_Hdelta_A",
    "lick_hg_a": "lick_Hgamma_A",
    "lick_hb": "lick_Hbeta",
    "lick_mgb": "lick_Mgb",
    "lick_fe5270": "lick_Fe5270",
    "lick_fe5335": "lick_Fe5335",
    "lick_nad": "lick_NaD",
    "lick_mg2": "lick_Mg2",
}
STANDARD = (
    "z",
    "dn4000",
    "sigma_v",
    "age_lw",
    "metallicity_lw",
    "ebv",
    "log_mstar",
    "morphology",
    "bpt_class",
)


def mpajhu_bpt(bptclass: np.ndarray) -> np.ndarray:
    """MPA-JHU BPTCLASS (1 SF, 2 low-S/N SF, 3 composite, 4 AGN, 5 low-S/N LINER, -1) -> 0/1/2/-1."""
    b = np.asarray(bptclass, dtype=np.float64)
    out = np.full(b.shape, -1, dtype=np.int64)
    out[(b == 1) | (b == 2)] = 0
    out[b == 3] = 1
    out[(b == 4) | (b == 5)] = 2
    return out


def load_truth(survey_path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Catalogue truth of survey rows ``rows`` (any order, repeats allowed) under the standard names."""
    rows = np.asarray(rows, dtype=np.int64)
    uniq, inv = np.unique(rows, return_inverse=True)
    out = {}
    with h5py.File(survey_path, "r") as f:
        cat = f["catalog"]
        for name in cat:
            col = cat[name][uniq][inv] if len(uniq) else cat[name][:0]
            if col.dtype.kind not in "biuf":
                continue
            if name in STANDARD or name.startswith("mag_") or name.startswith("flux_") or name == "id":
                out[name] = col
            elif name == "bptclass":
                out.setdefault("bpt_class", mpajhu_bpt(col))
            elif name in SDSS_MAP:
                out.setdefault(SDSS_MAP[name], col.astype(np.float64))
    for k, v in list(out.items()):
        if v.dtype.kind == "f":
            out[k] = np.where(v <= -9999.0, np.nan, v)  # MPA-JHU "not measured" sentinel
    return out


def train_agn_fraction(survey_path) -> float:
    """Fraction of AGN (``bpt_class == 2``; MPA-JHU BPTCLASS 4/5) among the TRAIN-split galaxies of a survey,
    unclassifiable ones (-1) counting as not AGN; NaN without a BPT column. The supervised CNN's AGN target
    is the same label, so this is the decision threshold of its ``agn_prob`` (``metrics.agn_decision``),
    both in its validation (training.baseline) and in evaluate.py (evaluation.baselines.cnn_predict)."""
    from datasets.schema import SPLIT_CODES, open_survey

    with open_survey(survey_path) as f:
        train = np.flatnonzero(f["split"][:] == SPLIT_CODES["train"])
    bpt = load_truth(survey_path, train).get("bpt_class")
    if bpt is None or not bpt.size:
        return float("nan")
    return float(np.mean(bpt == 2))
