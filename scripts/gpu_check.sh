#!/usr/bin/env bash
# One call on a GPU machine (the project's dependencies installed): everything that needs the GPU, in at most
# about 6 minutes, into one JSON and one markdown file.
#   bash scripts/gpu_check.sh [OUT_DIR] [CIFAR10_TARBALL]
# 1. pytest tests/nn/kernels on CUDA (the compiled Triton kernels against the float64 brute force, full-size
#    layer shapes included);
# 2. python src/bench.py --device cuda: layers and ResNet-20 training and inference, adder against cuDNN in the
#    same run (img/s, elements/s, peak memory);
# 3. one epoch of adder_resnet20 and of resnet20 on the CIFAR-10 JPEG copy (class folders), with img/s.
# Each step has its own time limit (120 + 90 + 60 + 60 s, plus unpacking the data); a step that fails or times out
# is recorded as such and the others still run. Not yet run on a GPU: the limits are estimates to check there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
TARBALL=${2:-../shared/data/cifar10-jpeg.tar.gz}
PY=${PYTHON:-python3}
mkdir -p "$OUT/logs"
unset TRITON_INTERPRET

step() {  # step NAME SECONDS COMMAND...: run, keep its log, exit status and wall time
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" >> "$OUT/steps.jsonl"
    echo "$name: rc=$rc in $((SECONDS - start)) s (log: $OUT/logs/$name.log)"
}

rm -f "$OUT/steps.jsonl"
step kernel_tests 120 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider tests/nn/kernels
step bench 90 "$PY" src/bench.py --device cuda --json "$OUT/bench.json" --warmup 3 --repeats 10

DATA=$(mktemp -d)
if [ -f "$TARBALL" ] && tar -xzf "$TARBALL" -C "$DATA"; then
    ROOT=$(dirname "$(find "$DATA" -maxdepth 3 -type d -name train | head -1)")
    for model in adder_resnet20 resnet20; do
        step "epoch_$model" 60 "$PY" src/train.py model=$model data=cifar10 data.root="$ROOT" data.download=false \
            trainer=gpu trainer.max_epochs=1 logger=csv threads=4 hydra.run.dir="$OUT/runs/$model"
    done
else
    echo "{\"step\": \"epochs\", \"rc\": 2, \"seconds\": 0, \"limit\": 0, \"why\": \"no data at $TARBALL\"}" >> "$OUT/steps.jsonl"
fi
rm -rf "$DATA"

"$PY" - "$OUT" <<'PYEOF'
"""Gather the steps into gpu_check.json and gpu_check.md."""
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
report = {"steps": steps}
tests = (out / "logs" / "kernel_tests.log")
if tests.exists():
    report["kernel_tests"] = (re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", tests.read_text(), re.M) or ["?"])[-1]
bench = out / "bench.json"
if bench.exists():
    report["bench"] = json.loads(bench.read_text())
report["epochs"] = {}
for model in ("adder_resnet20", "resnet20"):
    metrics = out / "runs" / model / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        report["epochs"][model] = {k: m[k] for k in m if k.startswith(("test/acc", "perf/", "fit_seconds"))}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
import torch
report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU (the kernel tests ran interpreted)"
lines = [f"# GPU check: {report['device']}, torch {torch.__version__}", "",
         "| step | exit status | seconds |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
lines += ["", f"Kernel tests (tests/nn/kernels): {report.get('kernel_tests', 'not run')}", ""]
for title, rows in report.get("bench", {}).get("tables", {}).items():
    lines += [f"## {title}", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
              for r in rows] + [""]
if report["epochs"]:
    lines += ["## One epoch on the CIFAR-10 JPEG copy", "", "| model | metric | value |", "|---|---|---|"]
    lines += [f"| {m} | {k} | {v:.4g} |" for m, vals in report["epochs"].items() for k, v in vals.items()]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
PYEOF
