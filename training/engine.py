"""Ignite wiring shared by the three trainers (contrastive, diffusion, CNN baseline): data, optimiser, LR
schedule, EMA, checkpoints, logging, resume.

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

import copy
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import ignite.distributed as idist
import torch
import yaml
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler, PiecewiseLinear, TerminateOnNan

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
from training.run_logs import (
    CSVLogger,
    MetricsCSVHandler,
    TrainEvents,
    attach_progress,
    attach_tensorboard,
    print_validation,
    register_train_events,
)
from utils.config import resolve_out_dir, to_dict
from utils.files import copy_file, write_text


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
                    "validation.figure_every", "validation.batchnorm_images")
# keys a resumed run cannot honour even when asked to: the weights and the data order depend on them
RESUME_FIXED_PREFIXES = ("model.", "train.stage", "train.batch_size")


#: config keys added after checkpoints were written without them: the value such a checkpoint was made with
ABSENT_MEANS = {"data.lowres": "subsample"}
#: the same for keys that only one kind of run (RunState.kind) has
ABSENT_MEANS_BY_KIND = {"diffusion": {"model.lowres_noise": 0.0, "model.freeze_image_encoder": False,
                                      "model.prediction": "eps"}}


def stored_config(ckpt: dict) -> dict:
    """The (nested) config a checkpoint was made with, keys it predates filled in with ``ABSENT_MEANS``
    (and ``ABSENT_MEANS_BY_KIND`` of its kind), so that a run started before a key existed resumes."""
    cfg = copy.deepcopy(ckpt["run"].get("config", {}))
    absent = {**ABSENT_MEANS, **ABSENT_MEANS_BY_KIND.get(ckpt["run"].get("kind"), {})}
    for dotted, value in absent.items():
        *parents, leaf = dotted.split(".")
        d = cfg
        for k in parents:
            d = d.setdefault(k, {})
        d.setdefault(leaf, value)
    return cfg


def check_resume_config(path: Path, ckpt: dict, cfg, allow_change: bool) -> dict:
    """Compare the config of a resumed run with the one in its checkpoint, key by key.

    Returns ``{key: (old, new)}`` of the accepted changes (empty unless ``allow_change``). Raises a
    one-line CheckpointError naming every changed key with its old and new value when the change is not
    allowed, or when it touches the architecture, stage or batch size (never resumable)."""
    old = _flatten(stored_config(ckpt))
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
    write_text(out_dir / "config.yaml", header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
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
        copy_file(out_dir / "last.pt", path)
    elif held != best.iteration:
        print(f"{path}: holds iteration {held}, but the best validation was at iteration {best.iteration}",
              flush=True)


@dataclass
class TrainData:
    """The data side of a run: the cached survey, the two splits and the resume-exact batch order."""

    cache: object
    train_ds: GalaxyDataset
    val_ds: GalaxyDataset
    sampler: EpochBatchSampler
    loader: object
    epoch_length: int               # batches per epoch (per rank)
    total: int                      # iterations to train
    max_epochs: int


def setup_data(cfg, task, rank: int, world: int) -> TrainData:
    """Build the preprocessing cache (rank 0 first, with the low-res file of ``data.lowres`` when it is
    derived on first use, so the other ranks do not all derive it at once), the train/val datasets and the
    epoch batch sampler."""
    cache = (build_cache(cfg.data.path, cfg.data.cache_dir, progress=sys.stderr.isatty()) if rank == 0
             else None)
    if cache is not None:
        cache.lowres(cfg.data.lowres)
    idist.barrier()
    cache = cache or build_cache(cfg.data.path, cfg.data.cache_dir)
    phot = bool(getattr(cfg.model, "photometry", False))  # model.photometry: the features ride in the batch
    train_ds, val_ds = (GalaxyDataset(cfg.data.path, split, task.resolution, cfg.data.preprocessing,
                                      with_lowres=task.with_lowres, cache=cache, with_photometry=phot,
                                      lowres_mode=cfg.data.lowres)
                        for split in ("train", "val"))
    sampler = EpochBatchSampler(len(train_ds), cfg.train.batch_size, seed=cfg.train.seed, rank=rank,
                                world_size=world)
    epoch_length = len(sampler)
    total = cfg.train.max_iterations or cfg.train.epochs * epoch_length
    return TrainData(cache, train_ds, val_ds, sampler, make_loader(train_ds, sampler, cfg.train.num_workers),
                     epoch_length, total, math.ceil(total / epoch_length))


def setup_model(cfg, task, train_ds, device, world: int, total: int):
    """The task's model (initialised from the data if the task says so) on ``device``, wrapped for DDP,
    with Adam and the linear LR schedule; returns ``(model, raw_model, optimizer, lr_scheduler)``."""
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
    raw_model = model.module if hasattr(model, "module") else model
    return model, raw_model, optimizer, lr_scheduler


class TrainStep:
    """The trainer's process function: one optimiser step on a batch, every random draw from
    :func:`iteration_generator` (augmentation included), under bf16 autocast where enabled."""

    def __init__(self, cfg, task, model, optimizer, device, rank: int, world: int):
        self.cfg, self.task, self.model, self.optimizer = cfg, task, model, optimizer
        self.device, self.rank, self.world = device, rank, world
        self.augment = ImageAugment()

    def __call__(self, engine: Engine, batch: dict) -> dict:
        cfg, model, device = self.cfg, self.model, self.device
        model.train()
        gen = iteration_generator(cfg.train.seed, engine.state.iteration, self.rank)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if cfg.data.augment:
            batch["image"] = self.augment(batch["image"].cpu(), train=True, generator=gen).to(device)
        with autocast_context(device, cfg.train.amp):
            loss = self.task.loss(model, batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), "batch_size": batch["image"].shape[0] * self.world}


def attach_ema(trainer: Engine, raw_model, cfg, to_save: dict):
    """EMA of the weights (``train.ema_decay``; None = off), registered in ``to_save``; returns the EMA
    model or None."""
    if cfg.train.ema_decay is None:
        return None
    momentum = 1.0 - cfg.train.ema_decay
    warm = cfg.train.ema_warmup
    ema = EMAHandler(raw_model, momentum=momentum, momentum_warmup=min(0.5, 50 * momentum) if warm else None,
                     warmup_iters=warm or None)
    ema.attach(trainer, name="ema_momentum", event=Events.ITERATION_COMPLETED)
    to_save["ema_model"] = ema.ema_model
    to_save["ema_state"] = EMAState(ema)
    return ema.ema_model


class Checkpointer:
    """Writes the run's checkpoints (rank 0): ``last.pt`` first, then its copies, so ``best.pt`` is never
    ahead of the ``last.pt`` that records it; keeps ``run.n_saved`` numbered checkpoints."""

    def __init__(self, to_save: dict, out_dir: Path, n_saved: int, rank: int):
        self.to_save, self.out_dir, self.n_saved, self.rank = to_save, out_dir, n_saved, rank

    def save(self, it: int, numbered: bool, is_best: bool) -> None:
        if self.rank != 0:
            return
        last = self.out_dir / "last.pt"
        save_checkpoint({k: v.state_dict() for k, v in self.to_save.items()}, last)
        if numbered:
            copy_file(last, self.out_dir / f"checkpoint_{it:07d}.pt")
            prune_checkpoints(self.out_dir, self.n_saved)
        if is_best:
            copy_file(last, self.out_dir / "best.pt")


class ValidateCheckpointStop:
    """Iteration handler: validate every ``run.validate_every`` iterations (and at the end), fire
    ``TrainEvents.VALIDATION_COMPLETED`` with the metrics in ``engine.state.metrics``, save on improvement,
    at ``run.checkpoint_every`` and at the end, and stop at ``total`` or ``stop_iteration``."""

    def __init__(self, cfg, task, eval_model, val_ds, device, best: BestState, checkpointer: Checkpointer,
                 out_dir: Path, rank: int, total: int, stop_iteration: int | None, recalibrate=None):
        self.cfg, self.task, self.eval_model, self.val_ds, self.device = cfg, task, eval_model, val_ds, device
        self.best, self.checkpointer, self.out_dir, self.rank = best, checkpointer, out_dir, rank
        self.total, self.stop_iteration = total, stop_iteration
        self.recalibrate = recalibrate or (lambda: None)

    def validate(self, engine: Engine) -> bool:
        cfg, it = self.cfg, engine.state.iteration
        fig = None
        if self.rank == 0 and (it // cfg.run.validate_every) % max(cfg.validation.figure_every, 1) == 0:
            fig = self.out_dir / f"samples_{it:07d}.png"
        self.recalibrate()   # the EMA weights' own BatchNorm statistics (kept in the checkpoint saved next)
        metrics = self.task.validate(self.eval_model, self.val_ds, cfg, self.device, figure=fig)
        engine.state.metrics = dict(metrics)
        engine.fire_event(TrainEvents.VALIDATION_COMPLETED)
        improved = self.best.improves(metrics[self.task.score_name])
        if improved:
            self.best.score, self.best.iteration = float(metrics[self.task.score_name]), it
        return improved

    def __call__(self, engine: Engine) -> None:
        cfg, it = self.cfg, engine.state.iteration
        stop = it >= self.total or (self.stop_iteration is not None and it >= self.stop_iteration)
        improved = False
        if it % cfg.run.validate_every == 0 or it >= self.total:
            improved = self.validate(engine)
        if improved or stop or it % cfg.run.checkpoint_every == 0:
            self.checkpointer.save(it, numbered=stop or it % cfg.run.checkpoint_every == 0, is_best=improved)
        if stop:
            engine.terminate()


def batchnorm_recalibration(cfg, eval_model, cache, device):
    """A callable that re-estimates ``eval_model``'s BatchNorm statistics (models/batchnorm.py) on
    ``validation.batchnorm_images`` training images before each validation: the EMA weights otherwise carry
    the trained model's running statistics. The images and photometry come from the survey cache the run
    trains on (already standardised with its band statistics), read once on first use; every call draws the
    same augmentation (seeded by train.seed), so it is deterministic and identical on every DDP rank. A no-op
    for 0 or a model without BatchNorm. Used for the EMA model only (``train.ema_decay`` set)."""
    import numpy as np

    from models.batchnorm import batchnorm_layers, recalibrate_batchnorm

    n = cfg.validation.batchnorm_images
    if not n or not batchnorm_layers(eval_model):
        return lambda: None
    held = []
    phot = getattr(eval_model, "photometry", None) is not None

    def run():
        if not held:
            train = cache.indices("train")
            rng = np.random.default_rng(cfg.train.seed)
            rows = np.sort(rng.choice(train, min(n, train.size), replace=False))
            for s in range(0, rows.size, 64):
                r = rows[s:s + 64]
                ph = torch.from_numpy(np.asarray(cache.photometry[r], dtype=np.float32)) if phot else None
                held.append((torch.from_numpy(np.asarray(cache.images[r], dtype=np.float32)), ph))
        gen, aug = torch.Generator().manual_seed(cfg.train.seed), ImageAugment()
        recalibrate_batchnorm(eval_model, ((aug(x, train=True, generator=gen).to(device),
                                            None if p is None else p.to(device)) for x, p in held))
    return run


def attach_logging(trainer: Engine, cfg, rank: int, out_dir: Path, optimizer, total: int):
    """metrics.csv, TensorBoard (``run.tensorboard``: by default whenever it is installed), progress and
    validation lines, on rank 0 (training/run_logs.py); returns the TensorBoard logger or None."""
    if rank != 0:
        return None
    label = f"{cfg.name}_{cfg.train.stage}"
    MetricsCSVHandler(out_dir / "metrics.csv", optimizer, cfg.run.log_every).attach(trainer)
    tb = None
    if cfg.run.tensorboard is not False:
        tb = attach_tensorboard(trainer, out_dir / "tb", optimizer, cfg.run.log_every,
                                quiet=cfg.run.tensorboard is None)
    attach_progress(trainer, label, cfg.run.log_every, total)
    trainer.add_event_handler(TrainEvents.VALIDATION_COMPLETED, print_validation(label))
    return tb


def resume(ckpt: dict, to_save: dict, cfg, out_dir: Path, best: BestState, trainer: Engine, data: TrainData,
           rank: int) -> None:
    """Load ``last.pt`` into the training objects and repair ``best.pt`` if a kill left it behind."""
    restore(ckpt, to_save, cfg, out_dir / "last.pt", data.epoch_length, data.total)
    if rank != 0:
        return
    if "best" not in ckpt:
        print(f"{out_dir / 'last.pt'}: has no best-score record (older checkpoint): the next "
              "validation replaces best.pt", flush=True)
    else:
        _reconcile_best(out_dir, best, trainer.state.iteration)
    print(f"resumed {out_dir} at iteration {trainer.state.iteration}", flush=True)


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
    data = setup_data(cfg, task, rank, world)
    model, raw_model, optimizer, lr_scheduler = setup_model(cfg, task, data.train_ds, device, world,
                                                            data.total)

    trainer = Engine(TrainStep(cfg, task, model, optimizer, device, rank, world))
    register_train_events(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED, lr_scheduler)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(lambda out: out["loss"]))

    @trainer.on(Events.EPOCH_STARTED)
    def _set_data_order(engine):
        data.sampler.set_epoch(engine.state.epoch)
        data.sampler.skip(engine.state.iteration - (engine.state.epoch - 1) * data.epoch_length)

    best = BestState(task.score_sign)
    to_save = {"model": raw_model, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer,
               "best": best}
    ema_model = attach_ema(trainer, raw_model, cfg, to_save)
    meta = data.cache.meta
    to_save["run"] = RunState(cfg, task.kind, {"band_mean": meta["band_mean"], "band_std": meta["band_std"],
                                               "resolution": task.resolution, "stage": cfg.train.stage,
                                               "survey_version": meta.get("survey_version", "")}, history)
    eval_model = ema_model if ema_model is not None else raw_model
    # logging first: the rows of iteration k are in metrics.csv before the checkpoint of iteration k
    tb = attach_logging(trainer, cfg, rank, out_dir, optimizer, data.total)
    checkpointer = Checkpointer(to_save, out_dir, cfg.run.n_saved, rank)
    # only the EMA model: the trained one keeps its own statistics (and, under DDP, its buffer tensors)
    recalibrate = batchnorm_recalibration(cfg, ema_model, data.cache, device) if ema_model is not None \
        else (lambda: None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, ValidateCheckpointStop(
        cfg, task, eval_model, data.val_ds, device, best, checkpointer, out_dir, rank, data.total,
        stop_iteration, recalibrate))
    if ckpt is not None:
        resume(ckpt, to_save, cfg, out_dir, best, trainer, data, rank)
    try:
        if trainer.state.iteration >= data.total:
            if rank == 0:
                print(f"{out_dir}: already trained to iteration {trainer.state.iteration} (>= {data.total})")
            recalibrate()
            metrics = task.validate(eval_model, data.val_ds, cfg, device, figure=None)
        else:
            trainer.run(data.loader, max_epochs=data.max_epochs, epoch_length=data.epoch_length)
            metrics = dict(trainer.state.metrics)
    finally:
        if tb is not None:
            tb.close()
    _finish(raw_model, world, rank, out_dir, trainer.state.iteration, metrics)
    return metrics


def _finish(raw_model, world: int, rank: int, out_dir: Path, iteration: int, metrics: dict) -> None:
    if world > 1:  # end with rank 0's BatchNorm statistics everywhere (what its checkpoint holds)
        for buf in raw_model.buffers():
            buf.copy_(idist.broadcast(buf, src=0))
        # DDP keeps the replicas identical; record how far they drifted (0.0 when healthy), so that a broken
        # all-reduce shows up in final_metrics.json instead of silently training `world` different models
        metrics = {**metrics, "ddp_max_weight_diff": _replica_drift(raw_model)}
    if rank == 0:
        write_text(out_dir / "final_metrics.json", json.dumps({"iteration": iteration, **metrics}, indent=1))


def _replica_drift(model: torch.nn.Module) -> float:
    """Largest |w - w_rank0| over all parameters and ranks (collective: every rank must call it)."""
    drift = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        ref = idist.broadcast(p.detach().clone(), src=0)
        drift = torch.maximum(drift, (p.detach() - ref).abs().max().double().cpu())
    return float(idist.all_reduce(drift, op="MAX"))
