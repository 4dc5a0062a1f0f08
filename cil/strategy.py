"""The strategy interface and its small data types (DESIGN.md, "The strategy interface").

A strategy lives in ``cil/baselines/<name>.py`` and is found by that name; the module defines one
subclass of ``Strategy``:

    class Finetune(Strategy):
        def init(self, key, spec): return {"params": ...}           # a pytree
        def learn(self, state, task, key): return Learned(new_state, trained_examples=...)
        def predict(self, state, images): return scores               # (N, spec.num_classes)
        def memory(self, state): return MemoryReport(learner_params=...)

    strategy = load_strategy("finetune", config)    # config.strategy holds its own section

The evaluator masks the scores of classes not yet seen; a strategy never needs to. ``learn`` sees only
the task's data; anything kept for later must live in the returned state and be reported by
``memory``, which the evaluator checks against the budget after every task.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from cil.data.stream import Task, TaskSpan
from cil.errors import ConfigError
from cil.fields import Field, Fields, Flag, Integer, Optional, check, defaults

PyTree = Any


# config.memory: the run's budget (PROTOCOL.md "Memory accounting"); unset: unbounded.
MEMORY_FIELDS = {
    "budget_bytes": Field(None, Optional(Integer(min=0)), "bounds exemplars + learner + side state"),
    "exemplars": Field(None, Optional(Integer(min=0)), "bounds the number of stored examples"),
    "charge_encoder": Field(False, Flag(), "also charge a frozen encoder against budget_bytes"),
    "charge_teacher": Field(False, Flag(), "also charge a distilling strategy's teacher copy "
                            "against budget_bytes (Zhou et al. do not)"),
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a strategy may keep (PROTOCOL.md "Memory accounting"); None means unbounded."""

    max_bytes: int | None = None  # bounds exemplars + learner_params + side_state
    max_exemplars: int | None = None  # bounds the number of stored examples
    charge_encoder: bool = False  # also charge the frozen encoder against max_bytes
    charge_teacher: bool = False  # also charge the teacher copy against max_bytes


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What a strategy may know before the stream starts."""

    num_classes: int
    image_shape: tuple[int, int, int]
    tasks: tuple[TaskSpan, ...]
    train_sizes: tuple[int, ...]  # examples per task, to size fixed-shape buffers
    budget: Budget
    dataset_name: str = ""
    # What the examples are stored as: uint8 images, or float32 features when config.features
    # names a frozen encoder whose outputs replace the images (its bytes: input_encoder_bytes).
    input_dtype: str = "uint8"
    input_encoder_bytes: int = 0

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_of_class(self) -> tuple[int, ...]:
        """The index of the task that brings each class (classes are numbered in stream order)."""
        task = [0] * self.num_classes
        for span in self.tasks:
            for c in span.classes:
                task[c] = span.index
        return tuple(task)

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape)) * np.dtype(self.input_dtype).itemsize


class MemoryReport(NamedTuple):
    """Bytes a strategy keeps from one task to the next, by PROTOCOL.md category."""

    exemplars: int = 0  # stored examples at their stored dtype, plus their labels
    learner_params: int = 0  # everything the strategy trains or grows
    encoder_params: int = 0  # a frozen pretrained encoder: reported, charged only on request
    side_state: int = 0  # prototypes, class means, keys, statistics, projections
    num_exemplars: int = 0
    # The frozen copy of the network a distilling strategy learns the next task against:
    # reported, charged only on request (PROTOCOL.md).
    teacher_params: int = 0

    def charged_bytes(self, budget: Budget = Budget()) -> int:
        """The bytes ``budget`` counts: the encoder and the teacher only when it says so."""
        charged = self.exemplars + self.learner_params + self.side_state
        return (charged + (self.encoder_params if budget.charge_encoder else 0)
                + (self.teacher_params if budget.charge_teacher else 0))


class Learned(NamedTuple):
    """What ``learn`` returns: the new state and how many examples it trained on (epochs counted)."""

    state: PyTree
    trained_examples: int


class Strategy:
    """Base class. Subclasses read their own settings from ``config.strategy``.

    ``config`` is the experiment's config (``model``, ``train``, ...) with ``strategy`` replaced by
    this strategy's section, defaults filled in from ``default_config``.
    """

    name: str = ""
    # Whether each task distils from a frozen copy of the network as the task found it (LwF,
    # iCaRL, WA, BiC, PODNet): its bytes are MemoryReport.teacher_params.
    keeps_teacher: bool = False

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @classmethod
    def fields(cls) -> Fields:
        """This strategy's own settings, each a ``Field`` with its default and rule
        (cil/fields.py); a config may override any of them in its section ``config.<name>``."""
        return {}

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        return defaults(cls.fields())

    def init(self, key, spec: StreamSpec) -> PyTree:
        raise NotImplementedError

    def learn(self, state: PyTree, task: Task, key) -> Learned:
        raise NotImplementedError

    def predict(self, state: PyTree, images) -> Any:
        raise NotImplementedError

    def memory(self, state: PyTree) -> MemoryReport:
        raise NotImplementedError

    def extras(self, state: PyTree) -> dict:
        """Figures of this strategy beyond accuracy and memory (parameters trained, FLOPs, ...),
        as JSON numbers: recorded as ``strategy_stats`` in each task line and in the summary
        (the last task's). None by default."""
        return {}

    def nearest_mean_classifier(self, state: PyTree):
        """``images -> (N, classes) scores`` of the nearest mean of exemplars on this strategy's
        features, for the ``nme`` evaluator (cil/evaluators.py), or None: a strategy that keeps
        no exemplars and features has none (the default)."""
        return None


def pytree_bytes(tree: PyTree) -> int:
    """Bytes held by the arrays of a pytree, each at its own dtype."""
    import jax
    return int(sum(np.size(leaf) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)))


