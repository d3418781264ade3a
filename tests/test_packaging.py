"""Packaging (pyproject.toml + setup.py) and the specutils reader of the results FITS files."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def _req_names(lines) -> dict[str, str]:
    """requirement name (normalised) -> full specifier line."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0]
        out[re.sub(r"[-_.]+", "-", name).lower()] = line.replace(" ", "")
    return out


def test_requirements_agree_with_pyproject():
    """requirements.txt (what setup.sh installs) and pyproject's dependencies are the same list; the test
    tools are only in the dev extra / requirements-dev.txt."""
    runtime = _req_names((ROOT / "requirements.txt").read_text().splitlines())
    assert runtime == _req_names(PYPROJECT["project"]["dependencies"])
    assert runtime["torch"] == "torch==2.13.0"
    dev = _req_names((ROOT / "requirements-dev.txt").read_text().splitlines())
    extras = PYPROJECT["project"]["optional-dependencies"]
    for tool in ("pytest", "ruff"):
        assert tool not in runtime and tool in dev and tool in _req_names(extras["dev"])
    assert "tensorboard" in _req_names(extras["tensorboard"])
    # every runtime requirement has a tested version in constraints.txt
    pins = _req_names((ROOT / "constraints.txt").read_text().splitlines())
    assert set(runtime) | {"pytest", "ruff"} <= set(pins)
    assert pins["torch"] == "torch==2.13.0"


def test_every_package_and_cli_is_shipped():
    """Every directory with an __init__.py (bar tests) is a listed package; every CLI module is listed."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.rglob("__init__.py")
        if not ({".venv", ".git", "tests", "build"} & set(p.relative_to(ROOT).parts))
    }
    assert found and found <= listed, f"not in pyproject packages: {sorted(found - listed)}"
    clis = {p.stem for p in ROOT.glob("*.py") if p.name != "setup.py"}
    assert clis == set(PYPROJECT["tool"]["setuptools"]["py-modules"])
    assert {v.split(":")[0] for v in SCRIPTS.values()} >= clis


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_targets_are_callable_mains(name):
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def _copy_source(dst: Path) -> Path:
    """The project's files without venv, git metadata, build output or run products."""
    skip = {".venv", ".git", "build", "runs", "data", "outputs", "figures", "__pycache__", ".pytest_cache",
            ".ruff_cache"}
    return Path(shutil.copytree(ROOT, dst, ignore=lambda d, names: [
        n for n in names if n in skip or n.endswith((".egg-info", ".partial"))]))


@pytest.mark.slow  # ~60 s on 2 busy cores: 7 console scripts, most import torch
def test_wheel_installs_and_console_scripts_run_elsewhere(tmp_path):
    """Build the wheel, install it into a fresh venv (dependencies borrowed from this interpreter's
    site-packages through a .pth file, so no network) and run every console script's --help from an
    unrelated directory; the installed CLIs find their default configs and the SSP templates."""
    pytest.importorskip("setuptools", minversion="68")
    src = _copy_source(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"
    env["COLUMNS"] = "500"  # argparse must not wrap the default config path printed by --help
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist")], check=True, env=env, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("galspec-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "_borrowed_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(pip + ["--python", str(py), "install", "--no-deps", "-q", str(wheel)], check=True, env=env)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = ("import analysis._common as c, generation.cli as g, os, surveys.mock.sed as s; "
             "print(c.__file__); print(os.path.isdir(c.TEMPLATE_DIR) and s.BC03_PATH.is_file() "
             "and (g.ROOT / 'params_generative.yml').is_file())")
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True, env=env, cwd=cwd)
    where, ok = out.stdout.split()
    assert Path(where).is_relative_to(purelib) and ok == "True"  # the installed copy, with its data
    for name in sorted(SCRIPTS):
        r = subprocess.run([str(venv / "bin" / name), "--help"], capture_output=True, text=True, env=env,
                           cwd=cwd)
        assert r.returncode == 0, f"{name} --help: {r.stderr[-2000:]}"
        assert r.stdout.startswith("usage:")
        if name.startswith("galspec-train-"):  # they print their default config: the installed one
            default = Path(re.search(r"default: (\S+\.yml)\)", r.stdout).group(1))
            assert default.is_file() and default.is_relative_to(purelib), default


# ---------------------------------------------------------------- specutils reader


def _results_file(path: Path) -> tuple[Path, dict]:
    """A small results file written by the project's writer: 3 galaxies, 2 candidates each."""
    from utils.results_fits import FLUX_UNIT, IVAR_UNIT, write_spectra_fits

    rng = np.random.default_rng(1)
    n, L = 3, 40
    d = {
        "wave": np.linspace(4000.0, 8499.0, L),
        "table": {"id": np.arange(n) + 100, "ra": rng.uniform(0, 360, n),
                  "status": np.array(["ok", "ok", "x"])},
        "spectra": {
            "flux_pred": rng.normal(1, 0.1, (n, L)).astype(np.float32),
            "flux_obs": rng.normal(1, 0.1, (n, L)).astype(np.float32),
            "ivar_obs": rng.uniform(1, 2, (n, L)).astype(np.float32),
        },
        "cube": (rng.normal(1, 0.1, (n, 2, 25)).astype(np.float32), 4000.0 + 8.0 * np.arange(25)),
    }
    write_spectra_fits(path, d["table"], d["spectra"], d["wave"], {"sampler": "ddim", "steps": 4},
                       units={"flux_pred": FLUX_UNIT, "flux_obs": FLUX_UNIT, "ivar_obs": IVAR_UNIT},
                       cubes={"FULLRES_CANDIDATES": d["cube"]})
    return path, d


