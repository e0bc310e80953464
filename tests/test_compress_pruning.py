import copy
import importlib
import json
import sys

import pytest
import torch
from torch import nn

from kdbench.compress.structure_file import apply_structure, structure_of
from kdbench.compress.structured import prune_structured
from kdbench.compress.unstructured import (
    apply_masks,
    gzip_mb,
    layer_sparsity,
    make_permanent,
    overall_sparsity,
    prunable_layers,
    recalibrate_bn,
)
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student


def logits(model, x):
    return model(x).logits


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return create_student("resnet18_thin")


@pytest.fixture
def student(resnet18):
    return copy.deepcopy(resnet18)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))


# ---- unstructured -------------------------------------------------------------------------


def test_layer_scope_prunes_every_layer_to_the_target(student):
    names = apply_masks(student, 0.9, "layer", ignore=[student.fc])
    assert names == [n for n, _ in prunable_layers(student, ignore=[student.fc])]
    assert "fc" not in names and len(names) == len(prunable_layers(student)) - 1
    sparsity = layer_sparsity(student)
    assert all(sparsity[n] >= 0.895 for n in names)
    assert sparsity["fc"] == 0.0  # ignored
    assert not hasattr(student.fc, "weight_mask") and not hasattr(student.fc, "bias_mask")


def test_global_scope_hits_the_overall_target_with_uneven_layers(student):
    apply_masks(student, 0.9, "global")
    zeros, total = overall_sparsity(student)
    assert abs(zeros / total - 0.9) < 1e-3
    assert len({round(s, 3) for s in layer_sparsity(student).values()}) > 1
    assert all(not hasattr(m, "bias_mask") for _, m in prunable_layers(student))


def test_masks_keep_zeros_through_training_and_fold_to_the_plain_keys(student, resnet18):
    names = apply_masks(student, 0.5, "layer")
    layers = dict(prunable_layers(student))
    zero = {n: layers[n].weight == 0 for n in names}
    before = {n: layers[n].weight.detach().clone() for n in names}
    opt = torch.optim.Adam(student.parameters(), lr=0.1)
    student.train()
    loss = nn.functional.cross_entropy(logits(student, torch.randn(4, 3, 32, 32)),
                                       torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    student(torch.randn(2, 3, 32, 32))  # the forward pre-hooks recompute weight = orig * mask
    for n in names:
        w = layers[n].weight
        assert torch.all(w[zero[n]] == 0), n
    assert any(not torch.equal(layers[n].weight, before[n]) for n in names)  # it did train
    assert make_permanent(student) == len(names)
    assert sorted(student.state_dict()) == sorted(resnet18.state_dict())
    assert all(isinstance(m.weight, nn.Parameter) for m in layers.values())
    assert all(layer_sparsity(student)[n] >= 0.495 for n in names)


def test_recalibrate_bn_averages_the_batch_statistics(student):
    bn = student.backbone.stem[1]
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    student.eval()
    batches = [torch.randn(4, 3, 32, 32) * (i + 1) for i in range(3)]
    assert recalibrate_bn(student, batches, forward=logits) == 12
    hook.remove()
    assert len(seen) == 3
    mean = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
    var = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, var, atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.1
    assert not any(m.training for m in student.modules())


def test_recalibrate_bn_restores_train_mode_and_rejects_no_batches(student):
    student.train()
    assert recalibrate_bn(student, [torch.randn(2, 3, 32, 32)], forward=logits) == 2
    assert all(m.training for m in student.modules())
    with pytest.raises(KdbenchError, match="no batches"):
        recalibrate_bn(student, [])


def test_a_sparse_model_gzips_to_less_than_half():
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    dense = gzip_mb(model)
    apply_masks(model, 0.9, "layer")
    sparse = gzip_mb(model)  # masks folded in: no dense weight_orig copy counted
    assert sparse < dense / 2
    make_permanent(model)
    assert gzip_mb(model) == pytest.approx(sparse, rel=0.01)


@pytest.mark.parametrize(("target", "scope", "message"), [
    (0, "layer", r"--target must be a fraction in \(0, 1\), got 0"),
    (1, "layer", r"--target must be a fraction in \(0, 1\), got 1"),
    (1.5, "global", r"got 1\.5"),
    (0.5, "channel", r"--scope must be one of layer, global, got 'channel'"),
])
def test_bad_pruning_settings_are_one_line(target, scope, message):
    with pytest.raises(KdbenchError, match=message):
        apply_masks(tiny_net(), target, scope)


# ---- structured ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18_thin", "resnet34_thin"])
def test_structured_pruning_reaches_the_parameter_target(name):
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = create_student(name).train()
    original = n_params(model)
    x = torch.randn(2, 3, 32, 32)
    result = prune_structured(model, x, 0.9, forward=logits)
    assert abs(1 - n_params(model) / original - 0.9) <= 0.01
    assert result["params_before"] == result["reference_params"] == original
    assert result["params_after"] == n_params(model)
    assert result["removed"] == pytest.approx(1 - n_params(model) / original)
    assert 0 < result["ratio"] < 1
    assert all(m.training for m in model.modules())  # mode kept
    # traced in eval mode: the example did not leak into the BatchNorm statistics
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules()
               if isinstance(m, nn.BatchNorm2d))
    model.eval()
    out = model(x)
    assert out.logits.shape == (2, 2) and model.fc.out_features == 2
    assert model.stage_channels == [f.shape[1] for f in out.feats]
    assert model.stage_channels[-1] == model.fc.in_features < 256


