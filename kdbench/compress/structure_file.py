"""A pruned model's shape as JSON, so that a fresh model of the same architecture can be reshaped
to load its state dict (no Torch-Pruning needed)."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.errors import KdbenchError

SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features",
               "out_features", "normalized_shape", "num_channels", "num_groups")


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, (tuple, list, torch.Size)) else value


def structure_of(model: nn.Module) -> dict:
    """The shape of ``model``, JSON-serialisable: ``modules`` (qualified name -> its shape
    attributes), ``tensors`` (parameter or buffer name -> shape) and ``stage_channels`` when the
    model has ``backbone.stage_channels``."""
    modules = {name: {a: _jsonable(vars(m)[a]) for a in SHAPE_ATTRS if a in vars(m)}
               for name, m in model.named_modules()}  # instance attributes, not properties
    tensors = {name: list(t.shape) for name, t in model.named_parameters()}
    tensors.update({name: list(t.shape) for name, t in model.named_buffers()})
    record: dict = {"modules": modules, "tensors": tensors}
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "stage_channels"):
        record["stage_channels"] = [int(c) for c in backbone.stage_channels]
    return record


def _check_names(model: nn.Module, record: dict) -> dict[str, nn.Module]:
    """The model's modules by name, after checking that ``record`` names the same ones."""
    if not isinstance(record, dict) or not {"modules", "tensors"} <= set(record):
        raise KdbenchError("not a structure record (it needs 'modules' and 'tensors'); give the "
                           "structure file saved with the pruned model")
    modules = dict(model.named_modules())
    arch = type(model).__name__
    missing = next((n for n in record["modules"] if n not in modules), None)
    extra = next((n for n in modules if n not in record["modules"]), None)
    if missing is not None or extra is not None:
        what = (f"names module {missing!r}, which this {arch} lacks" if missing is not None else
                f"lacks module {extra!r} of this {arch}")
        raise KdbenchError(f"the structure record {what}: the structure belongs to another "
                           "architecture; build the model it was saved from")
    for name in record["tensors"]:
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if module is None or (attr not in module._parameters and attr not in module._buffers):
            raise KdbenchError(f"the structure record names tensor {name!r}, which this {arch} "
                               "lacks: the structure belongs to another architecture; build the "
                               "model it was saved from")
    return modules


def apply_structure(model: nn.Module, record: dict) -> nn.Module:
    """Reshape ``model`` in place to ``record`` (from :func:`structure_of`): shape attributes,
    uninitialised parameters and buffers of the recorded shapes, ``backbone.stage_channels``;
    then it loads the pruned model's state dict. Returns ``model``."""
    modules = _check_names(model, record)
    for name, attrs in record["modules"].items():
        module = modules[name]
        for attr, value in attrs.items():
            old = getattr(module, attr, None)
            setattr(module, attr, tuple(value) if isinstance(old, tuple) else value)
    for name, shape in record["tensors"].items():
        owner, _, attr = name.rpartition(".")
        module = modules[owner]
        old = getattr(module, attr)
        if old is None or list(old.shape) == list(shape):
            continue
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        setattr(module, attr, new)
    backbone = getattr(model, "backbone", None)
    if "stage_channels" in record and backbone is not None:
        backbone.stage_channels = list(record["stage_channels"])
    return model
