"""An on-disk cache for the evaluation's baselines that do not depend on the generated spectra.

The photometric baseline's fitted regressors and the retrieval baseline's embeddings of the training pool
depend only on the survey, the pool, the seed and (for retrieval) the contrastive checkpoint; two
evaluations of the same survey (the demo's quick and reference models) need not fit them twice. An entry
is keyed by a hash of everything it depends on: the survey file's identity (path, size, mtime, like the
preprocessing cache of datasets/galaxy.py), the checkpoint's sha256, the rows, the library versions and
:data:`CACHE_VERSION`; a changed input is a new key, never a stale hit. Entries are pickles written to a
temporary name and renamed (a killed run leaves no half-written entry); they hold only what this module
wrote, so a cache directory must not be shared with untrusted writers.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np

CACHE_VERSION = 1  # bump when what an entry holds, or how it is computed, changes


def survey_ident(path) -> dict:
    """The survey file's identity: resolved path, size and modification time (ns)."""
    p = Path(path)
    st = p.stat()
    return {"survey": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def rows_digest(rows) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def entry_path(cache_dir, kind: str, ident: dict) -> Path:
    blob = json.dumps({**ident, "kind": kind, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
    return Path(cache_dir) / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.pkl"


def cached(cache_dir, kind: str, ident: dict, compute):
    """``compute()``, or its result stored under ``cache_dir`` for the same ``kind`` and ``ident``.

    ``cache_dir`` None: no cache, ``compute()`` every time. Returns ``(value, hit)``."""
    if cache_dir is None:
        return compute(), False
    path = entry_path(cache_dir, kind, ident)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f), True
        except (OSError, EOFError, pickle.UnpicklingError):
            pass  # unreadable entry: recompute and replace it
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return value, False
