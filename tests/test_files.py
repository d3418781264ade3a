"""utils.files: atomic writes and JSON-safe values."""
import json
from pathlib import Path

import numpy as np
import pytest

from utils.files import atomic_path, copy_file, jsonable, write_csv, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dst = write_text(tmp_path / "report.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_writers_produce_the_final_file_only(tmp_path):
    copy_file(write_text(tmp_path / "a.txt", "x"), tmp_path / "b.txt")
    write_csv(tmp_path / "rows.csv", ["a", "b"], [{"a": 1, "b": 2, "extra": 3}], dict_rows=True)
    write_csv(tmp_path / "seq.csv", ["a", "b"], [[1, 2]])
    assert (tmp_path / "b.txt").read_text() == "x"
    assert (tmp_path / "rows.csv").read_text().splitlines() == ["a,b", "1,2"]
    assert (tmp_path / "seq.csv").read_text().splitlines() == ["a,b", "1,2"]
    # a writer that picks the format from the suffix gets a temporary name with that suffix
    with atomic_path(tmp_path / "arrays.npz", keep_suffix=True) as tmp:
        assert tmp.suffix == ".npz" and tmp != tmp_path / "arrays.npz"
        np.savez(tmp, x=np.arange(3))
    assert np.load(tmp_path / "arrays.npz")["x"].tolist() == [0, 1, 2]
    assert not any(".partial" in p.name for p in tmp_path.iterdir())


def test_jsonable_makes_strict_json():
    x = {"a": np.float32(1.5), "b": [np.nan, 2.0, np.int64(3)], "c": (np.inf, b"bytes"),
         "d": np.array([[1, 2]]), "e": Path("/x/y"), "f": {"g": float("-inf"), "h": np.bool_(True)}}
    out = jsonable(x)
    assert out == {"a": 1.5, "b": [None, 2.0, 3], "c": [None, "bytes"], "d": [[1, 2]], "e": "/x/y",
                   "f": {"g": None, "h": True}}
    json.dumps(out, allow_nan=False)  # no NaN/Infinity tokens left
