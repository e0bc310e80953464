#!/usr/bin/env bash
# kdbench on one CUDA GPU in under 8 minutes, written to ONE JSON file:
#   1. data            the synthetic dataset prepared at the paper preset's 299 px (once per
#                      $KDBENCH_DATA; about 3.4 GB)
#   2. bench_xception  `kdbench bench --preset paper --student xception --methods vanilla,kd`
#   3. bench_mobilenetv3_large_100   the same for a mobile student (a timm model)
#   4. paper_epoch     `kdbench run --methods vanilla,kd --modes rgb --preset paper` with
#                      train.epochs=1 for the students xception and mobilenetv3_large_100
#   5. train_step_settings   the students' train step (299 px, batch 64) in fp32 against
#                      bf16 + channels_last, torch.compile off and on (kdbench bench has no
#                      switch for these: it times the preset's own settings)
# Each step runs under `timeout` within a time budget (GPU_CHECK_BUDGET_S, 450 s: a step that
# ends early leaves its time to the later ones); a step that fails or runs out of time is
# recorded as such, with its log's last lines, and the next one runs. The JSON holds each
# step's figures, status and wall time, the GPU and the torch/timm/kdbench versions.
#
#   tools/gpu_check.sh [OUT.json]        # default: $GPU_CHECK_JSON, else gpu_check.json
#
# Run it after the README's install, in that environment. PYTHON: its python (python3);
# GPU_CHECK_DIR: keep the logs and the epoch's runs there (default: a temporary folder,
# removed at the end); GPU_CHECK_TEACHER_PRETRAINED: the epoch's teacher weights, none (default:
# random, the check times, it does not score) or imagenet (timm's, needs them cached or a
# download). Exit status: 0 when every step gave its figures, 1 when one did not (the JSON
# says which), 2 before any work: no CUDA device (one line on stderr, no JSON), no kdbench.
set -euo pipefail

PYTHON=${PYTHON:-python3}
OUT_JSON=${1:-${GPU_CHECK_JSON:-gpu_check.json}}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
PRETRAINED=${GPU_CHECK_TEACHER_PRETRAINED:-none}
PRESET=paper
DEVICE=cuda
MOBILE=mobilenetv3_large_100
# seconds each step keeps for itself at least: an earlier step's limit leaves them that much
FLOOR_BENCH_X=45 FLOOR_BENCH_M=30 FLOOR_EPOCH=60 FLOOR_SETTINGS=40

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found; activate the environment of the README's install (or set PYTHON)"
if ! why=$("$PYTHON" - 2>/dev/null <<'PY'
import os
import sys

try:
    import torch
except Exception as exc:  # a broken install: say so in the one line
    print(f"torch cannot be imported: {type(exc).__name__}")
    sys.exit(1)
if torch.cuda.is_available() and torch.cuda.device_count() > 0:
    print(torch.cuda.get_device_name(0))
    sys.exit(0)
why = [f"torch {torch.__version__}: "
       + ("a CPU-only build" if torch.version.cuda is None
          else f"built for CUDA {torch.version.cuda}, torch.cuda.is_available() is False")]
if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
    why.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
print(", ".join(why))
sys.exit(1)
PY
); then
    die "no CUDA device visible (${why:-python could not check}); run it on a GPU machine"
fi
GPU=$why
command -v kdbench >/dev/null 2>&1 ||
    die "the kdbench command is not on PATH; install it first (README: pip install -e .)"
out_dir=$(dirname -- "$OUT_JSON")
[[ -d $out_dir && -w $out_dir ]] || die "cannot write $OUT_JSON: $out_dir is not a writable folder"

START=$(date +%s)
if [[ -n ${GPU_CHECK_DIR:-} ]]; then
    WORK=$GPU_CHECK_DIR
    mkdir -p -- "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    trap 'rm -rf -- "$WORK"' EXIT
fi
# a kept folder's earlier runs would count as done: each check starts afresh
rm -rf -- "$WORK/run" "$WORK/figures" "$WORK/logs" "$WORK/tmp"
mkdir -p -- "$WORK/logs" "$WORK/figures" "$WORK/tmp"
export TMPDIR=$WORK/tmp  # what a step killed on its timeout leaves there goes with the folder
: >"$WORK/steps.tsv"
HELPER=$WORK/gpu_check_helper.py
echo "gpu_check: $GPU; budget ${BUDGET_S} s; work folder $WORK" >&2

