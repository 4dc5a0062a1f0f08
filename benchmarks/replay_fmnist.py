"""Replay on Split-Fashion-MNIST B0-Inc2: accuracy, forgetting, throughput and wall time per run.

    python benchmarks/replay_fmnist.py --cores=1                 # the table, held to one core
    python benchmarks/replay_fmnist.py --cores=2                 # two cores, one device each
    python benchmarks/replay_fmnist.py --cores=2 --devices=1     # two cores, one device
    python benchmarks/replay_fmnist.py --cores=1 --rows=replay-1000-e5 --seeds=0   # one run

Rows: finetune, joint, and replay with a class-balanced random memory of 200 and 1,000 exemplars,
at 1 and 5 epochs per task (configs/replay_fmnist.py: MLP 784-400-400-10, SGD lr 0.01 without
momentum, batch 128 new + 128 from memory, class order 0..9), seeds 0, 1, 2. Each (row, seed) is
one complete run through cil.experiment (a fresh strategy, so its compiles are counted in its wall
time); the table shows mean ± std over seeds. ``train img/s`` counts every trained example, memory
ones included, over the training seconds (compiles excluded, PROTOCOL.md). ``GFLOP/s`` is that
rate times the matrix-product FLOPs of one example: 2 per weight forward, 2 for the weight gradient,
2 for the input gradient except the first layer's (2.24 MFLOP for 784-400-400-10; the issue's
"63 GFLOP/s" counts 6 per weight, 2.87 MFLOP), beside one core's peak measured here as a 2048^3
float32 matrix product in XLA.

``--cores=N`` pins the process to the first N cores, before JAX starts, and gives XLA one host
device per core (batches split over them, as run.py does) with its intra-op threading off
(``--xla_cpu_multi_thread_eigen=false``); ``--devices=1`` instead keeps one device whose matrix
products use every core (XLA's intra-op threads).

``--like-pytorch`` sets the two model options in which the PyTorch suite of the targets differs
from cil's defaults: inputs standardised with Fashion-MNIST's pixel mean and std (its torchvision
transform; ``model.input_mean``/``input_std``), and PyTorch's default initialisation,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases (``model.init="pytorch"``).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # "start to table" counts the imports below

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("finetune-e1", "joint-e1", "replay-200-e1", "replay-1000-e1",
        "finetune-e5", "joint-e5", "replay-200-e5", "replay-1000-e5")
# The PyTorch suite's figures on this protocol (the issue): A_last / Ā / forgetting, img/s, wall.
TARGETS = {
    "replay-1000-e5": "79.7 / 86.4 / 17.0, ~13k img/s, 43 s",
    "replay-200-e5": "75.8 / – / –",
    "joint-e5": "83.2 / – / –",
    "finetune-e5": "20.0 / – / –",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="pin to this many cores, one XLA host device each")
    parser.add_argument("--devices", type=int, default=0,
                        help="XLA host devices (default: one per core); 1: one, multithreaded")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="",
                        help="results go here (default: a temporary folder)")
    parser.add_argument("--out", default="", help="also write the Markdown table to this file")
    parser.add_argument("--like-pytorch", action="store_true",
                        help="standardised inputs and PyTorch's default init (a diagnostic)")
    args = parser.parse_args(argv)
    args.rows = args.rows.split(",")
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    return args


def hold_to_cores(cores: int, devices: int) -> None:
    """Pins the process to ``cores`` cores and sets XLA's devices and threads, before JAX starts."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    os.environ["CIL_HOST_DEVICES"] = str(devices)
    if devices == cores:  # one thread per device: the devices share the cores out
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()


FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of the training pixels in [0, 1]


