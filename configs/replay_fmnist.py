"""Replay on Split-Fashion-MNIST B0-Inc2, class order 0..9: the protocol of the replay benchmark.

    python run.py --config=configs/replay_fmnist.py --workdir=workdir/replay_fmnist
    python run.py --config=configs/replay_fmnist.py --config.memory.exemplars=200 \
        --config.train.epochs=1
    python run.py --config=configs/replay_fmnist.py:smoke          # one seed, one epoch
    python run.py --config=configs/replay_fmnist.py:small_cnn      # the peer protocol's CNN
    python benchmarks/replay_fmnist.py                  # every row of the table, with timings

configs/fashion_mnist.py's setting (MLP 784-400-400-10, SGD lr 0.01 without momentum, batch 128,
seeds 0, 1, 2) with 5 epochs per task, and replay: each step 128 new examples + 128 exemplars from
a class-balanced random memory of 1,000 (``memory.exemplars``, checked by the evaluator).

``small_cnn``: the comparison protocol of the convolutional benchmark (benchmarks/small_cnn_fmnist.md):
its SmallCNN with PyTorch's initialisation, 1 epoch per task, one seed; the rest as above.
"""

from ml_collections import ConfigDict

from configs import fashion_mnist
from configs.common import SMOKE_SEEDS, check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke", "small_cnn"))
    config = fashion_mnist.get_config()
    config.strategies = ("replay",)
    config.train.epochs = 5
    config.memory.exemplars = 1000
    config.replay.update({"memory_batch_size": 128, "selection": "random",
                          "class_balanced": True})
    if arg == "small_cnn":
        config.model = ConfigDict({"name": "small_cnn", "init": "pytorch"})
        config.train.epochs = 1
        config.seeds = SMOKE_SEEDS
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
    return config
