"""Split-Fashion-MNIST, B0-Inc2 (5 tasks), class order 0..9: the protocol of the issue-tracker targets.

    python run.py --config=configs/fashion_mnist.py --workdir=workdir/fmnist
    python run.py --config=configs/fashion_mnist.py:epochs5
    python run.py --config=configs/fashion_mnist.py:smoke       # 1 seed, 1 epoch, 2 tasks' worth

MLP 784-400-400-10, SGD lr 0.01 (no momentum), batch 128, 1 epoch per task (``epochs5``: 5), seeds
0, 1, 2. Data: Debian's dataset-fashion-mnist IDX files, read offline (see cil/data/sources.py).
"""

from configs.common import SMOKE_SEEDS, base_config, check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "epochs5", "smoke"))
    config = base_config("fashion_mnist", initial=0, increment=2)
    config.stream.class_order = tuple(range(10))
    if arg == "epochs5":
        config.train.epochs = 5
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.model.hidden = (64,)
    return config
