"""Structured 90 % (Torch-Pruning, parameters measured) against the dense resnet18_thin
student: ONNX fp32 latency at batch 32 and 64 px on this CPU, measured in one process
(pytest-benchmark extra_info); `kdbench compress` + `kdbench export` measure a trained run's
child the same way.

Run: ``pytest tests/bench/test_pruned_latency.py --benchmark-only -s``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.deploy.measure import latency_ms, onnx_predictor
from kdbench.deploy.student_file import FakeProbability
from kdbench.models.cost import count_params
from kdbench.models.students import create_student

pytest.importorskip("onnxruntime", reason='the deploy extra is not installed (pip install '
                    '"kdbench[deploy]")')
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")
pytest.importorskip("torch_pruning", reason='the compress extra is not installed (pip install '
                    '"kdbench[compress]")')


@pytest.mark.slow
def test_structured_90_over_dense_at_batch_32(benchmark, tmp_path):
    from kdbench.compress.structured import prune_structured
    from kdbench.deploy.onnx_files import export_onnx, onnx_probabilities, session

    torch.manual_seed(0)
    dense = create_student("resnet18_thin").eval()
    pruned = create_student("resnet18_thin").eval()
    pruned.load_state_dict(dense.state_dict())
    images = torch.rand(32, 3, 64, 64) * 2 - 1
    done = prune_structured(pruned, images[:2], 0.9, forward=lambda m, x: m(x).logits,
                            ignore=[pruned.fc])
    assert abs(1 - count_params(pruned) / count_params(dense) - 0.9) <= 0.01
    threads = torch.get_num_threads()
    sessions = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        export_onnx(FakeProbability(model).eval(), images[:2], tmp_path / f"{name}.onnx")
        sessions[name] = session(tmp_path / f"{name}.onnx", threads)
    ms = {name: latency_ms(onnx_predictor(sess), 64, 32, repeats=10)
          for name, sess in sessions.items()}
    batch = images.numpy()
    out = benchmark.pedantic(onnx_probabilities, args=(sessions["pruned"], batch),  # one batch
                             kwargs={"batch_size": 32}, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update({
        "threads": threads, "channel_ratio": done["ratio"], "removed": done["removed"],
        "dense_ms_per_image": ms["dense"], "pruned_ms_per_image": ms["pruned"],
        "pruned_over_dense": ms["pruned"] / ms["dense"]})
    with torch.no_grad():
        expected = FakeProbability(pruned)(images).double().numpy()
    assert out.shape == (32,) and np.abs(out - expected).max() < 1e-4  # the file is the model
