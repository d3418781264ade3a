"""Ignite wiring shared by both trainers: data, optimiser, LR schedule, EMA, checkpoints, logging, resume.

A *task* (training/tasks.py) supplies the model, the loss of one batch and the validation metrics;
this module turns it into an ignite Engine with handlers. It runs under ``idist.Parallel`` so the same
code trains on one CPU, several gloo processes, or NCCL GPUs (global batch split across ranks;
rank 0 alone logs and writes checkpoints).

Determinism and resume: the data order is a function of (seed, epoch) (``EpochBatchSampler``) and every
random draw of iteration ``i`` (augmentation, diffusion time steps and noise) comes from a generator
seeded by (seed, i, rank). A checkpoint holds model, EMA model, optimizer, LR scheduler, trainer state
and the resolved config, so a killed run resumed from its last checkpoint ends with the same weights as
an uninterrupted one.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import torch
import yaml
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler, PiecewiseLinear, TerminateOnNan
from ignite.handlers.tqdm_logger import ProgressBar

from datasets.galaxy import EpochBatchSampler, GalaxyDataset, ImageAugment, build_cache, make_loader
from datasets.schema import open_survey, survey_version
from models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_survey_version,
    load_checkpoint,
    save_checkpoint,
)
from models.precision import autocast_context
from utils.config import resolve_out_dir, to_dict


class RunState:
    """Checkpointed metadata: the resolved config, what generate.py needs to rebuild the model, and the
    config changes accepted on resume (``--allow-config-change``) with the iteration they took effect."""

    def __init__(self, cfg, kind: str, extra: dict, history: list | None = None):
        self.cfg, self.kind, self.extra, self.history = cfg, kind, extra, list(history or [])

    def state_dict(self):
        return {"format": CHECKPOINT_FORMAT, "kind": self.kind, "config": to_dict(self.cfg),
                "config_history": self.history, **self.extra}

    def load_state_dict(self, d):  # the config was compared before loading (check_resume_config)
        pass


class EMAState:
    """The EMA handler's warm-up position (ignite's momentum scheduler counts its own events and does
    not checkpoint them): without it a resumed run restarts the warm-up and its EMA weights drift."""

    def __init__(self, ema: EMAHandler):
        self.ema = ema

    def state_dict(self):
        sched = getattr(self.ema, "momentum_scheduler", None)
        return {"event_index": int(sched.event_index) if sched is not None else 0}

    def load_state_dict(self, d):
        if getattr(self.ema, "momentum_scheduler", None) is not None:
            self.ema.momentum_scheduler.event_index = int(d["event_index"])


class BestState:
    """Best validation score so far and its iteration (checkpointed, so a resumed run does not overwrite
    best.pt with a worse model at its first validation)."""

    def __init__(self, sign: float):
        self.sign, self.score, self.iteration = sign, None, None

    def improves(self, value: float) -> bool:
        return math.isfinite(value) and (self.score is None or self.sign * value > self.sign * self.score)

    def state_dict(self):
        return {"score": self.score, "iteration": self.iteration}

    def load_state_dict(self, d):
        self.score, self.iteration = d["score"], d["iteration"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# keys that do not change what the run computes (where and how often it logs and saves)
RESUME_FREE_KEYS = ("run.resume", "run.log_every", "run.tensorboard", "run.n_saved", "run.checkpoint_every",
                    "run.validate_every", "run.out_dir", "data.cache_dir", "train.num_workers",
                    "validation.figure_every")
# keys a resumed run cannot honour even when asked to: the weights and the data order depend on them
RESUME_FIXED_PREFIXES = ("model.", "train.stage", "train.batch_size")


def check_resume_config(path: Path, ckpt: dict, cfg, allow_change: bool) -> dict:
    """Compare the config of a resumed run with the one in its checkpoint, key by key.

    Returns ``{key: (old, new)}`` of the accepted changes (empty unless ``allow_change``). Raises a
    one-line CheckpointError naming every changed key with its old and new value when the change is not
    allowed, or when it touches the architecture, stage or batch size (never resumable)."""
    old = _flatten(ckpt["run"]["config"])
    new = _flatten(to_dict(cfg))
    changed = {k: (old.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(set(old) | set(new))
               if old.get(k, "<absent>") != new.get(k, "<absent>") and not k.startswith("generate.")
               and k not in RESUME_FREE_KEYS}
    if not changed:
        return {}
    listing = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changed.items())
    fixed = [k for k in changed if k.startswith(RESUME_FIXED_PREFIXES)]
    if fixed:
        raise CheckpointError(f"{path}: config: {listing}: {', '.join(fixed)} cannot change on resume "
                              "(start a new run.out_dir or use --no-resume)")
    if not allow_change:
        raise CheckpointError(f"{path}: config: resuming with a changed config: {listing} (pass "
                              "--allow-config-change to continue with the new values, or use --no-resume)")
    return changed


def iteration_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The generator of every random draw of one training iteration (resume-exact)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 131 + rank)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _atomic_write_text(dst: Path, text: str) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, dst)


def _write_rows(path: Path, header: list, rows: list) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


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


NUMBERED = re.compile(r"checkpoint_(\d+)\.pt$")
IGNITE_TMP = re.compile(r"tmp[a-z0-9_]{8}$")  # DiskSaver(atomic=True) leftovers of earlier versions


def _numbered_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = ((NUMBERED.match(p.name), p) for p in out_dir.glob("checkpoint_*.pt"))
    return sorted((int(m.group(1)), p) for m, p in found if m)


def prune_checkpoints(out_dir: Path, n_saved: int, after: int | None = None) -> None:
    """Keep the ``n_saved`` newest ``checkpoint_<iteration>.pt`` (by file name, so it also holds across
    resumes); with ``after``, first drop those past that iteration (a redone stretch)."""
    numbered = _numbered_checkpoints(out_dir)
    if after is not None:
        for it, p in numbered:
            if it > after:
                p.unlink()
        numbered = [(it, p) for it, p in numbered if it <= after]
    for _, p in numbered[:max(len(numbered) - max(n_saved, 1), 0)]:
        p.unlink()


def prepare_run_dir(cfg, kind: str, allow_change: bool, rank: int):
    """Check a resume before any work and bring the run directory to the resume point.

    Returns ``(checkpoint or None, history)``: the loaded ``last.pt`` if the run resumes, and the config
    history to record (earlier accepted changes plus this resume's). Rank 0 then removes temp files of
    killed writes, trims ``metrics.csv`` and numbered checkpoints past the resume point (all of them on
    a fresh start, with ``best.pt`` and ``last.pt`` of an earlier run) and writes ``config.yaml``."""
    out_dir = resolve_out_dir(cfg)
    last = out_dir / "last.pt"
    ckpt, history = None, []
    if cfg.run.resume and last.exists():
        ckpt = load_checkpoint(last)
        if ckpt["run"].get("kind") != kind:
            raise CheckpointError(f"{last}: run.kind: {ckpt['run'].get('kind')!r}, expected {kind!r} "
                                  "(a checkpoint of another model in this run directory)")
        with open_survey(cfg.data.path) as f:
            check_survey_version(ckpt["run"], survey_version(f.attrs), str(last))
        changes = check_resume_config(last, ckpt, cfg, allow_change)
        history = list(ckpt["run"].get("config_history", []))
        if changes:
            it = int(ckpt["trainer"]["iteration"])
            history.append({"iteration": it, "changes": {k: [o, n] for k, (o, n) in changes.items()}})
            if rank == 0:
                print(f"{last}: resuming at iteration {it} with config changes: "
                      + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()), flush=True)
    if rank != 0:
        return ckpt, history
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.iterdir():
        if p.is_file() and (p.name.endswith(".partial") or IGNITE_TMP.match(p.name)):
            p.unlink()
    resume_it = int(ckpt["trainer"]["iteration"]) if ckpt is not None else 0
    dropped = CSVLogger(out_dir / "metrics.csv").trim(resume_it)
    prune_checkpoints(out_dir, cfg.run.n_saved, after=resume_it)
    if ckpt is None:
        stale = [p for p in (last, out_dir / "best.pt") if p.exists()]
        for p in stale:
            p.unlink()
        if stale or dropped:
            names = ", ".join(p.name for p in stale) or "no checkpoints"
            print(f"{out_dir}: starting from scratch: removed {names} and {dropped} metrics.csv rows of an "
                  "earlier run", flush=True)
    header = "".join(f"# iteration {h['iteration']}: resumed with "
                     + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in h["changes"].items()) + "\n"
                     for h in history)
    _atomic_write_text(out_dir / "config.yaml", header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return ckpt, history


def restore(ckpt: dict, to_save: dict, cfg, path: Path, epoch_length: int, total: int) -> None:
    """Load a checkpoint into the training objects, then make the schedule and optimizer follow ``cfg``
    (they equal the checkpoint's unless ``--allow-config-change`` accepted new values)."""
    if int(ckpt["trainer"]["epoch_length"]) != epoch_length:
        raise CheckpointError(f"{path}: trainer.epoch_length: {ckpt['trainer']['epoch_length']}, this "
                              f"config gives {epoch_length} batches per epoch (train split or batch size "
                              "changed; start a new run.out_dir)")
    for key, obj in to_save.items():
        if key in ckpt:
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{path}: {key}: does not fit this run "
                                      f"({str(e).splitlines()[0][:120]})") from None
    if "ema_model" in to_save and "ema_model" not in ckpt:  # EMA switched on at resume: start from now
        to_save["ema_model"].load_state_dict(to_save["model"].state_dict())
    if "ema_state" in to_save and "ema_state" not in ckpt:  # older checkpoint: one EMA event per iteration
        to_save["ema_state"].load_state_dict({"event_index": int(ckpt["trainer"]["iteration"])})
    sched = to_save["lr_scheduler"]
    sched.milestones, sched.values = [0, total], [cfg.train.lr, cfg.train.lr_end]
    for group in to_save["optimizer"].param_groups:
        group["weight_decay"] = cfg.train.weight_decay


def _reconcile_best(out_dir: Path, best: BestState, resume_it: int) -> None:
    """best.pt is written only after a last.pt that records it; a kill between the two leaves best.pt one
    improvement behind, which is repaired here from last.pt."""
    path = out_dir / "best.pt"
    if best.iteration is None:
        if path.exists():  # no validation before the resume point: a best.pt here is not this run's
            path.unlink()
        return
    held = None
    if path.exists():
        try:
            held = int(torch.load(path, map_location="cpu", weights_only=True)["trainer"]["iteration"])
        except Exception:  # a damaged best.pt is replaced below if possible
            held = None
    if held != best.iteration and best.iteration == resume_it:
        _atomic_copy(out_dir / "last.pt", path)
    elif held != best.iteration:
        print(f"{path}: holds iteration {held}, but the best validation was at iteration {best.iteration}",
              flush=True)


def train(local_rank: int, cfg, task, stop_iteration: int | None = None,
          allow_config_change: bool = False) -> dict:
    """Train ``task`` with config ``cfg``; returns the final validation metrics (on every rank).

    A run directory with ``last.pt`` resumes from it when ``run.resume`` is on; a config that differs
    from the checkpoint's is refused key by key unless ``allow_config_change``."""
    rank, world = idist.get_rank(), idist.get_world_size()
    device = idist.device()
    torch.manual_seed(cfg.train.seed)
    out_dir = resolve_out_dir(cfg)
    ckpt, history = prepare_run_dir(cfg, task.kind, allow_config_change, rank)
    idist.barrier()

    cache = (build_cache(cfg.data.path, cfg.data.cache_dir, progress=sys.stderr.isatty()) if rank == 0
             else None)
    idist.barrier()
    cache = cache or build_cache(cfg.data.path, cfg.data.cache_dir)
    phot = bool(getattr(cfg.model, "photometry", False))  # model.photometry: the features ride in the batch
    train_ds = GalaxyDataset(cfg.data.path, "train", task.resolution, cfg.data.preprocessing,
                             with_lowres=task.with_lowres, cache=cache, with_photometry=phot)
    val_ds = GalaxyDataset(cfg.data.path, "val", task.resolution, cfg.data.preprocessing,
                           with_lowres=task.with_lowres, cache=cache, with_photometry=phot)
    sampler = EpochBatchSampler(len(train_ds), cfg.train.batch_size, seed=cfg.train.seed, rank=rank,
                                world_size=world)
    loader = make_loader(train_ds, sampler, cfg.train.num_workers)
    epoch_length = len(sampler)
    total = cfg.train.max_iterations or cfg.train.epochs * epoch_length
    max_epochs = math.ceil(total / epoch_length)

    model = task.build_model(cfg)
    if hasattr(task, "init_model"):
        task.init_model(model, train_ds, cfg)
    model = model.to(device)
    if cfg.train.compile:
        model = torch.compile(model)
    # SyncBatchNorm needs CUDA; on CPU DDP broadcasts rank 0's BatchNorm buffers at every forward instead
    model = idist.auto_model(model, sync_bn=world > 1 and device.type == "cuda")
    optimizer = idist.auto_optim(torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                                  weight_decay=cfg.train.weight_decay))
    lr_scheduler = PiecewiseLinear(optimizer, "lr", milestones_values=[(0, cfg.train.lr),
                                                                        (total, cfg.train.lr_end)])
    augment = ImageAugment()
    amp = cfg.train.amp

    def step(engine, batch):
        model.train()
        gen = iteration_generator(cfg.train.seed, engine.state.iteration, rank)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if cfg.data.augment:
            batch["image"] = augment(batch["image"].cpu(), train=True, generator=gen).to(device)
        with autocast_context(device, amp):
            loss = task.loss(model, batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        return {"loss": loss.item(), "batch_size": batch["image"].shape[0] * world}

    trainer = Engine(step)
    trainer.add_event_handler(Events.ITERATION_STARTED, lr_scheduler)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(lambda out: out["loss"]))

    @trainer.on(Events.EPOCH_STARTED)
    def _set_data_order(engine):
        sampler.set_epoch(engine.state.epoch)
        sampler.skip(engine.state.iteration - (engine.state.epoch - 1) * epoch_length)

    raw_model = model.module if hasattr(model, "module") else model
    ema_model = None
    best = BestState(task.score_sign)
    to_save = {"model": raw_model, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer,
               "best": best}
    if cfg.train.ema_decay is not None:
        momentum = 1.0 - cfg.train.ema_decay
        warm = cfg.train.ema_warmup
        ema = EMAHandler(raw_model, momentum=momentum,
                         momentum_warmup=min(0.5, 50 * momentum) if warm else None,
                         warmup_iters=warm or None)
        ema.attach(trainer, name="ema_momentum", event=Events.ITERATION_COMPLETED)
        ema_model = ema.ema_model
        to_save["ema_model"] = ema_model
        to_save["ema_state"] = EMAState(ema)
    to_save["run"] = RunState(cfg, task.kind, {"band_mean": cache.meta["band_mean"],
                                               "band_std": cache.meta["band_std"],
                                               "resolution": task.resolution, "stage": cfg.train.stage,
                                               "survey_version": cache.meta.get("survey_version", "")},
                              history)
    eval_model = ema_model if ema_model is not None else raw_model
    csv_log = CSVLogger(out_dir / "metrics.csv") if rank == 0 else None
    state = {"metrics": {}}

    def _save(it: int, numbered: bool, is_best: bool) -> None:
        """last.pt first, then its copies: best.pt is never ahead of the last.pt that records it."""
        if rank != 0:
            return
        save_checkpoint({k: v.state_dict() for k, v in to_save.items()}, out_dir / "last.pt")
        if numbered:
            _atomic_copy(out_dir / "last.pt", out_dir / f"checkpoint_{it:07d}.pt")
            prune_checkpoints(out_dir, cfg.run.n_saved)
        if is_best:
            _atomic_copy(out_dir / "last.pt", out_dir / "best.pt")

    def _validate(engine) -> bool:
        it = engine.state.iteration
        fig = None
        if rank == 0 and (it // cfg.run.validate_every) % max(cfg.validation.figure_every, 1) == 0:
            fig = out_dir / f"samples_{it:07d}.png"
        metrics = task.validate(eval_model, val_ds, cfg, device, figure=fig)
        state["metrics"] = metrics
        if rank == 0:
            csv_log.log({"iteration": it, **{f"val_{k}": v for k, v in metrics.items()}})
            print(f"[{cfg.name}_{cfg.train.stage}] iteration {it}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        improved = best.improves(metrics[task.score_name])
        if improved:
            best.score, best.iteration = float(metrics[task.score_name]), it
        return improved

    # logging first: the rows of iteration k are in metrics.csv before the checkpoint of iteration k
    _attach_logging(trainer, cfg, rank, out_dir, csv_log, optimizer, total)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _validate_checkpoint_stop(engine):
        it = engine.state.iteration
        stop = it >= total or (stop_iteration is not None and it >= stop_iteration)
        improved = False
        if it % cfg.run.validate_every == 0 or it >= total:
            improved = _validate(engine)
        if improved or stop or it % cfg.run.checkpoint_every == 0:
            _save(it, numbered=stop or it % cfg.run.checkpoint_every == 0, is_best=improved)
        if stop:
            engine.terminate()

    if ckpt is not None:
        restore(ckpt, to_save, cfg, out_dir / "last.pt", epoch_length, total)
        if rank == 0:
            if "best" not in ckpt:
                print(f"{out_dir / 'last.pt'}: has no best-score record (older checkpoint): the next "
                      "validation replaces best.pt", flush=True)
            else:
                _reconcile_best(out_dir, best, trainer.state.iteration)
            print(f"resumed {out_dir} at iteration {trainer.state.iteration}", flush=True)
    if trainer.state.iteration >= total:
        if rank == 0:
            print(f"{out_dir}: already trained to iteration {trainer.state.iteration} (>= {total})")
        metrics = task.validate(eval_model, val_ds, cfg, device, figure=None)
    else:
        trainer.run(loader, max_epochs=max_epochs, epoch_length=epoch_length)
        metrics = dict(state["metrics"])
    if world > 1:  # end with rank 0's BatchNorm statistics everywhere (what its checkpoint holds)
        for buf in raw_model.buffers():
            buf.copy_(idist.broadcast(buf, src=0))
    dump = os.environ.get("GALSPEC_DUMP_RANK_WEIGHTS")
    if dump:  # tests compare the ranks' weights after DDP training
        torch.save(raw_model.state_dict(), dump.format(rank=rank))
    if rank == 0:
        _atomic_write_text(out_dir / "final_metrics.json",
                           json.dumps({"iteration": trainer.state.iteration, **metrics}, indent=1))
    return metrics


def _attach_logging(trainer, cfg, rank: int, out_dir: Path, csv_log, optimizer, total: int) -> None:
    """Training rows in metrics.csv (and TensorBoard if asked), and a progress bar or log lines (rank 0)."""
    if rank != 0:
        return
    tb = None
    if cfg.run.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out_dir / "tb"))
            trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())
        except ImportError:
            print("tensorboard is not installed: metrics go to metrics.csv only")
    timer = {"t": time.perf_counter(), "n": 0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine):
        timer["n"] += engine.state.output["batch_size"]
        if engine.state.iteration % cfg.run.log_every == 0:
            dt = time.perf_counter() - timer["t"]
            row = {"iteration": engine.state.iteration, "epoch": engine.state.epoch,
                   "loss": engine.state.output["loss"], "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": timer["n"] / max(dt, 1e-9)}
            csv_log.log(row)
            if tb:
                for k, v in row.items():
                    tb.add_scalar(f"train/{k}", v, engine.state.iteration)
            timer.update(t=time.perf_counter(), n=0)

    if sys.stderr.isatty():
        ProgressBar(persist=False, desc=f"{cfg.name}_{cfg.train.stage}").attach(
            trainer, output_transform=lambda out: {"loss": out["loss"]})
    else:  # logs and CI: one line per log interval instead of a redrawn bar
        @trainer.on(Events.ITERATION_COMPLETED(every=cfg.run.log_every))
        def _print(engine):
            print(f"[{cfg.name}_{cfg.train.stage}] iteration {engine.state.iteration}/{total} "
                  f"loss {engine.state.output['loss']:.4g}", flush=True)
