"""Partial network sharing against its sharing point: accuracy, storage, training time, FLOPs.

    python benchmarks/partial_sharing_sweep.py --parts=fmnist_mlp --seeds=0,1,2    # the .md's runs
    python benchmarks/partial_sharing_sweep.py --parts=fmnist_cnn --seeds=0 \
        --train-per-class=2000 --test-per-class=500
    python benchmarks/partial_sharing_sweep.py --parts=synthetic32 --seeds=0 \
        --train-per-class=60 --test-per-class=30
    python benchmarks/partial_sharing_sweep.py --out=sweep.json    # everything, all data, 3 seeds

For each part (a stream and a network) it runs finetune and partial_sharing at every sharing point
from "share nothing" (k = 0: each task's branch is a whole network cloned from the base) to "share
all but the head" (k = number of stages), plus the merge and calibration variants the part lists,
and prints one Markdown table (mean ± std over seeds): A_last, Ā and forgetting (PROTOCOL.md),
A_last with the task id given (each test image scored only among its own task's classes: what a
branch knows, apart from telling tasks apart), the bytes kept against one whole network per task,
the parameters and FLOPs trained per later task, the measured training seconds per later task
(compiles excluded) and the inference FLOPs per image. That is the paper's accuracy-against-sharing
curve as a table, with its storage and time savings beside it.

Each run is the run loop of cil/experiment.py done by hand (same keys, same evaluator functions,
same Stopwatch), because the table needs what the results files cannot hold yet: the strategy's
``extras(state)`` after every task, and the scores for the task-given accuracy.

Parts:
- ``fmnist_mlp``: Split-Fashion-MNIST B2-Inc2 (5 tasks), MLP 784-400-400 (2 stages).
- ``fmnist_cnn``: the same stream with configs/partial_sharing_fmnist.py's CNN (3 stages).
- ``synthetic32``: 32x32 RGB images made up here (there is no CIFAR on this machine; see
  ``synthetic32``), 6 classes B2-Inc2, ResNet-32 (17 stages), tiny: its steps are slow on a CPU.

FLOPs are XLA's cost analysis of the compiled computations (PartialSharing.accounting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cil import parallel  # noqa: E402

parallel.use_host_devices()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from cil import evaluation, experiment  # noqa: E402
from cil.data import sources, stream as streams  # noqa: E402
from cil.strategy import load_strategy  # noqa: E402
from cil.timing import Stopwatch  # noqa: E402
from configs.partial_sharing_fmnist import get_config as fmnist_config  # noqa: E402


def synthetic32(num_classes: int, train_per_class: int, test_per_class: int,
                seed: int = 0) -> sources.Dataset:
    """Class c: a blocky random colour pattern of its own, shifted up to 4 pixels, plus noise."""
    rng = np.random.default_rng(seed)
    templates = np.kron(rng.normal(size=(num_classes, 4, 4, 3)), np.ones((1, 8, 8, 1)))

    def split(per_class):
        labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
        images = np.stack([np.roll(templates[c], tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
                           for c in labels])
        images = 128 + 45 * images + 50 * rng.normal(size=images.shape)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    return sources.Dataset("synthetic32", *split(train_per_class), *split(test_per_class),
                           tuple(f"pattern{c}" for c in range(num_classes)))


def first_per_class(dataset: sources.Dataset, train: int | None, test: int | None):
    """The dataset with only the first ``train`` / ``test`` images of each class (None: all)."""
    def first(labels, count):
        if count is None:
            return np.arange(len(labels))
        return np.sort(np.concatenate([np.flatnonzero(labels == c)[:count]
                                       for c in range(dataset.num_classes)]))

    tr, te = first(dataset.train_labels, train), first(dataset.test_labels, test)
    return sources.Dataset(dataset.name, dataset.train_images[tr], dataset.train_labels[tr],
                           dataset.test_images[te], dataset.test_labels[te], dataset.class_names)


def part(name: str, args):
    """(config, stream, sharing points, variants) of one part of the sweep."""
    config = fmnist_config()
    if name == "synthetic32":
        config.model = ml_collections.ConfigDict({"name": "resnet32"})
        config.train.update({"batch_size": 32, "epochs": args.epochs or 3})
        config.eval_batch_size = 100
        dataset = synthetic32(args.synthetic_classes, args.train_per_class or 150,
                              args.test_per_class or 50)
        stream = streams.make_stream(dataset, 2, 2, explicit_order=list(range(dataset.num_classes)))
        return config, stream, (0, 6, 11, 16, 17), ()
    if name == "fmnist_mlp":
        config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (400, 400)})
    config.train.epochs = args.epochs or config.train.epochs
    config.dataset.path = args.fmnist_path
    dataset = first_per_class(sources.load(config.dataset), args.train_per_class,
                              args.test_per_class)
    stream = streams.make_stream(dataset, config.stream.initial, config.stream.increment,
                                 explicit_order=list(config.stream.class_order))
    if name == "fmnist_cnn":
        return config, stream, (0, 1, 2, 3), ()
    variants = (("k=1, logits", {"shared_stages": 1, "merge": "logits"}),
                ("k=1, calibrated (20 per class)",
                 {"shared_stages": 1, "calibration_per_class": 20}))
    return config, stream, (0, 1, 2), variants


class WithinTask:
    """A strategy's scores with every class outside one task masked: accuracy given the task id."""

    def __init__(self, strategy, classes, num_classes: int):
        self.strategy = strategy
        self.mask = jnp.isin(jnp.arange(num_classes), jnp.asarray(classes))

    def predict(self, state, images):
        return jnp.where(self.mask, self.strategy.predict(state, images), -jnp.inf)


