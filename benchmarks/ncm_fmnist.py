"""NCM with augmentation voting (TILDA) on Split-Fashion-MNIST B4-Inc2, encoder from the base task.

    python benchmarks/ncm_fmnist.py --workdir=workdir/bench_ncm_fmnist        # the table
    python benchmarks/ncm_fmnist.py --workdir=/tmp/b --seeds=0 --shapes=1x1 --views=3

Encoder: the small CNN of configs/pretrain_fmnist.py (64 features), trained on the stream's task 0
only (its four classes' 24,000 training images), then frozen; trained here first if --encoder
holds none. Stream: B4-Inc2, class order 0..9, tested after each task on every seen class.

Methods, all through the suite's evaluator (PROTOCOL.md) on the same frozen encoder:
- ``ncm`` (cil/baselines/ncm.py) for each (P subspaces, k anchors) in --shapes, in four modes: plain
  (1 training view, 1 test view), train-aug (V training views), test-vote (V voting test views),
  both; V = --views;
- ``finetune`` and ``joint`` on the frozen features: a linear head (the suite's Trainer; Adam 1e-3,
  batch 128, 5 epochs per task) trained on each task in turn, resp. retrained from scratch on all
  features seen so far. They are cil/baselines/finetune.py and joint.py unchanged, given features for
  images (``FrozenFeatures`` below).

Time. ``encoder pass`` is one pass of the encoder over the stream's 60,000 training images (jitted,
compile excluded, best of 2). For each NCM run, ``train/pass`` is its total learn time over
(training views x that pass): what learning costs on top of computing features (goal: 1.1x at
most); ``run/passes`` compares train + eval time with the encoder passes the run needs (training
images x training views + evaluated test images x test views, at the same rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cil import parallel  # noqa: E402

parallel.use_host_devices()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from cil.baselines.finetune import Finetune  # noqa: E402
from cil.baselines.joint import Joint  # noqa: E402
from cil import encoders, experiment, pretrain  # noqa: E402
from cil.results import ResultsWriter, read_summaries, stable_hash  # noqa: E402
from cil.strategy import load_strategy  # noqa: E402
from configs import ncm_fmnist, pretrain_fmnist  # noqa: E402

MODES = {"plain": (1, 1), "train-aug": (None, 1), "test-vote": (1, None), "both": (None, None)}
PROBE_TRAIN = {"optimizer": "adam", "learning_rate": 1e-3, "momentum": 0.0, "weight_decay": 0.0,
               "batch_size": 128, "epochs": 5}


class FrozenFeatures:
    """Mixin: the strategy it precedes sees the frozen encoder's features instead of images."""

    @classmethod
    def fields(cls):
        return {**super().fields(), "encoder": encoders.ENCODER_FIELDS}

    def init(self, key, spec):
        self.encoder = encoders.encoder_from_config(self.config.strategy.encoder, spec.image_shape)
        return super().init(key, dataclasses.replace(spec, image_shape=(self.encoder.feature_dim,)))

    def learn(self, state, task, key):
        features = np.asarray(self.encoder.features(task.images))
        return super().learn(state, dataclasses.replace(task, images=features), key)

    def predict(self, state, images):
        return super().predict(state, self.encoder.features(images))

    def memory(self, state):
        return super().memory(state)._replace(encoder_params=self.encoder.num_bytes)


class FrozenFinetune(FrozenFeatures, Finetune):
    name = "finetune"


class FrozenJoint(FrozenFeatures, Joint):
    name = "joint"


def with_data(config, data_path: str | None):
    """``config`` reading the Fashion-MNIST IDX files from ``data_path`` (default: Debian's)."""
    if data_path:
        config.dataset.path = data_path
    return config


def ensure_encoder(directory: Path, data_path: str | None) -> dict:
    if not (directory / encoders.META_FILE).is_file():
        pretrain.run_pretrain(with_data(pretrain_fmnist.get_config(), data_path), str(directory))
    return encoders.read_meta(directory)


