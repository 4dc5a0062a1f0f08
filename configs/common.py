"""The fields every benchmark config has, with their defaults; benchmark files override a few.

    config = base_config(dataset="digits", initial=0, increment=2)
    config.train.epochs = 5

Fields that may stay unset are ml_collections placeholders, so ``--config.memory.exemplars=2000``
works from the command line.
"""

from ml_collections import ConfigDict, config_dict

from cil.data import augment
from cil.errors import ConfigError

SMOKE_SEEDS = (0,)


def check_arg(arg: str | None, allowed: tuple[str, ...]) -> str:
    """The config argument after ':' (empty for none); anything else is a ConfigError."""
    arg = arg or ""
    if arg not in allowed:
        raise ConfigError(f"unknown config argument '{arg}'; this config accepts: "
                          f"{', '.join(a or '(none)' for a in allowed)}")
    return arg


def base_config(dataset: str, initial: int, increment: int) -> ConfigDict:
    config = ConfigDict()
    config.dataset = ConfigDict({
        "name": dataset,
        "data_dir": config_dict.placeholder(str),  # TFDS data_dir / cache (default ~/.cache/cil)
        "download": False,  # let TFDS download (never possible offline)
        "path": config_dict.placeholder(str),  # a local folder (image folders, IDX files)
    })
    config.stream = ConfigDict({
        "initial": initial,  # B{m}: classes in task 0 (0 means ``increment``)
        "increment": increment,  # Inc{n}: classes in every later task
        "class_order_seed": 1993,  # as in iCaRL and PyCIL
        "class_order": config_dict.placeholder(tuple),  # an explicit permutation instead
    })
    config.model = ConfigDict({
        "name": "mlp", "hidden": (400, 400),
        "init": "flax",  # or "pytorch": U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default
        "input_mean": config_dict.placeholder(tuple),  # per-channel, pixels in [0, 1]: set both
        "input_std": config_dict.placeholder(tuple),  # to standardise inputs
    })
    config.train = ConfigDict({
        "optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.0, "weight_decay": 0.0,
        "batch_size": 128, "epochs": 1,
        # Learning rate per epoch, restarted at every task (cil/training.py): constant,
        # multistep (times gamma at each milestone epoch) or cosine (after warmup_epochs).
        "schedule": "constant", "milestones": (), "gamma": 0.1, "warmup_epochs": 0,
        # Task 0's own recipe: each field set here overrides the one above for task 0 only.
        "first_task": ConfigDict({k: config_dict.placeholder(t) for k, t in (
            ("epochs", int), ("learning_rate", float), ("schedule", str), ("milestones", tuple),
            ("gamma", float), ("warmup_epochs", int), ("weight_decay", float))}),
        "augment": augment.training_config(),  # per batch, on the device; off by default
        "compute_dtype": "float32",  # or bfloat16: mixed precision, parameters kept in float32
        # Training steps per compiled call; unset: chosen by network and backend (0: a loop).
        "steps_per_call": config_dict.placeholder(int),
    })
    config.memory = ConfigDict({
        "budget_bytes": config_dict.placeholder(int),  # bounds exemplars + learner + side state
        "exemplars": config_dict.placeholder(int),  # bounds the number of stored examples
        "charge_encoder": False,  # also charge a frozen encoder against budget_bytes
    })
    config.strategies = ("finetune", "joint")
    config.seeds = (0, 1, 2)
    config.eval_batch_size = 1000
    config.checkpoint = True  # save the strategy state after every task, to resume
    return config