# run_step NAME CAP LATER CMD...: CMD under `timeout`, at most CAP seconds and no more than
# leaves LATER seconds of the budget to the steps after it; output to logs/NAME.log, one line
# (name, status, exit status, limit, start, end) to steps.tsv
run_step() {
    local name=$1 cap=$2 later=$3 limit rc=0 t0 t1 status
    shift 3
    limit=$((START + BUDGET_S - $(date +%s) - later))
    ((limit < cap)) || limit=$cap
    printf '%s ' "$@" >"$WORK/logs/$name.cmd"
    if ((limit < 10)); then
        printf '%s\tskipped\t\t%s\t\t\n' "$name" "$limit" >>"$WORK/steps.tsv"
        echo "gpu_check: $name: skipped, the time budget is spent" >&2
        return 0
    fi
    echo "gpu_check: $name (at most $limit s) ..." >&2
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124 | 137) status=timed_out ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$limit" "$t0" "$t1" \
        >>"$WORK/steps.tsv"
    echo "gpu_check: $name: $status" >&2
}

cat >"$HELPER" <<'PY'
"""gpu_check.sh's Python steps: data, settings, assemble."""
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _preset(preset):
    from kdbench.config import resolve_config

    return resolve_config(preset, "synthetic", {})


def _write(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def data(preset, out):
    """Generate and prepare the synthetic dataset at the preset's size and frames."""
    from kdbench.data.datasets import open_dataset

    c = _preset(preset)["data"]
    t0 = time.perf_counter()
    d = open_dataset("synthetic", None, c["size"], c["frames"], progress=False)
    _write(out, {"size": c["size"], "frames": c["frames"], "folder": str(d.root),
                 "frames_per_split": {s: len(d.split(s)) for s in ("train", "val", "test")},
                 "wall_s": time.perf_counter() - t0})


SETTINGS = [("fp32", False, False, False), ("bf16_channels_last", True, True, False),
            ("bf16_channels_last_compile", True, True, True), ("fp32_compile", False, False, True)]


def settings(preset, device, out, *students):
    """Each student's train step (the preset's size, batch and lr; Adam; TF32 on, as kdbench's
    trainer sets it) in each of SETTINGS; one JSON line per result, appended as it is measured
    (a timeout keeps those before). The compiled ones come last: compiling takes longest."""
    import torch

    cfg = _preset(preset)
    shape = (cfg["data"]["size"], cfg["train"]["batch_size"], cfg["train"]["lr"])
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    order = [(s, st) for s in SETTINGS if not s[3] for st in students]
    order += [(s, st) for s in SETTINGS if s[3] for st in students]
    for setting, student in order:
        row = _time_step(student, setting, *shape, torch.device(device))
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _time_step(student, setting, size, batch, lr, dev, steps=10):
    """Images/s of ``steps`` train steps after three (the first, timed apart, compiles)."""
    import torch
    import torch.nn.functional as F

    from kdbench.models.students import create_student

    label, amp, channels_last, compiled = setting
    cuda = dev.type == "cuda"
    torch._dynamo.reset()
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_student(student).to(dev, memory_format=fmt).train()
    if compiled:
        model.compile()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(n):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if cuda:
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    first = timed(1)
    timed(2)
    elapsed = timed(steps)
    return {"student": student, "setting": label, "amp_bf16": amp,
            "channels_last": channels_last, "compile": compiled, "size": size, "batch": batch,
            "steps": steps, "first_step_s": first, "images_per_s": steps * batch / elapsed,
            "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None}


def _settings_figures(path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ips = {(r["student"], r["setting"]): r["images_per_s"] for r in rows}
    ratios = {}
    for student in dict.fromkeys(r["student"] for r in rows):
        def over(a, b, student=student):
            got = ips.get((student, a)), ips.get((student, b))
            return got[0] / got[1] if None not in got else None
        ratios[student] = {
            "bf16_channels_last_over_fp32": over("bf16_channels_last", "fp32"),
            "compile_over_eager_bf16": over("bf16_channels_last_compile", "bf16_channels_last"),
            "compile_over_eager_fp32": over("fp32_compile", "fp32")}
    return {"rows": rows, "ratios": ratios}


def _epoch_figures(results):
    runs = []
    for metrics in sorted(results.rglob("metrics.json")):
        m = json.loads(metrics.read_text())
        history = metrics.parent / "history.jsonl"
        rows = [json.loads(x) for x in history.read_text().splitlines() if x.strip()] \
            if history.is_file() else []
        last = rows[-1] if rows else {}
        test = m.get("test") or {}
        runs.append({"run": metrics.parent.relative_to(results).as_posix(),
                     "role": m.get("role"), "student": m.get("student") or m.get("backbone"),
                     "method": m.get("method"), "mode": m.get("mode"),
                     "wall_time_s": m.get("wall_time_s"), "epochs": len(rows),
                     "train_images_per_s": last.get("train_images_per_s"),
                     "train_time_s": last.get("train_time_s"),
                     "teacher_outputs": m.get("teacher_outputs"),
                     "test_acc": test.get("acc"), "test_auc": test.get("auc")})
    return {"runs": runs}


def _figures(name, work):
    fig = work / "figures"
    if name == "paper_epoch":
        return _epoch_figures(work / "run") if (work / "run").is_dir() else None
    if (fig / f"{name}.jsonl").is_file():
        return _settings_figures(fig / f"{name}.jsonl")
    if (fig / f"{name}.json").is_file():
        return json.loads((fig / f"{name}.json").read_text())
    return None


def _environment():
    import timm
    import torch

    import kdbench

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "timm": timm.__version__,
                "kdbench": kdbench.__version__, "python": platform.python_version()}
    if not torch.cuda.is_available():
        return {"name": None}, versions
    props = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = None
    gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
           "memory_gb": round(props.total_memory / 2**30, 1),
           "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
           "nvidia_smi": smi}
    return gpu, versions


def assemble(work, out, start, budget, pretrained):
    """The one JSON file: the environment and each step of steps.tsv with its figures."""
    work = Path(work)
    steps = {}
    for line in (work / "steps.tsv").read_text().splitlines():
        name, status, rc, limit, t0, t1 = line.split("\t")
        log = work / "logs" / f"{name}.log"
        cmd = work / "logs" / f"{name}.cmd"
        step = {"status": status, "exit_status": int(rc) if rc else None,
                "limit_s": int(limit), "wall_s": round(float(t1) - float(t0), 2) if t1 else 0.0,
                "command": cmd.read_text().strip() if cmd.is_file() else None}
        try:
            step["figures"] = _figures(name, work)
        except (OSError, ValueError, KeyError) as exc:
            step["figures"] = None
            step["figures_error"] = f"{type(exc).__name__}: {exc}"
        if status != "ok" and log.is_file():
            step["log_tail"] = log.read_text(errors="replace").splitlines()[-8:]
        steps[name] = step
    gpu, versions = _environment()
    ok = all(s["status"] == "ok" and s["figures"] for s in steps.values())
    _write(out, {"gpu_check": 1, "ok": ok, "gpu": gpu, "versions": versions,
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                             time.localtime(int(start))),
                 "wall_s": round(time.time() - int(start), 1), "budget_s": int(budget),
                 "teacher_pretrained": pretrained, "steps": steps})
    failed = [n for n, s in steps.items() if not (s["status"] == "ok" and s["figures"])]
    print(f"gpu_check: wrote {out} ({len(steps) - len(failed)} of {len(steps)} steps gave "
          f"figures{'; not: ' + ', '.join(failed) if failed else ''}; "
          f"{time.time() - int(start):.0f} s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    from kdbench.logs import to_stderr

    to_stderr()  # kdbench's log lines, as its command shows them
    sys.exit(globals()[sys.argv[1]](*sys.argv[2:]))
PY

F=$WORK/figures
LATER_X=$((FLOOR_BENCH_M + FLOOR_EPOCH + FLOOR_SETTINGS))
run_step data 120 $((FLOOR_BENCH_X + LATER_X)) \
    "$PYTHON" "$HELPER" data "$PRESET" "$F/data.json"
for student in xception "$MOBILE"; do
    cap=100 later=$LATER_X
    [[ $student == xception ]] || cap=70 later=$((LATER_X - FLOOR_BENCH_M))
    run_step "bench_$student" "$cap" "$later" \
        kdbench bench --preset "$PRESET" --student "$student" --methods vanilla,kd \
        --device "$DEVICE" --no-progress --json "$F/bench_$student.json"
done
run_step paper_epoch 200 "$FLOOR_SETTINGS" \
    kdbench run --methods vanilla,kd --modes rgb --preset "$PRESET" --students "xception,$MOBILE" \
    --set train.epochs=1 --set "teacher.pretrained=$PRETRAINED" --device "$DEVICE" \
    --results "$WORK/run" --keep-checkpoints none --no-progress
run_step train_step_settings 200 0 \
    "$PYTHON" "$HELPER" settings "$PRESET" "$DEVICE" "$F/train_step_settings.jsonl" \
    xception "$MOBILE"

"$PYTHON" "$HELPER" assemble "$WORK" "$OUT_JSON" "$START" "$BUDGET_S" "$PRETRAINED"
