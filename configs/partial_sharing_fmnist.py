"""Split-Fashion-MNIST B2-Inc2 (5 tasks), small CNN: partial network sharing against finetune.

    python run.py --config=configs/partial_sharing_fmnist.py --workdir=workdir/ps_fmnist
    python run.py --config=configs/partial_sharing_fmnist.py \
        --config.partial_sharing.shared_stages=2 --workdir=workdir/ps_fmnist_k2
    python run.py --config=configs/partial_sharing_fmnist.py:smoke    # 1 seed, 1 epoch, small CNN
    python run.py --config=configs/partial_sharing_fmnist.py:sweep_mlp --workdir=workdir/ps_sweep_mlp
    python run.py --config=configs/partial_sharing_fmnist.py:variants_mlp --workdir=workdir/ps_sweep_mlp
    python run.py --config=configs/partial_sharing_fmnist.py:sweep_cnn --workdir=workdir/ps_sweep_cnn
    python -m cil.tables workdir/ps_sweep_mlp --stats=shared_fraction,params_trained,...

CNN (conv 32, conv 64, global mean pool; stages: conv-pool, conv-pool, pool), Adam lr 1e-3 (as
configs/pretrain_fmnist.py trains this CNN), batch 128, 2 epochs per task, seeds 0, 1, 2, class
order 0..9 (as configs/fashion_mnist.py).
Partial sharing shares the first conv-pool stage by default (``shared_stages=1``); the sweep over
every sharing point is ``sweep_cnn``: partial_sharing at k = 0 (share nothing: each later task
clones the whole base) to 3 (share all but the head) beside finetune, seed 0, with the task-given
accuracy (``evaluators``: each test image scored among its own task's classes only, what a branch
knows apart from choosing the branch). ``sweep_mlp``: the same on an MLP 784-400-400 (2 stages,
k = 0..2), seeds 0, 1, 2; ``variants_mlp``: k = 1 with the logits merge and/or a calibration on 20
kept images a class. benchmarks/partial_sharing_sweep.md shows them with partial sharing's own
figures (``STATS``: parameters trained and FLOPs per later task, bytes kept, ...).
"""

from ml_collections import ConfigDict

from configs.common import SMOKE_SEEDS, base_config, check_arg


# partial_sharing's extras shown by: python -m cil.tables WORKDIR --stats=<these, comma-separated>
STATS = ("shared_fraction", "params_trained", "train_flops_per_example_epoch", "stored_bytes",
         "one_network_per_task_bytes", "inference_flops_per_example")


def get_config(arg: str | None = None):
    arg = check_arg(arg, ("", "smoke", "sweep_mlp", "variants_mlp", "sweep_cnn"))
    config = base_config("fashion_mnist", initial=2, increment=2)
    config.stream.class_order = tuple(range(10))
    config.model = ConfigDict({"name": "cnn", "channels": (32, 64)})
    config.train.update({"optimizer": "adam", "learning_rate": 1e-3, "epochs": 2})
    config.strategies = ("partial_sharing", "finetune")
    config.partial_sharing.shared_stages = 1
    if arg == "smoke":
        config.seeds = SMOKE_SEEDS
        config.train.epochs = 1
        config.model.channels = (8, 16)
    if arg.endswith("_mlp"):
        config.model = ConfigDict({"name": "mlp", "hidden": (400, 400)})
    if arg.startswith(("sweep", "variants")):
        config.evaluators = ("task_given",)
        fields = {"shared_stages": (0, 1, 2, 3) if arg == "sweep_cnn" else (0, 1, 2)}
        if arg == "variants_mlp":
            config.strategies = ("partial_sharing",)
            fields = {"shared_stages": (1,), "merge": ("softmax", "logits"),
                      "calibration_per_class": (0, 20)}
        config.sweep = ConfigDict({"fields": {"partial_sharing": fields}})
    if arg == "sweep_cnn":
        config.seeds = (0,)
    return config
