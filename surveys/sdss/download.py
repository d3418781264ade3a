"""Resumable, validated, bounded-concurrency downloads of SDSS spec-lite and calibrated frame files.

Local layout mirrors the SAS below ``out_dir`` (``<out_dir>/dr16/sdss/spectro/redux/26/spectra/lite/...``),
so a partial mirror made with rsync/wget works as is. Guarantees:

* a file appears under its final name only when complete and valid (``<name>.part`` + ``os.replace``);
* 5xx / 429, connection errors, truncated bodies, timeouts and invalid content are retried with
  exponential backoff + jitter; 404 (and other 4xx) is a permanent failure, listed, never fatal;
* ``<out_dir>/manifest.jsonl`` records every completed file (path, bytes, sha256); a rerun skips files the
  manifest lists as complete and that still have that size, so a killed run resumes where it stopped;
* failures go to ``<out_dir>/failures.csv`` (url, path, kind, reason, attempts).
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from tqdm import tqdm

from datasets.sdss_spec import SpecFileError, read_spec
from surveys.description import SDSS
from utils.files import write_csv

SAS_URL = "https://data.sdss.org/sas"
BANDS = SDSS.bands  # "ugriz"
CHUNK = 1 << 16


class PermanentError(Exception):
    """A failure that retrying cannot fix (e.g. HTTP 404)."""


class InvalidFileError(Exception):
    """Downloaded bytes that are not the expected FITS content (retried: it may be a truncated transfer)."""


@dataclass(frozen=True)
class Task:
    """One file to fetch: ``url`` -> ``<out_dir>/<rel>``; kind is "spec" or "frame"."""

    url: str
    rel: str
    kind: str


def spec_lite_relpath(plate: int, mjd: int, fiber: int, run2d: str | bytes, release: str = "DR16") -> str:
    """SAS path (below the ``sas`` root) of a spec-lite file.

    SDSS-I/II reductions (run2d 26, 103, 104) live under ``sdss/spectro/redux``; BOSS/eBOSS reductions
    (run2d ``v5_*``) under ``eboss/spectro/redux`` (DR16/DR17).
    """
    run2d = run2d.decode() if isinstance(run2d, bytes) else str(run2d).strip()
    survey = "eboss" if run2d.startswith("v") else "sdss"
    return (
        f"{release.lower()}/{survey}/spectro/redux/{run2d}/spectra/lite/{int(plate):04d}/"
        f"spec-{int(plate):04d}-{int(mjd)}-{int(fiber):04d}.fits"
    )


def frame_relpath(
    run: int, camcol: int, field: int, band: str, rerun: int = 301, release: str = "DR16"
) -> str:
    """SAS path (below ``sas``) of the calibrated frame ``frame-{band}-{run:06d}-{camcol}-{field:04d}``."""
    return (
        f"{release.lower()}/eboss/photoObj/frames/{int(rerun)}/{int(run)}/{int(camcol)}/"
        f"frame-{band}-{int(run):06d}-{int(camcol)}-{int(field):04d}.fits.bz2"
    )


def plan_downloads(
    catalog: dict,
    base_url: str = SAS_URL,
    release: str = "DR16",
    bands: str = BANDS,
    spectra: bool = True,
    frames: bool = True,
) -> list[Task]:
    """The deduplicated download list for a catalogue (frames are shared by galaxies in the same field)."""
    base = base_url.rstrip("/")
    tasks: dict[str, Task] = {}
    n = len(catalog["specObjID"])
    for i in range(n):
        if spectra:
            rel = spec_lite_relpath(
                catalog["plate"][i], catalog["mjd"][i], catalog["fiberID"][i], catalog["run2d"][i], release
            )
            tasks.setdefault(rel, Task(f"{base}/{rel}", rel, "spec"))
        if frames:
            for b in bands:
                rel = frame_relpath(
                    catalog["run"][i],
                    catalog["camcol"][i],
                    catalog["field"][i],
                    b,
                    catalog["rerun"][i],
                    release,
                )
                tasks.setdefault(rel, Task(f"{base}/{rel}", rel, "frame"))
    return list(tasks.values())


def validate_spec_file(path: str | os.PathLike) -> None:
    """Raise InvalidFileError unless ``path`` is a readable spec/spec-lite file (COADD loglam/flux/ivar)."""
    try:
        spec = read_spec(path)
    except SpecFileError as e:
        raise InvalidFileError(str(e)) from None
    if spec.loglam.ndim != 1 or len(spec.loglam) < 100 or spec.flux.shape != spec.loglam.shape:
        raise InvalidFileError(f"{path}: COADD: {len(spec.loglam)} pixels, expected a full spectrum")


def open_frame(path: str | os.PathLike) -> tuple[np.ndarray, fits.Header]:
    """Read a calibrated frame (``.fits`` or ``.fits.bz2``): HDU0 image in nanomaggies and its header."""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
        if path.endswith(".bz2") or path.endswith(".bz2.part"):
            raw = bz2.decompress(raw)
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            data = hdul[0].data
            header = hdul[0].header.copy()
    except (OSError, ValueError, EOFError) as e:
        raise InvalidFileError(f"{path}: file: not a readable (bz2) FITS frame: {e}") from None
    if data is None or data.ndim != 2:
        raise InvalidFileError(
            f"{path}: HDU0: expected a 2-D image, got {None if data is None else data.shape}"
        )
    return np.asarray(data, dtype=np.float32), header


def validate_frame_file(path: str | os.PathLike) -> None:
    """Raise InvalidFileError unless ``path`` is a bz2 FITS frame with a 2-D HDU0 and a celestial TAN WCS."""
    data, header = open_frame(path)
    try:
        w = WCS(header)
    except Exception as e:  # astropy raises several types for broken WCS headers
        raise InvalidFileError(f"{path}: HDU0 WCS: unreadable: {e}") from None
    if not w.has_celestial or w.naxis != 2:
        raise InvalidFileError(f"{path}: HDU0 WCS: no 2-D celestial WCS (CTYPE {w.wcs.ctype})")
    if not np.isfinite(data).any():
        raise InvalidFileError(f"{path}: HDU0: no finite pixels")


VALIDATORS = {"spec": validate_spec_file, "frame": validate_frame_file}


def _fetch(url: str, dest_part: Path, timeout: float) -> int:
    req = urllib.request.Request(url, headers={"User-Agent": "galspec-sdss/1"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise ConnectionError(f"HTTP {e.code}") from None
        raise PermanentError(f"HTTP {e.code}") from None
    with resp:
        expected = resp.headers.get("Content-Length")
        n = 0
        with open(dest_part, "wb") as fh:
            while True:
                buf = resp.read(CHUNK)
                if not buf:
                    break
                fh.write(buf)
                n += len(buf)
    if expected is not None and n != int(expected):
        raise ConnectionError(f"truncated body: {n} of {expected} bytes")
    return n


RETRYABLE = (
    ConnectionError,
    TimeoutError,
    socket.timeout,
    urllib.error.URLError,
    http.client.HTTPException,
    InvalidFileError,
    OSError,
)


def download_one(
    task: Task,
    out_dir: Path,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    validate: bool = True,
) -> dict:
    """Fetch one file with retries; returns a manifest record (``status`` "ok" or "failed")."""
    dest = out_dir / task.rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        # on disk but not in the manifest: killed between rename and manifest write, or an rsync'd mirror
        try:
            if validate:
                VALIDATORS[task.kind](dest)
            data = dest.read_bytes()
            return {
                "path": task.rel,
                "url": task.url,
                "kind": task.kind,
                "status": "ok",
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "attempts": 0,
                "adopted": True,
            }
        except InvalidFileError:
            dest.unlink()
    reason = ""
    attempt = 0
    for attempt in range(1, retries + 2):
        try:
            n = _fetch(task.url, part, timeout)
            if validate:
                VALIDATORS[task.kind](part)
            digest = hashlib.sha256(part.read_bytes()).hexdigest()
            os.replace(part, dest)
            return {
                "path": task.rel,
                "url": task.url,
                "kind": task.kind,
                "status": "ok",
                "bytes": n,
                "sha256": digest,
                "attempts": attempt,
            }
        except PermanentError as e:
            reason = str(e)
            part.unlink(missing_ok=True)
            break
        except RETRYABLE as e:
            reason = f"{type(e).__name__}: {e}"
            part.unlink(missing_ok=True)
            if attempt <= retries:
                delay = min(max_backoff, backoff * 2 ** (attempt - 1))
                time.sleep(delay + random.uniform(0, delay))
    return {
        "path": task.rel,
        "url": task.url,
        "kind": task.kind,
        "status": "failed",
        "reason": reason,
        "attempts": attempt,
    }


def load_manifest(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Completed records of ``<out_dir>/manifest.jsonl`` by relative path (a torn last line is ignored)."""
    p = Path(out_dir) / "manifest.jsonl"
    done: dict[str, dict] = {}
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("status") == "ok":
                done[rec["path"]] = rec
    return done


