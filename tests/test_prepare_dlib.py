"""The dlib face detector on a real face (scikit-image's astronaut), in and out of workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from kdbench.cli import main
from kdbench.data.detectors import DlibDetector, fill_boxes, make_detector
from kdbench.data.prepare import VideoItem, crop_video, prepare_items
from kdbench.data.video import read_frames, write_video
from kdbench.errors import KdbenchError

WINDOW, SIDE = 320, 128  # a 320 px window of the 512 px photo, shown at 128 px
X0 = [40 + 10 * t for t in range(8)]  # the window pans right
GREY = (0, 5)  # frames replaced by flat grey: no face


def _in_face(box, x0: int = 0, scale: float = 1.0) -> bool:
    """Whether a box (in frame pixels of a window at ``x0``) is on her face in the photo."""
    cx, cy = (box[0] + box[2]) / 2 * scale + x0, (box[1] + box[3]) / 2 * scale
    return 150 <= cx <= 250 and 50 <= cy <= 180


@pytest.fixture(scope="module")
def pan(tmp_path_factory) -> Path:
    photo = astronaut()
    frames = [np.asarray(Image.fromarray(photo[:WINDOW, x : x + WINDOW]).resize((SIDE, SIDE)))
              for x in X0]
    for t in GREY:
        frames[t] = np.full_like(frames[t], 128)
    path = tmp_path_factory.mktemp("dlib") / "pan.mp4"
    write_video(path, np.stack(frames), qp=23)
    return path


def test_dlib_finds_the_astronaut_face():
    photo = astronaut()
    box = make_detector("dlib")(photo)
    assert box is not None
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert _in_face(box) and 50 <= x1 - x0 <= 160  # one face, not the whole picture
    assert DlibDetector.enlarge == 1.3
    assert make_detector("dlib")(np.full((128, 128, 3), 128, np.uint8)) is None


def test_frames_without_a_face_reuse_the_nearest_box(pan):
    video = read_frames(pan)
    detector = DlibDetector()
    raw = [detector(frame) for frame in video]
    assert [t for t, b in enumerate(raw) if b is None] == list(GREY)
    scale = WINDOW / SIDE
    for t, box in enumerate(raw):
        if box is not None:
            assert 0 <= box[0] < box[2] <= SIDE and 0 <= box[1] < box[3] <= SIDE
            assert _in_face(box, X0[t], scale), (t, box)
    boxes = fill_boxes(raw)
    assert boxes[0] == raw[1]  # nearest detected frame
    assert boxes[5] == raw[4]  # tie between 4 and 6: the earlier one
    assert [boxes[t] for t in range(8) if t not in GREY] == [b for b in raw if b is not None]
    assert fill_boxes([None, None]) is None
    crops = crop_video(video, detector, 48)
    assert crops.shape == (8, 48, 48, 3)
    # the crop follows her face: a detected frame's crop differs from the flat grey ones
    assert crops[1].std() > 20 and crops[0].std() < 3


def test_prepare_with_dlib_in_workers(pan, tmp_path):
    """In two worker processes: the face video is cropped as in-process, the faceless and the
    corrupt video are reported and skipped."""
    grey = tmp_path / "grey.mp4"
    write_video(grey, np.full((8, 64, 64, 3), 90, np.uint8))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    items = [VideoItem(str(pan), "pan", 0, "real", "train"),
             VideoItem(str(grey), "grey", 1, "X", "train"),
             VideoItem(str(corrupt), "corrupt", 1, "X", "val")]
    out = tmp_path / "prep"
    counts = prepare_items(items, out, "ff_c40", frames=8, size=32, detector="dlib", workers=2,
                           progress=False)
    assert counts == {"prepared": 1, "skipped": 0, "failed": 2, "frames": 8}
    frames = np.load(out / "frames.npy")
    expected = crop_video(read_frames(pan, 8), DlibDetector(), 32)
    assert np.array_equal(frames, expected)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["detector"] == "dlib" and meta["failed"] == 2 and meta["videos"] == 1


def test_missing_dlib_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(KdbenchError, match=r"pip install dlib-bin"):
        make_detector("dlib")


def test_cli_default_detectors(monkeypatch, tmp_path):
    """dlib for the video datasets (as DeepfakeBench), center for image folders."""
    import kdbench.data.prepare as prepare

    used = {}

    def fake_prepare(items, out, dataset, frames, size, detector, *args):
        used[dataset] = detector
        return {"prepared": 0, "skipped": 0, "failed": 0, "frames": 0}

    monkeypatch.setattr(prepare, "prepare_items", fake_prepare)
    monkeypatch.setattr(prepare, "ffpp_items", lambda *a: [])
    monkeypatch.setattr("kdbench.data.prepare_celebdf.celebdf_items",
                        lambda *a: type("S", (), {"items": [], "val_identities": [],
                                                  "excluded": []})())
    monkeypatch.setattr("kdbench.data.prepare_folder.folder_items", lambda *a: [])
    for source in ("ff++", "celebdf", "folder"):
        assert main(["prepare", source, "--root", str(tmp_path), "--out", str(tmp_path)]) == 0
    assert used == {"ff_c40": "dlib", "celebdf": "dlib", "folder": "center"}
    assert main(["prepare", "ff++", "--root", "r", "--out", "o", "--name", "x"]) == 2
