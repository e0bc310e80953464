"""int8 against fp32 ONNX latency of a resnet18_thin student at 64 px on this CPU, measured in
one process (pytest-benchmark extra_info); `kdbench quantize RUN --int8` measures a trained
run's student the same way.

Run: ``pytest tests/bench/test_deploy_latency.py --benchmark-only -s``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.deploy.measure import latency_ms, onnx_predictor
from kdbench.deploy.student_file import FakeProbability
from kdbench.models.students import create_student

pytest.importorskip("onnxruntime", reason='the deploy extra is not installed (pip install '
                    '"kdbench[deploy]")')
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")


def test_int8_over_fp32_at_batch_32(benchmark, tmp_path):
    from kdbench.deploy.onnx_files import export_onnx, quantize_int8, session

    torch.manual_seed(0)
    model = FakeProbability(create_student("resnet18_thin")).eval()
    images = torch.rand(64, 3, 64, 64) * 2 - 1
    export_onnx(model, images[:2], tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images.numpy())
    threads = torch.get_num_threads()
    ms = {name: latency_ms(onnx_predictor(session(tmp_path / f"{name}.onnx", threads)), 64,
                           32, repeats=5)
          for name in ("fp32", "int8")}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({"threads": threads, "fp32_ms_per_image": ms["fp32"],
                                 "int8_ms_per_image": ms["int8"],
                                 "int8_speedup": ms["fp32"] / ms["int8"]})
    assert all(np.isfinite(v) and v > 0 for v in ms.values())
    size = {n: (tmp_path / f"{n}.onnx").stat().st_size for n in ("fp32", "int8")}
    assert size["fp32"] / size["int8"] >= 3
