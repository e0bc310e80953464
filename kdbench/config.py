"""Presets (quick, cpu, paper), `--set key=value` overrides and the spec of one run."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.values import check_limits, coerce, did_you_mean_key

SECTIONS = ("data", "train", "teacher", "student")
DEFAULT_RESULTS = "kdbench-results"  # results/ holds the committed reference runs: named only
# kdbench's own backbones (kdbench.models.backbones builds them; any timm CNN works too, checked
# once torch and timm are imported)
BACKBONES = ("resnet18_thin", "resnet34_thin", "xception")
TEACHER_KINDS = ("dual", "single")
METRIC_NAMES = ("acc", "auc", "ap", "eer", "video_auc")

_BASE: dict[str, Any] = {
    # train_generators / test_generators: comma lists of the generators whose fakes the
    # train+val / test splits keep ("": all; kdbench.data.generators)
    "data": {"size": 64, "frames": 8, "workers": 0, "train_generators": "",
             "test_generators": ""},
    "train": {
        "epochs": 12,
        "batch_size": 64,
        "lr": 1e-3,
        "step_size": 8,
        "gamma": 0.1,
        "weight_decay": 0.0,
        "optimizer": "adam",  # adam (betas 0.9, 0.999) or sgd (momentum 0.9, as RepDistiller)
        "amp": "auto",  # bf16 autocast: auto = on CUDA only; true / false force it
        "channels_last": "auto",  # NHWC memory format: auto = on CUDA and the CPU (faster on both)
        "compile": False,  # torch.compile the student and the teacher's forward
        "select": "acc",
        "eval_batch_size": 256,
        # disk budget of the shared cache of teacher outputs (0 turns it off)
        "teacher_cache_gb": 32.0,
        # under torchrun: SyncBatchNorm over the global batch (CUDA) instead of per-rank BN
        "sync_bn": False,
        # a TensorBoard event file in each run folder (the tb extra)
        "tensorboard": False,
        # steps between records of gradcos.jsonl in a both-mode run: the cosine of the RGB and
        # frequency distillation gradients at the student's last shared stage (0: off)
        "gradcos_every": 10,
    },
    "teacher": {
        "backbone": "resnet18_thin",
        "proj_dim": 128,
        "hp_cutoff": 0.33,
        "seed": 0,
        "pretrained": None,
        "kind": "dual",  # dual: RGB + frequency branches with RFAMs; single: one RGB classifier
        "freq_backbone": None,  # the dual teacher's frequency branch (None: teacher.backbone)
        "checkpoint": None,  # a trained detector's weights file: loaded, never trained
        "key_prefix": "",  # stripped from the checkpoint's keys (e.g. backbone.)
        # the frequency branch's input: dct (x^F, the paper's) or dwt (the stacked wavelet
        # bands of `wavelet` at `levels` levels, kdbench.models.wavelet)
        "freq_view": "dct",
        "wavelet": "haar",
        "levels": 1,
    },
    # size: the student's input side (None: data.size); a smaller one is made from the
    # teacher's image by the degradation model (kdbench.models.degrade): resized, then blurred
    # (sigma px), JPEG-compressed (quality; 0: off) and given noise (8-bit levels)
    "student": {"pretrained": None, "size": None, "blur": 0.0, "jpeg": 0, "noise": 0.0},
    # per-dataset overrides of the sections above
    "datasets": {},
}

# settings whose default None means "as another setting" and that otherwise take a number of
# this type (student.size: None is data.size)
OPTIONAL_NUMBERS = {"student.size": 32}
# the allowed values of the settings (kdbench.values); a `--set` outside them is an error
LIMITS: dict[str, dict[str, dict[str, Any]]] = {
    "data": {"size": {"min": 8}, "frames": {"min": 1}, "workers": {"min": 0}},
    "train": {"epochs": {"min": 1}, "batch_size": {"min": 1}, "lr": {"gt": 0},
              "step_size": {"min": 1}, "gamma": {"gt": 0}, "weight_decay": {"min": 0},
              "optimizer": {"choices": ["adam", "sgd"]},
              "select": {"choices": list(METRIC_NAMES)}, "eval_batch_size": {"min": 1},
              "teacher_cache_gb": {"min": 0}, "amp": {"choices": ["auto", True, False]},
              "channels_last": {"choices": ["auto", True, False]},
              "sync_bn": {"choices": [True, False]},
              "tensorboard": {"choices": [True, False]}, "gradcos_every": {"min": 0}},
    "teacher": {"proj_dim": {"min": 1}, "hp_cutoff": {"gt": 0, "lt": 1}, "seed": {"min": 0},
                "kind": {"choices": list(TEACHER_KINDS)},
                "freq_view": {"choices": ["dct", "dwt"]}, "levels": {"min": 1}},
    "student": {"size": {"min": 8}, "blur": {"min": 0}, "jpeg": {"min": 0, "max": 100},
                "noise": {"min": 0}},
}

PRESETS: dict[str, dict[str, Any]] = {
    # smoke size: every method of the registry in minutes on 2 CPU cores, and it learns: the
    # synthetic traces need about three epochs of the cpu preset's frames at 64 px (at 32 or
    # 48 px, or with fewer frames, the teacher-free student stayed at the majority rate, AUC
    # 0.51-0.65)
    "quick": {
        "students": ["resnet18_thin"],
        "data": {"size": 64, "frames": 8},
        "train": {"epochs": 3, "batch_size": 64, "step_size": 2, "gamma": 0.1,
                  "select": "auc"},
        "teacher": {"proj_dim": 64},
    },
    # default without a GPU: the embedded dataset at a small resolution
    "cpu": {"students": ["resnet18_thin"]},
    # edge students from the cpu preset's teacher (the same settings: the same teacher and
    # resnet18_thin runs as cpu)
    "mobile": {"students": ["mobilenetv3_large_100", "efficientnet_b0", "resnet18_thin"]},
    # the paper's setting (docs/design.md)
    "paper": {
        "students": ["resnet18_thin", "resnet34_thin", "xception"],
        "data": {"size": 299, "frames": 32, "workers": 4},
        "train": {"epochs": 15, "batch_size": 64, "lr": 1e-4, "step_size": 5, "gamma": 0.1},
        # the paper's branches start from ImageNet weights (docs/design.md decision 11)
        "teacher": {"backbone": "xception", "proj_dim": 256, "pretrained": "imagenet"},
        "datasets": {"celebdf": {"train": {"lr": 1e-3}}},
    },
}


# settings that change how fast a run goes, not what it computes: they neither name a run
# nor make a finished run count as different (teacher_cache_mb: kdbench 0.2's cache budget)
SPEED_SETTINGS = {"workers", "eval_batch_size", "channels_last", "compile", "teacher_cache_gb",
                  "teacher_cache_mb"}
# settings that only act when a run is data-parallel (torchrun): like the number of ranks,
# they do not name a run (one run's result is the same up to BatchNorm statistics)
PARALLEL_SETTINGS = {"sync_bn"}
# the trace file of train.gradcos_every: <run>/gradcos.jsonl
GRADCOS_TRACE = "gradcos"
# settings that only add output files: they do not name a run either
# (gradsim_every: gradcos_every's first name, in the configs runs recorded with it)
OUTPUT_SETTINGS = {"tensorboard", "gradcos_every", "gradsim_every"}
# settings added after runs were stored (kdbench 0.4): at their default (_BASE) a run's identity
# and its teacher folder's name leave them out, so the runs stored before them are still found
ADDED_SETTINGS = {"teacher": ("kind", "freq_backbone", "checkpoint", "key_prefix", "freq_view",
                              "wavelet", "levels"),
                  "train": ("optimizer",), "data": ("train_generators", "test_generators"),
                  "student": ("size", "blur", "jpeg", "noise")}
GENERATOR_SETTINGS = ("train_generators", "test_generators")  # data.*: the generator protocol


def without_added_defaults(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of ``section`` less the :data:`ADDED_SETTINGS` at their default."""
    added = ADDED_SETTINGS.get(section, ())
    return {k: v for k, v in values.items() if k not in added or _BASE[section][k] != v}
