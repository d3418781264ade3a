#!/usr/bin/env bash
# One-time set-up: a virtualenv in .venv with the pinned CPU torch, everything in requirements.txt and the
# test tools (requirements-dev.txt), at the versions the suite was tested with (constraints.txt).
# Safe to re-run: it only installs what is missing. On a GPU machine, install the CUDA build of
# torch==2.13.0 into .venv first (see README); this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha1
want=$(cat requirements.txt requirements-dev.txt constraints.txt | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, ignite, h5py, astropy, speclite, ppxf, specutils, pytest; print('set-up ok: torch', torch.__version__, '| ignite', ignite.__version__)"
