"""Re-derive a results file's prediction from its stored candidates under another ``generate.prediction``.

The chain's prediction (``flux_pred``) is a function of the full-res candidates and their fitted redshifts
(and, for ``consensus``, of the low-res candidates' redshifts and the prior), all of which generate.py
writes. This writes a copy of the results whose ``flux_pred`` (and header) is what generate.py would have
written with ``--set generate.prediction=<P> --set generate.prediction_width=<W>`` for the same candidates,
so prediction rules are compared on the same draws (then ``evaluate.py --results <out>``).

    python benchmarks/repredict.py outputs/generated.fits outputs/consensus.fits --prediction consensus \\
        --width 0.01
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, SMOOTH_SIGMA  # noqa: E402
from generation.chain import LOWRES_SIGMAS, PREDICTIONS, candidate_redshifts, predict  # noqa: E402
from utils.results_fits import read_spectra_fits, write_spectra_fits  # noqa: E402


def repredict(res: dict, prediction: str, width: float) -> dict:
    """``res`` (``read_spectra_fits`` output) with ``flux_pred`` re-derived; modifies and returns it."""
    t, h = res["table"], res["header"]
    sr = res["cubes"]["FULLRES_CANDIDATES"][0].astype(np.float32)
    top = np.maximum(np.asarray(t["top"]), 0).astype(int)
    if prediction != "top" and "fullres_z" not in t:
        t["fullres_z"] = candidate_redshifts(sr, FULLRES_WAVE, SMOOTH_SIGMA)
    if prediction == "consensus" and "lowres_z" not in t:
        lr = res["cubes"]["LOWRES_CANDIDATES"][0].astype(np.float32)
        t["lowres_z"] = candidate_redshifts(lr, LOWRES_WAVE, LOWRES_SIGMAS[h.get("lowres", "subsample")])
    prior_width = ((h.get("config") or {}).get("generate") or {}).get("z_prior_width", 0.02)
    pred, zc = predict(prediction, sr, top, t.get("fullres_z"), width, t.get("lowres_z"), t.get("z_prior"),
                       prior_width)
    if zc is not None:
        t["z_consensus"] = zc
    bad = np.char.strip(np.asarray(t["status"]).astype(str)) != "ok"
    pred[bad] = np.nan                          # rows generate.py could not run keep no prediction
    res["spectra"]["flux_pred"] = pred.astype(np.float32)
    h.update(prediction=prediction, prediction_width=width, repredicted_from=h.get("prediction", "top"))
    gen = (h.get("config") or {}).get("generate")
    if gen is not None:
        gen.update(prediction=prediction, prediction_width=width)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("out")
    p.add_argument("--prediction", required=True, choices=PREDICTIONS)
    p.add_argument("--width", type=float, default=0.003, help="generate.prediction_width")
    a = p.parse_args(argv)
    if Path(a.out).resolve() == Path(a.results).resolve():
        raise SystemExit(f"error: {a.out}: out: would overwrite the input results")
    if not a.width > 0:
        raise SystemExit(f"error: --width: {a.width} must be > 0")
    res = repredict(read_spectra_fits(a.results), a.prediction, a.width)
    tmp = Path(a.out).with_name(Path(a.out).name + ".partial")
    write_spectra_fits(tmp, res["table"], res["spectra"], res["wave"], header=res["header"],
                       units=res["units"], cubes=res["cubes"])
    tmp.replace(a.out)
    print(f"wrote {a.out} (prediction {a.prediction}, width {a.width})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