# where an "auto" setting is on: bf16 autocast on CUDA only (the CPU keeps fp32 results);
# channels_last also on the CPU, where oneDNN's NHWC convolutions measured 20-25 % faster
AUTO_SETTINGS = {"amp": ("cuda",), "channels_last": ("cuda", "cpu")}


def for_device(config: dict[str, Any], device_type: str) -> dict[str, Any]:
    """``config`` with its ``auto`` training settings decided for ``device_type``
    (:data:`AUTO_SETTINGS`), so a run records what it really used."""
    out = copy.deepcopy(config)
    for key, devices in AUTO_SETTINGS.items():
        if out["train"].get(key) == "auto":
            out["train"][key] = device_type in devices
    return out


def check_device_name(name: str) -> None:
    """``--device`` is auto, cpu, cuda or cuda:N (a one-line error otherwise)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise KdbenchError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N "
                           "(default: cuda when there is one)")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``base`` with ``update`` merged in recursively."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values as YAML scalars) into a nested dict."""
    nested: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise KdbenchError(f"--set expects key=value (e.g. train.lr=0.001), got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KdbenchError(f"--set {item!r} conflicts with another --set of {part}")
        node[leaf] = value
    return nested


def resolve_config(preset: str, dataset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset + its per-dataset overrides + the ``--set`` overrides of the config sections."""
    if preset not in PRESETS:
        raise KdbenchError(f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; choose "
                           f"one of {', '.join(PRESETS)}")
    cfg = deep_merge(_BASE, PRESETS[preset])
    cfg.pop("students")
    per_dataset = cfg.pop("datasets").get(dataset, {})
    cfg = deep_merge(cfg, per_dataset)
    section_overrides = {k: v for k, v in overrides.items() if k in SECTIONS}
    for section, values in section_overrides.items():
        if not isinstance(values, dict):
            raise KdbenchError(f"--set {section}=... needs a key, e.g. {section}.<name>=value")
        unknown = sorted(set(values) - set(cfg[section]))
        if unknown:
            raise KdbenchError(
                f"unknown setting {section}.{unknown[0]}"
                f"{did_you_mean_key(section, unknown[0], cfg[section])}; known: "
                + ", ".join(f"{section}.{k}" for k in cfg[section])
            )
        for key, value in values.items():  # the type of the default, within its limits
            name = f"{section}.{key}"
            if isinstance(value, (dict, list)):
                raise KdbenchError(f"--set {name} takes one value, not {value!r}")
            default = OPTIONAL_NUMBERS.get(name, cfg[section][key])
            if default is None and value is not None and not isinstance(value, str):
                raise KdbenchError(f"--set {name} takes a file path, not {value!r}")
            if value is None or str(value).lower() == "none":
                value = None if name in OPTIONAL_NUMBERS else value
            if value is not None or name not in OPTIONAL_NUMBERS:
                value = coerce(value, default, name)
            values[key] = check_limits(value, LIMITS[section].get(key), name)
    cfg = deep_merge(cfg, section_overrides)
    if cfg["student"].get("size") == cfg["data"]["size"]:  # the data's size: no resize at all
        cfg["student"]["size"] = None
    for key in GENERATOR_SETTINGS:  # one spelling per set of generators: sorted, no repeats
        names = sorted({g.strip() for g in str(cfg["data"][key]).split(",") if g.strip()})
        bad = [g for g in names if re.search(r"[/\\+=@\s]", g)]
        if bad:
            raise KdbenchError(f"data.{key}: the generator name {bad[0]!r} cannot name a run "
                               "folder (no /, \\, +, =, @ or spaces); name the generators of "
                               "the dataset's manifest")
        cfg["data"][key] = ",".join(names)
    for section, key in (("teacher", "pretrained"), ("student", "pretrained"),
                         ("teacher", "checkpoint"), ("teacher", "freq_backbone")):
        if str(cfg[section][key]).lower() in ("none", ""):  # "none": as the default None
            cfg[section][key] = None
    if cfg["teacher"]["checkpoint"]:  # one file, however it is spelt: one teacher folder
        cfg["teacher"]["checkpoint"] = str(Path(cfg["teacher"]["checkpoint"]).expanduser()
                                           .resolve())
    cfg["preset"] = preset
    return cfg


def default_preset(device: str) -> str:
    """The preset a run gets when none is named: paper on CUDA, cpu otherwise."""
    return "paper" if str(device).startswith("cuda") else "cpu"


def preset_students(preset: str) -> list[str]:
    """The students a preset trains when ``--students`` is not given."""
    if preset not in PRESETS:
        raise KdbenchError(f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; choose "
                           f"one of {', '.join(PRESETS)}")
    return list(PRESETS[preset]["students"])


def config_hash(obj: Any, n: int = 8) -> str:
    """Short stable hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass
class RunSpec:
    """One training run: what is trained, on what, and with which settings."""

    dataset: str
    student: str
    method: str
    mode: str
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # the hyper-parameters that differ from the registry's, e.g. "d=256"
    protocol: str = ""  # the dataset folder's suffix, e.g. "train=a+b" (dataset_folder)
    student_input: str = ""  # a degraded student input, e.g. "32px" (student_input_tag)

    @property
    def label(self) -> str:
        """Method name plus its variant: ``m`` or ``m@k=256``."""
        return f"{self.method}@{self.variant}" if self.variant else self.method

    @property
    def relpath(self) -> str:
        data = f"{self.dataset}@{self.protocol}" if self.protocol else self.dataset
        student = f"{self.student}@{self.student_input}" if self.student_input else self.student
        return f"runs/{data}/{student}/{self.label}/{self.mode}/seed{self.seed}"


def student_input_tag(config: dict[str, Any]) -> str:
    """How a student's input differs from the data (cross-resolution) as a run folder's
    suffix to the student's name: ``32px``, ``32px-blur1-jpeg75-noise2`` ("" for none)."""
    st, size = config["student"], config["data"]["size"]
    parts = [f"{st['size']}px"] if st.get("size") not in (None, size) else []
    parts += [f"{k}{_fmt(st[k])}" for k in ("blur", "jpeg", "noise") if st.get(k)]
    return "-".join(parts)


def view_tag(teacher: dict[str, Any]) -> str:
    """A dual teacher's frequency view other than the DCT as a run folder's suffix:
    ``view=dwt`` (``,wavelet=db2``, ``,levels=2`` where not the defaults; "" for the DCT)."""
    if teacher.get("freq_view", "dct") != "dwt":
        return ""
    parts = ["view=dwt"]
    if teacher.get("wavelet", "haar") != "haar":
        parts.append(f"wavelet={teacher['wavelet']}")
    if int(teacher.get("levels", 1)) != 1:
        parts.append(f"levels={teacher['levels']}")
    return ",".join(parts)


def dataset_folder(dataset: str, config: dict[str, Any]) -> str:
    """A plan's folder under ``runs/``: the dataset, then its generator protocol and teacher
    view where not the defaults (``synthetic_gen@train=a+b``, ``synthetic@view=dwt``)."""
    tag = ",".join(t for t in (protocol_tag(config["data"]), view_tag(config["teacher"])) if t)
    return f"{dataset}@{tag}" if tag else dataset


def protocol_tag(data: dict[str, Any]) -> str:
    """The generator protocol of a config's data section as a run folder's suffix:
    ``train=a+b,test=c`` ("" when every generator is used)."""
    parts = [f"{key.split('_')[0]}={data[key].replace(',', '+')}" for key in GENERATOR_SETTINGS
             if data.get(key)]
    return ",".join(parts)


def variant_tag(hparams: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``key=value,...`` of the hyper-parameters that differ from ``defaults`` (sorted), or ""."""
    diff = {k: v for k, v in hparams.items() if k not in defaults or defaults[k] != v}
    return ",".join(f"{k}={_fmt(v)}" for k, v in sorted(diff.items()))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
