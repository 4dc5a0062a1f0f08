"""How fast NCM (TILDA) learns against the encoder it runs on: Split-Fashion-MNIST B4-Inc2.

    python benchmarks/ncm_fmnist.py                       # the timing table of ncm_fmnist.md
    python benchmarks/ncm_fmnist.py --shapes=8x4 --views=3

The accuracy tables of benchmarks/ncm_fmnist.md come from run.py (configs/ncm_fmnist.py:table,
:ablation, :probes) and cil.tables; this script only times. For each P x k shape (subspaces x
anchors) and 1 or V training views, it learns task 0 (24,000 images) and extracts the features of
the same images with the same views (``extract_features``), alternating three times; the medians
and their ratio are what learning costs on top of computing the features it needs (goal: 1.1x at
most). Compiles run first and are not counted. It also prints one pass of the encoder over the
60,000 training images (jitted, compile excluded, best of 2).

The encoder is configs/ncm_fmnist.py's (the small CNN of configs/pretrain_fmnist.py, trained on
the base task only); pretrain it first with run.py if --encoder holds none.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cil import parallel  # noqa: E402

parallel.use_host_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cil import encoders, experiment  # noqa: E402
from cil.strategy import load_strategy  # noqa: E402
from configs import ncm_fmnist  # noqa: E402


def with_data(config, data_path: str | None):
    """``config`` reading the Fashion-MNIST IDX files from ``data_path`` (default: Debian's)."""
    if data_path:
        config.dataset.path = data_path
    return config


def ensure_encoder(directory: Path) -> dict:
    if not (directory / encoders.META_FILE).is_file():
        sys.exit(f"no encoder in {directory}; pretrain it first: python run.py "
                 f"--config=configs/pretrain_fmnist.py --workdir={directory}")
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


def ncm_config(args, encoder_dir: Path, subspaces, anchors, train_views, test_views):
    config = with_data(ncm_fmnist.get_config(), args.data_path)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=ncm_fmnist.ENCODER)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--data_path", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--flip", default="auto", help="ncm.augment.flip: auto, on or off")
    parser.add_argument("--crop_padding", type=int, default=2, help="ncm.augment.crop_padding")
    parser.add_argument("--shapes", default="8x1,8x4", help="PxK pairs: subspaces x anchors")
    args = parser.parse_args()
    encoder_dir = Path(args.encoder).resolve()
    meta = ensure_encoder(encoder_dir)
    stream = experiment.build_stream(with_data(ncm_fmnist.get_config(), args.data_path))
    pass_seconds = encoder_pass_seconds(encoder_dir, stream.train_images)
    timings = []
    for shape in args.shapes.split(","):
        subspaces, anchors = (int(v) for v in shape.split("x"))
        for views in sorted({1, args.views}):
            config = ncm_config(args, encoder_dir, subspaces, anchors, views, 1)
            learn, features = interleaved_ratio(load_strategy("ncm", config), config, stream)
            timings.append(f"| ncm P={subspaces} k={anchors}, {views} training view(s) | "
                           f"{features:.2f} | {learn:.2f} | {learn / features:.2f} |")
    trained_on = meta["trained_on"]
    print(f"encoder: {encoder_dir} ({meta['model']}, trained on {trained_on['data']} "
          f"{trained_on.get('classes')}, test accuracy {trained_on.get('test_accuracy', 0):.4f})")
    print(f"encoder pass over the 60,000 training images: {pass_seconds:.2f}s "
          f"({60_000 / pass_seconds:,.0f} images/s); V = {args.views}; "
          f"{jax.devices()[0].device_kind} x{len(jax.devices())}\n")
    print("learning task 0 (24,000 images) against extracting its features, medians of 3, "
          "alternated:\n")
    print("| run | features (s) | learn (s) | learn / features |")
    print("|---|---|---|---|")
    print("\n".join(timings))


if __name__ == "__main__":
    main()