def test_specutils_reads_results_file(tmp_path):
    specutils = pytest.importorskip("specutils")
    from astropy import units as u
    from astropy.nddata import InverseVariance

    import utils.results_fits  # noqa: F401  (registers the reader)

    path, d = _results_file(tmp_path / "res.fits")
    sp = specutils.Spectrum.read(path, format="galspec-results")
    assert sp.flux.shape == (3, 40) and sp.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)")
    np.testing.assert_array_equal(sp.flux.value, d["spectra"]["flux_pred"])
    assert sp.spectral_axis.unit == u.AA
    np.testing.assert_array_equal(sp.spectral_axis.value, d["wave"])
    assert sp.uncertainty is None  # no ivar_pred in the file
    assert sp.meta["header"] == {"sampler": "ddim", "steps": 4}
    assert list(sp.meta["galaxies"]["id"]) == [100, 101, 102] and sp.meta["galaxies"]["ra"].unit == u.deg

    obs = specutils.Spectrum.read(str(path), format="galspec-results", column="flux_obs")
    assert isinstance(obs.uncertainty, InverseVariance)  # ivar_obs goes with flux_obs
    np.testing.assert_array_equal(obs.uncertainty.array, d["spectra"]["ivar_obs"])
    assert (obs.uncertainty.unit * obs.flux.unit**2).decompose() == u.dimensionless_unscaled
    np.testing.assert_array_equal(obs.flux.value, d["spectra"]["flux_obs"])

    cand = specutils.Spectrum.read(path, format="galspec-results", column="FULLRES_CANDIDATES")
    assert cand.flux.shape == (3, 2, 25) and cand.flux.unit == sp.flux.unit
    np.testing.assert_allclose(cand.spectral_axis.value, d["cube"][1])
    np.testing.assert_array_equal(cand.flux.value, d["cube"][0])

    per = specutils.SpectrumList.read(path, format="galspec-results", column="flux_obs")
    assert len(per) == 3 and all(s.flux.shape == (40,) for s in per)
    np.testing.assert_array_equal(per[2].flux.value, d["spectra"]["flux_obs"][2])
    np.testing.assert_array_equal(per[2].uncertainty.array, d["spectra"]["ivar_obs"][2])
    assert per[2].meta["galaxy"]["status"] == "x" and per[2].meta["row"] == 2

    # recognised without format= too
    np.testing.assert_array_equal(specutils.Spectrum.read(path).flux.value, d["spectra"]["flux_pred"])
    with pytest.raises(ValueError, match=r"column: 'nope'.*flux_obs"):
        specutils.Spectrum.read(path, format="galspec-results", column="nope")


def test_specutils_attaches_the_candidate_spread_as_stddev(tmp_path):
    specutils = pytest.importorskip("specutils")
    from astropy.nddata import InverseVariance, StdDevUncertainty

    import utils.results_fits  # noqa: F401  (registers the reader)
    from utils.results_fits import write_spectra_fits

    rng = np.random.default_rng(2)
    n, L = 3, 40
    wave = np.linspace(4000.0, 8499.0, L)
    flux = rng.normal(1, 0.1, (n, L)).astype(np.float32)
    std = rng.uniform(0.01, 0.1, (n, L)).astype(np.float32)
    spectra = {"flux_pred": flux, "flux_pred_std": std, "flux_obs": flux, "ivar_obs": 1 / std**2}
    path = write_spectra_fits(tmp_path / "r.fits", {"id": np.arange(n)}, spectra, wave)
    sp = specutils.Spectrum.read(path, format="galspec-results")
    assert isinstance(sp.uncertainty, StdDevUncertainty) and sp.uncertainty.unit == sp.flux.unit
    np.testing.assert_array_equal(sp.uncertainty.array, std)
    assert sp.meta["std_column"] == "flux_pred_std" and sp.meta["ivar_column"] is None
    per = specutils.SpectrumList.read(path, format="galspec-results")
    np.testing.assert_array_equal(per[1].uncertainty.array, std[1])
    # flux_obs keeps its inverse variance; an explicit "" switches the uncertainty off
    assert isinstance(specutils.Spectrum.read(path, format="galspec-results", column="flux_obs").uncertainty,
                      InverseVariance)
    assert specutils.Spectrum.read(path, format="galspec-results", std_column="").uncertainty is None
    with pytest.raises(ValueError, match="give one uncertainty"):
        specutils.Spectrum.read(path, format="galspec-results", ivar_column="ivar_obs",
                                std_column="flux_pred_std")
    # M = 1: the column is all NaN (no spread to measure) and no uncertainty is attached
    spectra["flux_pred_std"] = np.full((n, L), np.nan, np.float32)
    path = write_spectra_fits(tmp_path / "one.fits", {"id": np.arange(n)}, spectra, wave)
    assert specutils.Spectrum.read(path, format="galspec-results").uncertainty is None


@pytest.mark.parametrize("order", ["results_fits first", "specutils first", "no specutils"])
def test_reader_registration_does_not_depend_on_import_order(tmp_path, order):
    """Importing utils.results_fits does not import specutils (3 s); the reader is there either way, and
    without specutils the module still imports."""
    path, _ = _results_file(tmp_path / "res.fits")
    code = {
        "results_fits first": "import sys, utils.results_fits; assert 'specutils' not in sys.modules; "
                              "from specutils import Spectrum",
        "specutils first": "from specutils import Spectrum; import utils.results_fits",
        "no specutils": "import sys; sys.modules['specutils'] = None; import utils.results_fits; "
                        "print((3, 40)); raise SystemExit",
    }[order]
    code += f"\nprint(Spectrum.read({str(path)!r}, format='galspec-results').flux.shape)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(3, 40)"
