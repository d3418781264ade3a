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
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import ignite.distributed as idist
import torch
import yaml
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EMAHandler, PiecewiseLinear, TerminateOnNan
from ignite.handlers.tqdm_logger import ProgressBar

from datasets.galaxy import EpochBatchSampler, GalaxyDataset, ImageAugment, build_cache, make_loader
from models.precision import use_bf16
from utils.config import resolve_out_dir, to_dict

CHECKPOINT_FORMAT = 1


class RunState:
    """Checkpointed metadata: the resolved config and what generate.py needs to rebuild the model."""

    def __init__(self, cfg, kind: str, extra: dict):
        self.cfg, self.kind, self.extra = cfg, kind, extra

    def state_dict(self):
        return {"format": CHECKPOINT_FORMAT, "kind": self.kind, "config": to_dict(self.cfg), **self.extra}

    def load_state_dict(self, d):  # the config of a resumed run is the one given now; nothing to restore
        pass


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by this project, with a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file: does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle/zip errors have many types
        raise CheckpointError(f"{path}: file: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or "run" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: keys: {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)} "
                              "— not a galspec checkpoint (needs 'run' and 'model')")
    if ckpt["run"].get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: run.format: {ckpt['run'].get('format')!r}, this code reads "
                              f"{CHECKPOINT_FORMAT}")
    return ckpt


def iteration_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The generator of every random draw of one training iteration (resume-exact)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 131 + rank)


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast for "bf16"; for "auto" only where bf16 is native (models.precision.native_bf16: CUDA
    with bf16, or a CPU with AVX512-BF16 / AMX-BF16; never an emulating CPU)."""
    if not use_bf16(amp, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CSVLogger:
    """Appends metric rows to ``metrics.csv`` (rank 0); survives resume (appends)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, row: dict):
        row = {"time": round(time.time(), 3), **row}
        new = not self.path.exists()
        # a resumed run can add columns: rewrite the header when the key set grows
        if not new:
            with open(self.path) as f:
                header = next(csv.reader(f), [])
            if not set(row) <= set(header):
                rows = list(csv.DictReader(open(self.path)))
                header = header + [k for k in row if k not in header]
                with open(self.path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=header)
                    w.writeheader()
                    w.writerows(rows)
        else:
            header = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            if new:
                w.writeheader()
            w.writerow(row)


