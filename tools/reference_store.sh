#!/usr/bin/env bash
# The committed reference store results/ and results/README.md, made by one command:
#     bash tools/reference_store.sh
# Each step skips what is done (finished runs, quantized students), so it also continues an
# interrupted store and, on a finished store, only rewrites the tables and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=(--launcher local --workers 2)

# Table 3 at five seeds: every method in each of its modes (and its registry variants), each
# run tested on the second embedded domain as it finishes (Table 7)
kdbench run --preset cpu --methods all --seeds 0,1,2,3,4 --cross-dataset synthetic_c23 \
    --results results "${WORKERS[@]}"
# Table 3 read both ways: every baseline's both mode with each branch term at half weight
kdbench run --preset cpu --methods at,pkt,vid,sp,fitnet,kd,rkd,nst,reviewkd,ofd,crd --modes both \
    --sweep both_weighting=mean --seeds 0,1,2,3,4 --cross-dataset synthetic_c23 \
    --results results "${WORKERS[@]}"
# the ablation and sweep tables at three seeds, then every table (claims and weighting too)
# and figure of the store; then the compression plan on the vanilla runs of seeds 0-2, its
# table and Pareto figure (docs/compression.md)
kdbench reproduce --preset cpu --seeds 0,1,2 --compression --results results "${WORKERS[@]}"
# edge students, all three from one teacher, in a store of their own (results/mobile): the
# cpu teacher's weights are not committed, and this code does not retrain them bit for bit
# (see results/README.md); vanilla and the three distillers with the highest AUC in Table 3
# (both mode: reviewkd, ofd, pkt)
kdbench run --preset mobile --methods vanilla,reviewkd,ofd,pkt --modes both --seeds 0,1,2 \
    --cross-dataset synthetic_c23 --results results/mobile "${WORKERS[@]}"
# the int8 latency of each edge student (its vanilla seed-0 run)
for student in mobilenetv3_large_100 efficientnet_b0 resnet18_thin; do
    run="results/mobile/runs/synthetic/$student/vanilla/none/seed0"
    if ! grep -qs '"onnx_int8"' "$run/deploy/deploy.json"; then
        kdbench quantize "$run" --int8
    fi
done
kdbench table --kind students --results results/mobile --out results/mobile/students.md
python tools/readme_results.py
