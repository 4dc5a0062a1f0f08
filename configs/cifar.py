"""CIFAR-10 / CIFAR-100 from TFDS (needs the data in --config.dataset.data_dir, or download=True).

    python run.py --config=configs/cifar.py:cifar100_b0inc10
    python run.py --config=configs/cifar.py:cifar100_b50inc10
    python run.py --config=configs/cifar.py:cifar10
    python run.py --config=configs/cifar.py:cifar100_b0inc10_smoke   # any of them + _smoke

ResNet-32, SGD lr 0.1 momentum 0.9, weight decay 5e-4, batch 128 (PyCIL's CIFAR setting, without
its learning-rate schedule), class order from seed 1993. ``_smoke``: one seed, one epoch, the small
CNN, for a quick check of the pipeline.
"""

from ml_collections import ConfigDict

from configs.common import SMOKE_SEEDS, base_config, check_arg

BENCHMARKS = {
    "cifar10": ("cifar10", 0, 2),  # B0-Inc2, 5 tasks
    "cifar100_b0inc10": ("cifar100", 0, 10),  # 10 tasks
    "cifar100_b50inc10": ("cifar100", 50, 10),  # 6 tasks
}


def get_config(arg: str | None = None):
    arg = check_arg(arg, tuple(BENCHMARKS) + tuple(f"{b}_smoke" for b in BENCHMARKS))
    smoke = arg.endswith("_smoke")
    dataset, initial, increment = BENCHMARKS[arg.removesuffix("_smoke")]
    config = base_config(dataset, initial=initial, increment=increment)
    config.model = ConfigDict({"name": "resnet32"})
    config.train.update({"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                         "epochs": 170})
    config.eval_batch_size = 500
    if smoke:
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
        config.model = ConfigDict({"name": "cnn", "channels": (16, 32)})
    return config
