#!/usr/bin/env bash
# The main job, end to end, on the embedded mock SDSS survey with the CPU preset (18-28 min on 2 cores, README):
# build the mock -> train the 4 networks (+ the CNN baseline) -> generate spectra for test galaxies ->
# read the science out of them; then the same with the shipped reference models. Every step resumes/skips
# work that is already done.
#
# Two lanes run side by side (output prefixed [A] and [B]), each with half the cores:
#   A: contrastive networks -> super-resolution diffusion model -> CNN baseline, cached baselines
#   B: low-res diffusion model -> reference models: generate, evaluate
# then the quick chain (generate, evaluate) with all cores. GALSPEC_DEMO_LANES=1 runs the same steps one
# after the other with all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
N=${GALSPEC_DEMO_N:-6000}            # galaxies in the mock (the paper-scale run uses ~10^5 real ones)
DATA=data/mock_sdss.h5
LIMIT=${GALSPEC_DEMO_GENERATE:-48}   # test galaxies to generate spectra for with the quick models
REF_LIMIT=${GALSPEC_DEMO_REFERENCE:-16}  # ... and with the reference models (the first of the same galaxies;
                                     # their preset samples 32 low-res and 8 full-res candidates per galaxy)
FITS=${GALSPEC_DEMO_PPXF:-15}         # galaxies per evaluation whose spectra pPXF fits (3.4-4.5 s each on one core)
CORES=$(nproc 2>/dev/null || echo 2)
LANES=${GALSPEC_DEMO_LANES:-$([ "$CORES" -ge 2 ] && echo 2 || echo 1)}
T=$(( CORES / LANES > 0 ? CORES / LANES : 1 ))  # torch threads (and pPXF workers) per job
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
LANE_PIDS=""
cleanup() { for p in $LANE_PIDS; do kill -- -"$p" 2>/dev/null || true; done; }  # a lane's whole process group
trap cleanup EXIT
trap 'exit 130' INT TERM

# two lanes side by side (LANES=2; output prefixed [A] / [B]) or one after the other; a failure in either
# stops the demo and the other lane
pair() {
  if [ "$LANES" -ge 2 ]; then
    set -m  # each lane in its own process group, so that cleanup can stop all of it
    ( "$1" 2>&1 | sed -u 's/^/[A] /' ) &
    local a=$!
    ( "$2" 2>&1 | sed -u 's/^/[B] /' ) &
    local b=$!
    set +m
    LANE_PIDS="$a $b"
    wait -n || { echo "=== a lane failed: stopping"; exit 1; }
    wait -n || { echo "=== a lane failed: stopping"; exit 1; }
    LANE_PIDS=""
  else
    "$1"; "$2"
  fi
}

HAVE_REFERENCE=0
$PY -m models.reference check >/dev/null && HAVE_REFERENCE=1

lane_a() {
  step "2/7 contrastive networks (low-res, full-res)"
  $PY train_contrastive.py --preset cpu --stage lr --threads "$T"
  $PY train_contrastive.py --preset cpu --stage sr --threads "$T"
  step "3/7 diffusion models: super-resolution (the low-res one in lane B)"
  $PY train_generative.py --preset cpu --stage sr --threads "$T"
  step "4/7 baseline: direct CNN from images"
  $PY train_baseline.py --preset cpu --threads "$T"
  # the quick ranker's retrieval pool, embedded here instead of in the quick evaluation (evaluate.py --cache;
  # ~50 s on one core); the photometric fit is read from the cache lane B has usually written by then
  # (if not, it is fitted here too: the cache entry is written under a temporary name, then renamed)
  OMP_NUM_THREADS=$T $PY -m evaluation.baselines --survey "$DATA" --cache runs/eval_cache --threads "$T" \
    --contrastive-sr runs/contrastive_sr/best.pt
}
lane_b() {
  step "3/7 diffusion models: low-res (the super-resolution one in lane A)"
  $PY train_generative.py --preset cpu --stage lr --threads "$T"
  # the photometric baseline, fitted once for both evaluations (evaluate.py --cache; ~65 s on one core)
  OMP_NUM_THREADS=$T $PY -m evaluation.baselines --survey "$DATA" --cache runs/eval_cache --threads "$T"
  step "7/7 the shipped reference models (scripts/train_reference.sh; models/reference/) on the first $REF_LIMIT test galaxies"
  if [ "$HAVE_REFERENCE" = 1 ]; then
    $PY generate.py --preset reference --checkpoints reference --set generate.limit="$REF_LIMIT" \
      --set generate.output=outputs/generated_reference.fits \
      --set generate.figure=figures/reference/generated_examples.png --overwrite --amp off --threads "$T"
    OMP_NUM_THREADS=$T $PY evaluate.py --results outputs/generated_reference.fits --baselines reference \
      --out-dir figures/reference --report outputs/eval_report_reference --overwrite --workers "$T" --cache runs/eval_cache \
      --max-fit "$FITS"
  else
    echo "no reference models in models/reference/ (scripts/train_reference.sh makes them): skipped"
  fi
}

step "1/7 mock survey ($N galaxies), its figures and its preprocessing cache"
[ -f "$DATA" ] || $PY -m surveys.mock.make --n "$N" --out "$DATA" --seed 0
$PY -m surveys.mock.figures "$DATA"
$PY -c "from datasets.galaxy import build_cache; build_cache('$DATA')"  # once, before two lanes read it
mkdir -p runs
pair lane_a lane_b
for stage in lr sr; do  # the last validation figure of each diffusion model: EMA samples vs truth
  last=$(ls runs/diffusion_$stage/samples_*.png 2>/dev/null | tail -1 || true)
  [ -n "$last" ] && cp "$last" "figures/train_samples_$stage.png"
done
step "5/7 generate spectra for $LIMIT test galaxies (the quick models; $LANES process(es))"
# re-runs replace the last output; float32 for the small CPU-preset models (as their training)
# LANES processes (gloo) with T threads each (generate.py gives each the same number of galaxies)
PAR=""; [ "$LANES" -ge 2 ] && PAR="--nproc $LANES --backend gloo"
# shellcheck disable=SC2086  # PAR is empty or two options
$PY generate.py --preset cpu --set generate.limit="$LIMIT" --overwrite --amp off $PAR --threads "$T"
step "6/7 science read-out"
OMP_NUM_THREADS=1 $PY evaluate.py --results outputs/generated.fits --baselines runs/baseline/best.pt \
  --overwrite --workers "$CORES" --cache runs/eval_cache --max-fit "$FITS"
if [ "$HAVE_REFERENCE" = 1 ]; then
  $PY -m evaluation.compare quick=outputs/eval_report.json reference=outputs/eval_report_reference.json \
    --out outputs/eval_summary.md
fi
step "done: figures/, outputs/eval_report.md, outputs/eval_summary.md (quick vs reference models)"
