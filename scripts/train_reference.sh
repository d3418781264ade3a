#!/usr/bin/env bash
# Train the REFERENCE models (the ones shipped in models/reference/) from scratch, on ONE CPU core in under
# ~2 hours: build the seeded reference mock, train the four networks of the chain and the CNN baseline with
# the `reference` presets of the three YAML files, then slim the best checkpoints into models/reference/
# with a manifest (config, mock version and seed, commit, training time, validation metrics, sha256), and
# re-estimate their image encoders' BatchNorm statistics with the shipped (EMA) weights.
#
# Variants: GALSPEC_REF_SETS="data.lowres=subsample" (space-separated key=value, passed to every training as --set),
# with GALSPEC_REF_RUNS and GALSPEC_REF_OUT pointing elsewhere so the shipped models stay as they are.
#
# Resumable: re-running skips the mock if it exists and resumes every training from its last.pt (a killed
# run loses at most run.checkpoint_every iterations). Export only: GALSPEC_REF_EXPORT_ONLY=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
ROOT=${GALSPEC_REF_RUNS:-runs/reference}       # training runs (not in git)
N=${GALSPEC_REF_N:-20000}                      # galaxies in the reference mock
SEED=${GALSPEC_REF_SEED:-1}                    # mock seed (the demo mock uses seed 0: disjoint galaxies)
DATA=$ROOT/mock_ref.h5
OUT=${GALSPEC_REF_OUT:-models/reference}
THREADS=${GALSPEC_REF_THREADS:+--threads $GALSPEC_REF_THREADS}   # e.g. 1 to share the machine
SETS=()                                        # GALSPEC_REF_SETS="data.lowres=bin ...": extra --set for every run
for kv in ${GALSPEC_REF_SETS:-}; do SETS+=(--set "$kv"); done
mkdir -p "$ROOT"
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

# train <role> <script> [args...]: one resumable training; its wall time (summed over resumes) goes to
# <run>/train_time.json for the manifest
train() {
  local role=$1 script=$2; shift 2
  local dir=$ROOT/$role s
  step "$role"
  s=$(date +%s)
  $PY "$script" --preset reference --set data.path="$DATA" --set run.out_dir="$dir" $THREADS ${SETS[@]+"${SETS[@]}"} "$@"
  $PY - "$dir" "$(( $(date +%s) - s ))" <<'EOF'
import json, os, platform, sys, torch
from pathlib import Path
d, dt = Path(sys.argv[1]), int(sys.argv[2])
f = d / "train_time.json"
rec = json.loads(f.read_text()) if f.exists() else {"seconds": 0, "sessions": []}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
rec["seconds"] += dt
rec["sessions"].append({"seconds": dt, "cpu": cpu, "threads": torch.get_num_threads()})
tmp = f.with_name(f.name + ".partial"); tmp.write_text(json.dumps(rec, indent=1)); os.replace(tmp, f)
EOF
}

if [ -z "${GALSPEC_REF_EXPORT_ONLY:-}" ]; then
  step "reference mock ($N galaxies, seed $SEED)"
  [ -f "$DATA" ] || $PY -m surveys.mock.make --n "$N" --out "$DATA" --seed "$SEED"
  train contrastive_lr train_contrastive.py --stage lr
  train contrastive_sr train_contrastive.py --stage sr
  train diffusion_lr train_generative.py --stage lr
  train diffusion_sr train_generative.py --stage sr
  train baseline train_baseline.py
fi
step "export to $OUT"
$PY - "$DATA" "$N" "$SEED" "$ROOT/info.json" <<'EOF'
import json, sys, h5py
path, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with h5py.File(path, "r") as f:
    version = int(f.attrs.get("mock_version", 1))
json.dump({"mock": {"n_galaxies": n, "seed": seed, "mock_version": version,
                    "command": f"python -m surveys.mock.make --n {n} --seed {seed}"},
           "trained_by": "scripts/train_reference.sh"}, open(out, "w"), indent=1)
EOF
$PY -m models.reference export --runs "$ROOT" --out "$OUT" --info "$ROOT/info.json"
# the image encoders' BatchNorm statistics re-estimated with the EMA weights (models/batchnorm.py)
$PY -m models.reference recalibrate --survey "$DATA" --dir "$OUT"
step "done"
