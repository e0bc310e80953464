"""What a deployed model costs and how well it detects: CPU latency per image (median of
repeated timed batches), file size, parameters, and test metrics over a prepared split; kept
per run in ``<run>/deploy/deploy.json``."""

from __future__ import annotations

import io
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.files import atomic_write_json, read_json

DEPLOY_DIR, DEPLOY_FILE = "deploy", "deploy.json"
BATCHES = (1, 32)  # the batch sizes latency is measured at


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` CPU threads within the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(predict: Callable[[np.ndarray], Any], size: int, batch: int,
               repeats: int, warmup: int = 2) -> float:
    """Milliseconds per image of ``predict`` on random float images [batch, 3, size, size]:
    the median of ``repeats`` timed calls after ``warmup`` untimed ones."""
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    for _ in range(warmup):
        predict(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def torch_predictor(model: torch.nn.Module) -> Callable[[np.ndarray], Any]:
    """A no-grad CPU call of ``model`` on a float array."""
    model = model.eval().cpu()

    def predict(x: np.ndarray) -> Any:
        with torch.no_grad():
            return model(torch.from_numpy(x))

    return predict


def onnx_predictor(sess) -> Callable[[np.ndarray], Any]:
    """A call of an onnxruntime session on a float array."""
    from kdbench.deploy.onnx_files import INPUT

    return lambda x: sess.run(None, {INPUT: x})


def latencies(predict: Callable[[np.ndarray], Any], size: int,
              repeats: tuple[int, int]) -> dict[str, float]:
    """``latency_ms_b1`` and ``latency_ms_b32``: :func:`latency_ms` at each of :data:`BATCHES`,
    ``repeats`` timed calls at each."""
    return {f"latency_ms_b{b}": latency_ms(predict, size, b, r)
            for b, r in zip(BATCHES, repeats)}


def state_mb(model: torch.nn.Module) -> float:
    """The size in MB of ``model``'s state dict saved with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def file_mb(path: Path) -> float:
    return Path(path).stat().st_size / 1e6


def split_probabilities(probabilities: Callable[[torch.Tensor], np.ndarray], split,
                        size: int, batch_size: int = 256,
                        pre: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``probabilities`` of every frame of a :class:`~kdbench.data.loader.FrameSplit`, in
    order, on the model input the evaluation makes (then ``pre``: a deployed student's
    degradation)."""
    from kdbench.data.loader import iterate, to_model_input

    cpu = torch.device("cpu")
    out = [probabilities(_pre(to_model_input(b, cpu, size)["image"], pre))
           for b in iterate(split, batch_size, shuffle=False)]
    return np.concatenate(out).astype(np.float64)


def split_images(split, positions: np.ndarray, size: int,
                 pre: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The model input (CPU float) of the frames at ``positions`` of a split, unflipped (then
    ``pre``: a deployed student's degradation)."""
    from kdbench.data.loader import to_model_input

    batch = split[(np.asarray(positions), np.zeros(len(positions), bool))]
    return _pre(to_model_input(batch, torch.device("cpu"), size)["image"], pre)


def _pre(x: torch.Tensor, pre: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    if pre is None:
        return x
    with torch.no_grad():
        return pre(x)


def evenly(n: int, k: int) -> np.ndarray:
    """At most ``k`` positions spread evenly over ``range(n)`` (both ends included)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def split_metrics(probs: np.ndarray, split) -> dict[str, float]:
    """acc, AUC, AP, EER and video AUC of ``probs`` on ``split`` (the evaluation's metrics)."""
    from kdbench.train.metrics import detection_metrics

    return detection_metrics(probs, split.labels.numpy(), split.videos)


def student_entry(params: int, folder: Path, name: str, predict: Callable[[np.ndarray], Any],
                  size: int, repeats: tuple[int, int], probs: np.ndarray, split,
                  **extra: Any) -> dict[str, Any]:
    """One format of a student in deploy.json: its file ``folder/name``, parameters, latency
    of ``predict`` and the test metrics of ``probs`` on ``split``."""
    return {"model": "student", "params": params, "file": f"{DEPLOY_DIR}/{name}",
            "file_mb": file_mb(folder / name), **latencies(predict, size, repeats),
            "test": split_metrics(probs, split), **extra}


def machine(threads: int, repeats: tuple[int, int]) -> dict[str, Any]:
    """Where and how latency was measured."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": threads, "repeats": dict(zip(map(str, BATCHES), repeats)),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def update_record(run_dir: Path, entries: dict[str, dict[str, Any]],
                  common: dict[str, Any]) -> dict[str, Any]:
    """Merge ``entries`` (format -> measurements) and ``common`` into the run's deploy.json."""
    path = Path(run_dir) / DEPLOY_DIR / DEPLOY_FILE
    record = read_json(path) if path.is_file() else {}
    record.update(common)
    record.setdefault("formats", {}).update(entries)
    atomic_write_json(path, record)
    return record
