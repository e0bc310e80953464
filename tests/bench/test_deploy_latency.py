"""int8 against fp32 ONNX latency of a resnet18_thin student at 64 px on this CPU, measured in
one process (pytest-benchmark extra_info); `kdbench quantize RUN --int8` measures a trained
run's student the same way.

Run: ``pytest tests/bench/test_deploy_latency.py --benchmark-only -s``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from kdbench.deploy.measure import latency_ms, onnx_predictor
from kdbench.deploy.student_file import FakeProbability
from kdbench.models.students import create_student

pytest.importorskip("onnxruntime", reason='the deploy extra is not installed (pip install '
                    '"kdbench[deploy]")')
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed")


@pytest.mark.slow
def test_int8_over_fp32_at_batch_32(benchmark, tmp_path):
    from kdbench.deploy.onnx_files import (
        export_onnx,
        onnx_probabilities,
        quantize_int8,
        session,
    )

    torch.manual_seed(0)
    model = FakeProbability(create_student("resnet18_thin")).eval()
    images = torch.rand(64, 3, 64, 64) * 2 - 1
    export_onnx(model, images[:2], tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images.numpy())
    threads = torch.get_num_threads()
    sessions = {name: session(tmp_path / f"{name}.onnx", threads) for name in ("fp32", "int8")}
    ms = {name: latency_ms(onnx_predictor(sess), 64, 32, repeats=5)
          for name, sess in sessions.items()}
    batch = images[:32].numpy()
    int8 = benchmark.pedantic(onnx_probabilities, args=(sessions["int8"], batch),  # one batch
                              kwargs={"batch_size": 32}, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update({"threads": threads, "fp32_ms_per_image": ms["fp32"],
                                 "int8_ms_per_image": ms["int8"],
                                 "int8_speedup": ms["fp32"] / ms["int8"]})
    with torch.no_grad():
        expected = model(images[:32]).double().numpy()
    fp32 = onnx_probabilities(sessions["fp32"], batch, batch_size=32)
    assert int8.shape == fp32.shape == expected.shape == (32,)
    assert np.abs(fp32 - expected).max() < 1e-4  # the fp32 file is the model
    assert np.abs(int8 - fp32).max() < 0.05  # int8 approximates it (outputs near 0.51 here)
    ops = {n: Counter(node.op_type for node in onnx.load(str(tmp_path / f"{n}.onnx")).graph.node)
           for n in ("fp32", "int8")}
    assert ops["fp32"]["QuantizeLinear"] == 0 and ops["int8"]["QuantizeLinear"] > 0  # QDQ int8
    assert ops["int8"]["DequantizeLinear"] >= ops["fp32"]["Conv"] > 0  # every conv's weights
    size = {n: (tmp_path / f"{n}.onnx").stat().st_size for n in ("fp32", "int8")}
    assert size["fp32"] / size["int8"] >= 3
