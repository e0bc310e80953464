"""Using a distilled student on its own: `kdbench predict`, `kdbench export` and `kdbench
quantize` as Python functions (re-exported by :mod:`kdbench.api`). Arguments are checked before
torch is imported; bad input raises :class:`kdbench.errors.KdbenchError`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.errors import KdbenchError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from kdbench.deploy.predict import FileScore
    from kdbench.deploy.student_file import DeployedStudent

PathLike = str | os.PathLike
EXPORT_FORMATS = ("onnx",)
ONNX_FILE, INT8_FILE = "student.onnx", "student.int8.onnx"
# --int8 static | dynamic -> (deploy.json format, file)
INT8 = {"static": ("onnx_int8", INT8_FILE),
        "dynamic": ("onnx_int8_dynamic", "student.int8-dynamic.onnx")}
REPEATS = (20, 5)  # timed calls at batch 1 and at batch 32
DEFAULT_CALIB = 256


def _threads(threads: int | None) -> int:
    from kdbench.threads import usable_cores

    if threads is not None and threads < 1:
        raise KdbenchError(f"--threads must be at least 1, got {threads}")
    return threads or usable_cores()


def predict(inputs: PathLike | Sequence[PathLike], *, run: PathLike | None = None,
            checkpoint: PathLike | None = None, student: str | None = None,
            size: int | None = None, frames: int | None = None, detector: str | None = None,
            agg: str = "mean", device: str | None = None,
            progress: bool = True) -> tuple[list[FileScore], DeployedStudent]:
    """Score video and image files (folders searched recursively) with a run's student
    (``run``) or a checkpoint's (``checkpoint`` + ``student``): ``frames`` evenly spaced
    frames of each video (default: the run's), the face cropped as the run's preparation did
    (``detector``, default: the run's), the video's score the ``agg`` (mean or max) of its
    frames' fake probabilities, called fake above the run's validation threshold. A file that
    cannot be decoded or shows no face gets an ``error`` instead of a score."""
    from kdbench.data.detectors import DETECTORS
    from kdbench.deploy.inputs import AGGREGATES, check_source, media_files

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = media_files(map(Path, paths))  # the paths first: each is checked before torch
    check_source(run, checkpoint, student)
    if agg not in AGGREGATES:
        raise KdbenchError(f"unknown --agg {agg!r}; choose one of {', '.join(AGGREGATES)}")
    if detector is not None and detector not in DETECTORS:
        raise KdbenchError(f"unknown detector {detector!r}; choose one of "
                           f"{', '.join(DETECTORS)}")
    if frames is not None and frames < 1:
        raise KdbenchError(f"--frames must be at least 1, got {frames}")
    from kdbench.data.detectors import make_detector
    from kdbench.deploy.predict import predict_files
    from kdbench.deploy.student_file import load_deployed
    from kdbench.train.runner import pick_device

    deployed = load_deployed(run, checkpoint, student, size)
    torch_device = pick_device(device)
    found = make_detector(detector or deployed.detector)
    scores = predict_files(files, deployed, found, frames or deployed.frames, agg, torch_device,
                           progress)
    return scores, deployed


def _open_run_data(deployed: DeployedStudent, data_root: PathLike | None,
                   splits: tuple[str, ...]):
    from kdbench.data.datasets import open_configured
    from kdbench.data.loader import FrameSplit

    recorded = (deployed.metrics.get("config") or {}).get("data") or {}
    data = open_configured(deployed.metrics["dataset"], Path(data_root) if data_root else None,
                           {**recorded, "size": recorded.get("size") or deployed.size,
                            "frames": deployed.frames},  # the data's size (a small student's
                           # input is resized from it)
                           progress=False, require=splits)
    return {s: FrameSplit(data.frames, data.split(s)) for s in splits}


def _what(deployed: DeployedStudent) -> str:
    """The student in messages: its backbone and run."""
    return f"the {deployed.backbone} student of {deployed.run_dir}"


def run_label(metrics: dict[str, Any]) -> str:
    """A run's name in tables: ``student/method[@variant]/mode/seed<k>``, or a compressed
    child's recorded label."""
    m = metrics
    if m.get("label"):  # a compressed child run: its parent's label + its compression
        return str(m["label"])
    variant = f"@{m['variant']}" if m.get("variant") else ""
    student = m["student"]
    if m.get("config"):  # a cross-resolution student: its folder's name, e.g. resnet18_thin@32px
        from kdbench.config import student_input_tag

        tag = student_input_tag({"student": m["config"].get("student") or {},
                                 "data": m["config"]["data"]})
        student = f"{student}@{tag}" if tag else student
    return f"{student}/{m['method']}{variant}/{m['mode']}/seed{m['seed']}"


def _teacher_entry(deployed: DeployedStudent, threads: int,
                   repeats: tuple[int, int]) -> dict[str, Any] | None:
    """The run's teacher for scale: parameters, state size, latency of its inference path
    (a dual teacher's two branches and fusion head, a single one's classifier), and its
    recorded test metrics."""
    from kdbench.deploy.measure import latencies, state_mb, torch_predictor
    from kdbench.models.cost import _LogitsOnly, count_params
    from kdbench.models.teacher_build import architecture_teacher

    metrics = deployed.metrics
    if metrics.get("mode") == "none" or not metrics.get("teacher_test"):
        return None
    # its architecture for the timing: no pretrained weights to fetch, no checkpoint to read
    t = metrics["config"]["teacher"]
    teacher = architecture_teacher(t).eval()
    return {"model": "teacher", "params": count_params(teacher), "file_mb": state_mb(teacher),
            "file": None, **latencies(torch_predictor(_LogitsOnly(teacher)),
                                      int(metrics["config"]["data"]["size"]), repeats),
            "test": metrics["teacher_test"], "teacher": metrics.get("teacher"),
            "backbone": t["backbone"], "kind": t.get("kind") or "dual",
            "freq_backbone": t.get("freq_backbone")}


def export(run_dir: PathLike, *, format: str = "onnx", data_root: PathLike | None = None,
           threads: int | None = None, repeats: tuple[int, int] = REPEATS,
           teacher: bool = True) -> dict[str, Any]:
    """Export a finished run's student alone (no teacher, no adaptors) to
    ``<run>/deploy/student.onnx`` (input ``image`` [B, 3, S, S] float in [-1, 1], output
    ``prob`` [B], the fake probability; dynamic batch), verified with onnxruntime against
    PyTorch on real test frames (at most 1e-4 apart, or an error). Then measure PyTorch fp32,
    ONNX fp32 and (``teacher``) the teacher on this CPU with ``threads`` threads: latency,
    size, parameters and test metrics, into ``<run>/deploy/deploy.json``. Returns that
    record."""
    from kdbench.deploy.inputs import check_run

    check_run(Path(run_dir))  # before torch is imported
    if format not in EXPORT_FORMATS:
        raise KdbenchError(f"unknown --format {format!r}; choose one of "
                           f"{', '.join(EXPORT_FORMATS)}")
    from kdbench.deploy.onnx_files import require_deploy_extra

    require_deploy_extra()
    threads = _threads(threads)
    import torch

    from kdbench.deploy import measure
    from kdbench.deploy.onnx_files import export_onnx, onnx_probabilities, session, verify
    from kdbench.deploy.student_file import STUDENT_FILE, from_run
    from kdbench.files import atomic_torch_save
    from kdbench.models.cost import count_params
    from kdbench.train.predictions import save_predictions

    deployed = from_run(Path(run_dir))
    test = _open_run_data(deployed, data_root, ("test",))["test"]
    out = deployed.run_dir / measure.DEPLOY_DIR
    model = deployed.probability()
    frames = measure.split_images(test, measure.evenly(len(test), 64), deployed.size,
                                  deployed.pre)
    with measure.torch_threads(threads):
        atomic_torch_save(out / STUDENT_FILE, deployed.model.state_dict())
        what = _what(deployed)
        exporter = export_onnx(model, frames[:2], out / ONNX_FILE, what)
        diff = verify(out / ONNX_FILE, model, frames, threads, what)
        log.info(f"exported {out / ONNX_FILE} ({measure.file_mb(out / ONNX_FILE):.2f} MB, "
                 f"{exporter} exporter); onnxruntime vs PyTorch on {len(frames)} test "
                 f"frames: max |diff| of the probabilities {diff:.2e}")
        sess = session(out / ONNX_FILE, threads)
        with torch.no_grad():
            torch_probs = measure.split_probabilities(lambda x: model(x).numpy(), test,
                                                      deployed.size, pre=deployed.pre)
        onnx_probs = measure.split_probabilities(lambda x: onnx_probabilities(sess, x.numpy()),
                                                 test, deployed.size, pre=deployed.pre)
        # the int8 files' paired differences are taken against these (the same runtime)
        save_predictions(out / "predictions_onnx_fp32.npz", onnx_probs, test.labels.numpy(),
                         test.videos)
        params = count_params(deployed.model)
        entries = {
            "pytorch_fp32": measure.student_entry(
                params, out, STUDENT_FILE, measure.torch_predictor(model), deployed.size,
                repeats, torch_probs, test),
            "onnx_fp32": measure.student_entry(
                params, out, ONNX_FILE, measure.onnx_predictor(sess), deployed.size, repeats,
                onnx_probs, test, exporter=exporter, max_abs_diff=diff),
        }
        if teacher:
            entry = _teacher_entry(deployed, threads, repeats)
            if entry is not None:
                entries["teacher_pytorch_fp32"] = entry
    record = measure.update_record(deployed.run_dir, entries, {
        "label": run_label(deployed.metrics), "dataset": deployed.metrics["dataset"],
        "size": deployed.size, **measure.machine(threads, repeats)})
    return record


def quantize(run_dir: PathLike, *, int8: str = "static", calib: int = DEFAULT_CALIB,
             data_root: PathLike | None = None, threads: int | None = None,
             repeats: tuple[int, int] = REPEATS) -> dict[str, Any]:
    """Post-training int8 quantization of a run's exported student (exported first when
    ``deploy/student.onnx`` is missing). ``int8`` static: onnxruntime's ``quantize_static``
    (QDQ, per-channel int8 weights, uint8 activations) calibrated on ``calib`` evenly spaced
    training frames, to ``<run>/deploy/student.int8.onnx``; dynamic: the Linear layers alone,
    weights int8 and activations quantized at run time (the convolutions stay fp32), to
    ``student.int8-dynamic.onnx``. Then tested on the run's test split (per-frame predictions
    in ``deploy/predictions_<format>.npz``) and timed like the fp32 model, into
    ``deploy.json``. Returns that record."""
    from kdbench.deploy.inputs import check_run

    if int8 not in INT8:
        raise KdbenchError(f"unknown --int8 {int8!r}; choose one of {', '.join(INT8)}")
    check_run(Path(run_dir))  # before torch is imported
    if calib < 1:
        raise KdbenchError(f"--calib must be at least 1 frame, got {calib}")
    from kdbench.deploy.onnx_files import require_deploy_extra

    require_deploy_extra()
    threads = _threads(threads)
    from kdbench.deploy import measure
    from kdbench.deploy.onnx_files import (
        onnx_probabilities,
        quantize_int8,
        quantize_linear_dynamic,
        session,
    )
    from kdbench.deploy.student_file import from_run
    from kdbench.models.cost import count_params
    from kdbench.train.predictions import save_predictions

    deployed = from_run(Path(run_dir))
    out = deployed.run_dir / measure.DEPLOY_DIR
    if not (out / ONNX_FILE).is_file():
        export(run_dir, data_root=data_root, threads=threads, repeats=repeats)
    key, name = INT8[int8]
    splits = _open_run_data(deployed, data_root, ("train", "test"))
    train, test = splits["train"], splits["test"]
    extra: dict[str, Any] = {"int8": int8}
    if int8 == "static":
        picks = measure.evenly(len(train), calib)
        images = measure.split_images(train, picks, deployed.size, deployed.pre).numpy()
        quantize_int8(out / ONNX_FILE, out / name, images, _what(deployed))
        extra["calibration_frames"] = len(picks)
    else:
        quantize_linear_dynamic(out / ONNX_FILE, out / name, _what(deployed))
    with measure.torch_threads(threads):
        sess = session(out / name, threads)
        probs = measure.split_probabilities(lambda x: onnx_probabilities(sess, x.numpy()),
                                            test, deployed.size, pre=deployed.pre)
        save_predictions(out / f"predictions_{key}.npz", probs, test.labels.numpy(),
                         test.videos)
        entry = measure.student_entry(
            count_params(deployed.model), out, name, measure.onnx_predictor(sess),
            deployed.size, repeats, probs, test, **extra)
    record = measure.update_record(deployed.run_dir, {key: entry}, {
        "label": run_label(deployed.metrics), "dataset": deployed.metrics["dataset"],
        "size": deployed.size, **measure.machine(threads, repeats)})
    t = entry["test"]
    log.info(f"wrote {out / name}: test acc {t['acc']:.4f} auc {t['auc']:.4f} eer "
             f"{t['eer']:.4f} video-auc {t['video_auc']:.4f}")
    fp32 = record["formats"].get("onnx_fp32", {})
    if fp32:
        plural = "s" * (threads != 1)
        log.info(
            f"int8 against ONNX fp32: {fp32['file_mb'] / entry['file_mb']:.2f}x smaller, "
            f"{fp32['latency_ms_b32'] / entry['latency_ms_b32']:.2f}x faster at batch 32 "
            f"({threads} thread{plural}); test AUC change {t['auc'] - fp32['test']['auc']:+.4f}")
    return record
