"""Side-by-side summary of several evaluate.py reports (e.g. the demo's quick models and the shipped reference
models): the headline science numbers of the chain and of the baselines, one column per report.

    python -m evaluation.compare quick=outputs/eval_report.json reference=outputs/eval_report_reference.json \
        --out outputs/eval_summary.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.files import write_text

#: (section prefix, quantity, metric, label): the rows of the summary, in order
HEADLINES = (
    ("spectrum", "flux", "mse_median", "spectrum MSE (median)"),
    ("spectrum", "flux (mean of the M candidates)", "mse_median", "spectrum MSE, mean of M draws (median)"),
    ("redshift", "z", "sigma_nmad", "z sigma_NMAD"),
    ("redshift", "z", "outlier_frac", "z outlier fraction"),
    ("indices", "dn4000", "pearson_rho", "Dn4000 rho"),
    ("indices", "lick_Hdelta_A", "pearson_rho", "Hdelta_A rho"),
    ("indices", "lick_Mgb", "pearson_rho", "Mgb rho"),
    ("populations", "sigma_v", "pearson_rho", "sigma_v rho"),
    ("AGN", "AGN presence", "balanced_accuracy", "AGN balanced accuracy (pPXF subset)"),
    ("image-only", "AGN presence", "balanced_accuracy", "AGN balanced accuracy (image-only, all)"),
    ("calibration", "z", "pit_ks_distance", "z PIT KS distance"),
    ("calibration", "dn4000", "pit_ks_distance", "Dn4000 PIT KS distance"),
)
#: methods shown for every report (columns of evaluate.py's table)
METHODS = ("predicted", "cnn", "photometric", "retrieval", "train_mean")


def _find(table: list, section: str, quantity: str, metric: str) -> dict | None:
    for row in table:
        if (row["section"].startswith(section) and row["quantity"].lower() == quantity.lower()
                and row["metric"].split(" (")[0] == metric):  # "pit_ks_distance (ideal 0)"
            return row
    return None


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _find_versus(report: dict, section: str, quantity: str, metric: str) -> dict | None:
    for row in report.get("vs_best_baseline") or ():
        if (row["section"].startswith(section) and row["quantity"].lower() == quantity.lower()
                and row["metric"].split(" (")[0] == metric):
            return row
    return None


def _versus_cell(row: dict | None) -> list[str]:
    """[best baseline, chain - best with its paired 95 % interval, verdict] of a vs_best_baseline entry."""
    if row is None:
        return ["—", "—", "—"]
    ci = row.get("ci95")
    diff = f"{row['difference']:+.3g}" + ("" if not ci else f" [{ci[0]:+.3g}, {ci[1]:+.3g}]")
    verdict = "chain better" if row["chain_better"] else "baseline better"
    if row.get("resolved") is not None:
        verdict += "" if row["resolved"] else " (not resolved)"
    return [row["best_baseline"], diff, verdict]


def versus_table(reports: dict[str, dict]) -> str:
    """Markdown table: per headline metric and report, the best baseline and chain - best with the paired
    bootstrap interval evaluate.py computed (empty if no report has a vs_best_baseline entry)."""
    names = list(reports)
    head = ["quantity"] + [f"{n}: {c}" for n in names for c in ("best baseline", "chain − best [95 %]",
                                                                "verdict")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for section, quantity, metric, label in HEADLINES:
        rows = [_find_versus(reports[n], section, quantity, metric) for n in names]
        if any(r is not None for r in rows):
            lines.append("| " + " | ".join([label] + [c for r in rows for c in _versus_cell(r)]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def summarize(reports: dict[str, dict]) -> str:
    """Markdown table: one row per headline metric, per report one column per method; then the chain against
    the best baseline with paired intervals (:func:`versus_table`)."""
    names = list(reports)
    head = ["quantity"] + [f"{n}: {m}" for n in names for m in METHODS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for section, quantity, metric, label in HEADLINES:
        cells = [label]
        found = False
        for n in names:
            row = _find(reports[n]["table"], section, quantity, metric)
            found |= row is not None
            cells += [_fmt(row["values"].get(m)) if row else "—" for m in METHODS]
        if found:
            lines.append("| " + " | ".join(cells) + " |")
    galaxies = ", ".join(f"{n}: {reports[n].get('n_galaxies')} galaxies from {reports[n].get('results')}"
                         for n in names)
    text = "# Evaluation summary\n\n" + galaxies + "\n\n" + "\n".join(lines) + "\n"
    versus = versus_table(reports)
    if versus:
        text += ("\n## The chain against the best baseline\n\nchain − best baseline, with the 95 % interval "
                 "of a paired bootstrap over the galaxies (evaluate.py); \"not resolved\": the interval "
                 "contains 0, so this many galaxies do not tell which is better.\n\n" + versus + "\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", metavar="NAME=REPORT.json")
    p.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    a = p.parse_args(argv)
    reports = {}
    for spec in a.reports:
        name, sep, path = spec.partition("=")
        if not sep:
            print(f"error: {spec!r}: expected NAME=REPORT.json", file=sys.stderr)
            return 2
        try:
            reports[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: {path}: file: cannot be read as an evaluate.py report ({type(e).__name__})",
                  file=sys.stderr)
            return 2
    text = summarize(reports)
    if a.out:
        write_text(a.out, text)
        print(f"wrote {a.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
