"""Training throughput of the shared Trainer against bare references, on synthetic data (images/s).

    python benchmarks/train_throughput.py --model=cnn --shape=32,32,3
    python benchmarks/train_throughput.py --model=resnet32 --steps=8 --loop_steps=1
    python benchmarks/train_throughput.py --model=mlp --shape=28,28,1 --steps=400
    python benchmarks/train_throughput.py --model=resnet32 --compute_dtype=bfloat16   # on a GPU
    CIL_HOST_DEVICES=1 python benchmarks/train_throughput.py ...     # one device

Prints one Markdown row (the table is benchmarks/train_throughput.md) with, for the same network,
optimiser (SGD momentum 0.9, weight decay 5e-4) and batch size:
- ``bare step``: the Trainer's loss-gradient-update step, jitted alone and called from Python on
  batches already sliced on the devices, split over them as the Trainer splits its batches (no
  shuffling, gathering or masking);
- ``unrolled K``: K of those steps unrolled in one jitted call, called from Python;
- ``one loop``: the Trainer with ``steps_per_call=0``, the whole epoch one ``fori_loop`` (what every
  network ran before 2026-12-03), timed over ``--loop_steps`` batches (it is slow for convolutions);
- ``Trainer``: the Trainer as a run uses it (``steps_per_call`` chosen by network and backend),
  shuffling, gathering and masking included;
and the Trainer's figure as a fraction of the best bare reference. Each figure is the best of
``--repeats`` timed epochs of ``--steps`` batches after one untimed epoch (which compiles); compile
seconds are those of that first epoch. Synthetic uint8 images and random labels: the cost of the
training step, not of learning anything.
"""

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
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from cil import models  # noqa: E402
from cil.training import Trainer  # noqa: E402

flags.DEFINE_string("model", "cnn", "Network name (cil.models).")
flags.DEFINE_string("shape", "32,32,3", "Image shape H,W,C.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("steps", 16, "Batches per timed epoch.")
flags.DEFINE_integer("loop_steps", 4, "Batches per timed epoch of the one-loop Trainer (0: skip).")
flags.DEFINE_integer("unroll", 4, "Steps per call of the unrolled reference.")
flags.DEFINE_integer("repeats", 2, "Timed epochs; the best is reported.")
flags.DEFINE_integer("classes", 10, "Number of classes.")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "train.compute_dtype.")


def best_rate(run, images_per_run: int, repeats: int) -> tuple[float, float]:
    """(best images/s over ``repeats`` timed runs, seconds of the first, compiling, run)."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = max(best, images_per_run / (time.perf_counter() - start))
    return best, first


def main(_):
    f = flags.FLAGS
    shape = tuple(int(s) for s in f.shape.split(","))
    net = models.build(ml_collections.ConfigDict({"name": f.model}), shape, f.classes, seed=0)
    graphdef, params, model_state = nnx.split(net, nnx.Param, ...)
    mesh = parallel.data_mesh()
    rng = np.random.default_rng(0)

    def trainer_rate(steps: int, steps_per_call):
        train = ml_collections.ConfigDict({
            "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
            "batch_size": f.batch, "steps_per_call": steps_per_call,
            "compute_dtype": f.compute_dtype})
        n = f.batch * steps
        trainer = Trainer(graphdef, train, mesh, capacity=n)
        data = trainer.put(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                           rng.integers(0, f.classes, n).astype(np.int32))
        state = [trainer.init(params, model_state)]

        def epoch():
            state[0], loss = trainer.epoch(state[0], data, jax.random.key(0), f.classes)
            return loss

        return (*best_rate(epoch, n, f.repeats), trainer)

    rate, compile_seconds, trainer = trainer_rate(f.steps, None)
    n = f.batch * f.steps
    # Each batch split over the devices, as the Trainer splits its batches.
    batches = NamedSharding(mesh, P(None, "data"))
    images = jax.device_put(rng.integers(0, 256, (f.steps, f.batch, *shape), np.uint8), batches)
    labels = jax.device_put(rng.integers(0, f.classes, (f.steps, f.batch), np.int32), batches)
    weights = jax.device_put(jnp.ones(f.batch, jnp.float32), NamedSharding(mesh, P("data")))
    num_seen = jnp.int32(f.classes)
    step = jax.jit(lambda s, x, y: trainer.step(s, x, y, weights, num_seen, None),
                   donate_argnums=0)

    @jax.jit
    def unrolled(s, first):
        for i in range(f.unroll):
            s, _ = trainer.step(s, images[first + i], labels[first + i], weights, num_seen, None)
        return s

    state = [trainer.init(params, model_state)]

    def bare_epoch():
        for b in range(f.steps):
            state[0], loss = step(state[0], images[b], labels[b])
        return loss

    def unrolled_epoch():
        for first in range(0, f.steps - f.unroll + 1, f.unroll):
            state[0] = unrolled(state[0], first)
        return state[0]

    bare, _ = best_rate(bare_epoch, n, f.repeats)
    chunk, _ = best_rate(unrolled_epoch, f.batch * (f.steps // f.unroll * f.unroll), f.repeats)
    loop = trainer_rate(f.loop_steps, 0)[0] if f.loop_steps else float("nan")
    devices = jax.devices()
    print(f"| {f.model} | {'x'.join(map(str, shape))} | {f.batch} | {len(devices)} "
          f"{devices[0].platform} | {bare:,.0f} | {chunk:,.0f} | {loop:,.0f} | {rate:,.0f} "
          f"(steps_per_call {trainer.steps_per_call}) | {rate / max(bare, chunk):.2f} "
          f"| {compile_seconds:.1f} |")


if __name__ == "__main__":
    app.run(main)
