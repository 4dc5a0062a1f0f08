"""A config's grid as shards: a SLURM job array through submitit, or processes on this machine.

    python run.py --config=configs/sweep_digits.py --workdir=/shared/s --launcher=slurm   # submits
    python -m cil.launch /shared/s              # waits for that submission, prints the merged table
    python run.py --config=configs/sweep_digits.py --workdir=/shared/s --launcher=slurm --wait
    python run.py --config=configs/sweep_digits.py --workdir=/tmp/s --launcher=local     # waits

    jobs = submit(config, "/shared/s", "slurm")     # one array task per shard
    print(wait("/shared/s"))                        # the merged Markdown table

``config.launch`` (``FIELDS``): ``shards`` (array tasks; the grid of cil/sweep.py is split among
them as ``--shard_index/--num_shards`` split it), and for SLURM ``partition``, ``time_minutes``,
``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``array_parallelism`` (array tasks at once),
``signal_delay_s``, and ``nodes`` x ``tasks_per_node``: with more than one process a shard is one
JAX run over all their devices (``jax.distributed``, cil/parallel.py ``initialize_distributed``),
the first process writing its results. Shard i writes ``<workdir>/shards/<i>/`` (a workdir of
its own, so shards never share a file); submitit's scripts, pickles and logs go to ``<workdir>/launch/``, and
``launch/jobs.json`` names the jobs, so ``python -m cil.launch <workdir>`` can wait for them from
another shell. ``python -m cil.tables <workdir>/shards/*`` merges the shards at any time.

Preemption and time limits: each array task is a ``submitit.helpers.Checkpointable``. SLURM sends
USR2 ``signal_delay_s`` before the time limit (and on preemption where the cluster signals it);
submitit then requeues the same shard, which skips the runs that have a summary line and resumes
an interrupted run at the task after its last checkpoint (cil/experiment.py), so no finished run
is ever run again. A shard resubmitted by hand (running the same command again) does the same.

Devices: a shard process asks XLA:CPU for as many devices as it has cores (SLURM:
``cpus_per_task``; local: this machine's cores shared among the shards), so its runs are
data-parallel exactly as a single process with that many devices would be.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ml_collections

from cil import parallel
from cil.errors import CilError, ConfigError, RunError, WorkdirError
from cil.fields import Field, Integer, Number, Text

FIELDS = {
    "shards": Field(4, Integer(min=1), "array tasks: the grid is split among them"),
    "partition": Field("", Text(), "SLURM partition (\"\": the cluster's default)"),
    "time_minutes": Field(240, Integer(min=1), "SLURM time limit of each array task"),
    "gpus_per_node": Field(0, Integer(min=0), "GPUs of each array task"),
    "cpus_per_task": Field(2, Integer(min=1), "CPU cores of each array task"),
    "mem_gb": Field(8.0, Number(above=0), "memory of each array task, GB"),
    "array_parallelism": Field(16, Integer(min=1), "array tasks running at once, at most"),
    "nodes": Field(1, Integer(min=1), "SLURM nodes of each array task"),
    "tasks_per_node": Field(1, Integer(min=1), "processes a node: with several in all, a shard "
                                               "is one JAX run over every process's devices"),
    "signal_delay_s": Field(120, Integer(min=1), "USR2 this long before the time limit: "
                                                 "the shard is requeued and resumes"),
}
LAUNCHERS = ("slurm", "local")
JOBS_FILE = "jobs.json"


def shard_dirs(workdir, count: int) -> list[Path]:
    return [Path(workdir) / "shards" / str(i) for i in range(count)]


class Shard:
    """One array task: ``sweep.run_grid`` on shard ``index`` of ``count``, in its own workdir."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, index: int, count: int,
                 devices: int | None):
        self.config, self.workdir, self.index, self.count = config, workdir, index, count
        self.devices = devices

    def __call__(self) -> int:
        devices = self.devices or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
        use_devices(devices)
        parallel.initialize_distributed()  # a shard of several SLURM tasks: one JAX run
        from cil import sweep  # after the device count is set: JAX starts here
        summaries = sweep.run_grid(self.config, self.workdir, self.index, self.count)
        return len(summaries)

    def checkpoint(self):
        """What submitit requeues on USR2: the same shard, which resumes from its files."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


def use_devices(count: int | None) -> None:
    """XLA:CPU devices for this process, whatever the launching process asked for its own."""
    inherited = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(f for f in inherited
                                       if "xla_force_host_platform_device_count" not in f)
    parallel.use_host_devices(count)


def executor(launcher: str, folder: Path, config: ml_collections.ConfigDict):
    """A submitit executor for ``launcher`` with ``config.launch``'s resources."""
    try:
        import submitit
    except ImportError as error:
        raise ConfigError(f"--launcher={launcher} needs submitit ({error}); "
                          f"pip install -r requirements.txt") from None
    launch = config.launch
    if launcher == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=int(launch.time_minutes),
                             signal_delay_s=int(launch.signal_delay_s))
        return ex
    ex = submitit.SlurmExecutor(folder=folder / "%j")  # a folder per job, as submitit suggests
    resources = {"time": int(launch.time_minutes), "cpus_per_task": int(launch.cpus_per_task),
                 "mem": f"{int(float(launch.mem_gb) * 1024)}M",
                 "array_parallelism": int(launch.array_parallelism),
                 "signal_delay_s": int(launch.signal_delay_s), "job_name": "cil",
                 "nodes": int(launch.nodes), "ntasks_per_node": int(launch.tasks_per_node)}
    if launch.partition:
        resources["partition"] = launch.partition
    if launch.gpus_per_node:
        resources["gpus_per_node"] = int(launch.gpus_per_node)
    ex.update_parameters(**resources)
    return ex


