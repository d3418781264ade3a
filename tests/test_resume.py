"""Hardened checkpoints and resume: a SIGKILLed CPU-preset run resumes exactly (online AND EMA weights,
best.pt, metrics.csv), pickled payloads are refused unexecuted, a changed config is refused key by key."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint
from training.cli import main

ROOT = Path(__file__).resolve().parent.parent

# the cpu preset (EMA 0.995 with warm-up, min-SNR loss, standardised spectra, dpmpp_2m validation),
# shrunk: tiny UNet, 16-galaxy batches (3 per epoch on the synthetic survey), a warm-up of 10 iterations
# so the run crosses its end, validations every 2 iterations (no figures) and checkpoints every 5
KILL_SETS = ["model.image_width=8", "model.base=8", "model.mults=[1,2,4]", "model.attn_levels=[2]",
             "train.batch_size=16", "train.max_iterations=14", "train.ema_warmup=10",
             "run.validate_every=2", "run.checkpoint_every=5", "run.log_every=1",
             "validation.n_galaxies=4", "validation.steps=4", "validation.figure_every=1000"]


def _cmd(survey, out, sets=KILL_SETS, extra=()):
    cmd = [sys.executable, str(ROOT / "train_generative.py"), "--preset", "cpu", "--threads", "1"]
    for s in list(sets) + [f"data.path={survey}", f"run.out_dir={out}",
                           f"data.cache_dir={out}_cache"]:  # two runs at once: one cache each
        cmd += ["--set", s]
    return cmd + list(extra)


def _rows(out):
    with open(Path(out) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _val_rows(out):
    return [r for r in _rows(out) if r.get("val_mse_best")]


def _logged_iterations(out):
    try:
        return [int(r["iteration"]) for r in _rows(out) if r.get("loss")]
    except (FileNotFoundError, KeyError, ValueError):
        return []


def _run_and_kill_after(cmd, out, iteration, timeout=300):
    """Start ``cmd`` and SIGKILL it as soon as metrics.csv holds the training row of ``iteration``."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while iteration not in _logged_iterations(out):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < timeout
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return max(_logged_iterations(out))


