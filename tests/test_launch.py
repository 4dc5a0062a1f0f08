"""Grids as jobs (cil/launch.py): local processes here, a SLURM job array on a real Slurm.

The Slurm tests need a cluster: tests/slurm/start_local_slurm.sh starts a one-node one on this
machine (.ci/run does); without one they skip (``-m "not slurm"`` leaves them out).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cil import launch, parallel, tables
from cil.results import read_records

ROOT = Path(__file__).resolve().parents[1]


def slurm_cluster_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return answer.returncode == 0 and any(s in answer.stdout for s in ("idle", "mixed", "alloc"))


slurm = pytest.mark.skipif(not slurm_cluster_up(), reason="no Slurm cluster answers sinfo; "
                           "bash tests/slurm/start_local_slurm.sh starts one")

# A small grid: 3 strategies x 2 budgets (joint unbudgeted) x 2 seeds = 10 runs, 1 epoch a task.
GRID = ["--config=configs/sweep_digits.py:smoke", "--config.seeds=(0,1)",
        "--config.strategies=('finetune','replay','joint')"]


def child_env(devices: int, **extra) -> dict:
    """The environment of a run.py process with ``devices`` CPU devices (this process's XLA_FLAGS,
    which ask for its own count, left out)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "CIL_HOST_DEVICES": str(devices), **extra}


def run_py(*args, devices: int, timeout=600):
    env = child_env(devices)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def matrices(*workdirs) -> dict:
    """run id -> accuracy matrix, over the summary lines of ``workdirs``; no run twice."""
    found = [r for w in workdirs for r in read_records(Path(w), kind="summary")]
    assert len({r["run_id"] for r in found}) == len(found), "a run has two summaries"
    return {r["run_id"]: r["acc_matrix"] for r in found}


def accuracy_cells(table) -> list:
    return [(row.strategy, row.budget, {k: v for k, v in row.stats.items()
                                        if k not in ("train_seconds",)}) for row in table.rows]


def assert_same_as_one_process(tmp_path, workdir, shards: int, devices: int):
    reference = tmp_path / "one_process"
    run_py(*GRID, f"--workdir={reference}", devices=devices)
    dirs = launch.shard_dirs(workdir, shards)
    assert matrices(*dirs) == matrices(reference)
    assert len(matrices(reference)) == 10
    assert all(read_records(d, kind="summary") for d in dirs)  # every shard ran something
    assert accuracy_cells(tables.load(*dirs)) == accuracy_cells(tables.load(reference))