def run(strategy, stream, spec, seed: int, batch_size: int) -> dict:
    """One (strategy, seed) over the stream: keys and evaluation as cil.experiment.RunLoop."""
    init_key, tasks_key = jax.random.split(jax.random.key(seed))
    state = strategy.init(init_key, spec)
    rows, A, tasks = [], [], []
    for t in range(stream.num_tasks):
        with Stopwatch() as watch:
            learned = strategy.learn(state, stream.train_task(t), jax.random.fold_in(tasks_key, t))
            state = jax.block_until_ready(learned.state)
        test = stream.test_seen(t)
        predictions = evaluation.predict_seen(strategy, state, test.images,
                                              stream.seen_classes(t), batch_size)
        row, A_t = evaluation.accuracy_row(predictions, test.labels, stream.tasks[: t + 1])
        rows.append(row)
        A.append(A_t)
        tasks.append({"train_seconds": watch.seconds, "compile_seconds": watch.compile_seconds,
                      "charged_bytes": strategy.memory(state).charged_bytes(),
                      "stats": strategy.extras(state)})
    correct = 0
    for span in stream.tasks:  # after the last task, each test image among its own task's classes
        in_task = np.isin(test.labels, span.classes)
        within = WithinTask(strategy, span.classes, stream.num_classes)
        correct += np.sum(evaluation.predict_seen(within, state, test.images[in_task],
                                                  stream.num_classes, batch_size)
                          == test.labels[in_task])
    return {**evaluation.summary_metrics(rows, A), "acc_matrix": rows, "tasks": tasks,
            "task_given_last_acc": float(correct / len(test.labels))}


def mean_std(values, scale=100.0) -> str:
    """Formats "mean ± std" to one decimal, with the tables' statistics (cil.tables.mean_std)."""
    from cil.tables import mean_std as statistics

    values = [v * scale for v in values]
    mean, std = statistics(values)
    return f"{mean:.1f} ± {std:.1f}"


