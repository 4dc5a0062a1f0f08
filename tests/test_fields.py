"""Config fields: every declared rule is enforced before any work, with a message that names the
field, the value, what is allowed and the fix."""

import math

import ml_collections
import pytest

from cil import experiment, fields
from cil.errors import ConfigError
from cil.fields import Field, Flag, Integer, Number, OneOf, Optional, Sequence, Text
from cil.strategy import available_strategies, strategy_class
from tests.helpers import tiny_config


def test_rules_accept_and_refuse_what_they_say():
    assert Integer(min=1).allows(3) and not Integer(min=1).allows(0)
    assert not Integer().allows(True) and not Integer().allows(2.0) and not Integer().allows("2")
    assert Number(above=0).allows(1) and Number(above=0).allows(0.5)
    assert not Number(above=0).allows(0) and not Number().allows(math.nan)
    assert not Number().allows(math.inf) and not Number().allows(False)
    assert Number(min=0, below=1).allows(0) and not Number(min=0, below=1).allows(1)
    assert OneOf("a", "b").allows("a") and not OneOf("a", "b").allows("c")
    assert Flag().allows(False) and not Flag().allows("yes") and not Flag().allows(1)
    assert Optional(Integer()).allows(None) and not Optional(Integer()).allows("x")
    rule = Sequence(Integer(min=1), min_length=1, distinct=True, increasing=True)
    assert rule.allows((1, 2)) and rule.allows([1, 5])
    for bad in ((), (2, 1), (1, 1), (0, 1), "12", 1):
        assert not rule.allows(bad), bad


def test_a_bad_value_names_field_value_rule_and_fix():
    field = Field(0.01, Number(above=0))
    assert fields.bad_value("train.learning_rate", -0.1, field) == (
        "train.learning_rate=-0.1 is not allowed: set --config.train.learning_rate to a number > 0 "
        "(default 0.01)")
    message = fields.bad_value("seeds", (0, 0), Field((0, 1), Sequence(Integer(), distinct=True)))
    assert message.startswith("seeds=(0, 0) is not allowed: it lists 0 twice; list each value "
                              "once; set --config.seeds to a tuple of values, each an integer")
    message = fields.bad_value("s", ("a", "x"), Field(("a",), Sequence(OneOf("a", "b"))))
    assert "'x' is not one of 'a', 'b'" in message


def test_defaults_are_the_declared_values_and_placeholders_for_unset():
    declared = {"n": Field(3, Integer()), "unset": Field(None, Optional(Text())),
                "inner": {"flag": Field(True, Flag())}}
    config = fields.defaults(declared)
    assert config.n == 3 and config.unset is None and config.inner.flag is True
    config.unset = "set later"  # a placeholder takes a value of its rule's type
    with pytest.raises(TypeError):
        config.n = "three"
    fields.check(config, declared, "x")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) x.extra; x has the fields"):
        fields.check({**config.to_dict(), "extra": 1}, declared, "x")
    with pytest.raises(ConfigError, match="config lacks x.n"):
        fields.check({"unset": None, "inner": {"flag": True}}, declared, "x")


# (field path, bad value, what the message must say): a user's mistakes, one per row.
BAD_VALUES = [
    ("eval_batch_size", 0, "eval_batch_size=0 is not allowed: set --config.eval_batch_size to an "
                           "integer >= 1"),
    ("seeds", (), "seeds=() is not allowed"),
    ("seeds", (0, 0), "it lists 0 twice"),
    ("seeds", (0.5,), "0.5 is not an integer >= 0"),
    ("seeds", (-1,), "-1 is not an integer >= 0"),
    ("strategies", "finetune", "strategies='finetune' is not allowed: set --config.strategies to a "
                               "tuple of values"),
    ("strategies", ("finetune", "finetune"), "it lists 'finetune' twice"),
    ("checkpoint", "maybe", "checkpoint='maybe' is not allowed: set --config.checkpoint to True or "
                            "False"),
    ("memory.exemplars", -5, "memory.exemplars=-5 is not allowed: set --config.memory.exemplars "
                             "to an integer >= 0, or None"),
    ("memory.budget_bytes", -1, "memory.budget_bytes=-1 is not allowed"),
    ("memory.budget_bytes", 1.5e6, "memory.budget_bytes=1500000.0 is not allowed"),
    ("train.learning_rate", -0.1, "train.learning_rate=-0.1 is not allowed"),
    ("train.learning_rate", math.nan, "train.learning_rate=nan is not allowed"),
    ("train.epochs", 0, "train.epochs=0 is not allowed"),
    ("train.momentum", 1.5, "train.momentum=1.5 is not allowed: set --config.train.momentum to a "
                            "number >= 0 and < 1"),
    ("train.batch_size", 0, "train.batch_size=0 is not allowed"),
    ("train.batch_size", -32, "train.batch_size=-32 is not allowed"),
    ("train.optimizer", "sgdd", "train.optimizer='sgdd' is not allowed: set --config.train."
                                "optimizer to one of 'sgd', 'adam', 'adamw'"),
    ("train.weight_decay", -1e-4, "train.weight_decay=-0.0001 is not allowed"),
    ("train.first_task.learning_rate", 0.0, "train.first_task.learning_rate=0.0 is not allowed"),
    ("train.augment.brightness", 1.5, "train.augment.brightness=1.5 is not allowed"),
    ("train.steps_per_call", -1, "train.steps_per_call=-1 is not allowed"),
    ("stream.increment", 0, "stream.increment=0 is not allowed"),
    ("stream.initial", -2, "stream.initial=-2 is not allowed"),
    ("stream.class_order", (0, 0, 1), "it lists 0 twice"),
    ("model.hidden", (0,), "model.hidden=(0,) is not allowed: 0 is not an integer >= 1"),
    ("model.init", "torch", "model.init='torch' is not allowed"),
    ("model.input_std", (0.0,), "model.input_std=(0.0,) is not allowed"),
    ("dataset.download", "no", "dataset.download='no' is not allowed"),
    ("replay.exemplars", -1, "replay.exemplars=-1 is not allowed"),
    ("replay.selection", "best", "replay.selection='best' is not allowed: set --config.replay."
                                 "selection to one of 'random', 'reservoir', 'herding'"),
    ("replay.train.epochs", 0, "replay.train.epochs=0 is not allowed"),
    ("icarl.temperature", 0.0, "icarl.temperature=0.0 is not allowed"),
    ("ncm.augment.flip", "yes", "ncm.augment.flip='yes' is not allowed"),
    ("partial_sharing.shared_fraction", 1.5, "partial_sharing.shared_fraction=1.5 is not allowed"),
    ("dkvb.key_init.decay", 1.0, "dkvb.key_init.decay=1.0 is not allowed"),
]


