"""The evaluation figures (figures/eval_*.png), drawn from the evaluation data (evaluation.run.EvalData)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation import metrics as M
from evaluation.measure import FIT_QUANTITIES, LICK_NAMES
from utils.plotting import plt, save_figure

COLORS = {
    "predicted": "C0",
    "observed": "C1",
    "noiseless": "C2",
    "cnn": "C3",
    "photometric": "C5",
    "retrieval": "C4",
    "train_mean": "0.4",
}
MORPH = ((0, "elliptical"), (1, "spiral"), (2, "uncertain"))


def _density(ax, x, y, lim, bins=40):
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    h = ax.hist2d(x[ok], y[ok], bins=bins, range=[lim, lim], cmap="Blues", cmin=1)
    if ok.sum() < 300:  # few points: show them too
        ax.plot(x[ok], y[ok], ".", ms=2, color="k", alpha=0.5)
    ax.plot(lim, lim, "k-", lw=0.6)
    return h


def _lim(*arrs, pad=0.05):
    a = np.concatenate([np.asarray(x, float)[np.isfinite(x)] for x in arrs if x is not None] or [np.zeros(1)])
    if a.size == 0:
        return [0, 1]
    lo, hi = np.percentile(a, [1, 99])
    d = (hi - lo) or 1.0
    return [lo - pad * d, hi + pad * d]


def spectral_errors(path, c):
    errs, morph = c.errs, c.morph
    if "predicted" not in errs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, lab in (
        (axes[0], "mse", "log10 MSE (linear normalised flux)"),
        (axes[1], "chi2n", "log10 chi2/N (observed ivar)"),
    ):
        with np.errstate(divide="ignore"):
            v = np.log10(errs["predicted"][key])
        v = np.where(np.isfinite(v), v, np.nan)
        if not np.isfinite(v).any():
            ax.text(0.5, 0.5, "no ivar", ha="center", transform=ax.transAxes)
            continue
        bins = np.linspace(*_lim(v, pad=0.1), 30)
        groups = [(np.ones(len(v), bool), "all")] if morph is None else [(morph == k, n) for k, n in MORPH]
        for sel, name in groups:
            if sel.sum():
                ax.hist(
                    v[sel & np.isfinite(v)],
                    bins,
                    histtype="step",
                    lw=1.4,
                    label=f"predicted, {name} ({sel.sum()})",
                )
        for m in ("retrieval", "train_mean", "noiseless"):
            if m in errs and np.isfinite(errs[m][key]).any():
                ax.axvline(
                    np.log10(np.nanmedian(errs[m][key])), color=COLORS[m], ls="--", lw=1, label=f"median {m}"
                )
        ax.set_xlabel(lab)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("galaxies")
    fig.suptitle("Spectral errors of the predicted spectra vs the observed ones", fontsize=9)
    return save_figure(fig, path)


def redshift(path, c):
    zt = c.truth["z"].astype(float)
    ms = [m for m in ("predicted", "observed", "retrieval", "cnn", "photometric") if m in c.meas]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.1 * len(ms), 3.1), squeeze=False)
    lim = _lim(zt, pad=0.15)
    x = np.linspace(*lim, 10)
    for ax, m in zip(axes[0], ms):
        zp = c.meas[m]["z"]
        _density(ax, zt, zp, lim)
        for s in (1, -1):
            ax.plot(x, x + s * 0.05 * (1 + x), "r--", lw=0.7)
        ax.set_title(f"{m}: σNMAD={M.sigma_nmad(zp, zt):.4f}\nη={M.outlier_fraction(zp, zt):.3f}", fontsize=8)
        above, below = int(np.sum(zp > lim[1])), int(np.sum(zp < lim[0]))
        if above or below:  # say how many measurements the axes leave out
            ax.text(0.03, 0.97, f"off the axes: {above} above, {below} below", transform=ax.transAxes,
                    fontsize=7, va="top", color="C3")
        ax.set_xlabel("z catalogue")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
    axes[0][0].set_ylabel("z measured")
    return save_figure(fig, path)


def lick(path, c):
    keys = ["dn4000"] + [f"lick_{n}" for n in LICK_NAMES]
    meas, mask = c.meas, c.lick_mask
    fig, axes = plt.subplots(3, 3, figsize=(8.4, 8.0))
    for ax, k in zip(axes.ravel(), keys):
        o, p = meas["observed"][k][mask], meas["predicted"][k][mask]
        lim = _lim(o, p)
        _density(ax, o, p, lim, bins=30)
        ax.set_title(f"{k.replace('lick_', '')}: ρ={M.pearson(p, o):.2f}", fontsize=8)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.tick_params(labelsize=7)
    fig.supxlabel("observed spectrum", fontsize=9)
    fig.supylabel("predicted spectrum", fontsize=9)
    fig.suptitle(
        "Lick indices and Dn4000, predicted vs observed"
        + (" (spirals excluded)" if c.morph is not None else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def populations(path, c):
    fits, ft = c.fits, c.fit_truth
    if not fits:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for ax, q in zip(axes, FIT_QUANTITIES):
        r, rn = ft[q]
        tr = (lambda x: np.log10(np.where(x > 0, x, np.nan))) if q in ("sigma_v", "age_lw") else (lambda x: x)
        lim = _lim(tr(r), tr(fits["predicted"][q]), tr(fits["observed"][q]))
        for m in ("observed", "retrieval", "predicted"):
            if m in fits and not (m == "observed" and rn == "observed"):
                v = tr(fits[m][q])
                ax.plot(
                    tr(r), v, ".", ms=4, alpha=0.7, color=COLORS[m], label=f"{m} ρ={M.pearson(v, tr(r)):.2f}"
                )
        ax.plot(lim, lim, "k-", lw=0.6)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        lab = {
            "sigma_v": "log σ_v [km/s]",
            "age_lw": "log age_LW [Gyr]",
            "metallicity_lw": "[M/H]_LW",
            "ebv": "E(B-V)",
        }[q]
        ax.set_xlabel(f"{lab} ({rn})", fontsize=8)
        ax.set_ylabel(f"{lab} measured (pPXF)", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(f"Population fits on {len(c.fit_idx)} galaxies", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def bimodality_mzr(path, c):
    meas, dref = c.meas, c.dref
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    bins = np.linspace(0.9, 2.3, 36)
    axes[0].hist(dref[np.isfinite(dref)], bins, color="0.8", label=f"reference ({c.dname})")
    for m in ("observed", "predicted", "retrieval"):
        if m in meas:
            d = meas[m]["dn4000"]
            axes[0].hist(d[np.isfinite(d)], bins, histtype="step", lw=1.4, color=COLORS[m], label=m)
    axes[0].axvline(1.5, color="k", ls=":", lw=0.8)
    axes[0].set_xlabel("Dn4000")
    axes[0].set_ylabel("galaxies")
    axes[0].legend(fontsize=7)
    axes[0].set_title("star-forming / quiescent bimodality", fontsize=9)
    mzr, ax = c.mzr, axes[1]
    if mzr is None:
        ax.text(0.5, 0.5, "no mass-metallicity data", ha="center", transform=ax.transAxes)
    else:
        sf, lm = mzr["sf"], mzr["log_mstar"]
        r, rn = c.fit_truth["metallicity_lw"]
        ax.plot(lm[sf], r[sf], "s", ms=3, color="0.5", label=f"reference ({rn})")
        for m in ("observed", "predicted"):
            ax.plot(lm[sf], c.fits[m]["metallicity_lw"][sf], ".", ms=5, color=COLORS[m], label=m)
        ax.set_xlabel("log M* (catalogue)")
        ax.set_ylabel("[M/H]_LW")
        ax.legend(fontsize=7)
        ax.set_title(f"MZR, star-forming ({mzr['definition']}, n={int(sf.sum())})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def bpt(path, c):
    b = c.bpt
    if b is None:
        return None
    labels = [0, 1, 2, -1]
    names = ["SF", "comp", "AGN", "uncl"]
    ms = [m for m in ("predicted", "observed") if m in b["classes"]]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms), 3.3), squeeze=False)
    for ax, m in zip(axes[0], ms):
        cm = M.confusion_matrix(b["classes"][m], b["truth"], labels)
        ax.imshow(cm, cmap="Blues")
        for i in range(4):
            for j in range(4):
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=8)
        ax.set_xticks(range(4), names, fontsize=7)
        ax.set_yticks(range(4), names, fontsize=7)
        bacc = M.balanced_accuracy((b["classes"][m] == 2).astype(int), (b["truth"] == 2).astype(int))
        ax.set_title(f"{m} vs {b['reference']}\nAGN-presence balanced accuracy {bacc:.2f}", fontsize=8)
        ax.set_xlabel(f"BPT class ({m} spectrum)", fontsize=8)
        ax.set_ylabel(f"BPT class ({b['reference']})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def pit(path, c):
    """PIT histograms (top) and empirical CDFs against the uniform diagonal (bottom) of z and Dn4000 over
    the M candidates; the KS distance is the largest gap of each CDF from the diagonal."""
    cal = c.calib
    if cal is None:
        return None
    m = cal["n_candidates"]
    fig, axes = plt.subplots(2, 2, figsize=(8.6, 6.4), gridspec_kw={"height_ratios": [1.1, 1]})
    for col, (q, name) in enumerate((("z", "redshift z"), ("dn4000", "Dn4000"))):
        p = cal[f"pit_{q}"]
        p = np.sort(p[np.isfinite(p)])
        n, ax = p.size, axes[0, col]
        if n == 0:
            ax.text(0.5, 0.5, "no finite PIT values", ha="center", transform=ax.transAxes)
            axes[1, col].set_visible(False)
            continue
        ax.hist(p, np.linspace(0, 1, 11), color="C0", alpha=0.75, edgecolor="white", label="galaxies")
        expect, sd = n / 10, np.sqrt(n * 0.1 * 0.9)
        ax.axhspan(expect - sd, expect + sd, color="0.85", zorder=0, label="calibrated ±1σ")
        ax.axhline(expect, color="k", ls="--", lw=0.9)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"PIT of the true {name} among its M={m} candidates", fontsize=8)
        ax.set_ylabel("galaxies", fontsize=8)
        ks = M.pit_uniformity(p)
        ax.set_title(f"{name}: KS distance {ks:.3f} (5% noise level {1.36 / np.sqrt(n):.3f}), n={n}",
                     fontsize=8.5)
        ax.legend(fontsize=7, loc="upper center")
        ax.tick_params(labelsize=7)
        ax = axes[1, col]
        ecdf = np.arange(1, n + 1) / n
        ax.step(p, ecdf, where="post", color="C0", lw=1.4, label="PIT empirical CDF")
        ax.plot([0, 1], [0, 1], "k--", lw=0.9, label="calibrated (uniform)")
        above, below = ecdf - p, p - (ecdf - 1 / n)  # the CDF's gaps from the diagonal at each step
        i = int(np.argmax(np.maximum(above, below)))
        ends = (p[i], ecdf[i]) if above[i] >= below[i] else (ecdf[i] - 1 / n, p[i])
        ax.plot([p[i], p[i]], ends, color="C3", lw=2.2, label=f"KS distance {ks:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("PIT", fontsize=8)
        ax.set_ylabel("fraction of galaxies ≤ PIT", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Calibration of the M={m} generated candidates per galaxy: flat histogram / CDF on the "
                 "diagonal = calibrated;\nU-shape = over-confident (candidates too alike), hump = "
                 "under-confident, tilt = biased", fontsize=8.5)
    fig.tight_layout()
    return save_figure(fig, path)


def write_all(out_dir, c) -> list[Path]:
    """Write every figure that has data; return their paths."""
    out_dir = Path(out_dir)
    todo = (
        ("eval_spectral_errors.png", spectral_errors),
        ("eval_redshift.png", redshift),
        ("eval_lick.png", lick),
        ("eval_populations.png", populations),
        ("eval_bimodality_mzr.png", bimodality_mzr),
        ("eval_bpt.png", bpt),
        ("eval_pit.png", pit),
    )
    out = []
    for name, fn in todo:
        p = fn(out_dir / name, c)
        if p is not None:
            out.append(p)
    return out
