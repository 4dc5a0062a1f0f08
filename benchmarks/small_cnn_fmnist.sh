#!/usr/bin/env bash
# The peer protocol's convolutional benchmark (benchmarks/small_cnn_fmnist.md): Split-Fashion-MNIST
# B0-Inc2, class order 0..9, its SmallCNN (PyTorch init), SGD lr 0.01, batch 128 (+128 exemplars),
# 1 epoch per task, replay-1000 class-balanced: configs/replay_fmnist.py:small_cnn. Each run is a
# whole `python run.py` process, from a fresh workdir; pinned to 1 core, then on 2. Each first run
# compiles into an empty compilation cache; the "again" run reads its programs from that cache.
#   bash benchmarks/small_cnn_fmnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cache=$(mktemp -d)
row() {  # label, cores, cache
  local dir="$out/$1"
  local start=$(date +%s.%N)
  CIL_COMPILATION_CACHE=$3 taskset -c "$2" python run.py --config=configs/replay_fmnist.py:small_cnn \
      --workdir="$dir" > "$dir.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  python - "$dir" "$1" "$wall" <<'PY'
import json, sys
[summary] = [json.loads(l) for l in open(f"{sys.argv[1]}/results.jsonl") if '"summary"' in l]
print(f"| {sys.argv[2]} | {summary['device']['device_count']} | {summary['train_images_per_second']:,.0f} "
      f"| {summary['train_seconds']:.1f} | {summary['compile_seconds']:.1f} | {float(sys.argv[3]):.1f} "
      f"| {100 * summary['last_acc']:.1f} / {100 * summary['avg_inc_acc']:.1f} / {100 * summary['forgetting']:.1f} |")
PY
}
echo "| run | devices | train img/s | train s | compile s | whole process s | A_last / Ā / F (%) |"
echo "|---|---:|---:|---:|---:|---:|---|"
row "1 core" 0 "$cache/1"; row "1 core, again" 0 "$cache/1"
row "2 cores" 0,1 "$cache/2"; row "2 cores, again" 0,1 "$cache/2"
