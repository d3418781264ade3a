"""Writing files safely, in one place (imports nothing from the project, so every package may use it).

Every file the project writes appears under its final name only when complete: it is written to a
temporary sibling (``<name>.partial``, or ``<stem>.partial<suffix>`` where the writer needs the suffix) and
renamed with ``os.replace`` (atomic on POSIX and Windows). A failed or killed write leaves the old file, if
any, untouched; a failed write removes its temporary file.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(dst: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write; on success it is renamed to ``dst``, on error removed.

    keep_suffix: the temporary name ends with ``dst``'s suffix (writers that pick the format from it, such
    as matplotlib's ``savefig``, or that append one, such as ``np.savez``).
    """
    dst = Path(dst)
    tmp = (dst.with_name(dst.stem + ".partial" + dst.suffix) if keep_suffix
           else dst.with_name(dst.name + ".partial"))
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(dst: str | os.PathLike, text: str) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_text(text)
    return Path(dst)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def write_csv(dst: str | os.PathLike, header: list[str], rows: Iterable, dict_rows: bool = False) -> Path:
    """A CSV with a header line; ``rows`` are sequences, or dicts keyed by ``header`` if dict_rows
    (keys outside the header are ignored)."""
    with atomic_path(dst) as tmp, open(tmp, "w", newline="") as fh:
        if dict_rows:
            w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
            w.writeheader()
        else:
            w = csv.writer(fh)
            w.writerow(header)
        w.writerows(rows)
    return Path(dst)


def jsonable(x):
    """``x`` with numpy scalars/arrays, bytes and paths made JSON-native, recursively through dicts, lists
    and tuples; non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, os.PathLike):
        return str(x)
    return x
