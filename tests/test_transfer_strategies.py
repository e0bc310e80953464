"""What each transfer strategy trains: the head, the last K stages, everything, LoRA (under 10 %
of full's parameters, merged back into the student's own architecture) or an adapter that
starts as the identity; the strategies a backbone cannot take are one line."""

from __future__ import annotations

import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from kdbench.transfer.strategies import (
    AdaptedStudent,
    apply,
    finalize,
    parse_strategy,
    trainable,
)

X = torch.randn(2, 3, 32, 32)


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_linear_partial_and_full_train_what_they_say():
    names = _trainable_names(apply(create_student("resnet18_thin"), parse_strategy("linear")))
    assert names == {"fc.weight", "fc.bias"}
    names = _trainable_names(apply(create_student("resnet18_thin"),
                                   parse_strategy("partial:2")))
    assert {n.split(".")[2] for n in names if n.startswith("backbone.")} == {"2", "3"}
    assert "fc.weight" in names and not any(n.startswith("backbone.stem") for n in names)
    full = apply(create_student("resnet18_thin"), parse_strategy("full"))
    assert trainable(full)[0] == trainable(full)[1]


def test_lora_trains_under_a_tenth_of_full_and_merges_into_the_student():
    pytest.importorskip("peft", reason='the transfer extra is not installed (pip install '
                        '"kdbench[transfer]")')
    torch.manual_seed(0)
    student = create_student("resnet18_thin").eval()
    before = student(X).logits.detach()
    model = apply(student, parse_strategy("lora:4"))
    lora, total = trainable(model)
    assert 0 < lora < 0.1 * total
    with torch.no_grad():  # move the LoRA weights and the trained head copy: merging must
        for name, p in model.named_parameters():  # keep the function, head included
            if "lora_B" in name or ("modules_to_save" in name and "fc" in name):
                p.add_(0.01)
    adapted = model(X).logits.detach()
    assert not torch.allclose(adapted, before)
    merged = finalize(model).eval()
    assert type(merged).__name__ == "Student"
    assert torch.allclose(merged(X).logits, adapted, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_the_adapter_starts_as_the_identity_and_trains_alone_with_the_head():
    student = create_student("resnet18_thin").eval()
    before = student(X).logits.detach()
    model = apply(student, parse_strategy("adapter"))
    assert isinstance(model, AdaptedStudent)
    assert torch.allclose(model.eval()(X).logits, before)
    assert {n.split(".")[0] for n in _trainable_names(model)} == {"adapter", "student"}
    assert {n for n in _trainable_names(model) if n.startswith("student.")} == {
        "student.fc.weight", "student.fc.bias"}
    out = model(X, preact=True)  # the student interface, pre-activation maps included
    assert len(out.preact) == len(out.feats) == 4 and model.fc is student.fc


@pytest.mark.parametrize(("spec", "message"), [
    ("partial:5", "does not fit resnet18_thin: it has 4 stages"),
    ("partial:0", "unknown --strategy 'partial:0'"),
    ("lora", "unknown --strategy 'lora'"),
    ("prompt", "unknown --strategy 'prompt'"),
])
def test_a_strategy_that_does_not_fit_is_one_line(spec, message):
    with pytest.raises(KdbenchError, match=message.replace("(", r"\(")) as info:
        apply(create_student("resnet18_thin"), parse_strategy(spec))
    assert "\n" not in str(info.value)


def test_frozen_batchnorm_keeps_its_statistics_while_the_head_trains():
    model = apply(create_student("resnet18_thin"), parse_strategy("linear")).train()
    bn = model.backbone.stem[1]
    before = bn.running_mean.clone()
    model(X * 5 + 3)  # a training-mode forward pass on shifted inputs
    assert torch.equal(bn.running_mean, before)
    full = apply(create_student("resnet18_thin"), parse_strategy("full")).train()
    full(X * 5 + 3)
    assert not torch.equal(full.backbone.stem[1].running_mean, before)


def test_a_small_students_adapter_reads_the_small_image():
    from kdbench.models.degrade import Degradation, DegradedStudent

    student = DegradedStudent(create_student("resnet18_thin"), Degradation(16))
    model = apply(student, parse_strategy("adapter"))
    assert isinstance(model, DegradedStudent) and isinstance(model.student, AdaptedStudent)
    seen = []
    model.student.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    model.eval()(torch.zeros(1, 3, 32, 32))
    assert seen == [(1, 3, 16, 16)]
    assert finalize(model) is model
