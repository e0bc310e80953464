"""Reading and writing short RGB videos with PyAV (H.264 / libx264 in MP4); still images read
as one-frame videos."""

from __future__ import annotations

import os
import re
from pathlib import Path

import av
import numpy as np

from kdbench.errors import VideoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # read by Pillow


def evenly_spaced(total: int, num: int) -> list[int]:
    """Return ``num`` indices spread evenly over ``range(total)``.

    Index ``i`` is the centre of the ``i``-th of ``num`` equal segments, i.e.
    ``floor((i + 0.5) * total / num)``. If ``num >= total`` all indices are returned.
    """
    if total < 0 or num < 0:
        raise ValueError(f"evenly_spaced needs total >= 0 and num >= 0, got {total}, {num}")
    if num >= total:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * num) for i in range(num)]


def write_video(path: Path, frames: np.ndarray, fps: int = 25, qp: int = 40) -> None:
    """Encode uint8 RGB ``frames`` [T,H,W,3] as H.264 (yuv420p, constant QP ``qp``) MP4.

    ``qp=40`` reproduces FaceForensics++ "c40" compression. The file is written to a
    temporary name in the same folder and moved into place, so ``path`` is either
    absent or complete. Parent folders are created.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(
            f"cannot write video {path}: frames must be uint8 [T,H,W,3], "
            f"got {frames.dtype} {list(frames.shape)}"
        )
    t, h, w, _ = frames.shape
    if t == 0 or h == 0 or w == 0 or h % 2 or w % 2:
        raise VideoError(
            f"cannot write video {path}: need at least one frame and even height/width, "
            f"got {list(frames.shape)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options={"qp": str(qp)})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.thread_count = 1  # deterministic and pool-friendly
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
                container.mux(stream.encode(video_frame.reformat(format="yuv420p")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot write video {path}: {_reason(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_frames(path: Path, num: int | None = None) -> np.ndarray:
    """Decode ``num`` evenly spaced frames (all if ``None``) as uint8 [num,H,W,3] RGB.

    Fewer than ``num`` frames are returned when the video is shorter; an image file (a suffix
    of ``IMAGE_SUFFIXES``) is one frame. Any problem (missing file, not a video or image,
    corrupt data, no decodable frame) raises :class:`VideoError` naming the file.
    """
    path = Path(path)
    if num is not None and num < 1:
        raise ValueError(f"read_frames needs num >= 1 or None, got {num}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[None]
    try:
        if not path.is_file():
            raise VideoError(f"cannot read video {path}: no such file")
        if num is None:
            frames, _ = _decode(path, None)
        else:
            total = _stream_frames(path)
            if total <= 0:  # container does not say: count by decoding
                _, total = _decode(path, set())
            wanted = evenly_spaced(total, num)
            frames, decoded = _decode(path, set(wanted))
            if len(frames) < len(wanted):  # metadata promised more frames than were decodable
                frames, _ = _decode(path, set(evenly_spaced(decoded, num)))
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError) as exc:
        raise VideoError(f"cannot read video {path}: {_reason(exc)}") from exc
    if not frames:
        raise VideoError(f"cannot read video {path}: no decodable frames")
    return np.stack(frames)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 [H,W,3] RGB; an unreadable one raises :class:`VideoError`."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"cannot read image {path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise VideoError(f"cannot read image {path}: {_reason(exc)}") from exc


def _stream_frames(path: Path) -> int:
    """Frame count the container declares for the first video stream (0 if unknown)."""
    with av.open(str(path)) as container:
        return int(_video_stream(container, path).frames or 0)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError(f"cannot read video {path}: no video stream")
    return container.streams.video[0]


def _decode(path: Path, keep: set[int] | None) -> tuple[list[np.ndarray], int]:
    """Decode the first video stream; return RGB arrays of frames in ``keep``
    (all if ``None``) and the number of frames decoded. Stops after the last kept one."""
    frames: list[np.ndarray] = []
    last = max(keep) if keep else -1
    count = 0
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            if keep is None or count in keep:
                frames.append(frame.to_ndarray(format="rgb24"))
            count += 1
            if keep and count > last:
                break
    return frames, count


def _reason(exc: BaseException) -> str:
    """A one-line description of an exception (without FFmpeg's "[Errno N]" prefix)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text) or type(exc).__name__
    return text[:300]
