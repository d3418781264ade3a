"""Running a CLI's worker in one process or under ignite.distributed (DDP), with one-line user errors.

Every CLI of the project reports bad input the same way: one line ``error: <file>: <field>: <value ...>``
on stderr and exit status 2, before any output is written (docs/BAD_INPUTS.md lists the cases).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# bad input named by file/field/value: printed as one line (exit 2) instead of a traceback
USER_ERRORS = ("ConfigError", "DatasetError", "SurveyFileError", "CheckpointError", "GenerationError",
               "ResultsFileError", "EvaluationError", "OutputError", "BuildError", "CatalogError",
               "SpecFileError", "CutoutError", "UsageError", "ReferenceError")


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names the path and why."""


class UsageError(ValueError):
    """A command-line value outside its range; the message names the option and the value."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: one line ``error: ...`` and exit status 2 (argparse's
    default prints the usage block first, which buries the message)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())}\n")


def is_user_error(e: BaseException) -> bool:
    """True for the project's bad-input errors (ValueError subclasses named in USER_ERRORS)."""
    return isinstance(e, ValueError) and any(cls.__name__ in USER_ERRORS for cls in type(e).__mro__)


def report(e: BaseException) -> int:
    """Print a user error as one line on stderr; returns the exit status 2."""
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2


def run_reporting(body, *args) -> int:
    """``body(*args)`` as a command's whole work: exit status 0, or 2 with a user error
    (:func:`is_user_error`) printed as one line by :func:`report`; any other exception propagates."""
    try:
        body(*args)
    except ValueError as e:
        if not is_user_error(e):
            raise
        return report(e)
    return 0


def check_output_path(path, overwrite: bool = False, what: str = "output", flag: str = "--overwrite",
                      allow_existing: bool = False) -> Path:
    """Refuse an output path before any work: a parent that is a file (or unwritable), a directory where
    a file goes, or an existing file that would be replaced without ``overwrite``.

    Raises
    ------
    OutputError naming the path, the field ``what`` and the reason.
    """
    path = Path(path)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {what}: parent {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: {what}: directory {parent} is not writable")
            break
    if path.is_dir():
        raise OutputError(f"{path}: {what}: is a directory, expected a file path")
    if path.exists() and not overwrite and not allow_existing:
        raise OutputError(f"{path}: {what}: already exists; pass {flag} to replace it")
    return path


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, a SLURM or container cpuset), not the
    machine's count, which would oversubscribe a pinned job."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):     # no affinity API (macOS)
        return os.cpu_count() or 1


def threads_per_process(nproc: int, threads: int | None = None) -> int:
    """torch CPU threads per process: the available cores shared out over the processes unless given."""
    return threads or max(1, available_cores() // max(nproc, 1))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies, so the spawned ranks of a
    killed run stop instead of writing on, as orphans, into outputs a restarted run is writing (seen: a
    generate.py --nproc 2 killed while its ranks started up left both running for an hour). If the parent
    (``parent_pid``) is already gone, terminate now. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the launcher died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def _spawned(local_rank, launcher_pid, worker, *args):
    """What each spawned rank runs: ``worker(local_rank, *args)``, bound to the life of the launcher."""
    die_with_parent(launcher_pid)
    return worker(local_rank, *args)


def launch(worker, args: tuple, nproc: int = 1, backend: str | None = None) -> int:
    """Run ``worker(local_rank, *args)``: in this process for ``nproc == 1`` without a backend, else
    spawned over ``nproc`` processes (nccl on CUDA, gloo on CPU unless ``backend`` says otherwise)."""
    import ignite.distributed as idist  # here, not at the top: the CLIs' argument checks stay torch-free
    import torch

    if backend is None and nproc > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    try:
        if backend is None:  # one process, no process group: what idist.Parallel would do, minus its logging
            worker(0, *args)
            return 0
        if nproc > 1 and "MASTER_PORT" not in os.environ:
            # the spawned processes meet on a free local port, not ignite's fixed default (2222), which a
            # second run on the same machine would find taken (EADDRINUSE); MASTER_PORT still decides
            os.environ["MASTER_PORT"] = str(free_port())
        with idist.Parallel(backend=backend, nproc_per_node=nproc if backend else None) as parallel:
            if nproc > 1:
                parallel.run(_spawned, os.getpid(), worker, *args)
            else:
                parallel.run(worker, *args)
    except ValueError as e:
        if is_user_error(e):
            return report(e)
        raise
    return 0
