"""The fields every benchmark config has, with their defaults; benchmark files override a few.

    config = base_config(dataset="digits", initial=0, increment=2)
    config.train.epochs = 5

Each field's default and rule are declared beside the code that reads it (``cil.experiment.fields``
lists where); fields that may stay unset are ml_collections placeholders, so
``--config.memory.exemplars=2000`` works from the command line.
"""

from ml_collections import ConfigDict

from cil import experiment, pretrain
from cil.errors import ConfigError
from cil.fields import defaults
from cil.strategy import available_strategies, strategy_class

SMOKE_SEEDS = (0,)


def check_arg(arg: str | None, allowed: tuple[str, ...]) -> str:
    """The config argument after ':' (empty for none); anything else is a ConfigError."""
    arg = arg or ""
    if arg not in allowed:
        raise ConfigError(f"unknown config argument '{arg}'; this config accepts: "
                          f"{', '.join(a or '(none)' for a in allowed)}")
    return arg


def pretrain_config(dataset: str, initial: int, increment: int) -> ConfigDict:
    """A pretraining config (cil/pretrain.py): the data, split, network and recipe of a benchmark
    config, and the ``pretrain`` section, every field at its default."""
    config = base_config(dataset, initial, increment)
    return ConfigDict({**{k: config[k] for k in ("dataset", "stream", "model", "train")},
                       "pretrain": defaults(pretrain.FIELDS)})


def base_config(dataset: str, initial: int, increment: int) -> ConfigDict:
    """Every field at its default (cil/experiment.py ``fields``; each strategy's section too),
    with this dataset and split."""
    config = defaults(experiment.fields())
    config.dataset.name = dataset
    config.stream.update({"initial": initial, "increment": increment})
    for name in available_strategies():  # every section, so --config.<strategy>.<field> works
        config[name] = strategy_class(name).default_config()
    return config
