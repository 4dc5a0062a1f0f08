"""Split-Fashion-MNIST B2-Inc2 (5 tasks), small CNN: partial network sharing against finetune.

    python run.py --config=configs/partial_sharing_fmnist.py --workdir=workdir/ps_fmnist
    python run.py --config=configs/partial_sharing_fmnist.py \
        --config.partial_sharing.shared_stages=2 --workdir=workdir/ps_fmnist_k2
    python run.py --config=configs/partial_sharing_fmnist.py:smoke    # 1 seed, 1 epoch, small CNN

CNN (conv 32, conv 64, global mean pool; stages: conv-pool, conv-pool, pool), Adam lr 1e-3 (as
configs/pretrain_fmnist.py trains this CNN), batch 128, 2 epochs per task, seeds 0, 1, 2, class
order 0..9 (as configs/fashion_mnist.py).
Partial sharing shares the first conv-pool stage by default (``shared_stages=1``); the sweep over
every sharing point is benchmarks/partial_sharing_sweep.py.
"""

from ml_collections import ConfigDict

from configs.common import SMOKE_SEEDS, base_config, check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke"))
    config = base_config("fashion_mnist", initial=2, increment=2)
    config.stream.class_order = tuple(range(10))
    config.model = ConfigDict({"name": "cnn", "channels": (32, 64)})
    config.train.update({"optimizer": "adam", "learning_rate": 1e-3, "epochs": 2})
    config.strategies = ("partial_sharing", "finetune")
    config.partial_sharing.shared_stages = 1
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
        config.model.channels = (8, 16)
    return config