def available_strategies() -> list[str]:
    from cil import baselines
    return sorted(m.name for m in pkgutil.iter_modules(baselines.__path__) if not m.name.startswith("_"))


def strategy_class(name: str) -> type[Strategy]:
    """The one ``Strategy`` subclass defined in ``cil/baselines/<name>.py``."""
    if name not in available_strategies():
        raise ConfigError(f"unknown strategy '{name}'; choose one of: "
                          f"{', '.join(available_strategies())} (modules in cil/baselines/)")
    module = importlib.import_module(f"cil.baselines.{name}")
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, Strategy) and c.__module__ == module.__name__]
    if len(found) != 1:
        raise ConfigError(f"cil/baselines/{name}.py must define exactly one Strategy subclass, "
                          f"found {[c.__name__ for c in found]}")
    return found[0]


def strategy_config(name: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The experiment config with ``strategy`` set to ``name``'s defaults updated by ``config[name]``.

    ``config[name].train``, if set, overrides fields of ``config.train`` for this strategy alone:
    PyCIL trains each method with its own recipe (replay 70 epochs per later task, iCaRL 170).
    """
    from cil import training  # the train section's fields; training imports this module's users

    cls = strategy_class(name)
    own = cls.default_config()
    overrides = config.get(name) or {}
    if isinstance(overrides, ml_collections.ConfigDict):
        overrides = overrides.to_dict()  # plain values: a placeholder may not update a placeholder
    overrides = dict(overrides)
    train_overrides = overrides.pop("train", None) or {}
    check(overrides, cls.fields(), name, partial=True)
    check(train_overrides, training.FIELDS, f"{name}.train", partial=True)
    with own.unlocked():
        own.update(overrides)
    merged = ml_collections.ConfigDict(config.to_dict())
    merged.train.update(train_overrides)
    merged.strategy = own
    merged.strategy.name = name
    return merged


def load_strategy(name: str, config: ml_collections.ConfigDict) -> Strategy:
    return strategy_class(name)(strategy_config(name, config))
