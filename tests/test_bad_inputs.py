"""Bad inputs across every CLI: one line on stderr naming the file/field/value, exit status 2, no traceback,
nothing written or changed (issue #11 items 5-7; the table in docs/BAD_INPUTS.md is made from these cases).

Each case prepares its inputs in a fresh directory, snapshots that directory and the shared fixtures
(survey, tiny checkpoints, a results file, half-finished generation parts), runs the CLI's ``main(argv)``
in-process (a few through a real subprocess), and checks the exit status, the one stderr line and that no
file appeared, vanished or changed. ``GALSPEC_BAD_INPUTS_LOG=<file>`` appends every case's message as JSON
lines (``scripts/bad_inputs_doc.py`` turns them into docs/BAD_INPUTS.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from tests.synthetic import write_synthetic_survey
from tests.test_training import TINY_CONTRASTIVE, TINY_DIFFUSION

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------
# shared fixtures: built once per session
# ----------------------------------------------------------------------------------------------------------
def _sets(argv, sets):
    for s in sets:
        argv += ["--set", s]
    return argv


def _train(kind, out, tiny, survey, cache, extra=()):
    from training.cli import main
    argv = _sets(["--threads", "1", "--stop-iteration", "1"],
                 tiny + [f"data.path={survey}", f"run.out_dir={out}", f"data.cache_dir={cache}",
                         "train.max_iterations=50", "run.checkpoint_every=25", "run.validate_every=50",
                         *extra])
    assert main(kind, argv) == 0   # stops after 1 iteration with last.pt, before any validation


def _gen_sets(env, out, extra=()):
    return ([f"generate.checkpoints.{k}={v}" for k, v in env.ck.items()] + TINY_DIFFUSION
            + [f"data.path={env.survey}", f"generate.output={out}", "generate.sampler=ddim",
             "generate.steps=2",
               "generate.batch_galaxies=2", "generate.chunk_galaxies=2", "generate.split=test",
               "generate.limit=4", "generate.figure=null", *extra])


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """A 64-galaxy survey (and a same-size survey of other galaxies with the same ids), four tiny
    checkpoints, a generated results file and the parts of an interrupted generation."""
    from datasets.galaxy import build_cache
    from generation.cli import main as generate_main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_inputs_env")
    e = SimpleNamespace(root=root, survey=write_synthetic_survey(root / "survey.h5", n=64, seed=0),
                        other=write_synthetic_survey(root / "other.h5", n=64, seed=1), cache=root / "cache")
    build_cache(e.survey, e.cache)
    e.ck = {}
    for kind, tiny in (("contrastive", TINY_CONTRASTIVE), ("generative", TINY_DIFFUSION)):
        for stage in ("lr", "sr"):
            out = root / f"{kind}_{stage}"
            _train(kind, out, tiny, e.survey, e.cache, [f"train.stage={stage}"])
            e.ck[("diffusion_" if kind == "generative" else "contrastive_") + stage] = str(out / "last.pt")
    e.results = root / "results.fits"
    assert generate_main(_sets(["--threads", "1"], _gen_sets(e, e.results))) == 0
    # an interrupted run: one finished chunk of two in results_b.fits.parts/
    e.partial = root / "partial.fits"
    assert generate_main(_sets(["--threads", "1", "--stop-after-chunks", "1"], _gen_sets(e, e.partial))) == 0
    assert (root / "partial.fits.parts" / "part_000000.npz").exists()
    # the same diffusion_lr model, re-saved: other bytes (as a retrained checkpoint would have)
    ck = torch.load(e.ck["diffusion_lr"], map_location="cpu", weights_only=False)
    ck["run"]["note"] = "re-saved"
    e.other_ck = root / "diffusion_lr_other.pt"
    torch.save(ck, e.other_ck)
    torch.set_num_threads(before)
    return e


# ----------------------------------------------------------------------------------------------------------
# file-making helpers
# ----------------------------------------------------------------------------------------------------------
def _survey_copy(env, d, name="bad.h5"):
    p = d / name
    shutil.copyfile(env.survey, p)
    return p


def _edit(env, d, fn, name="bad.h5"):
    p = _survey_copy(env, d, name)
    with h5py.File(p, "r+") as f:
        fn(f)
    return p


def _text(d, name, text="this is not what it claims to be\n"):
    p = d / name
    p.write_text(text)
    return p


def _truncated(env, d):
    p = d / "truncated.h5"
    data = Path(env.survey).read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _images_h5(d, fill=None, shape=(4, 5, 64, 64), extra=None):
    p = d / "images.h5"
    with h5py.File(p, "w") as g:
        g["images"] = np.random.default_rng(0).normal(size=shape).astype(np.float32) if fill is None else fill
        for k, v in (extra or {}).items():
            g[k] = v
    return p


def _set_attr(key, value):
    def fn(f):
        f.attrs[key] = value
    return fn


def _del_attr(key):
    def fn(f):
        del f.attrs[key]
    return fn


def _replace(key, value):
    def fn(f):
        del f[key]
        f[key] = value
    return fn


def _fill(key, value, rows=slice(None)):
    def fn(f):
        a = f[key][:]
        a[rows] = value
        f[key][:] = a
    return fn


def _catalog_as_dataset(f):
    del f["catalog"]
    f["catalog"] = np.zeros(3)


def _results_without(env, d, column):
    from utils.results_fits import read_spectra_fits, write_spectra_fits
    r = read_spectra_fits(env.results)
    r["spectra"].pop(column, None)
    r["table"].pop(column, None)
    p = d / "cut.fits"
    write_spectra_fits(p, r["table"], r["spectra"], r["wave"], header=r["header"])
    return p


def _results_header(env, d, **changes):
    from utils.results_fits import read_spectra_fits, write_spectra_fits
    r = read_spectra_fits(env.results)
    r["header"].update(changes)
    for c in ("ra", "dec"):
        r["table"].pop(c)
    p = d / "hdr.fits"
    write_spectra_fits(p, r["table"], r["spectra"], r["wave"], header=r["header"])
    return p


# ----------------------------------------------------------------------------------------------------------
# argv builders
# ----------------------------------------------------------------------------------------------------------
def T(env, d, extra=(), survey=None, tiny=TINY_CONTRASTIVE, flags=()):
    """Training argv on the shared survey (its prebuilt cache) or on ``survey``."""
    sets = list(tiny) + [f"data.path={survey or env.survey}", f"run.out_dir={d / 'run'}",
                         "train.max_iterations=2"]
    if survey is None:
        sets.append(f"data.cache_dir={env.cache}")
    return _sets(["--threads", "1", *flags], sets + list(extra))


def G(env, d, extra=(), flags=(), out=None):
    return _sets(["--threads", "1", *flags], _gen_sets(env, out or d / "gen.fits", extra))


def E(env, d, *flags, results=None):
    return ["--results", str(results or env.results), "--out-dir", str(d / "figs"), "--report",
            str(d / "report"), "--max-fit", "0", "--no-retrieval", *flags]


def M(d, *flags, out=None):
    return ["--n", "40", "--n-val", "4", "--out", str(out or d / "mock.h5"), *flags]


def _catalog_csv(d, header="specObjID,objID\n1,2\n"):
    return _text(d, "cat.csv", header)


def _ck_other(env, role):
    return [f"generate.checkpoints.{role}={env.other_ck}"]


# ----------------------------------------------------------------------------------------------------------
# the cases: (id, cli, description, make(env, d) -> argv, substrings of the one error line, subprocess?)
# ----------------------------------------------------------------------------------------------------------
CASES = [
    # --- configuration and --set (training CLIs)
    ("set-unclosed-list", "contrastive", "`--set 'train.lr=[1'` (malformed YAML value)",
     lambda e, d: T(e, d, ["train.lr=[1"]), ["train.lr", "'[1'", "not valid YAML"], False),
    ("set-no-equals", "contrastive", "`--set train.lr` without a value",
     lambda e, d: T(e, d, ["train.lr"]), ["train.lr", "expected key=value"], False),
    ("set-empty-key", "contrastive", "`--set =3`", lambda e, d: T(e, d, ["=3"]), ["'=3'", "key"], False),
    ("set-unknown-key", "contrastive", "`--set train.bogus=1`",
     lambda e, d: T(e, d, ["train.bogus=1"]), ["train.bogus", "unknown key"], False),
    ("set-wrong-type", "contrastive", "`--set train.batch_size=abc`",
     lambda e, d: T(e, d, ["train.batch_size=abc"]), ["train.batch_size", "'abc'", "integer"], False),
    ("lr-negative", "contrastive", "train.lr = -1", lambda e, d: T(e, d, ["train.lr=-1"]),
     ["train.lr", "-1", "> 0"], False),
    ("lr-nan", "contrastive", "train.lr = .nan", lambda e, d: T(e, d, ["train.lr=.nan"]),
     ["train.lr", "nan", "finite"], False),
    ("weight-decay-negative", "contrastive", "train.weight_decay = -0.1",
     lambda e, d: T(e, d, ["train.weight_decay=-0.1"]), ["train.weight_decay", "-0.1"], False),
    ("stage-bogus", "contrastive", "train.stage = mid", lambda e, d: T(e, d, ["train.stage=mid"]),
     ["train.stage", "'mid'"], False),
    ("encoder-bogus", "contrastive", "model.image_encoder = resnet99",
     lambda e, d: T(e, d, ["model.image_encoder=resnet99"]), ["model.image_encoder", "resnet99"], False),
    ("config-missing", "contrastive", "`--config` file does not exist",
     lambda e, d: T(e, d, flags=["--config", str(d / "nope.yml")]),
      ["nope.yml", "file: does not exist"], False),
    ("config-bad-yaml", "contrastive", "`--config` file is not YAML",
     lambda e, d: T(e, d, flags=["--config", str(_text(d, "c.yml", "train: [1\n"))]),
     ["c.yml", "not valid YAML"], False),
    ("preset-unknown", "contrastive", "`--preset nope`", lambda e, d: T(e, d, flags=["--preset", "nope"]),
     ["presets.nope", "no such preset"], False),
    ("stage-flag-bogus", "contrastive", "`--stage xx` (argparse)", lambda e, d: T(e, d, flags=["--stage",
     "xx"]),
     ["--stage", "'xx'"], False),
    ("nproc-zero", "contrastive", "`--nproc 0`", lambda e, d: T(e, d, flags=["--nproc", "0"]),
     ["--nproc", "0"], False),
    ("threads-not-int", "baseline", "`--threads abc` (argparse)", lambda e, d: ["--threads", "abc"],
     ["--threads", "'abc'"], False),
    ("validation-sampler-bogus", "generative", "validation.sampler = bogus (was a KeyError hours in)",
     lambda e, d: T(e, d, ["validation.sampler=bogus"], tiny=TINY_DIFFUSION),
     ["validation.sampler", "'bogus'"], False),
    ("validation-steps-zero", "generative", "validation.steps = 0",
     lambda e, d: T(e, d, ["validation.steps=0"], tiny=TINY_DIFFUSION), ["validation.steps", "0"], False),
    ("validation-alpha-bar", "generative", "validation.alpha_bar_min = 1.5",
     lambda e, d: T(e, d, ["validation.alpha_bar_min=1.5"], tiny=TINY_DIFFUSION),
     ["validation.alpha_bar_min", "1.5"], False),
    ("attn-level-out-of-range", "generative", "model.attn_levels = [9]",
     lambda e, d: T(e, d, ["model.attn_levels=[9]"], tiny=TINY_DIFFUSION), ["model.attn_levels", "9"], False),
    ("base-not-multiple-of-8", "generative", "model.base = 12",
     lambda e, d: T(e, d, ["model.base=12"], tiny=TINY_DIFFUSION), ["model.base", "12"], False),
    ("ema-decay-out-of-range", "generative", "train.ema_decay = 1.5",
     lambda e, d: T(e, d, ["train.ema_decay=1.5"], tiny=TINY_DIFFUSION), ["train.ema_decay", "1.5"], False),
    ("checkpoint-every-zero", "generative", "run.checkpoint_every = 0",
     lambda e, d: T(e, d, ["run.checkpoint_every=0"], tiny=TINY_DIFFUSION), ["run.checkpoint_every", "0"],
     False),
    ("epochs-zero", "baseline", "train.epochs = 0", lambda e, d: T(e, d, ["train.epochs=0"], tiny=[]),
     ["train.epochs", "0"], False),
    ("out-dir-placeholder", "baseline", "run.out_dir = runs/{bogus}",
     lambda e, d: _sets(["--threads", "1"], [f"data.path={e.survey}", "run.out_dir=runs/{bogus}"]),
     ["run.out_dir", "{bogus}"], False),
    # --- the survey file (training CLIs)
    ("survey-missing", "contrastive", "data.path does not exist",
     lambda e, d: T(e, d, survey=d / "none.h5"), ["none.h5", "file: does not exist"], False),
    ("survey-not-hdf5", "contrastive", "data.path is a text file",
     lambda e, d: T(e, d, survey=_text(d, "s.h5")), ["s.h5", "file: not a readable HDF5"], False),
    ("survey-truncated", "generative", "data.path truncated to a third",
     lambda e, d: T(e, d, survey=_truncated(e, d), tiny=TINY_DIFFUSION), ["truncated.h5", "file:"], False),
    ("schema-version-garbage", "contrastive", "damaged metadata: attrs/schema_version = 'abc'",
     lambda e, d: T(e, d, survey=_edit(e, d, _set_attr("schema_version", "abc"))),
     ["bad.h5", "attrs/schema_version", "abc"], False),
    ("n-galaxies-missing", "contrastive", "damaged metadata: attrs/n_galaxies deleted",
     lambda e, d: T(e, d, survey=_edit(e, d, _del_attr("n_galaxies"))), ["bad.h5", "attrs/n_galaxies",
                                                                          "missing"], False),
    ("schema-name-wrong", "baseline", "attrs/schema = 'other'",
     lambda e, d: T(e, d, survey=_edit(e, d, _set_attr("schema", "other")), tiny=[]),
     ["bad.h5", "attrs/schema", "'other'"], False),
    ("catalog-not-a-group", "contrastive", "damaged metadata: /catalog is a dataset",
     lambda e, d: T(e, d, survey=_edit(e, d, _catalog_as_dataset)), ["bad.h5", "catalog", "Dataset"], False),
    ("catalog-ra-short", "contrastive", "catalog/ra has 10 rows of 64",
     lambda e, d: T(e, d, survey=_edit(e, d, _replace("catalog/ra", np.zeros(10)))),
     ["bad.h5", "catalog/ra", "64"], False),
    ("split-code-bogus", "contrastive", "split holds the value 7",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("split", 7, slice(0, 1)))),
      ["bad.h5", "split", "7"], False),
    ("image-nan", "contrastive", "a NaN pixel in the images",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("images", np.nan, (3, 1, 5, 5)))),
     ["bad.h5", "images", "row 3", "NaN"], False),
    ("ivar-negative", "contrastive", "spectra/ivar = -1 everywhere (was silently accepted)",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("spectra/ivar", -1.0))),
     ["bad.h5", "spectra/ivar", "row 0", "negative", "-1"], False),
    ("images-all-zero", "contrastive", "all-zero images (band std 1e-15 was stored in the checkpoint)",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("images", 0.0))), ["bad.h5", "images", "band 'u'", "std"],
     False),
    ("band-constant", "generative", "the z band constant (=1) in every image",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("images", 1.0, (slice(None), 4))), tiny=TINY_DIFFUSION),
     ["bad.h5", "images", "band 'z'"], False),
    ("batch-larger-than-split", "contrastive", "train.batch_size = 100 (> 48 training galaxies)",
     lambda e, d: T(e, d, ["train.batch_size=100"]), ["train.batch_size", "100", "48"], False),
    ("cache-dir-is-file", "contrastive", "data.cache_dir is a file",
     lambda e, d: T(e, d, ["data.cache_dir=" + str(_text(d, "cachefile"))], survey=_survey_copy(e, d)),
     ["data.cache_dir", "cachefile", "is a file"], False),
    ("out-dir-parent-file", "contrastive", "run.out_dir inside a file",
     lambda e, d: T(e, d, ["run.out_dir=" + str(_text(d, "f") / "run")]),
      ["run.out_dir", "is a file"], False),
    # --- resuming (training CLIs), pointed at the shared checkpoints' run directories
    ("resume-changed-shapes", "contrastive", "resume with model.latent_dim 16 -> 32 (was a traceback)",
     lambda e, d: T(e, d, ["model.latent_dim=32", f"run.out_dir={e.root / 'contrastive_lr'}"]),
     ["contrastive_lr/last.pt", "model.latent_dim", "16", "32"], False),
    ("resume-changed-stage-data", "generative", "resume with data.preprocessing log -> none",
     lambda e, d: T(e, d, ["data.preprocessing=none", f"run.out_dir={e.root / 'generative_lr'}"],
                    tiny=TINY_DIFFUSION), ["generative_lr/last.pt", "data.preprocessing", "'log'", "'none'"],
     False),
    ("resume-changed-lowres", "generative", "resume with data.lowres subsample -> bin",
     lambda e, d: T(e, d, ["data.lowres=bin", f"run.out_dir={e.root / 'generative_lr'}"],
                    tiny=TINY_DIFFUSION), ["generative_lr/last.pt", "data.lowres", "'subsample'", "'bin'"],
     False),
    ("lowres-mode-bogus", "generative", "data.lowres = median",
     lambda e, d: T(e, d, ["data.lowres=median"], tiny=TINY_DIFFUSION), ["data.lowres", "'median'"], False),
    ("resume-other-kind", "generative", "run.out_dir holds a contrastive run",
     lambda e, d: T(e, d, [f"run.out_dir={e.root / 'contrastive_lr'}"], tiny=TINY_DIFFUSION),
     ["contrastive_lr/last.pt", "run.kind", "'contrastive'"], False),
    ("resume-corrupt-checkpoint", "contrastive", "last.pt is garbage",
     lambda e, d: T(e, d, [f"run.out_dir={_text(_mkdir(d, 'run'), 'last.pt').parent}"]),
     ["last.pt", "not a readable torch checkpoint"], False),
    ("encoder-init-missing", "generative", "model.image_encoder_init names a missing file",
     lambda e, d: T(e, d, [f"model.image_encoder_init={d / 'enc.pt'}"], tiny=TINY_DIFFUSION),
     ["enc.pt", "does not exist"], False),
    ("encoder-init-wrong-kind", "generative", "model.image_encoder_init names a diffusion checkpoint",
     lambda e, d: T(e, d, [f"model.image_encoder_init={e.root / 'generative_lr' / 'last.pt'}"],
                    tiny=TINY_DIFFUSION), ["generative_lr/last.pt", "run.kind", "'diffusion'"], False),
    ("prediction-bogus", "generative", "model.prediction = score",
     lambda e, d: T(e, d, ["model.prediction=score"], tiny=TINY_DIFFUSION), ["model.prediction", "'score'"],
     False),
    ("freeze-random-encoder", "generative", "model.freeze_image_encoder without an initialisation",
     lambda e, d: T(e, d, ["model.freeze_image_encoder=true"], tiny=TINY_DIFFUSION),
     ["model.freeze_image_encoder", "model.image_encoder_init"], False),
    # --- generate.py: config
    ("generate-limit-negative", "generate", "generate.limit = -35 (generated 265 of 300)",
     lambda e, d: G(e, d, ["generate.limit=-35"]), ["generate.limit", "-35"], False),
    ("generate-sampler-bogus", "generate", "generate.sampler = bogus",
     lambda e, d: G(e, d, ["generate.sampler=bogus"]), ["generate.sampler", "'bogus'"], False),
    ("generate-steps-zero", "generate", "generate.steps = 0", lambda e, d: G(e, d, ["generate.steps=0"]),
     ["generate.steps", "0"], False),
    ("generate-eta-wrong-sampler", "generate", "generate.eta = 0.5 with the ancestral sampler (ddim only)",
     lambda e, d: G(e, d, ["generate.sampler=ancestral", "generate.eta=0.5"]),
     ["generate.eta", "0.5", "not an option"], False),
    ("generate-eta-out-of-range", "generate", "generate.eta = 2 with ddim",
     lambda e, d: G(e, d, ["generate.sampler=ddim", "generate.eta=2"]),
     ["generate.eta", "2.0", "[0, 1]"], False),
    ("generate-keep-gt-n", "generate", "generate.keep_lowres = 5 > n_lowres = 3",
     lambda e, d: G(e, d, ["generate.keep_lowres=5"]), ["generate.keep_lowres", "5"], False),
    ("generate-split-bogus", "generate", "generate.split = everything",
     lambda e, d: G(e, d, ["generate.split=everything"]), ["generate.split", "'everything'"], False),
    ("generate-amp-bogus", "generate", "`--amp fp8` (argparse)", lambda e, d: G(e, d, flags=["--amp", "fp8"]),
     ["--amp", "'fp8'"], False),
    # --- generate.py: output paths
    ("generate-output-parent-file", "generate", "generate.output inside a file",
     lambda e, d: G(e, d, out=_text(d, "f") / "gen.fits"),
      ["gen.fits", "generate.output", "is a file"], False),
    ("generate-output-exists", "generate", "generate.output exists (was replaced without notice)",
     lambda e, d: G(e, d, out=_text(d, "old.fits")), ["old.fits", "already exists", "--overwrite"], False),
    ("generate-output-is-dir", "generate", "generate.output is a directory",
     lambda e, d: G(e, d, out=_mkdir(d, "dir.fits")), ["dir.fits", "is a directory"],
     False),
    ("generate-figure-parent-file", "generate", "generate.figure inside a file",
     lambda e, d: G(e, d, [f"generate.figure={_text(d, 'f') / 'fig.png'}"]), ["generate.figure", "is a file"],
     False),
    # --- generate.py: the input
    ("generate-input-missing", "generate", "`--input` does not exist",
     lambda e, d: G(e, d, flags=["--input", str(d / "none.h5")]), ["none.h5", "file: does not exist"], False),
    ("generate-input-corrupt", "generate", "`--input` is a text file",
     lambda e, d: G(e, d, flags=["--input", str(_text(d, "in.h5"))]),
      ["in.h5", "not a readable HDF5"], False),
    ("generate-input-truncated", "generate", "`--input` truncated to a third",
     lambda e, d: G(e, d, flags=["--input", str(_truncated(e, d))]), ["truncated.h5", "file"], False),
    ("generate-images-shape", "generate", "`--input` images of 3 bands",
     lambda e, d: G(e, d,
      ["generate.split=all"], flags=["--input", str(_images_h5(d, shape=(4, 3, 64, 64)))]),
     ["images.h5", "images: shape (4, 3, 64, 64)"], False),
    ("generate-images-group", "generate", "`--input` /images is a group",
     lambda e, d: G(e, d, ["generate.split=all"], flags=["--input", str(_grp(d))]),
     ["grp.h5", "images", "not a numeric dataset"], False),
    ("generate-split-missing", "generate", "`--input` without /split and generate.split = test",
     lambda e, d: G(e, d, flags=["--input", str(_images_h5(d))]), ["images.h5", "split: missing"], False),
    ("generate-catalog-short", "generate", "`--input` catalog/id shorter than the images",
     lambda e, d: G(e, d, ["generate.split=all"], flags=["--input", str(_images_h5(d, extra={
         "catalog/id": np.arange(2)}))]), ["images.h5", "catalog/id", "(4,)"], False),
    ("generate-ivar-negative", "generate", "`--input` survey with ivar = -1",
     lambda e, d: G(e, d, flags=["--input", str(_edit(e, d, _fill("spectra/ivar", -1.0)))]),
     ["bad.h5", "spectra/ivar", "negative"], False),
    # --- generate.py: checkpoints and resuming
    ("generate-checkpoint-missing", "generate", "a checkpoint file does not exist",
     lambda e, d: G(e, d, [f"generate.checkpoints.contrastive_lr={d / 'nope.pt'}"]),
     ["nope.pt", "file: does not exist"], False),
    ("generate-checkpoint-corrupt", "generate", "a checkpoint file is garbage",
     lambda e, d: G(e, d, [f"generate.checkpoints.contrastive_sr={_text(d, 'bad.pt')}"]),
     ["bad.pt", "not a readable torch checkpoint"], False),
    ("generate-checkpoint-wrong-stage", "generate", "the low-res diffusion checkpoint given as diffusion_sr",
     lambda e, d: G(e, d, [f"generate.checkpoints.diffusion_sr={e.ck['diffusion_lr']}"]),
     ["last.pt", "run.stage", "'lr'", "diffusion_sr"], False),
    ("generate-checkpoint-wrong-kind", "generate", "a contrastive checkpoint given as diffusion_lr",
     lambda e, d: G(e, d, [f"generate.checkpoints.diffusion_lr={e.ck['contrastive_lr']}"]),
     ["last.pt", "run.kind", "'contrastive'", "diffusion_lr"], False),
    ("generate-checkpoints-keys", "generate", "generate.checkpoints without contrastive_sr",
     lambda e, d: _sets(["--threads", "1"], [f"data.path={e.survey}", f"generate.output={d / 'g.fits'}",
                                              "generate.checkpoints={diffusion_lr: a.pt}"]),
     ["generate.checkpoints", "contrastive_sr"], False),
    ("generate-resume-other-checkpoint", "generate",
     "resume parts made by another checkpoint at the same role (galaxies 0-1 from the old model)",
     lambda e, d: G(e, d, _ck_other(e, "diffusion_lr"), out=e.partial),
     ["partial.fits.parts", "checkpoints.diffusion_lr", "sha256", "diffusion_lr_other.pt",
      "--overwrite"], False),
    ("generate-resume-other-seed", "generate", "resume parts made with generate.seed 0, now 1",
     lambda e, d: G(e, d, ["generate.seed=1"], out=e.partial),
     ["partial.fits.parts", "generate.seed", "0", "1"], False),
    ("generate-resume-other-input", "generate", "resume parts made from another input file",
     lambda e, d: G(e, d, [f"data.path={e.other}"], out=e.partial),
     ["partial.fits.parts", "input", "other.h5"], False),
    # --- evaluate.py
    ("evaluate-results-missing", "evaluate", "`--results` does not exist",
     lambda e, d: E(e, d, results=d / "none.fits"), ["none.fits", "file: does not exist"], False),
    ("evaluate-results-not-fits", "evaluate", "`--results` is a text file",
     lambda e, d: E(e, d, results=_text(d, "r.fits")), ["r.fits", "not a readable FITS"], False),
    ("evaluate-results-no-flux-obs", "evaluate", "results without the flux_obs column",
     lambda e, d: E(e, d, results=_results_without(e, d, "flux_obs")), ["cut.fits", "flux_obs", "missing"],
     False),
    ("evaluate-other-survey", "evaluate",
     "results checked against another survey of the same size and ids (gave sigma_NMAD 0.034)",
     lambda e, d: E(e, d, "--survey", str(e.other)), ["results.fits", "ra", "other.h5", "mismatched"], False),
    ("evaluate-fingerprint", "evaluate",
     "results without ra/dec whose catalogue fingerprint is another survey's",
     lambda e, d: E(e, d, "--survey", str(e.other), results=_results_header(e, d)),
     ["hdr.fits", "input_catalog_sha256", "other.h5"], False),
    ("evaluate-survey-missing", "evaluate", "`--survey` does not exist",
     lambda e, d: E(e, d, "--survey", str(d / "none.h5")), ["none.h5", "survey does not exist"], False),
    ("evaluate-survey-corrupt", "evaluate", "`--survey` is a text file",
     lambda e, d: E(e, d, "--survey", str(_text(d, "s.h5"))), ["s.h5", "not a readable HDF5"], False),
    ("evaluate-survey-damaged", "evaluate", "`--survey` with catalog/ra deleted",
     lambda e, d: E(e, d, "--survey", str(_edit(e, d, lambda f: f.__delitem__("catalog/ra")))),
     ["bad.h5", "catalog/ra", "missing"], False),
    ("evaluate-report-exists", "evaluate", "<report>.json exists (was replaced without notice)",
     lambda e, d: (_text(d, "report.json"), E(e, d))[1], ["report.json", "already exists", "--overwrite"],
     False),
    ("evaluate-out-dir-file", "evaluate", "`--out-dir` is a file",
     lambda e, d: E(e, d)[:2] + ["--out-dir", str(_text(d, "figs")), "--report", str(d / "rep")],
     ["figs", "--out-dir", "is a file"], False),
    ("evaluate-max-fit-negative", "evaluate", "`--max-fit -1`", lambda e, d: E(e, d) + ["--max-fit", "-1"],
     ["--max-fit", "-1"], False),
    ("evaluate-workers-zero", "evaluate", "`--workers 0`", lambda e, d: E(e, d, "--workers", "0"),
     ["--workers", "0"], False),
    ("evaluate-baseline-missing", "evaluate", "`--baselines` names a missing checkpoint",
     lambda e, d: E(e, d, "--baselines", str(d / "cnn.pt")),
      ["cnn.pt", "--baselines", "does not exist"], False),
    ("evaluate-max-fit-not-int", "evaluate", "`--max-fit lots` (argparse)",
     lambda e, d: E(e, d, "--max-fit", "lots"), ["--max-fit", "'lots'"], False),
    # --- surveys/mock/make.py
    ("mock-n-zero", "make_mock", "`--n 0`", lambda e, d: ["--n", "0", "--out", str(d / "m.h5")], ["--n", "0"],
     False),
    ("mock-n-not-int", "make_mock", "`--n many`", lambda e, d: ["--n", "many"], ["--n", "'many'"], False),
    ("mock-test-fraction", "make_mock", "`--test-fraction 1.5`", lambda e, d: M(d, "--test-fraction", "1.5"),
     ["--test-fraction", "1.5"], False),
    ("mock-split-too-big", "make_mock", "`--n 40 --n-val 512`",
     lambda e, d: ["--n", "40", "--out", str(d / "m.h5")], ["--n", "40", "512"], False),
    ("mock-compression", "make_mock", "`--compression zip` (argparse)", lambda e, d: M(d, "--compression",
     "zip"),
     ["--compression", "'zip'"], False),
    ("mock-out-parent-file", "make_mock", "`--out` inside a file", lambda e, d: M(d, out=_text(d,
     "f") / "m.h5"),
     ["m.h5", "--out", "is a file"], False),
    ("mock-out-exists", "make_mock", "`--out` exists (was replaced without notice)",
     lambda e, d: M(d, out=_text(d, "m.h5")), ["m.h5", "already exists", "--overwrite"], False),
    ("mock-workers-zero", "make_mock", "`--workers 0`", lambda e, d: M(d, "--workers", "0"),
     ["--workers", "0"],
     False),
    # --- the SDSS route CLI (python -m surveys.sdss)
    ("sdss-no-subcommand", "sdss", "no subcommand", lambda e, d: [], ["required", "cmd"], False),
    ("sdss-release", "sdss", "`sql --release DR99`", lambda e, d: ["sql", "--release", "DR99"],
     ["--release", "'DR99'"], False),
    ("sdss-catalog-missing", "sdss", "`build --catalog` does not exist",
     lambda e, d: ["build", "--catalog", str(d / "c.csv"), "--data", str(d), "--out", str(d / "s.h5")],
     ["c.csv", "file: does not exist"], False),
    ("sdss-catalog-columns", "sdss", "catalogue CSV without the required columns",
     lambda e, d: ["build", "--catalog", str(_catalog_csv(d)), "--data", str(d), "--out", str(d / "s.h5")],
     ["cat.csv", "column", "missing"], False),
    ("sdss-build-out-exists", "sdss", "`build --out` exists",
     lambda e, d: ["build", "--catalog", str(_catalog_csv(d)), "--data", str(d), "--out",
                   str(_text(d, "s.h5"))], ["s.h5", "--out", "already exists"], False),
    ("sdss-build-out-parent-file", "sdss", "`import-pasquet --out` inside a file",
     lambda e, d: ["import-pasquet", "--catalog", str(_catalog_csv(d)), "--data", str(d), "--npz", "x.npz",
                   "--out", str(_text(d, "f") / "s.h5")], ["s.h5", "--out", "is a file"], False),
    ("sdss-predictions-missing", "sdss", "`results-to-fits --predictions` does not exist",
     lambda e, d: ["results-to-fits", "--predictions", str(d / "p.h5"), "--survey", str(e.survey), "--out",
                   str(d / "r.fits")], ["p.h5", "file: does not exist"], False),
    # --- a few through a real subprocess (the scripts' own entry points)
    ("sub-train-set-malformed", "contrastive", "`train_contrastive.py --set 'train.lr=[1'` as a process",
     lambda e, d: T(e, d, ["train.lr=[1"]), ["train.lr", "'[1'"], True),
    ("sub-evaluate-other-survey", "evaluate", "`evaluate.py` against another survey, as a process",
     lambda e, d: E(e, d, "--survey", str(e.other)), ["ra", "other.h5"], True),
    ("sub-mock-out-exists", "make_mock", "`python -m surveys.mock.make` onto an existing file, as a process",
     lambda e, d: M(d, out=_text(d, "m.h5")), ["m.h5", "already exists"], True),
    ("baseline-ivar-negative", "baseline", "`train_baseline.py` on ivar = -1 in one pixel of row 5",
     lambda e, d: T(e, d, survey=_edit(e, d, _fill("spectra/ivar", -1.0, (5, 100))), tiny=[]),
     ["bad.h5", "spectra/ivar", "row 5", "negative", "1 pixels"], False),
]


def _mkdir(d, name):
    p = d / name
    p.mkdir()
    return p


def _grp(d):
    p = d / "grp.h5"
    with h5py.File(p, "w") as g:
        g.create_group("images")
    return p


SCRIPTS = {"contrastive": ["train_contrastive.py"], "generative": ["train_generative.py"],
           "baseline": ["train_baseline.py"], "generate": ["generate.py"], "evaluate": ["evaluate.py"],
           "make_mock": ["-m", "surveys.mock.make"], "sdss": ["-m", "surveys.sdss"]}


def _run_inprocess(cli, argv):
    if cli in ("contrastive", "generative", "baseline"):
        from training.cli import main
        fn = lambda: main(cli, argv)  # noqa: E731
    elif cli == "generate":
        from generation.cli import main
        fn = lambda: main(argv)  # noqa: E731
    elif cli == "evaluate":
        import evaluate
        fn = lambda: evaluate.main(argv)  # noqa: E731
    elif cli == "make_mock":
        from surveys.mock.make import main
        fn = lambda: main(argv)  # noqa: E731
    else:
        from surveys.sdss.__main__ import main
        fn = lambda: main(argv)  # noqa: E731
    try:
        return fn()
    except SystemExit as e:   # argparse
        return e.code


def _snapshot(*dirs) -> dict:
    out = {}
    for root in dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                st = p.stat()
                out[str(p)] = (p.is_dir(), None if p.is_dir() else (st.st_size, st.st_mtime_ns))
    return out


def test_there_are_at_least_60_cases_with_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    assert {c[1] for c in CASES} == set(SCRIPTS)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, env, tmp_path, capsys):
    cid, cli, desc, make, expect, as_process = case
    d = tmp_path / "case"
    d.mkdir()
    argv = [str(a) for a in make(env, d)]
    before = _snapshot(d, env.root)
    capsys.readouterr()
    if as_process:
        r = subprocess.run([sys.executable, *SCRIPTS[cli], *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, err = r.returncode, r.stderr
    else:
        before_threads = torch.get_num_threads()
        code = _run_inprocess(cli, argv)
        torch.set_num_threads(before_threads)
        err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    for s in expect:
        assert s in lines[0], (s, lines[0])
    assert _snapshot(d, env.root) == before, "files appeared, vanished or changed"
    log = os.environ.get("GALSPEC_BAD_INPUTS_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"id": cid, "cli": cli, "input": desc, "error": lines[0],
                                 "subprocess": as_process}) + "\n")


# ----------------------------------------------------------------------------------------------------------
# what used to be a traceback or garbage and is now handled (exit 0)
# ----------------------------------------------------------------------------------------------------------
def test_nan_flux_pixels_are_masked_not_a_scipy_traceback(env, tmp_path):
    from datasets.galaxy import build_cache
    from datasets.preprocess import preprocess_spectra
    bad = _edit(env, tmp_path, _fill("spectra/flux", np.nan, (2, slice(1500, 1510))))
    c = build_cache(bad, tmp_path / "cache")
    with h5py.File(env.survey) as f:
        ref = preprocess_spectra(f["spectra/loglam"][:], f["spectra/flux"][2:3], f["spectra/ivar"][2:3])
    assert c.valid[2] and np.isfinite(c.flux_fullres[2]).all()
    # the NaN pixels (observed 7260-7290 A or so) carry ivar 0 on the 1 A grid; elsewhere the spectrum is kept
    lam = 10 ** (3.58 + 1e-4 * np.arange(1500, 1510))
    hole = (np.arange(4000, 8500) > lam[0]) & (np.arange(4000, 8500) < lam[-1])
    assert (c.ivar_fullres[2][hole] == 0).all() and (ref["ivar"][0][hole] > 0).all()
    far = np.abs(np.arange(4000, 8500) - lam.mean()) > 60
    np.testing.assert_allclose(c.flux_fullres[2][far], ref["flux"][0][far], rtol=0.02)
    # a spectrum with no finite pixel at all is dropped by the positive-flux filter, not a crash
    out = preprocess_spectra(np.log10(np.arange(3900, 8600, 1.0)), np.full((1, 4700), np.nan))
    assert not out["valid"][0]


def test_constant_band_galaxy_is_flagged_and_overwrite_replaces(env, tmp_path):
    from generation.cli import main
    from utils.results_fits import read_spectra_fits
    inp = tmp_path / "in.h5"
    with h5py.File(env.survey) as f, h5py.File(inp, "w") as g:
        img = f["images"][:3]
        img[1, 2] = 0.0
        g["images"] = img
        g["catalog/id"] = np.arange(3) + 7
    out = tmp_path / "g.fits"
    argv = G(env, tmp_path, ["generate.split=all"], flags=["--input", str(inp)], out=out)
    assert main(argv) == 0
    t = read_spectra_fits(out)["table"]
    assert list(t["status"]) == ["ok", "image band is constant (no signal)", "ok"]
    stamp = out.stat().st_mtime_ns
    assert main(argv) == 2 and out.stat().st_mtime_ns == stamp       # refused without --overwrite
    assert main(argv + ["--overwrite"]) == 0 and out.stat().st_mtime_ns != stamp


def test_results_record_fingerprints_and_evaluate_accepts_its_own_survey(env):
    from evaluation.run import load_inputs
    from generation.run import sha256_file
    from utils.results_fits import read_spectra_fits
    h = read_spectra_fits(env.results)["header"]
    assert h["checkpoint_sha256"] == {r: sha256_file(p) for r, p in sorted(env.ck.items())}
    assert len(h["input_catalog_sha256"]) == 64
    inp = load_inputs(env.results)
    assert inp["ok"].all() and len(inp["rows"]) == 4


def test_parts_of_another_checkpoint_are_discarded_with_overwrite(env, tmp_path):
    from generation.cli import main
    parts = tmp_path / "p.fits.parts"
    shutil.copytree(Path(str(env.partial) + ".parts"), parts)
    argv = G(env, tmp_path, _ck_other(env, "diffusion_lr"), out=tmp_path / "p.fits")
    assert main(argv) == 2 and (parts / "part_000000.npz").exists()
    assert main(argv + ["--overwrite"]) == 0
    assert not parts.exists() and (tmp_path / "p.fits").exists()
