"""The survey's single-network methods side by side on Split-Fashion-MNIST B0-Inc2, memory-aligned.

    python run.py --config=configs/survey_fmnist.py --workdir=workdir/survey_fmnist
    python run.py --config=configs/survey_fmnist.py:smoke --workdir=/tmp/survey   # 1 seed, 1 epoch

configs/fashion_mnist.py's setting (class order 0..9, MLP 784-400-400-10, SGD lr 0.01 without
momentum, batch 128, seeds 0, 1, 2) with 5 epochs per task for every method, at one total budget
of 6 MB (Zhou et al., section 4.4: every method keeps the same bytes). The budget is what EWC
needs: its network, anchor parameters and Fisher, 3 x 1,913,640 bytes; the exemplar methods
(A-GEM, GEM, replay, iCaRL, WA, BiC, PODNet) spend what their network leaves on exemplars (about
5,200 of 785 bytes); LwF and SimpleCIL keep no exemplars (their unused bytes are their loss, as in
the survey's accounting); joint runs unbudgeted, as the upper bound. Each method's own settings
are its defaults (LwF T=2, lambda 3; EWC lambda 1000; WA T=2; BiC T=2, 10% validation split, the
paper's variant; PODNet 10 proxies, POD weights 5 / 1, the paper's NCA, imprinting and
finetuning; GEM one constraint per past task, losses within each task, margin 0; iCaRL nearest
mean of exemplars).
"""

import ml_collections

from configs import fashion_mnist
from configs.common import SMOKE_SEEDS, check_arg

STRATEGIES = ("finetune", "lwf", "ewc", "agem", "gem", "replay", "icarl", "wa", "bic",
              "podnet", "simplecil", "joint")


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke"))
    config = fashion_mnist.get_config()
    config.strategies = STRATEGIES
    config.train.epochs = 5
    config.sweep = ml_collections.ConfigDict({
        "budget_bytes": (6_000_000,),
        "unbudgeted": ("joint",),
        "fields": ml_collections.ConfigDict(),
    })
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
    return config
