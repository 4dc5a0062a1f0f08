"""Growing networks (DER, MEMO, FOSTER) beside replay and iCaRL on Split-Fashion-MNIST B0-Inc2.

    python run.py --config=configs/growing_fmnist.py:agnostic --workdir=workdir/growing_fmnist_agnostic
    python run.py --config=configs/growing_fmnist.py --workdir=workdir/growing_fmnist_aligned
    python run.py --config=configs/growing_fmnist.py:smoke --workdir=/tmp/growing   # 1 seed, 1 epoch

configs/fashion_mnist.py's stream (class order 0..9, 5 tasks of 2 classes, SGD lr 0.01 without
momentum, batch 128, seeds 0, 1, 2) with 5 epochs per task and a smaller MLP, 784-100-100, so that
five DER backbones stay CPU-sized: one backbone is 354,400 bytes of parameters, DER's five 1.77 MB,
MEMO shares the first layer (314,000 bytes) and grows a 40,400-byte second layer per task, FOSTER
keeps one backbone. Every method's own settings are its defaults (PyCIL's: DER and MEMO with
weight aligning and the auxiliary loss, MEMO's shared layer trained on; FOSTER beta1 0.96, beta2
0.97, as many compression as boosting epochs; iCaRL nearest mean of exemplars).

Zhou et al.'s two comparisons (section 4.4):
- ``agnostic``: memory-agnostic, every method at its own size with 1,000 exemplars (herding, equal
  shares; replay random): the growing methods keep more parameters than the others.
- ``""``: memory-aligned at total budgets of 2.6, 4 and 6 MB (exemplars + parameters + side state):
  each method spends what its network leaves on exemplars. 2.6 MB is DER's own size in the
  agnostic run (its five backbones, its classifier and 1,000 exemplars): every method at DER's
  final size. cil.tables gives AUC-A and AUC-L over the three budgets.
"""

import ml_collections

from configs import fashion_mnist
from configs.common import SMOKE_SEEDS, check_arg

STRATEGIES = ("replay", "icarl", "der", "memo", "foster")
BUDGETS = (2_600_000, 4_000_000, 6_000_000)
AGNOSTIC_EXEMPLARS = 1000


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "agnostic", "smoke"))
    config = fashion_mnist.get_config()
    config.strategies = STRATEGIES
    config.model.hidden = (100, 100)
    config.train.epochs = 5
    if arg == "agnostic":
        config.memory.exemplars = AGNOSTIC_EXEMPLARS
    else:
        config.sweep = ml_collections.ConfigDict({
            "budget_bytes": BUDGETS, "unbudgeted": (), "fields": ml_collections.ConfigDict()})
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
    return config
