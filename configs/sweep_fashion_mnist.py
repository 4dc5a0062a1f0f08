"""A memory-aligned sweep on Split-Fashion-MNIST B0-Inc2 (class order 0..9): the README's table.

    python run.py --config=configs/sweep_fashion_mnist.py --workdir=workdir/sweep_fmnist
    python -m cil.tables workdir/sweep_fmnist && python -m cil.plots workdir/sweep_fmnist

configs/fashion_mnist.py's setting (MLP 784-400-400-10, SGD lr 0.01, batch 128, 1 epoch per task,
seeds 0, 1, 2). The network holds 1,913,640 bytes of parameters and an exemplar costs 785 bytes
(a 28x28 uint8 image and its label), so at total budgets of 2.5, 4 and 6 MB replay keeps 746,
2,657 and 5,205 exemplars; iCaRL a few fewer (its class means are charged too). Finetune keeps only
its network; joint runs once, unbudgeted, as the upper bound.
"""

import ml_collections

from configs import fashion_mnist
from configs.common import check_arg


def get_config(arg: str | None = None):
    check_arg(arg, ("",))
    config = fashion_mnist.get_config()
    config.strategies = ("finetune", "replay", "icarl", "joint")
    config.sweep = ml_collections.ConfigDict({
        "budget_bytes": (2_500_000, 4_000_000, 6_000_000),
        "unbudgeted": ("joint",),
        "fields": ml_collections.ConfigDict(),
    })
    return config