def test_sigkilled_cpu_preset_run_resumes_to_identical_online_and_ema_weights(synthetic_survey, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.Popen(_cmd(synthetic_survey, straight), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    # killed just after iteration 7's row: validations at 2, 4, 6 are done, iteration 7 is neither a
    # validation nor a checkpoint boundary (5, 10), so last.pt is behind and a stretch is redone
    logged = _run_and_kill_after(_cmd(synthetic_survey, killed), killed, 7)
    assert len(_val_rows(killed)) >= 2
    resume_at = load_checkpoint(killed / "last.pt")["trainer"]["iteration"]
    assert resume_at < logged, (resume_at, logged)
    r = subprocess.run(_cmd(synthetic_survey, killed), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at iteration {resume_at}" in r.stdout
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 14
    for part in ("model", "ema_model"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    assert b["ema_state"]["event_index"] == 14
    # the EMA really is warming up and differs from the online weights (else the check above is weak)
    assert any(not torch.equal(a["model"][k], a["ema_model"][k]) for k in a["model"])

    # metrics.csv: each iteration once, and the same values as the uninterrupted run's
    rows = _rows(killed)
    keys = [(r["iteration"], bool(r.get("loss"))) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate metrics.csv rows for redone iterations"
    ref_val = [(r["iteration"], r["val_mse_best"]) for r in _val_rows(straight)]
    assert [(r["iteration"], r["val_mse_best"]) for r in _val_rows(killed)] == ref_val
    # best.pt is the best validation in metrics.csv, and is the uninterrupted run's best.pt
    best_it, best_mse = min(((int(i), float(v)) for i, v in ref_val), key=lambda t: t[1])
    best = load_checkpoint(killed / "best.pt")
    assert best["trainer"]["iteration"] == best_it and best["best"]["score"] == pytest.approx(best_mse)
    ref_best = load_checkpoint(straight / "best.pt")
    for k in ref_best["ema_model"]:
        torch.testing.assert_close(best["ema_model"][k], ref_best["ema_model"][k], rtol=0, atol=0)
    # no temp files; numbered checkpoints pruned to run.n_saved (2) across the resume
    assert not list(killed.glob("*.partial")) and not list(killed.glob("tmp*"))
    assert sorted(p.name for p in killed.glob("checkpoint_*.pt")) == ["checkpoint_0000010.pt",
                                                                      "checkpoint_0000014.pt"]


class _Payload:
    """Unpickling this creates ``path`` (open(path, "w")): a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(synthetic_survey, tmp_path,
                                                                        capsys):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"run": {"format": 1, "kind": "diffusion"}, "model": {}, "x": _Payload(marker)}, evil)
    # control: an unrestricted unpickler does run it (in a child process), so the test below can fail
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
                   capture_output=True, cwd=tmp_path)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{evil}: file: refused to load") and "open" in msg, msg
    assert not marker.exists()
    # the same file as a run's last.pt (resume) and as generate.py's checkpoint: exit 2, one line
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(evil.read_bytes())
    assert main("generative", ["--threads", "1", "--preset", "cpu", "--set", f"data.path={synthetic_survey}",
                               "--set", "train.batch_size=8", "--set", f"run.out_dir={run}"]) == 2
    from generation.cli import main as generate_main
    sets = [f"generate.checkpoints.{role}={evil}" for role in
            ("diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr")]
    sets += [f"data.path={synthetic_survey}", f"generate.output={tmp_path / 'gen.fits'}"]
    assert generate_main(["--threads", "1"] + [a for s in sets for a in ("--set", s)]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and all("refused to load" in ln for ln in errors), errors
    assert not marker.exists()
    assert not (run / "config.yaml").exists()  # a refused resume writes nothing


TINY = ["model.image_width=8", "model.base=8", "model.mults=[1,2,4]", "model.attn_levels=[2]",
        "model.timesteps=20", "train.batch_size=16", "train.lr=2e-3", "train.lr_end=2e-3",
        "train.max_iterations=3", "run.log_every=1", "run.validate_every=100", "run.checkpoint_every=100",
        "validation.n_galaxies=2", "validation.n_samples=1", "validation.steps=2"]


def _argv(survey, out, sets):
    argv = ["--threads", "1"]
    for s in sets + [f"data.path={survey}", f"run.out_dir={out}", f"data.cache_dir={out.parent / 'cache'}"]:
        argv += ["--set", s]
    return argv


def test_resume_refuses_a_changed_config_key_by_key_unless_allowed(synthetic_survey, tmp_path, capsys):
    out = tmp_path / "run"
    assert main("generative", _argv(synthetic_survey, out, TINY) + ["--stop-iteration", "2"]) == 0
    config_before = (out / "config.yaml").read_text()
    capsys.readouterr()
    changed = TINY + ["train.lr=5e-3", "train.lr_end=5e-3", "train.grad_clip=0.5"]
    assert main("generative", _argv(synthetic_survey, out, changed)) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, errors
    assert "last.pt: config:" in errors[0] and "train.lr 0.002 -> 0.005" in errors[0]
    assert "train.grad_clip 1.0 -> 0.5" in errors[0] and "--allow-config-change" in errors[0]
    assert (out / "config.yaml").read_text() == config_before
    # architecture and batch size cannot change even when allowed
    assert main("generative", _argv(synthetic_survey, out, TINY + ["model.base=16"])
                + ["--allow-config-change"]) == 2
    # refused by the CLI's up-front shape check (training/cli.py) before the key-by-key comparison
    assert "last.pt: model.base: 8 in the checkpoint, 16 now" in capsys.readouterr().err
    # allowed: the new values are used from the resume point on and recorded
    assert main("generative", _argv(synthetic_survey, out, changed) + ["--allow-config-change"]) == 0
    lr = {int(r["iteration"]): float(r["lr"]) for r in _rows(out) if r.get("lr")}
    assert lr == {1: 2e-3, 2: 2e-3, 3: 5e-3}
    ck = load_checkpoint(out / "last.pt")
    assert ck["run"]["config"]["train"]["lr"] == 5e-3
    assert ck["run"]["config_history"] == [{"iteration": 2, "changes": {
        "train.grad_clip": [1.0, 0.5], "train.lr": [2e-3, 5e-3], "train.lr_end": [2e-3, 5e-3]}}]
    assert (out / "config.yaml").read_text().startswith("# iteration 2: resumed with ")


def test_a_checkpoint_older_than_a_config_key_resumes_with_its_meaning(synthetic_survey, tmp_path):
    # data.lowres did not exist before the "bin" mode: such a run made every-8th-point spectra and resumes
    # without --allow-config-change; with data.lowres=bin it is refused
    out = tmp_path / "run"
    assert main("generative", _argv(synthetic_survey, out, TINY) + ["--stop-iteration", "2"]) == 0
    ck = load_checkpoint(out / "last.pt")
    del ck["run"]["config"]["data"]["lowres"]
    torch.save(ck, out / "last.pt")
    assert main("generative", _argv(synthetic_survey, out, TINY + ["data.lowres=bin"])) == 2
    assert main("generative", _argv(synthetic_survey, out, TINY)) == 0
    assert load_checkpoint(out / "last.pt")["run"]["config"]["data"]["lowres"] == "subsample"


def test_a_diffusion_checkpoint_older_than_model_lowres_noise_resumes():
    # model.lowres_noise and model.prediction came later: a diffusion run without them meant 0 and eps and
    # resumes; a contrastive one (whose model section never has the keys) is not given them
    from training.engine import check_resume_config
    from utils.config import ContrastiveConfig, GenerativeConfig, load_config, to_dict

    for kind, cls, yml in (("diffusion", GenerativeConfig, "params_generative.yml"),
                           ("contrastive", ContrastiveConfig, "params_contrastive.yml")):
        cfg = load_config(ROOT / yml, cls, [], "cpu")
        stored = to_dict(cfg)
        stored["model"].pop("lowres_noise", None)
        stored["model"].pop("prediction", None)
        ckpt = {"run": {"kind": kind, "config": stored}}
        assert check_resume_config(Path("last.pt"), ckpt, cfg, False) == {}
    cfg = load_config(ROOT / "params_generative.yml", GenerativeConfig,
                      ["train.stage=sr", "model.lowres_noise=0.2"], "cpu")
    stored = to_dict(cfg)
    stored["model"].pop("lowres_noise")
    with pytest.raises(CheckpointError,
                       match=r"model.lowres_noise 0.0 -> 0.2: model.lowres_noise cannot change on resume"):
        check_resume_config(Path("last.pt"), {"run": {"kind": "diffusion", "config": stored}}, cfg, False)
    cfg = load_config(ROOT / "params_generative.yml", GenerativeConfig, ["model.prediction=v"], "cpu")
    stored = to_dict(cfg)
    stored["model"].pop("prediction")
    with pytest.raises(CheckpointError, match=r"model.prediction 'eps' -> 'v'"):
        check_resume_config(Path("last.pt"), {"run": {"kind": "diffusion", "config": stored}}, cfg, False)
