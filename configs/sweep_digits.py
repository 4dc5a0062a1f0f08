"""A memory-aligned sweep on Split-Digits: strategies x total memory budgets x seeds (cil/sweep.py).

    python run.py --config=configs/sweep_digits.py --workdir=/tmp/sweep_digits
    python run.py --config=configs/sweep_digits.py --workdir=/tmp/sweep_digits/0 \\
        --shard_index=0 --num_shards=2                    # and --shard_index=1 on another machine
    python -m cil.tables /tmp/sweep_digits                # Markdown, LaTeX and CSV tables, AUC-A/L
    python -m cil.plots /tmp/sweep_digits                 # PNG and PDF curves and heat maps
    python run.py --config=configs/sweep_digits.py:smoke  # 1 seed, 2 budgets, 1 epoch

The settings are configs/digits.py's (MLP 64-100-10, 10 epochs per task). Its network holds 30,040
bytes of parameters, so at a total budget of M bytes replay keeps floor((M - 30,040) / 65)
exemplars (an 8x8 uint8 image and a 1-byte label): 91, 153, 307 and 614 at these budgets, of 1,347
training images; iCaRL also keeps its class means (34,048 bytes in all), so 30, 91, 245 and 553.
The smallest budget must hold every strategy's own state. Finetune keeps only its network, so it
runs under each budget unchanged; joint keeps all data and runs once, unbudgeted, as the upper
bound.

A Split-Fashion-MNIST sweep is the same with configs/fashion_mnist.py's settings and budgets sized
to its network (MLP 784-400-400-10: 1,913,640 bytes of parameters; an exemplar is 785 bytes, so
these budgets leave 746, 1,383, 2,657 and 5,205 exemplars):

    config = fashion_mnist.get_config()
    config.strategies = ("finetune", "replay", "icarl", "joint")
    config.sweep = ConfigDict({"budget_bytes": (2_500_000, 3_000_000, 4_000_000, 6_000_000),
                               "unbudgeted": ("joint",), "fields": ConfigDict()})

Other axes go in ``sweep.fields``, nested as in the config, e.g.
``{"train": {"epochs": (5, 10)}, "replay": {"selection": ("random", "herding")}}``.
"""

import ml_collections

from configs import digits
from configs.common import check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke"))
    config = digits.get_config("smoke" if arg == "smoke" else None)
    config.strategies = ("finetune", "replay", "icarl", "joint")
    config.sweep = ml_collections.ConfigDict({
        "budget_bytes": (36_000, 40_000, 50_000, 70_000),
        "unbudgeted": ("joint",),
        "fields": ml_collections.ConfigDict(),
    })
    if arg == "smoke":
        config.sweep.budget_bytes = (36_000, 70_000)
    return config
