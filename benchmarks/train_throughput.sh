#!/usr/bin/env bash
# The table of benchmarks/train_throughput.md: every network of cil/models, on one and on two
# XLA host devices (CIL_HOST_DEVICES), one row each (benchmarks/train_throughput.py).
#   bash benchmarks/train_throughput.sh > /tmp/throughput.md
set -euo pipefail
cd "$(dirname "$0")/.."
echo "| model | image | batch | devices | bare step | unrolled 4 | one loop (before) | Trainer (after) | after / best bare | compile s |"
echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
for devices in 1 2; do
  run() { CIL_HOST_DEVICES=$devices CIL_COMPILATION_CACHE= python benchmarks/train_throughput.py "$@" 2>/dev/null | grep '^|'; }
  run --model=mlp --shape=28,28,1 --steps=400 --loop_steps=400
  run --model=small_cnn --shape=28,28,1 --steps=16 --loop_steps=4
  run --model=cnn --shape=32,32,3 --steps=16 --loop_steps=4
  run --model=resnet32 --shape=32,32,3 --steps=8 --loop_steps=1 --repeats=1
  run --model=resnet18 --shape=32,32,3 --steps=1 --loop_steps=0 --unroll=1 --repeats=1
done
