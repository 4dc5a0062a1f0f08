"""Pretrains the frozen encoder of the Fashion-MNIST NCM benchmark on the stream's base task only.

    python run.py --config=configs/pretrain_fmnist.py --workdir=workdir/encoders/fmnist_b4_cnn
    python run.py --config=configs/pretrain_fmnist.py:smoke --workdir=/tmp/fmnist_encoder
    python run.py --config=configs/pretrain_fmnist.py:held_out --workdir=workdir/encoders/fmnist_held_out_mlp

Split-Fashion-MNIST B4-Inc2 with class order 0..9 (as configs/ncm_fmnist.py): the encoder sees the
training images of task 0's four classes (T-shirt/top, Trouser, Pullover, Dress) and nothing else.
The small CNN (conv 32, conv 64, global mean pool: 64 features), Adam lr 1e-3, batch 128, 2
epochs (``smoke``: 1 epoch): 85.5 % test accuracy on the four classes (seed 0; 12.5 minutes on
the shared 2-core CPU, where training is the one slow step). It is saved to --workdir, which
configs/ncm_fmnist.py names.

``held_out``: an MLP 784-256-128 (its 128 hidden features are the encoder's), Adam 1e-3, batch
128, 5 epochs, on the 10,000 training images configs/dkvb_fmnist.py:held_out holds out of its
stream, all ten classes with their labels: data disjoint from the stream, classes not (like the
ImageNet encoders DKVB's paper uses for CIFAR).
"""

from configs.common import check_arg, pretrain_config
from configs.dkvb_fmnist import HELD_OUT

BASE_CLASSES, INCREMENT = 4, 2


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke", "held_out"))
    config = pretrain_config("fashion_mnist", initial=BASE_CLASSES, increment=INCREMENT)
    config.stream.class_order = tuple(range(10))
    config.model = {"name": "cnn", "channels": (32, 64)}
    config.train.update({"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 128,
                         "epochs": 1 if arg == "smoke" else 2})
    if arg == "held_out":
        config.dataset.held_out = HELD_OUT
        config.pretrain.data = "held_out"
        config.model = {"name": "mlp", "hidden": (256, 128)}
        config.train.epochs = 5
    return config
