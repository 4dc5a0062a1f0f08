"""CIFAR-10 / CIFAR-100 with the field's standard recipe: PyCIL's, whose numbers the survey reports.

    python run.py --config=configs/cifar.py:cifar100_b0inc10 --config.dataset.data_dir=~/tensorflow_datasets
    python run.py --config=configs/cifar.py:cifar100_b50inc10 \
        --config.dataset.path=~/data/cifar-100-python.tar.gz     # the pickled archive instead
    python run.py --config=configs/cifar.py:cifar10              # B0-Inc2, TFDS or dataset.path
    python run.py --config=configs/cifar.py:cifar10_jpeg         # the JPEG archive in ../shared/data
    python run.py --config=configs/cifar.py:cifar10_jpeg_cpu     # the same, sized for a 2-core CPU
    python run.py --config=configs/cifar.py:cifar100_b0inc10_smoke   # any of them + _smoke

The recipe, as PyCIL sets it in models/finetune.py, replay.py, icarl.py, lwf.py, ewc.py, wa.py, bic.py
podnet.py and gem.py
(module constants, not its JSON files; read at commit 87cc411) and utils/data.py:
- ResNet-32, SGD momentum 0.9, batch 128, multistep learning rate x0.1 at each milestone epoch,
  restarted at every task;
- task 0: 200 epochs, lr 0.1, milestones 60/120/170, weight decay 5e-4 (``train.first_task``);
- later tasks, by method (``<strategy>.train``), lr 0.1, weight decay 2e-4: finetune 80 epochs,
  milestones 40/70; replay 70 epochs, milestones 30/50; iCaRL 170 epochs, milestones 80/120, T=2;
  LwF 250 epochs, milestones 60/120/180/220 (its task 0: milestones 60/120/160), T=2, lambda 3;
  EWC 180 epochs, milestones 70/120/150, lambda 1000; WA 170 epochs, milestones 60/100/140;
  BiC 170 epochs, milestones 60/100/140, its second stage on the same schedule, T=2;
  PODNet 160 epochs with a cosine schedule, lr 0.1, weight decay 5e-4, on every task, the first
  included (PyCIL trains its base task by the same recipe), then 20 epochs of class-balanced
  finetuning (the paper's: proxies only, lr 0.05; ``podnet.finetune="pycil"`` for PyCIL's);
  SimpleCIL trains task 0 only, by the shared task-0 recipe (PyCIL's own is a cosine schedule);
  A-GEM (not in PyCIL) takes replay's recipe and memory batch; GEM 100 epochs, milestones
  30/60/80, herding exemplars;
- 2,000 exemplars chosen by herding, class-balanced (PyCIL's memory_size 2000, fixed_memory false);
- augmentation: RandomCrop(32, padding=4), RandomHorizontalFlip, ColorJitter(brightness=63/255),
  then Normalize with the dataset's channel means and standard deviations (``model.input_*``).
Class order from seed 1993 (PyCIL shuffles with np.random.seed(1993), as cil's streams do).

Where cil differs: replay trains each step on 128 new examples plus 128 exemplars
(``replay.memory_batch_size``), where PyCIL's replay shuffles exemplars into the task's data; and
finetune's loss on a later task is cross-entropy over every class seen, where PyCIL's finetune
takes it over the new classes' logits alone.

``cifar10_jpeg``: the archive's 60,000 JPEG re-encodings of CIFAR-10 (quality about 75: close to,
not equal to, the original pixels), read with the ``folder`` source and cached once decoded.
``cifar10_jpeg_cpu``: the same stream and recipe shape, with the peer protocol's SmallCNN,
10 / 6 epochs (milestones 7 / 4) and learning rate 0.01, so finetune, replay and iCaRL fit in
about half an hour on two CPU cores (the SmallCNN has no BatchNorm: at PyCIL's 0.1 it diverged
within two epochs, predicting one class). ``_smoke``: one seed, one epoch, the small CNN, for a quick check of the pipeline.
"""

from pathlib import Path

from ml_collections import ConfigDict

from configs.common import SMOKE_SEEDS, base_config, check_arg

JPEG_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"