def encoder_pass_seconds(directory: Path, images: np.ndarray) -> float:
    """One jitted pass of the encoder over ``images``, compile excluded (best of two)."""
    encoder = encoders.load_encoder(directory)
    jax.block_until_ready(encoder.features(images[:encoder.batch_size]))  # compile
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(encoder.features(images))
        times.append(time.perf_counter() - start)
    return min(times)


def run_strategy(strategy, config, stream, workdir: Path, label: str) -> list[dict]:
    """Every seed of ``config`` for one strategy instance, through the suite's run loop."""
    spec = experiment.stream_spec(stream, config.memory)
    writer = ResultsWriter(workdir)
    identity = experiment.stream_identity(config, stream)
    settings = {"label": label, "strategy": strategy.config.strategy.to_dict(),
                "model": config.model.to_dict(), "train": config.train.to_dict()}
    summaries = []
    for seed in config.seeds:
        run_id = stable_hash({"stream": identity, "config": settings, "seed": seed})
        done = [s for s in read_summaries(workdir) if s["run_id"] == run_id]
        if done:
            summaries.append(done[0])
            continue
        header = {"run_id": run_id, "config_hash": stable_hash(settings), "strategy": label,
                  "seed": seed, **identity}
        loop = experiment.RunLoop(strategy, stream, spec, config, header, writer, workdir, print)
        summaries.append(loop.run(settings))
    return summaries


def ncm_config(args, encoder_dir: Path, subspaces, anchors, train_views, test_views):
    config = with_data(ncm_fmnist.get_config(), args.data_path)
    seeds = [int(s) for s in args.seeds.split(",")]
    config.seeds = tuple(seeds)
    config.checkpoint = False
    config.ncm.encoder.checkpoint = str(encoder_dir)
    config.ncm.update({"subspaces": subspaces, "anchors": anchors, "train_views": train_views,
                       "test_views": test_views})
    config.ncm.augment.update({"flip": args.flip, "crop_padding": args.crop_padding})
    return config


def interleaved_ratio(strategy, config, stream, repeats: int = 3) -> tuple[float, float]:
    """(median learn time, median encoder time) on task 0, alternated to cancel load drift.

    The encoder time is ``extract_features`` of the same images with the same views: what the
    learning costs beyond computing the features it needs. Compiles are run first, apart.
    """
    spec = experiment.stream_spec(stream, config.memory)
    task, key = stream.train_task(0), jax.random.key(0)
    state = strategy.init(key, spec)
    views = int(strategy.config.strategy.train_views)

    def learn():
        jax.block_until_ready(strategy.learn(state, task, key).state)

    def features():
        jax.block_until_ready(encoders.extract_features(strategy.encoder, task.images, key, views,
                                                        strategy.augment))

    learn(), features()  # compile both
    times = {learn: [], features: []}
    for _ in range(repeats):
        for step in times:
            start = time.perf_counter()
            step()
            times[step].append(time.perf_counter() - start)
    return float(np.median(times[learn])), float(np.median(times[features]))


def probe(cls, args, encoder_dir: Path):
    config = with_data(ncm_fmnist.get_config(), args.data_path)
    config.seeds = tuple(int(s) for s in args.seeds.split(","))
    config.checkpoint = False
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": ()})  # a linear head
    config.train.update(PROBE_TRAIN)
    section = cls.default_config()
    section.encoder.checkpoint = str(encoder_dir)
    merged = ml_collections.ConfigDict(config.to_dict())
    merged.strategy = section
    return cls(merged), config


