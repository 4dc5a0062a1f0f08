#!/usr/bin/env bash
# Every strategy (but DKVB, which refuses) on Split-Digits smoke (1 seed, 1 epoch) as one run of
# two processes with one CPU device each (jax.distributed on localhost), against one process with
# two devices: do the accuracy matrices agree bitwise? Prints a Markdown table.
#   bash benchmarks/two_processes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
strategies='("finetune","joint","replay","icarl","lwf","ewc","wa","bic","podnet","agem","gem","simplecil","ncm","partial_sharing")'
args=(--config=configs/digits.py:smoke --config.strategies="$strategies" --config.ncm.encoder.name=identity)
unset XLA_FLAGS
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for i in 0 1; do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$i CIL_HOST_DEVICES=1 \
      python run.py "${args[@]}" --workdir="$out/two" > "$out/two_$i.log" 2>&1 &
done
wait
CIL_HOST_DEVICES=2 python run.py "${args[@]}" --workdir="$out/one" > "$out/one.log" 2>&1
python - "$out" <<'PY'
import json, sys
def runs(workdir):
    found = {}
    for line in open(f"{workdir}/results.jsonl"):
        record = json.loads(line)
        if record["kind"] == "summary":
            found[record["strategy"]] = record
    return found
two, one = runs(f"{sys.argv[1]}/two"), runs(f"{sys.argv[1]}/one")
print("| strategy | devices (two processes / one) | A_last (%) two / one | matrices |")
print("|---|---|---|---|")
for name, record in one.items():
    other = two[name]
    same = "bitwise equal" if other["acc_matrix"] == record["acc_matrix"] else "differ"
    print(f"| {name} | {other['device']['device_count']} / {record['device']['device_count']} "
          f"| {100 * other['last_acc']:.2f} / {100 * record['last_acc']:.2f} | {same} |")
PY