def is_complete(out_dir: Path, rec: dict | None) -> bool:
    """True if the manifest lists the file as complete and it is on disk with the recorded size."""
    if rec is None:
        return False
    p = out_dir / rec["path"]
    return p.exists() and p.stat().st_size == rec["bytes"]


def download_all(
    tasks: list[Task],
    out_dir: str | os.PathLike,
    workers: int = 8,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    validate: bool = True,
    progress: bool = True,
) -> dict:
    """Download ``tasks`` into ``out_dir`` with ``workers`` threads; resumable via the manifest.

    Parameters
    ----------
    tasks : from :func:`plan_downloads`.
    out_dir : local mirror root; holds ``manifest.jsonl`` and ``failures.csv``.
    workers : concurrent connections (be polite to the SAS: 4-16).
    timeout : socket timeout per request (s); a stalled server counts as a retryable failure.
    retries : retries after the first attempt (5xx, connection errors, truncation, timeouts, invalid files).
    backoff, max_backoff : exponential backoff base and cap (s); a uniform jitter of up to the delay is added.
    validate : open each file (bz2 + FITS) and check HDUs/shapes/WCS before it counts.
    progress : show a tqdm bar.

    Returns
    -------
    dict with n_tasks, skipped, downloaded, failed (count) and failures (list of records).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = load_manifest(out_dir)
    todo = [t for t in tasks if not is_complete(out_dir, done.get(t.rel))]
    lock = threading.Lock()
    failures: list[dict] = []
    n_ok = 0
    with (
        open(out_dir / "manifest.jsonl", "a") as man,
        ThreadPoolExecutor(max_workers=max(1, workers)) as ex,
        tqdm(total=len(todo), desc="download", unit="file", disable=not progress) as bar,
    ):
        futs = [
            ex.submit(download_one, t, out_dir, timeout, retries, backoff, max_backoff, validate)
            for t in todo
        ]
        for fut in as_completed(futs):
            rec = fut.result()
            with lock:
                if rec["status"] == "ok":
                    n_ok += 1
                    man.write(json.dumps(rec) + "\n")
                    man.flush()
                    os.fsync(man.fileno())
                else:
                    failures.append(rec)
            bar.update(1)
            bar.set_postfix(failed=len(failures))
    fail_path = out_dir / "failures.csv"
    write_csv(fail_path, ["url", "path", "kind", "reason", "attempts"],
              sorted(failures, key=lambda r: r["path"]), dict_rows=True)
    return {
        "n_tasks": len(tasks),
        "skipped": len(tasks) - len(todo),
        "downloaded": n_ok,
        "failed": len(failures),
        "failures": failures,
    }
