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
``table``: the comparison of benchmarks/ncm_fmnist.md: a grid of P in (1, 8) subspaces x k in (1, 4)
anchors x (1, 5) training views x (1, 5) voting test views (1 and 1 = plain NCM), seed 0 (plain NCM
has no randomness; views vary with the seed only through the augmentations drawn);
``ablation``: P = 8, k = 4, the same views with flips off and/or 1 pixel of crop padding;
``probes``: finetune and joint as linear heads on the same frozen encoder's features
(``features.encoder``: every strategy sees the features instead of the images), Adam 1e-3, batch
128, 5 epochs a task, seeds 0, 1, 2.
``quantized``: the defaults with the encoder's outputs and the anchors at 8, 4, 2 and 1 bits a
coordinate beside float32 (``ncm.quantize_bits``, a grid of cil/sweep.py); ``quantized_plain``:
the same for the plain classifier (one seed: it has no randomness). benchmarks/ncm_quantized.md.
benchmarks/ncm_fmnist.py times learning against the encoder.
"""

import ml_collections

from configs.common import base_config, check_arg

QUANTIZE_BITS = (0, 8, 4, 2, 1)

ENCODER = "workdir/encoders/fmnist_b4_cnn"


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "plain", "quantized", "quantized_plain", "table", "ablation",
                          "probes"))
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
    views = {"train_views": (1, 5), "test_views": (1, 5)}
    if arg == "table":
        config.seeds = (0,)
        config.sweep = ml_collections.ConfigDict({"fields": {"ncm": {
            "subspaces": (1, 8), "anchors": (1, 4), **views}}})
    if arg == "ablation":
        config.seeds = (0,)
        config.ncm.update({"subspaces": 8, "anchors": 4})
        config.sweep = ml_collections.ConfigDict({"fields": {"ncm": {
            **views, "augment": {"flip": ("auto", "off"), "crop_padding": (1, 2)}}}})
    if arg == "probes":
        config.strategies = ("finetune", "joint")
        config.features.encoder = ENCODER
        config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": ()})  # a linear head
        config.train.update({"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 128,
                             "epochs": 5})
    return config