def submit(config: ml_collections.ConfigDict, workdir: str, launcher: str,
           progress=print) -> list:
    """Submits one job per shard (a SLURM array, or local processes); returns submitit's jobs."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher={launcher} is not one of {', '.join(LAUNCHERS)}")
    from cil import sweep
    count = int(config.launch.shards)
    points = sweep.expand(config)
    sweep.checked_configs(config, {p.overrides for p in points})  # before any job is submitted
    folder = Path(workdir) / "launch"
    if Path(workdir).is_file():
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; choose another --workdir")
    folder.mkdir(parents=True, exist_ok=True)
    # Local shards share this machine's cores; on SLURM each task has its cpus_per_task.
    devices = max(1, parallel.usable_cores() // count) if launcher == "local" else None
    dirs = shard_dirs(workdir, count)
    ex = executor(launcher, folder, config)
    jobs = ex.submit_array([Shard(config, str(d), i, count, devices) for i, d in enumerate(dirs)])
    record = {"launcher": launcher, "folder": str(ex.folder), "shards": [str(d) for d in dirs],
              "jobs": [job.job_id for job in jobs], "grid_runs": len(points)}
    (folder / JOBS_FILE).write_text(json.dumps(record, indent=1) + "\n")
    progress(f"submitted {len(points)} runs as {count} {launcher} job(s) "
             f"{', '.join(job.job_id for job in jobs)}; shard i writes {Path(workdir)}/shards/i; "
             f"logs in {folder}")
    return jobs


def wait(workdir: str, jobs: list | None = None, progress=print) -> str:
    """Waits for the jobs of ``workdir``'s last submission; returns the merged Markdown table.
    A shard that failed is named with its error (its log's path), after the others finished."""
    from cil import tables
    record_path = Path(workdir) / "launch" / JOBS_FILE
    if not record_path.exists():
        raise WorkdirError(f"{record_path} does not exist: nothing was launched in {workdir}; "
                           f"run.py --launcher=slurm|local submits")
    record = json.loads(record_path.read_text())
    if jobs is None:
        import submitit
        job_class = submitit.SlurmJob if record["launcher"] == "slurm" else submitit.LocalJob
        folder = Path(record["folder"])
        jobs = [job_class(folder=folder, job_id=job_id) for job_id in record["jobs"]]
    failed = []
    for shard, job in zip(record["shards"], jobs):
        try:
            finished = job.results()[0]  # a shard of several SLURM tasks: the first's count
            progress(f"shard {shard}: {finished} new run(s) finished (job {job.job_id})")
        except Exception as error:  # a shard's own error, or SLURM's end of it: name it
            text = " ".join(str(error).split())
            failed.append(f"job {job.job_id} ({shard}): {text[-300:]} (log: "
                          f"{job.paths.stderr})")
    if failed:
        raise RunError(f"{len(failed)} shard(s) failed (the others finished): {'; '.join(failed)}")
    return tables.markdown_table(tables.load(*record["shards"]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cil.launch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the --workdir of a run.py --launcher=... submission")
    args = parser.parse_args(argv)
    try:
        print(wait(args.workdir))
    except CilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