def row_config(row: str, seed: int, like_pytorch: bool = False):
    """The config of one (row, seed): configs/replay_fmnist.py, changed as the row says."""
    from configs.replay_fmnist import get_config

    strategy, *rest = row.split("-")
    config = get_config()
    config.strategies = (strategy,)
    config.seeds = (seed,)
    config.train.epochs = int(rest[-1].removeprefix("e"))
    config.memory.exemplars = int(rest[0]) if strategy == "replay" else None
    config.checkpoint = False
    if like_pytorch:
        config.model.update({"input_mean": (FASHION_MNIST_MEAN,), "input_std": (FASHION_MNIST_STD,),
                             "init": "pytorch"})
    return config


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """One device's float32 matrix-product rate, as XLA runs it."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul(a).block_until_ready()
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


def mlp_flops_per_example(config) -> int:
    """Matrix-product FLOPs to train on one example (biases, ReLU and the loss left out).

    6 per weight (forward, weight gradient, input gradient), less the first layer's input
    gradient, which nothing needs.
    """
    sizes = [28 * 28, *config.model.hidden, 10]
    return 6 * sum(a * b for a, b in zip(sizes, sizes[1:])) - 2 * sizes[0] * sizes[1]


def machine_description() -> str:
    import jax

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    devices = jax.devices()
    return (f"{model}, {os.cpu_count()} cores, this process pinned to cores "
            f"{sorted(os.sched_getaffinity(0))}; {len(devices)} {devices[0].platform} "
            f"device(s) ({devices[0].device_kind}); JAX {jax.__version__}; "
            f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'; load average before "
            f"{os.getloadavg()[0]:.1f}")


def mean_std(values) -> str:
    """Formats "mean ± std" to one decimal, with the tables' statistics (cil.tables.mean_std)."""
    from cil.tables import mean_std as statistics

    mean, std = statistics(values)
    return f"{mean:.1f} ± {std:.1f}"


def run_row(row: str, seeds, workdir: Path, like_pytorch: bool = False) -> dict:
    from cil import experiment

    runs = []
    for seed in seeds:
        wall, cpu = time.perf_counter(), time.process_time()
        config = row_config(row, seed, like_pytorch)
        [summary] = experiment.run_experiment(config, str(workdir / row / str(seed)),
                                              progress=lambda _: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({**summary, "wall": wall, "cpu": cpu})
        print(f"  {row} seed {seed}: A_last {100 * summary['last_acc']:.2f}  "
              f"Ā {100 * summary['avg_inc_acc']:.2f}  F {100 * summary['forgetting']:.2f}  "
              f"{summary['train_images_per_second']:,.0f} img/s  wall {wall:.1f} s  "
              f"CPU {cpu:.1f} s", flush=True)
    return {"row": row, "runs": runs}


def markdown(results, flops: int, peak: float) -> str:
    lines = ["| run | seeds | A_last (%) | Ā (%) | forgetting (%) | train img/s | GFLOP/s "
             f"(one core's peak {peak:.0f}) | train s | compile s | wall s per run | "
             "CPU s per run | target (A_last / Ā / F) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        runs = result["runs"]
        rates = [r["train_images_per_second"] for r in runs]
        cells = [result["row"], str(len(runs)),
                 mean_std([100 * r["last_acc"] for r in runs]),
                 mean_std([100 * r["avg_inc_acc"] for r in runs]),
                 mean_std([100 * r["forgetting"] for r in runs]),
                 f"{sum(rates) / len(rates):,.0f}",
                 f"{sum(rates) / len(rates) * flops / 1e9:.1f}",
                 mean_std([r["train_seconds"] for r in runs]),
                 mean_std([r["compile_seconds"] for r in runs]),
                 mean_std([r["wall"] for r in runs]),
                 mean_std([r["cpu"] for r in runs]),
                 TARGETS.get(result["row"], "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    args = parse_args(argv)
    hold_to_cores(args.cores, args.devices or args.cores)
    sys.path.insert(0, str(ROOT))
    from cil import parallel

    parallel.use_host_devices()
    machine = machine_description() + ("; --like-pytorch" if args.like_pytorch else "")
    print(machine, flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="replay_fmnist_"))
    results = [run_row(row, args.seeds, workdir, args.like_pytorch) for row in args.rows]
    flops = mlp_flops_per_example(row_config(args.rows[0], 0))
    table = markdown(results, flops, peak_gflops())
    elapsed = time.perf_counter() - STARTED
    footer = (f"\n\n{machine}; load average after {os.getloadavg()[0]:.1f}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}; start to table {elapsed:.1f} s")
    print("\n" + table + footer)
    if args.out:
        Path(args.out).write_text(table + footer + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
