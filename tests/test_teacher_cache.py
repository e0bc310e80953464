import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from kdbench.config import for_device, resolve_config
from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.methods.at import AT
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.train import teacher_cache
from kdbench.train.teacher_cache import ensure, flatten, from_batch, unflatten
from kdbench.train.trainer import Trainer, seed_everything

SIZE = 16
CPU = torch.device("cpu")
GB = 1 << 30


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return DualBranchTeacher("resnet18_thin", proj_dim=8).eval()


@pytest.fixture
def split(tiny_data):
    return FrameSplit(tiny_data.frames, tiny_data.split("train"))


def test_flatten_round_trip(teacher):
    out = teacher(torch.randn(2, 3, SIZE, SIZE))
    back = unflatten(flatten(out))
    assert len(back.rgb) == len(back.freq) == 4 and set(back.aux_logits) == {"rgb", "freq"}
    for a, b in zip(flatten(out).values(), flatten(back).values()):
        assert a is b


def test_cache_matches_the_live_teacher_for_every_frame_and_flip(split, teacher, tmp_path):
    got = ensure(teacher, {"rgb", "freq"}, split, SIZE, CPU, 5, tmp_path / "c", GB)
    assert got.cache is not None and got.built == ["freq", "logits", "rgb"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == got.built
    assert not list((tmp_path / "c").glob("*/rgb_proj*"))  # only what was asked for
    pos, flips = np.array([3, 0, 7]), np.array([True, False, True])
    batch = split[(pos, flips)]
    batch.update(got.cache.read(batch["key"].numpy()))
    b = to_model_input(batch, CPU, SIZE)
    cached = from_batch(b)
    assert cached.rgb[0].dtype == torch.float32  # fp16 on disk, fp32 to the method
    with torch.no_grad():
        want = teacher(b["image"], needs={"rgb", "freq"})
    assert flatten(cached).keys() == flatten(want).keys()
    for a, w in zip(flatten(cached).values(), flatten(want).values()):
        torch.testing.assert_close(a, w.half().float(), atol=1e-3, rtol=1e-3)


def test_cache_is_built_once_and_only_missing_fields_later(split, teacher, tmp_path):
    folder = tmp_path / "c"
    first = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, folder, GB)
    assert first.built == ["logits", "rgb_proj"]
    stamp = (folder / "rgb_proj" / "done.json").stat().st_mtime_ns
    again = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, folder, GB)
    assert again.built == [] and again.cache is not None
    more = ensure(teacher, {"rgb_proj", "freq_proj"}, split, SIZE, CPU, 8, folder, GB)
    assert more.built == ["freq_proj"]
    assert (folder / "rgb_proj" / "done.json").stat().st_mtime_ns == stamp


def test_cache_over_budget_uses_the_live_teacher(split, teacher, tmp_path):
    got = ensure(teacher, {"rgb"}, split, SIZE, CPU, 8, tmp_path / "c", 1000)
    assert got.cache is None and "teacher_cache_gb" in got.reason
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_dir()]


def test_an_interrupted_build_publishes_nothing_and_is_rebuilt(split, teacher, tmp_path,
                                                               monkeypatch):
    folder = tmp_path / "c"
    calls = {"n": 0}
    real = teacher_cache._teacher_outputs

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the 1-frame size probe, then one batch, then interrupted
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "_teacher_outputs", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 4, folder, GB)
    assert not list(folder.glob("*/done.json")) and not list(folder.glob(".building-*"))
    # a build killed outright leaves its .building folder: never read, removed by the next
    (folder / ".building-rgb_proj-1").mkdir()
    (folder / ".building-rgb_proj-1" / "rgb_proj.npy").write_bytes(b"half a file")
    monkeypatch.setattr(teacher_cache, "_teacher_outputs", real)
    got = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 4, folder, GB)
    assert got.built == ["logits", "rgb_proj"] and not list(folder.glob(".building-*"))