BENCHMARKS = {  # arg: (dataset, B{m}, Inc{n})
    "cifar10": ("cifar10", 0, 2),  # 5 tasks
    "cifar10_jpeg": ("cifar10", 0, 2),
    "cifar10_jpeg_cpu": ("cifar10", 0, 2),
    "cifar100_b0inc10": ("cifar100", 0, 10),  # 10 tasks
    "cifar100_b50inc10": ("cifar100", 50, 10),  # 6 tasks
}
# Channel means and standard deviations of the training images (PyCIL's utils/data.py).
NORMALIZE = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# Later tasks' recipe per method (PyCIL's models/<method>.py); task 0's is in train.first_task.
LATER_TASKS = {
    "finetune": {"epochs": 80, "milestones": (40, 70)},
    "replay": {"epochs": 70, "milestones": (30, 50)},
    "icarl": {"epochs": 170, "milestones": (80, 120)},
    # LwF's own first task ends its second decay at 160, not 170 (PyCIL's models/lwf.py).
    "lwf": {"epochs": 250, "milestones": (60, 120, 180, 220),
            "first_task": {"milestones": (60, 120, 160)}},
    "ewc": {"epochs": 180, "milestones": (70, 120, 150)},
    "wa": {"epochs": 170, "milestones": (60, 100, 140)},
    "agem": {"epochs": 70, "milestones": (30, 50)},  # PyCIL has no A-GEM: replay's recipe
    "bic": {"epochs": 170, "milestones": (60, 100, 140)},
    "gem": {"epochs": 100, "milestones": (30, 60, 80)},
    "podnet": {"epochs": 160, "schedule": "cosine", "weight_decay": 5e-4,
               "first_task": {"epochs": 160, "schedule": "cosine"}},
}


def get_config(arg: str | None = None):
    arg = check_arg(arg, tuple(BENCHMARKS) + tuple(f"{b}_smoke" for b in BENCHMARKS))
    smoke = arg.endswith("_smoke")
    benchmark = arg.removesuffix("_smoke")
    dataset, initial, increment = BENCHMARKS[benchmark]
    config = base_config(dataset, initial=initial, increment=increment)
    if benchmark.startswith("cifar10_jpeg"):
        config.dataset.name = "folder"
        config.dataset.path = str(JPEG_ARCHIVE)
    mean, std = NORMALIZE[dataset]
    config.model = ConfigDict({"name": "resnet32", "input_mean": mean, "input_std": std})
    config.train.update({
        "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "batch_size": 128,
        "schedule": "multistep", "gamma": 0.1, "weight_decay": 2e-4,
        "epochs": 70, "milestones": (30, 50),  # replaced per strategy below
    })
    config.train.first_task.update({"epochs": 200, "milestones": (60, 120, 170),
                                    "weight_decay": 5e-4})
    config.train.augment.update({"crop_padding": 4, "flip": "on", "brightness": 63 / 255})
    config.memory.exemplars = 2000
    config.strategies = ("finetune", "replay", "icarl", "lwf", "ewc", "wa", "simplecil", "agem",
                         "bic", "podnet", "gem")
    config.replay.update({"selection": "herding", "class_balanced": True})
    config.gem.selection = "herding"  # PyCIL's rehearsal memory
    config.icarl.temperature = 2.0
    for name, recipe in LATER_TASKS.items():
        config[name].train = recipe
    config.seeds = (0,)  # PyCIL reports one run (seed 1993 for the order, torch seed 1)
    config.eval_batch_size = 500
    if benchmark == "cifar10_jpeg_cpu":
        config.model.name = "small_cnn"
        config.train.learning_rate = 0.01
        config.train.first_task.update({"epochs": 10, "milestones": (7,)})
        for name in LATER_TASKS:
            config[name].train = {"epochs": 6, "milestones": (4,)}
    if smoke:
        config.seeds = SMOKE_SEEDS
        config.model.name = "cnn"
        config.model.channels = (16, 32)
        config.train.first_task.update({"epochs": 1, "milestones": ()})
        for name in LATER_TASKS:
            config[name].train = {"epochs": 1, "milestones": ()}
    return config
