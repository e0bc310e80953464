"""ONNX files of a student: export (PyTorch's dynamo exporter, the TorchScript one as the
fallback), onnxruntime sessions, verification against PyTorch, and int8 static quantization
(onnxruntime, QDQ, per-channel weights)."""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import KdbenchError
from kdbench.files import atomic_path

log = logging.getLogger(__name__)
INPUT, OUTPUT = "image", "prob"
TOLERANCE = 1e-4  # the largest difference of a probability allowed between ONNX and PyTorch
DEPLOY_EXTRA = 'pip install "kdbench[deploy]"'


def require_deploy_extra() -> None:
    """A one-line error naming the extra when onnx, onnxscript or onnxruntime is missing."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise KdbenchError(f"exporting and quantizing need {module}, which is not "
                               f"installed; install the deploy extra: {DEPLOY_EXTRA}") from None


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> str:
    """Write ``model`` (images [B, 3, S, S] -> probabilities [B]) to ``path`` as one ONNX file
    with a dynamic batch dimension. PyTorch's recommended exporter is tried first (the
    dynamo-based ``torch.onnx.export(..., dynamo=True)``); the TorchScript exporter only when
    that fails. Returns the exporter used: ``dynamo`` or ``torchscript``."""
    model = model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter's progress prints would mix with kdbench's output on stdout
    with atomic_path(path) as tmp, warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(model, (sample,), str(tmp), dynamo=True, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_shapes={"image": {0: batch}},
                              external_data=False, optimize=True, verbose=False)
            return "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls back
            log.warning("the dynamo ONNX exporter failed (%s); using the TorchScript one",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            torch.onnx.export(model, (sample,), str(tmp), dynamo=False, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=17,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
            return "torchscript"


def session(path: Path, threads: int):
    """An onnxruntime CPU session of ``path`` running on ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(sess, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """An ONNX session's probabilities of float images [N, 3, S, S], ``batch_size`` at a time."""
    out = [sess.run([OUTPUT], {INPUT: np.ascontiguousarray(images[i:i + batch_size],
                                                           np.float32)})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float64)


def verify(path: Path, model: torch.nn.Module, images: torch.Tensor, threads: int) -> float:
    """The largest absolute difference between the ONNX file's and PyTorch's probabilities
    on ``images``, run as one batch and (checking the dynamic batch) one image at a time.
    The file is deleted and an error raised when it exceeds :data:`TOLERANCE`."""
    with torch.no_grad():
        expected = model.eval()(images).double().numpy()
    sess = session(path, threads)
    whole = onnx_probabilities(sess, images.numpy(), batch_size=len(images))
    single = onnx_probabilities(sess, images[:4].numpy(), batch_size=1)
    diff = float(max(np.abs(whole - expected).max(), np.abs(single - expected[:4]).max()))
    if not diff <= TOLERANCE:
        Path(path).unlink(missing_ok=True)
        raise KdbenchError(f"the ONNX model's probabilities differ from PyTorch's by up to "
                           f"{diff:.2e} (more than {TOLERANCE:g}) on {len(images)} test frames; "
                           f"{path} was not kept - report this with your torch and onnx "
                           "versions")
    return diff


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Post-training static int8 quantization of the ONNX file ``fp32`` into ``out``: the
    model pre-processed (shape inference, graph optimisation), then onnxruntime's
    ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations whose
    ranges are calibrated (min-max) on ``calibration`` images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        """``calibration`` a batch of 32 images at a time."""

        def __init__(self) -> None:
            self.batches = (np.ascontiguousarray(calibration[i:i + 32], np.float32)
                            for i in range(0, len(calibration), 32))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(pre))
            quantize_static(str(pre), str(tmp), Calibration(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        finally:
            pre.unlink(missing_ok=True)