def row(label, summaries, pass_seconds=None, train_views=1, test_views=1, test_images=0):
    mean = lambda key: np.mean([s[key] for s in summaries])  # noqa: E731
    std = lambda key: np.std([s[key] for s in summaries])  # noqa: E731
    train, evaluate = mean("train_seconds"), mean("eval_seconds")
    cells = [label, f"{100 * mean('avg_inc_acc'):.2f} ± {100 * std('avg_inc_acc'):.2f}",
             f"{100 * mean('last_acc'):.2f} ± {100 * std('last_acc'):.2f}",
             f"{100 * mean('forgetting'):.2f}", f"{mean('memory_bytes') / 1e3:.1f}",
             f"{train:.1f}", f"{evaluate:.1f}"]
    if pass_seconds is None:
        return "| " + " | ".join(cells + ["", ""]) + " |"
    per_image = pass_seconds / 60_000
    needed = per_image * (60_000 * train_views + test_images * test_views)
    cells += [f"{train / (pass_seconds * train_views):.2f}", f"{(train + evaluate) / needed:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir/bench_ncm_fmnist")
    parser.add_argument("--encoder", default=ncm_fmnist.ENCODER)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shapes", default="1x1,8x1,8x4", help="PxK pairs: subspaces x anchors")
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--probes", default="finetune,joint")
    parser.add_argument("--data_path", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--flip", default="auto", help="ncm.augment.flip: auto, on or off")
    parser.add_argument("--crop_padding", type=int, default=2, help="ncm.augment.crop_padding")
    parser.add_argument("--timing", default="8x1,8x4",
                        help="PxK shapes whose learn time is also measured against the encoder, "
                             "alternating, on task 0 (plain and V training views)")
    args = parser.parse_args()
    workdir, encoder_dir = Path(args.workdir), Path(args.encoder).resolve()
    meta = ensure_encoder(encoder_dir, args.data_path)
    stream = experiment.build_stream(with_data(ncm_fmnist.get_config(), args.data_path))
    pass_seconds = encoder_pass_seconds(encoder_dir, stream.train_images)
    test_images = sum(len(stream.test_seen(t).labels) for t in range(stream.num_tasks))
    lines = []
    for shape in args.shapes.split(","):
        subspaces, anchors = (int(v) for v in shape.split("x"))
        for mode in args.modes.split(","):
            train_views, test_views = (v or args.views for v in MODES[mode])
            config = ncm_config(args, encoder_dir, subspaces, anchors, train_views, test_views)
            label = f"ncm P={subspaces} k={anchors} {mode}"
            if mode != "plain" and (args.flip, args.crop_padding) != ("auto", 2):
                label += f" (flip {args.flip}, padding {args.crop_padding})"
            strategy = load_strategy("ncm", config)
            summaries = run_strategy(strategy, config, stream, workdir / label.replace(" ", "_"), label)
            lines.append(row(label, summaries, pass_seconds, train_views, test_views, test_images))
    probes = {"finetune": FrozenFinetune, "joint": FrozenJoint}
    for name in filter(None, args.probes.split(",")):
        strategy, config = probe(probes[name], args, encoder_dir)
        label = f"{name} (linear head on the frozen features)"
        lines.append(row(label, run_strategy(strategy, config, stream, workdir / name, label)))
    timings = []
    for shape in filter(None, args.timing.split(",")):
        subspaces, anchors = (int(v) for v in shape.split("x"))
        for views in sorted({1, args.views}):
            config = ncm_config(args, encoder_dir, subspaces, anchors, views, 1)
            learn, features = interleaved_ratio(load_strategy("ncm", config), config, stream)
            timings.append(f"| ncm P={subspaces} k={anchors}, {views} training view(s) | "
                           f"{features:.2f} | {learn:.2f} | {learn / features:.2f} |")
    trained_on = meta["trained_on"]
    print(f"\nencoder: {encoder_dir} ({meta['model']}, trained on {trained_on['data']} "
          f"{trained_on.get('classes')}, test accuracy {trained_on.get('test_accuracy', 0):.4f})")
    print(f"encoder pass over the 60,000 training images: {pass_seconds:.2f}s "
          f"({60_000 / pass_seconds:,.0f} images/s); seeds {args.seeds}; V = {args.views}; "
          f"{jax.devices()[0].device_kind} x{len(jax.devices())}\n")
    print("| method | Ā (%) | A_last (%) | F (%) | memory (kB) | train (s) | eval (s) | "
          "train/pass | run/passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    if timings:
        print("\nlearning task 0 (24,000 images) against extracting its features, medians of 3, "
              "alternated:\n")
        print("| run | features (s) | learn (s) | learn / features |")
        print("|---|---|---|---|")
        print("\n".join(timings))


if __name__ == "__main__":
    main()