def train(local_rank: int, cfg, task, stop_iteration: int | None = None) -> dict:
    """Train ``task`` with config ``cfg``; returns the final validation metrics (on every rank)."""
    rank, world = idist.get_rank(), idist.get_world_size()
    device = idist.device()
    torch.manual_seed(cfg.train.seed)
    out_dir = resolve_out_dir(cfg)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    idist.barrier()

    cache = (build_cache(cfg.data.path, cfg.data.cache_dir, progress=sys.stderr.isatty()) if rank == 0
             else None)
    idist.barrier()
    cache = cache or build_cache(cfg.data.path, cfg.data.cache_dir)
    train_ds = GalaxyDataset(cfg.data.path, "train", task.resolution, cfg.data.preprocessing,
                             with_lowres=task.with_lowres, cache=cache)
    val_ds = GalaxyDataset(cfg.data.path, "val", task.resolution, cfg.data.preprocessing,
                           with_lowres=task.with_lowres, cache=cache)
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
    to_save = {"model": raw_model, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer}
    if cfg.train.ema_decay is not None:
        momentum = 1.0 - cfg.train.ema_decay
        warm = cfg.train.ema_warmup
        ema = EMAHandler(raw_model, momentum=momentum,
                         momentum_warmup=min(0.5, 50 * momentum) if warm else None,
                         warmup_iters=warm or None)
        ema.attach(trainer, name="ema_momentum", event=Events.ITERATION_COMPLETED)
        ema_model = ema.ema_model
        to_save["ema_model"] = ema_model
    to_save["run"] = RunState(cfg, task.kind, {"band_mean": cache.meta["band_mean"],
                                               "band_std": cache.meta["band_std"],
                                               "resolution": task.resolution, "stage": cfg.train.stage})
    eval_model = ema_model if ema_model is not None else raw_model

    saver = DiskSaver(str(out_dir), require_empty=False, atomic=True)
    periodic = Checkpoint(to_save, saver, n_saved=cfg.run.n_saved,
                          global_step_transform=lambda e, _: e.state.iteration)
    best = Checkpoint(to_save, saver, filename_prefix="best", n_saved=1,
                      score_function=lambda e: task.score_sign * e.state.metrics[task.score_name],
                      score_name=task.score_name, global_step_transform=lambda e, _: trainer.state.iteration)

    csv_log = CSVLogger(out_dir / "metrics.csv") if rank == 0 else None
    tb = None
    if rank == 0 and cfg.run.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:
            print("tensorboard is not installed: metrics go to metrics.csv only")

    timer = {"t": time.perf_counter(), "n": 0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine):
        timer["n"] += engine.state.output["batch_size"]
        if engine.state.iteration % cfg.run.log_every == 0 and rank == 0:
            dt = time.perf_counter() - timer["t"]
            row = {"iteration": engine.state.iteration, "epoch": engine.state.epoch,
                   "loss": engine.state.output["loss"], "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": timer["n"] / max(dt, 1e-9)}
            csv_log.log(row)
            if tb:
                for k, v in row.items():
                    tb.add_scalar(f"train/{k}", v, engine.state.iteration)
            timer.update(t=time.perf_counter(), n=0)

    evaluator = Engine(lambda e, b: None)
    n_validations = {"n": 0}

    def _validate(engine):
        if engine.state.iteration == 0:
            return
        n_validations["n"] += 1
        fig = None
        if rank == 0 and n_validations["n"] % max(cfg.validation.figure_every, 1) == 0:
            fig = out_dir / f"samples_{engine.state.iteration:07d}.png"
        metrics = task.validate(eval_model, val_ds, cfg, device, figure=fig)
        evaluator.state.metrics = metrics
        evaluator.state.iteration = engine.state.iteration
        if rank == 0:
            csv_log.log({"iteration": engine.state.iteration, **{f"val_{k}": v for k, v in metrics.items()}})
            if tb:
                for k, v in metrics.items():
                    tb.add_scalar(f"val/{k}", v, engine.state.iteration)
            print(f"[{cfg.name}_{cfg.train.stage}] iteration {engine.state.iteration}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        best(evaluator)
        if rank == 0 and best.last_checkpoint:
            _atomic_copy(out_dir / Path(best.last_checkpoint).name, out_dir / "best.pt")

    def _checkpoint(engine):
        periodic(engine)
        if rank == 0 and periodic.last_checkpoint:
            _atomic_copy(out_dir / Path(periodic.last_checkpoint).name, out_dir / "last.pt")

    every_val = Events.ITERATION_COMPLETED(every=cfg.run.validate_every)
    every_ckpt = Events.ITERATION_COMPLETED(every=cfg.run.checkpoint_every)
    trainer.add_event_handler(every_val, _validate)
    trainer.add_event_handler(every_ckpt, _checkpoint)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine):
        it = engine.state.iteration
        if it >= total or (stop_iteration is not None and it >= stop_iteration):
            if it % cfg.run.validate_every and it >= total:
                _validate(engine)
            if it % cfg.run.checkpoint_every:
                _checkpoint(engine)
            engine.terminate()

    if rank == 0 and sys.stderr.isatty():
        ProgressBar(persist=False, desc=f"{cfg.name}_{cfg.train.stage}").attach(
            trainer, output_transform=lambda out: {"loss": out["loss"]})
    elif rank == 0:  # logs and CI: one line per log interval instead of a redrawn bar
        @trainer.on(Events.ITERATION_COMPLETED(every=cfg.run.log_every))
        def _print(engine):
            print(f"[{cfg.name}_{cfg.train.stage}] iteration {engine.state.iteration}/{total} "
                  f"loss {engine.state.output['loss']:.4g}", flush=True)

    last = out_dir / "last.pt"
    if cfg.run.resume and last.exists():
        ckpt = load_checkpoint(last)
        if ckpt.get("run", {}).get("kind") != task.kind:
            raise CheckpointError(f"{last}: run.kind: {ckpt.get('run', {}).get('kind')!r}, expected "
                                  f"{task.kind!r} (a checkpoint of another model in this run directory)")
        Checkpoint.load_objects(to_load={k: v for k, v in to_save.items() if k != "run"}, checkpoint=ckpt)
        if rank == 0:
            print(f"resumed {out_dir} at iteration {trainer.state.iteration}", flush=True)
    if trainer.state.iteration >= total:
        if rank == 0:
            print(f"{out_dir}: already trained to iteration {trainer.state.iteration} (>= {total})")
        metrics = task.validate(eval_model, val_ds, cfg, device, figure=None)
    else:
        trainer.run(loader, max_epochs=max_epochs, epoch_length=epoch_length)
        metrics = dict(evaluator.state.metrics or {})
    if world > 1:  # end with rank 0's BatchNorm statistics everywhere (what its checkpoint holds)
        for buf in raw_model.buffers():
            buf.copy_(idist.broadcast(buf, src=0))
    dump = os.environ.get("GALSPEC_DUMP_RANK_WEIGHTS")
    if dump:  # tests compare the ranks' weights after DDP training
        torch.save(raw_model.state_dict(), dump.format(rank=rank))
    if rank == 0:
        (out_dir / "final_metrics.json").write_text(json.dumps(
            {"iteration": trainer.state.iteration, **metrics}, indent=1))
        if tb:
            tb.close()
    return metrics
