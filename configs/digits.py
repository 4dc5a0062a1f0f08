"""Split-Digits, B0-Inc2 (5 tasks): scikit-learn's bundled 8x8 digits, no download. The default.

    python run.py                                       # = --config=configs/digits.py
    python run.py --config=configs/digits.py:smoke      # one seed, one epoch

Not a research benchmark (about 135 training images per class): a quick, real check that shows
forgetting. MLP 64-100-10, SGD lr 0.05, batch 32, 10 epochs per task.
"""

from configs.common import SMOKE_SEEDS, base_config, check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke"))
    config = base_config("digits", initial=0, increment=2)
    config.model.hidden = (100,)
    config.train.update({"learning_rate": 0.05, "batch_size": 32, "epochs": 10})
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
    return config