def test_a_killed_build_process_leaves_no_corrupt_cache(tiny_data, teacher, tmp_path):
    """SIGKILL a process while it builds the cache; the next build is complete and right."""
    weights = tmp_path / "t.pt"
    torch.save(teacher.state_dict(), weights)
    folder = tmp_path / "c"
    script = textwrap.dedent(f"""
        import time, torch
        from kdbench.data.datasets import load_prepared
        from kdbench.data.loader import FrameSplit
        from kdbench.models.teacher import DualBranchTeacher
        from kdbench.train import teacher_cache
        data = load_prepared({str(tiny_data.root)!r}, "synthetic")
        split = FrameSplit(data.frames, data.split("train"))
        t = DualBranchTeacher("resnet18_thin", proj_dim=8).eval()
        t.load_state_dict(torch.load({str(weights)!r}))
        real = teacher_cache._teacher_outputs
        def slow(*a, **k):
            print("batch", flush=True)
            time.sleep(0.5)
            return real(*a, **k)
        teacher_cache._teacher_outputs = slow
        teacher_cache.ensure(t, {{"rgb_proj"}}, split, {SIZE}, torch.device("cpu"), 2,
                             {str(folder)!r}, 1 << 30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for _ in range(3):  # the size probe and two batches: the build is under way
        assert proc.stdout.readline().strip() == "batch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(folder.glob(".building-*")) and not list(folder.glob("*/done.json"))
    got = ensure(teacher, {"rgb_proj"}, FrameSplit(tiny_data.frames, tiny_data.split("train")),
                 SIZE, CPU, 4, folder, GB)
    assert got.built == ["logits", "rgb_proj"] and not list(folder.glob(".building-*"))
    keys = np.arange(2 * len(tiny_data.split("train")))
    values = got.cache.read(keys)["teacher.rgb_proj"]
    assert torch.isfinite(values.float()).all() and values.abs().sum() > 0


def test_loader_workers_carry_the_cached_outputs(split, teacher, tmp_path):
    got = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, tmp_path / "c", GB)
    inline = list(iterate(split, 4, shuffle=True, seed=1, lookup=got.cache.read))
    workers = list(iterate(split, 4, shuffle=True, seed=1, lookup=got.cache.read, workers=2))
    assert len(inline) == len(workers) > 0
    for a, b in zip(inline, workers):
        assert torch.equal(a["teacher.rgb_proj"], b["teacher.rgb_proj"])
        assert torch.equal(a["image"], b["image"])


def _fit(data, run_dir, teacher, cache_gb, cache_dir, stop_after=None, resume=False):
    cfg = resolve_config("quick", "synthetic", {"train": {"epochs": 3, "batch_size": 4,
                                                          "teacher_cache_gb": cache_gb}})
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    seed_everything(0)
    learner = AT(create_student("resnet18_thin"), teacher, "both", beta=1000.0)
    trainer = Trainer(learner, splits, cfg["train"], SIZE, run_dir, CPU, 0, progress=False,
                      teacher_cache=cache_dir)
    return trainer.fit(resume=resume, stop_after=stop_after)


def test_cached_training_resumes_exactly_and_tracks_the_live_teacher(tiny_data, teacher,
                                                                      tmp_path):
    cache = tmp_path / "cache"
    full = _fit(tiny_data, tmp_path / "a", teacher, 1.0, cache)
    assert full["teacher_outputs"] == "cache"
    stamp = (cache / "rgb" / "done.json").stat().st_mtime_ns
    assert _fit(tiny_data, tmp_path / "b", teacher, 1.0, cache, stop_after=1) is None
    resumed = _fit(tiny_data, tmp_path / "b", teacher, 1.0, cache, resume=True)
    assert resumed["test"] == full["test"]
    assert (cache / "rgb" / "done.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    live = _fit(tiny_data, tmp_path / "c", teacher, 0.0, cache)
    assert live["teacher_outputs"] == "live"
    assert live["teacher_targets"] == full["teacher_targets"] == "fp16"
    for a, b in zip(full["history"], live["history"]):
        assert a["train_loss_kd_freq"] == pytest.approx(b["train_loss_kd_freq"], rel=1e-2)


def test_speed_settings_do_not_change_the_teacher_identity(tiny_data, tmp_path):
    from kdbench.train.runner import Context
    from kdbench.train.teachers import teacher_dir

    def tdir(overrides, preset="quick"):
        cfg = for_device(resolve_config(preset, "synthetic", overrides), "cpu")
        return teacher_dir(Context(tiny_data, "synthetic", cfg, tmp_path, CPU))

    same = [{"train": {"teacher_cache_gb": 0}}, {"train": {"compile": True}},
            {"train": {"channels_last": True}}, {"data": {"workers": 3}}]
    assert all(tdir(o) == tdir({}) for o in same)
    assert tdir({"train": {"lr": 0.5}}) != tdir({})
    assert tdir({"train": {"amp": True}}) != tdir({})  # bf16 changes the numbers
    # the teacher of the committed reference store (kdbench 0.2) keeps its folder
    assert tdir({}, "cpu").name == "resnet18_thin-db0623b7"


def test_amp_auto_is_off_on_the_cpu_and_on_with_cuda():
    cfg = resolve_config("cpu", "synthetic", {})
    assert cfg["train"]["amp"] == "auto"
    assert for_device(cfg, "cpu")["train"]["amp"] is False
    assert for_device(cfg, "cuda")["train"]["amp"] is True
    assert for_device(cfg, "cuda")["train"]["channels_last"] is True
    forced = resolve_config("cpu", "synthetic", {"train": {"amp": True}})
    assert for_device(forced, "cpu")["train"]["amp"] is True


def test_a_teacher_output_that_overflows_fp16_is_not_cached(split, teacher, tmp_path):
    with torch.no_grad():
        teacher.fc.bias.fill_(1e6)  # logits far outside fp16's range
    got = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, tmp_path / "c", GB)
    assert got.cache is None and "fp16" in got.reason
    assert not list((tmp_path / "c").glob("*/done.json"))



def test_also_builds_the_plans_fields_in_the_same_pass(split, teacher, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    passes = []
    real = teacher_cache._build
    monkeypatch.setattr(teacher_cache, "_build", lambda *a, **k: passes.append(a[1]) or real(
        *a, **k))
    first = ensure(teacher, {"rgb"}, split, SIZE, CPU, 8, folder, GB,
                   also={"rgb", "freq_proj", "rgb_proj"})
    assert passes == [["freq_proj", "logits", "rgb", "rgb_proj"]]
    assert first.built == passes[0] and first.cache.fields == ["logits", "rgb"]
    later = ensure(teacher, {"rgb_proj", "freq_proj"}, split, SIZE, CPU, 8, folder, GB,
                   also={"rgb", "freq_proj", "rgb_proj"})
    assert later.built == [] and len(passes) == 1
    # fields that do not fit the budget together: only what the run reads is built
    small = ensure(teacher, {"logits"}, split, SIZE, CPU, 8, tmp_path / "d",
                   first.cache.nbytes() // 3, also={"rgb", "freq_proj", "rgb_proj"})
    assert small.built == ["logits"] and passes[-1] == ["logits"]


def test_a_whole_plan_builds_the_cache_once(capsys, tmp_path):
    from kdbench.cli import main
    from tests.conftest import write_prepared

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    argv = ["run", "--methods", "at,tokd", "--modes", "rgb,both", "--dataset", "ff_c40",
            "--data-root", str(data), "--preset", "quick", "--set", "data.size=16", "--set",
            "train.epochs=1", "--results", str(tmp_path / "R"), "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    built = [line for line in err.splitlines() if line.startswith("teacher cache: built")]
    assert len(built) == 1, err
    assert all(f in built[0] for f in ("freq,", "freq_proj", "logits", "rgb,", "rgb_proj"))
    # at rgb/both, tokd rgb/both and the rotation=false variant its report needs: one builds
    assert err.count("teacher outputs from the cache") == 4, err


def _quick_kd(data, results, settings):
    """A one-thread quick kd run on the tiny prepared ``data`` (16 px, 2 epochs): its
    metrics.json and test predictions."""
    import json

    from kdbench import api
    from kdbench.train.predictions import load_predictions

    api.run(methods=["kd"], dataset="ff_c40", data_root=data, preset="quick",
            students=["resnet18_thin"], modes=["rgb"], seeds=[0], results=results, threads=1,
            settings={"data.size": 16, "train.epochs": 2, **settings}, progress=False)
    run = results / "runs/ff_c40/resnet18_thin/kd/rgb/seed0"
    return json.loads((run / "metrics.json").read_text()), load_predictions(
        run / "predictions.npz").prob


def test_the_cache_changes_no_number(tmp_path):
    """With and without the teacher cache, one thread: equal test metrics (tested on a quick
    run), both from fp16-rounded teacher targets."""
    from tests.conftest import write_prepared

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")  # a prepared folder, as is
    cached, cached_probs = _quick_kd(data, tmp_path / "cached", {})
    live, live_probs = _quick_kd(data, tmp_path / "live", {"train.teacher_cache_gb": 0})
    assert (cached["teacher_outputs"], live["teacher_outputs"]) == ("cache", "live")
    assert cached["teacher_targets"] == live["teacher_targets"] == "fp16"
    assert cached["teacher_sha256"] == live["teacher_sha256"]  # one teacher, trained twice
    assert cached["test"] == live["test"]
    np.testing.assert_array_equal(cached_probs, live_probs)


def test_a_teacher_output_beyond_fp16_gives_fp32_targets_with_and_without_the_cache(
        split, teacher, tmp_path):
    with torch.no_grad():
        teacher.fc.bias.fill_(1e6)  # fused logits far outside fp16's range
    folder = tmp_path / "c"
    got = ensure(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, folder, GB)
    assert got.cache is None and "fp16" in got.reason
    # the build's finding is kept: the live run does not pass over the split again
    assert teacher_cache.known_range(folder) == {"logits": False}
    assert not teacher_cache.targets_fit_fp16(teacher, {"rgb_proj"}, split, SIZE, CPU, 8,
                                              folder)
    # no cache folder: one pass finds it too; live targets then stay fp32 (not inf)
    assert not teacher_cache.targets_fit_fp16(teacher, {"rgb_proj"}, split, SIZE, CPU, 8, None)
    images = to_model_input(split[(np.arange(3), np.zeros(3, bool))], CPU, SIZE)["image"]
    live = teacher_cache.LiveTargets(teacher, ["logits", "rgb_proj"], False, fp16=False)(images)
    assert torch.isfinite(live["teacher.logits"]).all()
    assert live["teacher.logits"].abs().max() > teacher_cache.FP16_MAX
    with torch.no_grad():
        want = flatten(teacher(images, needs={"rgb_proj"}))
    assert sorted(live) == sorted("teacher." + k for k in want)


def test_live_targets_are_the_cached_values(split, teacher, tmp_path):
    folder = tmp_path / "c"
    assert teacher_cache.targets_fit_fp16(teacher, {"rgb"}, split, SIZE, CPU, 8, folder)
    assert teacher_cache.known_range(folder) == {"logits": True, "rgb": True}
    got = ensure(teacher, {"rgb"}, split, SIZE, CPU, 8, folder, GB)
    pos, flips = np.array([5, 1, 2, 7]), np.array([False, True, True, False])
    batch = split[(pos, flips)]
    batch.update(got.cache.read(batch["key"].numpy()))
    b = to_model_input(batch, CPU, SIZE)
    live = teacher_cache.LiveTargets(teacher, ["logits", "rgb"], False, fp16=True)(b["image"])
    cached = {k: v for k, v in b.items() if k.startswith("teacher.")}
    assert sorted(live) == sorted(cached)
    for k, v in cached.items():
        assert live[k].dtype == v.dtype == torch.float32 and live[k].is_contiguous()
        torch.testing.assert_close(live[k], v, atol=0, rtol=0)

