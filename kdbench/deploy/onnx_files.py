"""ONNX files of a student: export (PyTorch's dynamo exporter, the TorchScript one as the
fallback), onnxruntime sessions, verification against PyTorch, and int8 static quantization
(onnxruntime, QDQ, per-channel weights)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
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


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().splitlines()[:1]).strip()
    return (text[:200] or type(exc).__name__)


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path,
                what: str = "the student") -> str:
    """Write ``model`` (images [B, 3, S, S] -> probabilities [B]) to ``path`` as one ONNX file
    with a dynamic batch dimension. PyTorch's recommended exporter is tried first (the
    dynamo-based ``torch.onnx.export(..., dynamo=True)``); the TorchScript exporter only when
    that fails, and a one-line error naming ``what`` when both do. Returns the exporter used:
    ``dynamo`` or ``torchscript``."""
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
            dynamo_error = _first_line(exc)
            log.warning("the dynamo ONNX exporter failed (%s); using the TorchScript one",
                        dynamo_error)
        try:
            torch.onnx.export(model, (sample,), str(tmp), dynamo=False, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=17,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - both failed: one line, not two tracebacks
            raise KdbenchError(
                f"{what} cannot be exported to ONNX: the dynamo exporter failed "
                f"({dynamo_error}) and the TorchScript one too ({_first_line(exc)}); report "
                "this with your torch and onnx versions") from None
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


def verify(path: Path, model: torch.nn.Module, images: torch.Tensor, threads: int,
           what: str = "the student") -> float:
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
        raise KdbenchError(f"the ONNX model of {what} gives probabilities that differ from "
                           f"PyTorch's by up to {diff:.2e} (more than {TOLERANCE:g}) on "
                           f"{len(images)} test frames; {path} was not kept - report this with "
                           "your torch and onnx versions")
    return diff


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantization tools log to the root logger: per-channel notes on 1-D
    weights (BatchNorm, LayerNorm scales), which are left as they are. Hidden within the block
    (errors still show)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray,
                  what: str = "the student") -> None:
    """Post-training static int8 quantization of the ONNX file ``fp32`` into ``out``: the
    model pre-processed (shape inference, graph optimisation; skipped with a warning when
    onnxruntime cannot do it), then onnxruntime's ``quantize_static`` in QDQ format with
    per-channel int8 weights and uint8 activations whose ranges are calibrated (min-max) on
    ``calibration`` images. Operators onnxruntime has no int8 kernel for stay in float. A
    failure is one line naming ``what``."""
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
    with atomic_path(out) as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            source = pre
            try:
                quant_pre_process(str(fp32), str(pre))
            except Exception as exc:  # noqa: BLE001 - the pre-processing is an optimisation
                log.warning("onnxruntime could not pre-process %s for quantization (%s); "
                            "quantizing it as exported", fp32, _first_line(exc))
                source = Path(fp32)
            quantize_static(str(source), str(tmp), Calibration(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - an operator onnxruntime cannot quantize
            raise _failed("int8 quantization", "quantize_static", what, fp32, exc) from None
        finally:
            pre.unlink(missing_ok=True)


def quantize_linear_dynamic(fp32: Path, out: Path, what: str = "the student") -> None:
    """Dynamic int8 quantization of the Linear layers only (ONNX ``MatMul``/``Gemm``; the
    convolutions stay fp32), as Karathanasis et al. (2025) quantize with PyTorch's
    ``quantize_dynamic``: onnxruntime's ``quantize_dynamic`` with int8 weights, activations
    quantized at run time. A failure is one line naming ``what``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        try:
            quantize_dynamic(str(fp32), str(tmp), op_types_to_quantize=["MatMul", "Gemm"],
                             weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - an operator onnxruntime cannot quantize
            raise _failed("dynamic int8 quantization", "quantize_dynamic", what, fp32,
                          exc) from None


def _failed(step: str, function: str, what: str, fp32: Path, exc: Exception) -> KdbenchError:
    """The one line a failed quantization raises."""
    return KdbenchError(f"{step} of {what} failed in onnxruntime's {function} "
                        f"({_first_line(exc)}); its fp32 file {fp32} is unaffected and "
                        "deployable; report this with your onnxruntime version")