def with_values(**values) -> ml_collections.ConfigDict:
    """The tiny config, every strategy listed, with each dotted path (``__`` for ``.``) set to its
    value, types unchecked, as a config file may write them."""
    plain = tiny_config().to_dict()
    plain["strategies"] = tuple(available_strategies())
    for path, value in values.items():
        node = plain
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return ml_collections.ConfigDict(plain)


def with_value(path: str, value) -> ml_collections.ConfigDict:
    return with_values(**{path.replace(".", "__"): value})


@pytest.mark.parametrize("path, value, message", BAD_VALUES)
def test_each_bad_value_is_named_before_any_work(path, value, message):
    with pytest.raises(ConfigError) as raised:
        experiment.validate_config(with_value(path, value))
    assert message in str(raised.value)


def declared_fields(declared, path=""):
    for name, field in declared.items():
        if isinstance(field, Field):
            yield fields.join(path, name), field
        else:
            yield from declared_fields(field, fields.join(path, name))


def out_of_rule(rule):
    """Values ``rule`` must refuse."""
    if isinstance(rule, Optional):
        return out_of_rule(rule.rule)
    values = {Integer: [0.5, "1"], Number: [math.nan, "1"], OneOf: ["no such choice"],
              Flag: ["yes"], Text: [3], Sequence: ["not a tuple", 7]}[type(rule)]
    if isinstance(rule, Integer) and rule.min is not None:
        values.append(rule.min - 1)
    if isinstance(rule, Number):
        if rule.min is not None or rule.above is not None:
            values.append(rule.min - 1 if rule.min is not None else rule.above)
        if rule.max is not None or rule.below is not None:
            values.append(rule.max + 1 if rule.max is not None else rule.below)
    return values


def every_declared_field():
    everything = dict(experiment.fields())
    for name in available_strategies():
        everything[name] = strategy_class(name).fields()
    return list(declared_fields(everything))


@pytest.mark.parametrize("path, field", every_declared_field(),
                         ids=[path for path, _ in every_declared_field()])
def test_every_declared_rule_is_enforced_by_validate_config(path, field):
    for value in out_of_rule(field.rule):
        assert not field.rule.allows(value)
        with pytest.raises(ConfigError, match=f"^{path}="):
            experiment.validate_config(with_value(path, value))


@pytest.mark.parametrize("values, message", [
    ({"model__input_mean": (0.5,)}, "model.input_mean and model.input_std must be set together"),
    ({"model__input_mean": (0.5, 0.5), "model__input_std": (0.2,)},
     "model.input_mean has 2 values but model.input_std has 1"),
    ({"train__schedule": "multistep", "train__milestones": (1,)},
     "train.milestones=(1,) reaches past the last epoch (train.epochs=1)"),
    ({"train__schedule": "cosine", "train__warmup_epochs": 1},
     "train.warmup_epochs=1 must be below train.epochs=1"),
    ({"model__name": "cnn"}, "unknown config key(s) model.hidden; model has the fields"),
    ({"dkvb__key_init__source": "file"}, "dkvb.key_init.source='file' needs key_init.path"),
])
def test_fields_that_do_not_fit_together(values, message):
    with pytest.raises(ConfigError) as raised:
        experiment.validate_config(with_values(**values))
    assert message in str(raised.value)