def test_iterative_structured_pruning_counts_from_the_original(student):
    pytest.importorskip("torch_pruning")
    original = n_params(student)
    x = torch.randn(2, 3, 32, 32)
    first = prune_structured(student, x, 0.5, forward=logits)
    assert abs(first["removed"] - 0.5) <= 0.01
    second = prune_structured(student, x, 0.9, forward=logits, reference_params=original)
    assert second["params_before"] == first["params_after"]
    assert abs(1 - n_params(student) / original - 0.9) <= 0.01
    assert second["reference_params"] == original


def test_an_unreachable_target_names_the_closest_share():
    pytest.importorskip("torch_pruning")
    model = tiny_net()
    before = n_params(model)
    with pytest.raises(KdbenchError, match=r"cannot remove 99\.9999% .* closest reachable is"):
        prune_structured(model, torch.randn(1, 3, 8, 8), 0.999999, tolerance=1e-6)
    assert n_params(model) == before  # only copies were pruned
    with pytest.raises(KdbenchError, match=r"--target must be a fraction in \(0, 1\), got 1"):
        prune_structured(model, torch.randn(1, 3, 8, 8), 1)


class Transposed(nn.Module):
    """Mixes channels with a spatial axis: DepGraph's channel coupling is wrong for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(32, 2)

    def forward(self, x):
        y = self.conv2(self.conv1(x)).transpose(1, 2)  # [B, H, C, W]
        return self.fc(nn.functional.adaptive_avg_pool2d(y, (8, 4)).mean(1).flatten(1))


@pytest.mark.parametrize("case", ["transposed", "student_without_forward"])
def test_a_model_torch_pruning_cannot_trace_is_one_line(case):
    pytest.importorskip("torch_pruning")
    if case == "transposed":
        model, x, name = Transposed(), torch.randn(1, 3, 8, 8), "Transposed"
    else:  # the student's forward returns a StudentOut, which DepGraph cannot follow
        model, x, name = create_student("resnet18_thin"), torch.randn(1, 3, 32, 32), "Student"
    with pytest.raises(KdbenchError) as err:
        prune_structured(model, x, 0.5)
    message = str(err.value)
    assert message.startswith(f"Torch-Pruning cannot trace {name}: ")
    assert message.endswith("prune it with --prune unstructured instead")
    assert "\n" not in message


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    monkeypatch.delitem(sys.modules, "kdbench.compress.structured")
    structured = importlib.import_module("kdbench.compress.structured")  # imports without it
    with pytest.raises(KdbenchError) as err:
        structured.prune_structured(tiny_net(), torch.randn(1, 3, 8, 8), 0.5)
    assert str(err.value) == ('structured pruning needs Torch-Pruning: pip install '
                              '"kdbench[compress]"')


# ---- structure file -----------------------------------------------------------------------


def test_structure_round_trip_loads_a_pruned_model_into_a_fresh_one(student):
    pytest.importorskip("torch_pruning")
    x = torch.randn(2, 3, 32, 32)
    prune_structured(student, x, 0.7, forward=logits)
    record = json.loads(json.dumps(structure_of(student)))
    fresh = apply_structure(create_student("resnet18_thin"), record)
    fresh.load_state_dict(student.state_dict(), strict=True)
    assert fresh.stage_channels == student.stage_channels != [32, 64, 128, 256]
    assert structure_of(fresh) == record
    student.eval(), fresh.eval()
    with torch.no_grad():
        a, b = student(x), fresh(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(f, g) for f, g in zip(a.feats, b.feats))


def test_a_structure_of_another_architecture_is_refused(resnet18):
    record = json.loads(json.dumps(structure_of(create_student("xception"))))
    with pytest.raises(KdbenchError, match="another architecture"):
        apply_structure(create_student("resnet18_thin"), record)
    assert structure_of(resnet18)["stage_channels"] == [32, 64, 128, 256]