def table_row(part_name: str, label: str, runs: list[dict], stats: dict, finetune: bool) -> str:
    """One line of the table; ``stats``: PartialSharing.extras after the last task."""
    later = [t["train_seconds"] for r in runs for t in r["tasks"][1:]]
    if finetune:
        sharing, per_task_net = label, "-"
        trained = stats["finetune_params_trained"]
        flops = stats["finetune_train_flops_per_example_epoch"]
        inference = stats["one_network_inference_flops_per_example"]
    else:
        sharing = (f"{label}: {stats['shared_stages']}/{stats['num_stages']} "
                   f"({100 * stats['shared_fraction']:.0f} %)")
        per_task_net = f"{stats['one_network_per_task_bytes'] / 1e6:.3f}"
        trained = runs[0]["tasks"][1]["stats"]["params_trained"]
        flops = runs[0]["tasks"][1]["stats"]["train_flops_per_example_epoch"]
        inference = stats["inference_flops_per_example"]
    kept = max(t["charged_bytes"] for r in runs for t in r["tasks"]) / 1e6
    cells = [part_name, sharing, mean_std([r["last_acc"] for r in runs]),
             mean_std([r["avg_inc_acc"] for r in runs]), mean_std([r["forgetting"] for r in runs]),
             mean_std([r["task_given_last_acc"] for r in runs]), f"{kept:.3f}", per_task_net,
             f"{trained:,}", f"{flops / 1e6:.3g}", f"{np.mean(later):.2f}",
             f"{inference / 1e6:.3g}"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| part | sharing point k (share of params) | A_last (%) | Ā (%) | forgetting (%) "
          "| A_last, task given (%) | kept (MB) | one net per task (MB) "
          "| params trained per later task | train MFLOP/img/epoch, later task "
          "| train s per later task | inference MFLOP/img |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fmnist_mlp,fmnist_cnn,synthetic32")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override every part's epochs")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="train on the first N images of each class (default: all; "
                             "synthetic32: 150)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="test on the first N images of each class (default: all; "
                             "synthetic32: 50)")
    parser.add_argument("--synthetic-classes", type=int, default=6, help="synthetic32's classes")
    parser.add_argument("--fmnist-path", default=None, help="folder of the Fashion-MNIST IDX files "
                        "(default: Debian's, see cil/data/sources.py)")
    parser.add_argument("--out", default=None, help="write every run's figures to this JSON file")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} cores; "
          f"{' '.join(sys.argv[1:])}", flush=True)
    lines, record = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)], {}
    for name in args.parts.split(","):
        record[name] = sweep_part(name, args, seeds)
        for label, runs in record[name].items():
            # Finetune's parameters and FLOPs are the finetune_* figures of any partial_sharing run.
            stats = record[name]["k=0" if label == "finetune" else label][0]["tasks"][-1]["stats"]
            lines.append(table_row(name, label, runs, stats, label == "finetune"))
        print("\n" + "\n".join(lines), flush=True)  # so far: a part's rows survive a later crash
        if args.out:
            Path(args.out).write_text(json.dumps(record, indent=1))


def sweep_part(name: str, args, seeds) -> dict:
    """Every setting of one part over the seeds: {label: [one run's figures per seed]}."""
    started = time.time()
    config, stream, points, variants = part(name, args)
    spec = experiment.stream_spec(stream, config.memory)
    settings = [("finetune", None)] + [(f"k={k}", {"shared_stages": k}) for k in points]
    runs = {}
    for label, section in settings + list(variants):
        cfg = ml_collections.ConfigDict(config.to_dict())
        if section is not None:
            cfg.partial_sharing = ml_collections.ConfigDict(section)
        strategy = load_strategy("finetune" if section is None else "partial_sharing", cfg)
        runs[label] = [run(strategy, stream, spec, seed, config.eval_batch_size) for seed in seeds]
        print(f"{name} {label}: A_last {np.mean([r['last_acc'] for r in runs[label]]):.4f} "
              f"({time.time() - started:.0f} s)", flush=True)
    return runs


if __name__ == "__main__":
    main()