def test_local_shards_merge_to_the_single_process_results(tmp_path):
    workdir = tmp_path / "local"
    out = run_py(*GRID, f"--workdir={workdir}", "--launcher=local", "--config.launch.shards=2",
                 devices=2)
    assert "submitted 10 runs as 2 local job(s)" in out
    assert "| replay | 0.036 | 2 |" in out  # the merged table, printed after waiting
    # Each local shard gets its share of the cores, as devices; the reference gets as many.
    assert_same_as_one_process(tmp_path, workdir, 2, max(1, parallel.usable_cores() // 2))


def test_launcher_mistakes_are_one_line(tmp_path):
    for args, message in [(["--launcher=slurm", "--num_shards=2"], "drop --shard_index"),
                          (["--config.launch.shards=0"], "launch.shards=0 is not allowed")]:
        env = child_env(1)
        result = subprocess.run([sys.executable, str(ROOT / "run.py"), *GRID, *args,
                                 f"--workdir={tmp_path}"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1


@pytest.mark.slurm
@slurm
def test_a_slurm_job_array_merges_to_the_single_process_results(tmp_path):
    workdir = tmp_path / "slurm"
    out = run_py(*GRID, f"--workdir={workdir}", "--launcher=slurm", "--config.launch.shards=3",
                 "--config.launch.cpus_per_task=1", "--config.launch.mem_gb=1",
                 "--config.launch.time_minutes=10", devices=1)
    assert "python -m cil.launch" in out  # submitted, not waited for
    [job_ids] = [json.loads((workdir / "launch" / "jobs.json").read_text())["jobs"]]
    assert len(job_ids) == 3 and len({j.split("_")[0] for j in job_ids}) == 1  # one array
    waited = subprocess.run([sys.executable, "-m", "cil.launch", str(workdir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert waited.returncode == 0, waited.stderr[-3000:]
    assert "| replay | 0.036 | 2 |" in waited.stdout
    # cpus_per_task=1: one device a shard, as the reference
    assert_same_as_one_process(tmp_path, workdir, 3, 1)


@pytest.mark.slurm
@slurm
def test_a_preempted_shard_is_requeued_and_resumes_without_rerunning(tmp_path):
    # One shard of two finetune runs, long enough tasks to be interrupted in the middle.
    args = ["--config=configs/digits.py", "--config.strategies=('finetune',)",
            "--config.seeds=(0,1)", "--config.train.epochs=600"]
    workdir = tmp_path / "preempted"
    run_py(*args, f"--workdir={workdir}", "--launcher=slurm", "--config.launch.shards=1",
           "--config.launch.cpus_per_task=1", "--config.launch.mem_gb=1",
           "--config.launch.time_minutes=30", devices=1)
    [job_id] = json.loads((workdir / "launch" / "jobs.json").read_text())["jobs"]
    shard = launch.shard_dirs(workdir, 1)[0]
    deadline = time.time() + 300
    # Preempt once the second run has a task line: the first run is finished by then.
    while not [r for r in read_records(shard, kind="task") if r["seed"] == 1]:
        assert time.time() < deadline, "the shard never reached its second run"
        time.sleep(0.5)
    # What SLURM does to a preempted job (and submitit's own _interrupt): SIGTERM, then USR2.
    subprocess.run(["scancel", job_id, "--signal=SIGTERM"], check=True)
    subprocess.run(["scancel", job_id, "--signal=USR2"], check=True)
    out = subprocess.run([sys.executable, "-m", "cil.launch", str(workdir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    restarts = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    assert "Restarts=1" in restarts.stdout  # requeued by submitit, once
    summaries = read_records(shard, kind="summary")
    by_seed = {r["seed"]: r for r in summaries}
    assert sorted(by_seed) == [0, 1] and len(summaries) == 2  # nothing ran twice
    assert len(by_seed[0]["attempts"]) == 1  # finished before the signal: not rerun
    assert len(by_seed[1]["attempts"]) == 2  # interrupted, resumed from its checkpoint
    reference = tmp_path / "straight"
    run_py(*args, f"--workdir={reference}", devices=1)
    assert matrices(shard) == matrices(reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_are_one_run_with_the_results_of_one_process(tmp_path):
    """jax.distributed on this machine: two processes of one device each (CPU collectives
    through gloo) form one data axis of two devices, as one process with two devices does."""
    args = ["--config=configs/digits.py:smoke", "--config.strategies=('finetune','replay','icarl')"]
    workdir = tmp_path / "two"
    port = free_port()
    processes = [subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args, f"--workdir={workdir}"], cwd=ROOT,
        env=child_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                      JAX_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert "| replay | 1 |" in outputs[0][0] and outputs[1][0] == ""  # the first one prints
    summaries = read_records(workdir, kind="summary")
    assert [s["device"]["device_count"] for s in summaries] == [2, 2, 2], summaries[0]["device"]
    reference = tmp_path / "one"
    run_py(*args, f"--workdir={reference}", devices=2)
    assert matrices(workdir) == matrices(reference)  # written once, and the same


@pytest.mark.slurm
@slurm
def test_a_shard_of_two_slurm_tasks_is_one_run_over_both(tmp_path):
    """nodes x tasks_per_node > 1: the shard's processes join one JAX run (jax.distributed reads
    SLURM's variables), one device each, and give what one process with two devices gives."""
    args = ["--config=configs/digits.py:smoke", "--config.strategies=('finetune','replay')"]
    workdir = tmp_path / "two_tasks"
    out = run_py(*args, f"--workdir={workdir}", "--launcher=slurm", "--wait",
                 "--config.launch.shards=1", "--config.launch.tasks_per_node=2",
                 "--config.launch.cpus_per_task=1", "--config.launch.mem_gb=1", devices=1)
    assert "| replay | 1 |" in out
    shard = launch.shard_dirs(workdir, 1)[0]
    assert [s["device"]["device_count"] for s in read_records(shard, kind="summary")] == [2, 2]
    reference = tmp_path / "one"
    run_py(*args, f"--workdir={reference}", devices=2)
    assert matrices(shard) == matrices(reference)
