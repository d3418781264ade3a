"""Checkpoint files: the one reader (``load_checkpoint``) and the one atomic writer (``save_checkpoint``).

A galspec checkpoint is a plain dict of state dicts (tensors, numbers, strings and plain containers):
``model``, optionally ``ema_model``, the training objects' states and ``run`` (format, kind, stage, resolved
config, band statistics, survey version). docs/DEVELOPING.md lists the keys.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from utils.files import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint", "check_survey_version",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by this project, with a clear error for anything else.

    The file is unpickled with ``weights_only=True``: tensors, numbers, strings and plain containers only,
    so a file carrying a pickled callable is refused (one line naming it) instead of being executed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file: does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(f"{path}: file: refused to load: it holds a pickled object "
                                  f"({found.group(1)}) beyond tensors and plain containers; galspec "
                                  "checkpoints never do") from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        raise CheckpointError(f"{path}: file: not a readable torch checkpoint (UnpicklingError: "
                              f"{(detail.group(1) if detail else str(e).splitlines()[0])[:120]})") from None
    except Exception as e:  # zip/format errors have many types
        raise CheckpointError(f"{path}: file: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("run"), dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: keys: {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)} "
                              "— not a galspec checkpoint (needs 'run' and 'model')")
    if ckpt["run"].get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: run.format: {ckpt['run'].get('format')!r}, this code reads "
                              f"{CHECKPOINT_FORMAT}")
    return ckpt


def save_checkpoint(obj: dict, dst) -> None:
    """``torch.save`` to ``<dst>.partial``, then rename: a reader never sees a half-written file."""
    with atomic_path(dst) as tmp:
        torch.save(obj, tmp)


def check_survey_version(run: dict, survey_version: str, where: str) -> None:
    """A checkpoint trained on one generation of data (e.g. mock v1) must not be resumed or used on another.

    Checkpoints written before the field existed were trained on mock v1 (or real SDSS: "sdss").
    """
    got = run.get("survey_version", "mock-sdss/v1")
    if got != survey_version:
        raise CheckpointError(f"{where}: run.survey_version: the checkpoint was trained on {got!r}, the "
                              f"survey is {survey_version!r} (rebuilt data: retrain in a new run directory)")
