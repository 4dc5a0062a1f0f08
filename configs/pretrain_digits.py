"""Pretrains a small frozen encoder on Split-Digits' base task: a seconds-long check of the route.

    python run.py --config=configs/pretrain_digits.py --workdir=workdir/encoders/digits_b4_cnn

Split-Digits B4-Inc2 (class order from seed 1993, as configs/digits.py): the encoder sees only task
0's four classes. The small CNN with 16 and 32 channels (32 features), Adam lr 3e-3, batch 32,
20 epochs (about 550 images, so seconds).
"""

from configs.common import check_arg, pretrain_config


def get_config(arg: str | None = None):
    check_arg(arg, ("",))
    config = pretrain_config("digits", initial=4, increment=2)
    config.model = {"name": "cnn", "channels": (16, 32)}
    config.train.update({"optimizer": "adam", "learning_rate": 3e-3, "batch_size": 32, "epochs": 20})
    return config
