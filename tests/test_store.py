import json

import numpy as np
import pytest

from kdbench.files import (
    atomic_path,
    atomic_save_npy,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
)


def test_atomic_json_replaces_whole_file_and_cleans_nan(tmp_path):
    p = tmp_path / "a" / "m.json"
    atomic_write_json(p, {"x": 1, "y": float("nan")})
    assert json.loads(p.read_text()) == {"x": 1, "y": None}
    atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]  # no temp files left behind


def test_interrupted_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"ok": True})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": Boom()})  # fails while serialising
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(p.read_text()) == {"ok": True}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_jsonl_and_npy_round_trip(tmp_path):
    atomic_write_jsonl(tmp_path / "h.jsonl", [{"epoch": 1}, {"epoch": 2}])
    assert read_jsonl(tmp_path / "h.jsonl") == [{"epoch": 1}, {"epoch": 2}]
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    atomic_save_npy(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)
