"""DKVB on Split-Fashion-MNIST B0-Inc2 (5 tasks, class order 0..9), CPU-sized or the paper's sizes.

    python run.py --config=configs/dkvb_fmnist.py --workdir=workdir/dkvb_fmnist
    python run.py --config=configs/dkvb_fmnist.py:paper        # 256 codebooks x 4,096 keys x 14
    python run.py --config=configs/dkvb_fmnist.py:smoke        # 1 seed, a tiny bottleneck
    python run.py --config=configs/dkvb_fmnist.py --config.dkvb.decoder=linear   # the probe
    python run.py --config=configs/dkvb_fmnist.py --config.dkvb.key_init.cache_dir=   # no cache
    python run.py --config=configs/dkvb_fmnist.py --config.dkvb.encoder.name=checkpoint \
        --config.dkvb.encoder.checkpoint=workdir/encoders/my_encoder

The frozen encoder defaults to the identity (raw pixels in [0, 1]: nothing pretrained, so nothing
about later classes can leak into it); name a checkpoint to use a pretrained one (cil/encoders.py,
cil/pretrain.py). The keys are fitted on the stream's base task with its labels dropped
(``key_init.source = "base_task"``): honest, but two classes cover the inputs poorly, so later
classes share few keys (benchmarks/dkvb_fmnist.md: 59.6 % A_last on a 50,000-image stream, against
76.8 % with keys from held-out images). ``key_init.source = "dataset"`` names another data source,
``"file"`` unlabelled images saved with np.save. benchmarks/dkvb_fmnist.py runs the comparison
with a pretrained encoder and keys from held-out images.

Sizes (cil/baselines/dkvb/ says why): default 64 x 512 x 14, 20 epochs of values per task (the
values converge within 20 on this stream: 100 and 300 gave the same accuracy); ``paper``: 256 x
4,096 x 14 and 500 epochs, as the authors' CIFAR runs (SGD lr 0.3, batch 256, clipping 1.0, label
smoothing 0.1, keys by EMA with decay 0.95 over 10 epochs; all of these are the strategy defaults).
"""

from configs.common import SMOKE_SEEDS, base_config, check_arg


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "paper", "smoke"))
    config = base_config("fashion_mnist", initial=0, increment=2)
    config.stream.class_order = tuple(range(10))
    config.strategies = ("dkvb",)
    config.dkvb.encoder.name = "identity"
    config.dkvb.key_init.source = "base_task"
    if arg == "paper":
        config.dkvb.update({"num_codebooks": 256, "keys_per_codebook": 4096, "epochs": 500})
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.dkvb.update({"num_codebooks": 8, "keys_per_codebook": 64, "epochs": 2,
                            "key_init": {"epochs": 1}})
    return config
