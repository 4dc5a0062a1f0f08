"""Training throughput of the shared Trainer for one network on synthetic data (images/s).

    python benchmarks/train_throughput.py --model=resnet32 --shape=32,32,3 --batch=128 --steps=40
    python benchmarks/train_throughput.py --model=mlp --shape=28,28,1 --batch=128 --steps=2000

Runs one epoch to compile, then times ``--repeats`` epochs of ``--steps`` batches each and prints
images/s after compiling, with the devices used. Synthetic uint8 images and random labels: the
figure is the cost of the training step, not of learning anything.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cil import parallel  # noqa: E402

parallel.use_host_devices()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from cil import models  # noqa: E402
from cil.training import Trainer  # noqa: E402

flags.DEFINE_string("model", "resnet32", "Network name (cil.models).")
flags.DEFINE_string("shape", "32,32,3", "Image shape H,W,C.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("steps", 40, "Batches per timed epoch.")
flags.DEFINE_integer("repeats", 3, "Timed epochs.")
flags.DEFINE_integer("classes", 100, "Number of classes.")


def main(_):
    f = flags.FLAGS
    shape = tuple(int(s) for s in f.shape.split(","))
    net = models.build(ml_collections.ConfigDict({"name": f.model}), shape, f.classes, seed=0)
    graphdef, params, model_state = nnx.split(net, nnx.Param, ...)
    train = ml_collections.ConfigDict({"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
                                       "weight_decay": 5e-4, "batch_size": f.batch})
    n = f.batch * f.steps
    trainer = Trainer(graphdef, train, parallel.data_mesh(), capacity=n)
    rng = np.random.default_rng(0)
    data = trainer.put(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                       rng.integers(0, f.classes, n).astype(np.int32))
    state = trainer.init(params, model_state)
    start = time.perf_counter()
    state, loss = trainer.epoch(state, data, jax.random.key(0), f.classes)
    jax.block_until_ready(loss)
    compile_and_first = time.perf_counter() - start
    start = time.perf_counter()
    for r in range(f.repeats):
        state, loss = trainer.epoch(state, data, jax.random.key(r + 1), f.classes)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start
    devices = jax.devices()
    print(f"{f.model} {shape} batch {f.batch}: {n * f.repeats / seconds:,.0f} images/s on "
          f"{len(devices)} x {devices[0].device_kind} (first epoch incl. compile "
          f"{compile_and_first:.1f} s; loss {float(loss):.3f})")


if __name__ == "__main__":
    app.run(main)
