"""Running a CLI's worker in one process or under ignite.distributed (DDP), with one-line user errors."""
from __future__ import annotations

import os
import sys

import ignite.distributed as idist
import torch

# bad input named by file/field/value: printed as one line (exit 2) instead of a traceback
USER_ERRORS = ("ConfigError", "DatasetError", "SurveyFileError", "CheckpointError", "GenerationError",
               "ResultsFileError", "EvaluationError")


def threads_per_process(nproc: int, threads: int | None = None) -> int:
    """torch CPU threads per process: the cores shared out over the processes unless given."""
    return threads or max(1, (os.cpu_count() or 1) // max(nproc, 1))


def launch(worker, args: tuple, nproc: int = 1, backend: str | None = None) -> int:
    """Run ``worker(local_rank, *args)``: in this process for ``nproc == 1`` without a backend, else
    spawned over ``nproc`` processes (nccl on CUDA, gloo on CPU unless ``backend`` says otherwise)."""
    if backend is None and nproc > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    try:
        with idist.Parallel(backend=backend, nproc_per_node=nproc if backend else None) as parallel:
            parallel.run(worker, *args)
    except ValueError as e:
        if type(e).__name__ in USER_ERRORS:
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0
