#!/usr/bin/env bash
# The digits memory-aligned grid (configs/sweep_digits.py: finetune, replay, iCaRL at 4 budgets,
# joint unbudgeted, seeds 0-2: 39 runs) as one process, and as 12 shards of a SLURM job array on
# the local one-node Slurm (tests/slurm/start_local_slurm.sh), one core and one device a shard.
# Whole commands, start to merged table, each into a fresh workdir with the compilation cache off
# (every process compiles its own programs). benchmarks/slurm_digits.md.
#   bash tests/slurm/start_local_slurm.sh && bash benchmarks/slurm_digits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
export CIL_COMPILATION_CACHE=""
timed() {  # label, workdir, run.py arguments...
  local label=$1 dir=$2; shift 2
  local start=$(date +%s.%N)
  python run.py --config=configs/sweep_digits.py --workdir="$dir" "$@" > "$dir.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  local runs=$(cat "$dir"/results.jsonl "$dir"/shards/*/results.jsonl 2>/dev/null | grep -c '"summary"')
  printf '| %s | %s | %.1f |\n' "$label" "$runs" "$wall"
}
echo "| how | runs with a summary | whole command (s) |"
echo "|---|---:|---:|"
timed "one process, 2 devices" "$out/one"
timed "SLURM array, 12 shards, 1 CPU each, --wait" "$out/slurm" --launcher=slurm --wait \
    --config.launch.shards=12 --config.launch.cpus_per_task=1 --config.launch.mem_gb=1
diff <(grep -v "train (s)" "$out/one.log" | grep "^| " | cut -d'|' -f1-9) \
     <(grep -v "train (s)" "$out/slurm.log" | grep "^| " | cut -d'|' -f1-9) > /dev/null \
    && echo "The two tables agree (strategy to I)." \
    || echo "The two tables differ (one process: 2 devices; a shard: 1 device)."
