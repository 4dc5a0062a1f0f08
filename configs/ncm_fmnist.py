"""NCM with augmentation voting (TILDA) on Split-Fashion-MNIST B4-Inc2, with a base-task encoder.

    python run.py --config=configs/pretrain_fmnist.py --workdir=workdir/encoders/fmnist_b4_cnn
    python run.py --config=configs/ncm_fmnist.py --workdir=workdir/ncm_fmnist
    python run.py --config=configs/ncm_fmnist.py:plain --workdir=workdir/ncm_fmnist_plain

The first command pretrains the frozen encoder on task 0's four classes only (configs/
pretrain_fmnist.py); this config names it in ``ncm.encoder.checkpoint`` (override with
``--config.ncm.encoder.checkpoint=DIR``; any ncm field likewise, e.g. ``--config.ncm.anchors=3``). Class order 0..9: task 0 = T-shirt/top, Trouser,
Pullover, Dress; then (Coat, Sandal), (Shirt, Sneaker), (Bag, Ankle boot). Seeds 0, 1, 2.
``""``: ncm's defaults (P = 8 subspaces, k = 1, 5 training views, 5 voting test views);
``plain``: P = 1, k = 1, one view each, the plain nearest-class-mean classifier.
``quantized``: the defaults with the encoder's outputs and the anchors at 8, 4, 2 and 1 bits a
coordinate beside float32 (``ncm.quantize_bits``, a grid of cil/sweep.py); ``quantized_plain``:
the same for the plain classifier (one seed: it has no randomness). benchmarks/ncm_quantized.md.
benchmarks/ncm_fmnist.py runs the full comparison.
"""

import ml_collections

from configs.common import base_config, check_arg

QUANTIZE_BITS = (0, 8, 4, 2, 1)

ENCODER = "workdir/encoders/fmnist_b4_cnn"


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "plain", "quantized", "quantized_plain"))
    config = base_config("fashion_mnist", initial=4, increment=2)
    config.stream.class_order = tuple(range(10))
    config.strategies = ("ncm",)
    config.ncm.encoder.checkpoint = ENCODER
    if arg in ("plain", "quantized_plain"):
        config.ncm.update({"subspaces": 1, "anchors": 1, "train_views": 1, "test_views": 1})
    if arg.startswith("quantized"):
        config.sweep = ml_collections.ConfigDict({
            "fields": ml_collections.ConfigDict({"ncm": {"quantize_bits": QUANTIZE_BITS}})})
    if arg == "quantized_plain":
        config.seeds = (0,)
    return config
