"""What a training run logs (rank 0): metrics.csv, TensorBoard when installed, progress on the terminal.

Everything hangs on ignite events of the trainer: training rows every ``run.log_every`` iterations
(``Events.ITERATION_COMPLETED(every=...)``) and validation rows at ``TrainEvents.VALIDATION_COMPLETED``,
which the trainer fires after each validation with the metrics in ``engine.state.metrics``.

* ``metrics.csv`` (always; users and tests read it): :class:`MetricsCSVHandler`, an event handler writing
  through :class:`CSVLogger` (append, header grown when a resumed run adds columns, trimmed on resume).
* TensorBoard (whenever the ``tensorboard`` extra is installed, unless ``run.tensorboard: false``): ignite's
  ``TensorboardLogger`` with its ``OutputHandler`` / ``OptimizerParamsHandler``, logs in ``<run>/tb``.
* a progress bar on a terminal (ignite's ``ProgressBar``), else one line per log interval.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

from ignite.engine import Engine, EventEnum, Events
from ignite.handlers.tqdm_logger import ProgressBar

from utils.files import write_csv


class TrainEvents(EventEnum):
    """Events the trainer fires itself (registered by :func:`register_train_events`)."""

    VALIDATION_COMPLETED = "validation_completed"


def register_train_events(trainer: Engine) -> None:
    """Register :class:`TrainEvents` on ``trainer``; their global step is the iteration."""
    trainer.register_events(*TrainEvents,
                            event_to_attr={TrainEvents.VALIDATION_COMPLETED: "iteration"})


def _write_rows(path: Path, header: list, rows: list) -> None:
    write_csv(path, header, rows, dict_rows=True)


def _row_iteration(row: dict) -> float:
    """The iteration of a metrics.csv row; infinite (dropped by a trim) for a row cut short by a kill."""
    try:
        return int(row["iteration"]) if None not in row else math.inf
    except (KeyError, TypeError, ValueError):
        return math.inf


class CSVLogger:
    """Appends metric rows to ``metrics.csv`` (rank 0); a resumed run first trims the rows of the
    iterations it will redo (``trim``) so each iteration appears once."""

    def __init__(self, path: Path):
        self.path = path

    def trim(self, last_iteration: int) -> int:
        """Drop the rows after ``last_iteration`` (all rows for 0); returns how many were dropped."""
        if not self.path.exists():
            return 0
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)
        keep = [r for r in rows if _row_iteration(r) <= last_iteration]
        if not keep:
            self.path.unlink()
        elif len(keep) < len(rows):
            _write_rows(self.path, header, keep)
        return len(rows) - len(keep)

    def log(self, row: dict):
        """Append one row (with a ``time`` column first)."""
        row = {"time": round(time.time(), 3), **row}
        new = not self.path.exists()
        # a resumed run can add columns: rewrite the header when the key set grows
        if not new:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if not set(row) <= set(header):
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
                header = header + [k for k in row if k not in header]
                _write_rows(self.path, header, rows)
        else:
            header = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            if new:
                w.writeheader()
            w.writerow(row)


class MetricsCSVHandler:
    """ignite event handler writing ``metrics.csv``: a training row (iteration, epoch, loss, lr,
    samples_per_s) every ``log_every`` iterations and a ``val_*`` row at each validation.

    ``samples_per_s`` counts the samples (``engine.state.output["batch_size"]``, all ranks) of every
    iteration since the previous training row."""

    def __init__(self, path: Path, optimizer, log_every: int):
        self.csv, self.optimizer, self.log_every = CSVLogger(path), optimizer, log_every
        self._t, self._n = time.perf_counter(), 0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.count)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self.training_row)
        trainer.add_event_handler(TrainEvents.VALIDATION_COMPLETED, self.validation_row)

    def count(self, engine: Engine) -> None:
        self._n += engine.state.output["batch_size"]

    def training_row(self, engine: Engine) -> None:
        dt = time.perf_counter() - self._t
        self.csv.log({"iteration": engine.state.iteration, "epoch": engine.state.epoch,
                      "loss": engine.state.output["loss"], "lr": self.optimizer.param_groups[0]["lr"],
                      "samples_per_s": self._n / max(dt, 1e-9)})
        self._t, self._n = time.perf_counter(), 0

    def validation_row(self, engine: Engine) -> None:
        self.csv.log({"iteration": engine.state.iteration,
                      **{f"val_{k}": v for k, v in engine.state.metrics.items()}})


def attach_tensorboard(trainer: Engine, log_dir: Path, optimizer, log_every: int, quiet: bool = False):
    """ignite's ``TensorboardLogger`` in ``log_dir``: ``train/loss`` and ``lr/group_0`` every ``log_every``
    iterations, ``val/<metric>`` at each validation. Returns the logger (close it at the end), or None
    when neither tensorboard nor tensorboardX is installed (the optional extra ``galspec[tensorboard]``),
    saying so unless ``quiet``."""
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    try:
        tb = TensorboardLogger(log_dir=str(log_dir))
    except ImportError:  # ModuleNotFoundError included
        if not quiet:
            print("run.tensorboard: tensorboard is not installed (pip install 'galspec[tensorboard]'): "
                  "metrics go to metrics.csv only", flush=True)
        return None
    every = Events.ITERATION_COMPLETED(every=log_every)
    tb.attach_output_handler(trainer, every, tag="train", output_transform=lambda out: {"loss": out["loss"]})
    tb.attach_opt_params_handler(trainer, every, optimizer=optimizer, param_name="lr")
    tb.attach_output_handler(trainer, TrainEvents.VALIDATION_COMPLETED, tag="val", metric_names="all")
    return tb


def attach_progress(trainer: Engine, label: str, log_every: int, total: int) -> None:
    """A progress bar on a terminal; in logs and CI one line per log interval instead of a redrawn bar."""
    if sys.stderr.isatty():
        ProgressBar(persist=False, desc=label).attach(trainer,
                                                      output_transform=lambda out: {"loss": out["loss"]})
        return

    def _print(engine):
        print(f"[{label}] iteration {engine.state.iteration}/{total} loss {engine.state.output['loss']:.4g}",
              flush=True)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=log_every), _print)


def print_validation(label: str):
    """Handler printing the validation metrics (one line)."""

    def _print(engine):
        print(f"[{label}] iteration {engine.state.iteration}: "
              + ", ".join(f"{k}={v:.4g}" for k, v in engine.state.metrics.items()), flush=True)

    return _print
