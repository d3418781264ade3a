#!/usr/bin/env bash
# The main job, end to end, on the embedded mock SDSS survey with the CPU preset (~20 min on 2 cores):
# build the mock -> train the 4 networks (+ the CNN baseline) -> generate spectra for test galaxies ->
# read the science out of them; then the same with the shipped reference models. Every step resumes/skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
N=${GALSPEC_DEMO_N:-6000}            # galaxies in the mock (the paper-scale run uses ~10^5 real ones)
DATA=data/mock_sdss.h5
LIMIT=${GALSPEC_DEMO_GENERATE:-120}  # test galaxies to generate spectra for
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

step "1/7 mock survey ($N galaxies) and its figures"
[ -f "$DATA" ] || $PY -m surveys.mock.make --n "$N" --out "$DATA" --seed 0
$PY -m surveys.mock.figures "$DATA"
step "2/7 contrastive networks (low-res, full-res)"
$PY train_contrastive.py --preset cpu --stage lr
$PY train_contrastive.py --preset cpu --stage sr
step "3/7 diffusion models (low-res, super-resolution)"
$PY train_generative.py --preset cpu --stage lr
$PY train_generative.py --preset cpu --stage sr
for stage in lr sr; do  # the last validation figure of each model: EMA samples vs truth
  last=$(ls runs/diffusion_$stage/samples_*.png 2>/dev/null | tail -1 || true)
  [ -n "$last" ] && cp "$last" "figures/train_samples_$stage.png"
done
step "4/7 baseline: direct CNN from images"
$PY train_baseline.py --preset cpu
step "5/7 generate spectra for $LIMIT test galaxies"
$PY generate.py --preset cpu --set generate.limit="$LIMIT" --overwrite --amp off  # re-runs replace the last output; float32 for the small CPU-preset models (as their training)
step "6/7 science read-out"
$PY evaluate.py --results outputs/generated.fits --baselines runs/baseline/best.pt --overwrite
step "7/7 the shipped reference models (scripts/train_reference.sh; models/reference/) on the same $LIMIT galaxies"
if $PY -m models.reference check >/dev/null; then
  $PY generate.py --preset reference --checkpoints reference --set generate.limit="$LIMIT" \
    --set generate.output=outputs/generated_reference.fits --set generate.figure=figures/reference/generated_examples.png \
    --overwrite --amp off
  $PY evaluate.py --results outputs/generated_reference.fits --baselines reference --out-dir figures/reference \
    --report outputs/eval_report_reference --overwrite
  $PY -m evaluation.compare quick=outputs/eval_report.json reference=outputs/eval_report_reference.json \
    --out outputs/eval_summary.md
else
  echo "no reference models in models/reference/ (scripts/train_reference.sh makes them): skipped"
fi
step "done: figures/, outputs/eval_report.md, outputs/eval_summary.md (quick vs reference models)"
