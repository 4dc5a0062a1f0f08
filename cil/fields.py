"""Config fields declared once, each with its default and its rule; one check for all of them.

    FIELDS = {
        "epochs": Field(1, Integer(min=1), "epochs per task"),
        "learning_rate": Field(0.01, Number(above=0)),
        "milestones": Field((), Sequence(Integer(min=1), increasing=True)),
        "augment": {"flip": Field("off", OneOf("on", "off"))},     # a nested section
    }
    config.train = defaults(FIELDS)          # a ConfigDict of the defaults (None: a placeholder)
    check(config.train, FIELDS, "train")     # ConfigError naming the first bad field

A bad value gives one message naming the field, the value, what is allowed and the fix:

    train.learning_rate=-0.1 is not allowed: set --config.train.learning_rate to a number > 0
    (default 0.01)

Each module declares the fields it reads beside the code that reads them (``training.FIELDS``,
``augment.TRAINING_FIELDS``, ``models.fields(name)``, a strategy's ``fields()``, ...);
cil/experiment.py checks a whole config against them before any work (``validate_config``), then
what no single field can (fields that must fit together, in the module that reads them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import ml_collections
import numpy as np
from ml_collections import config_dict

from cil.errors import ConfigError


class Rule:
    """What values a field allows; ``kind`` is the Python type of a placeholder for it."""

    kind: type = object

    def allows(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value) -> str:
        """Why ``value`` is not allowed, when there is more to say than ``describe``."""
        return ""


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Integer(Rule):
    """An int (not a bool, not a float) in [min, max]."""

    min: int | None = None
    max: int | None = None
    kind = int

    def allows(self, value) -> bool:
        return (_is_integer(value) and (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max))

    def describe(self) -> str:
        bounds = _bounds(self.min, self.max, False, False)
        return f"an integer {bounds}".strip()


@dataclasses.dataclass(frozen=True)
class Number(Rule):
    """A finite int or float; ``min``/``max`` are inclusive bounds, ``above``/``below`` strict."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    kind = float

    def allows(self, value) -> bool:
        if not (_is_integer(value) or isinstance(value, (float, np.floating))):
            return False
        return (math.isfinite(value) and (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))

    def describe(self) -> str:
        low, low_open = (self.above, True) if self.above is not None else (self.min, False)
        high, high_open = (self.below, True) if self.below is not None else (self.max, False)
        return f"a number {_bounds(low, high, low_open, high_open)}".strip()


class OneOf(Rule):
    """One of a fixed list of strings (or other values)."""

    def __init__(self, *choices):
        self.choices = choices
        self.kind = type(choices[0])

    def allows(self, value) -> bool:
        return isinstance(value, self.kind) and value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


class Flag(Rule):
    kind = bool

    def allows(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def describe(self) -> str:
        return "True or False"


class Text(Rule):
    kind = str

    def allows(self, value) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return "a string"


@dataclasses.dataclass(frozen=True)
class Optional(Rule):
    """``rule``'s values, or None (unset)."""

    rule: Rule

    @property
    def kind(self):
        return self.rule.kind

    def allows(self, value) -> bool:
        return value is None or self.rule.allows(value)

    def describe(self) -> str:
        return f"{self.rule.describe()}, or None (unset)"

    def problem(self, value) -> str:
        return self.rule.problem(value)


@dataclasses.dataclass(frozen=True)
class Sequence(Rule):
    """A tuple or list (never a string) of ``item`` values."""

    item: Rule
    min_length: int = 0
    max_length: int | None = None
    distinct: bool = False
    increasing: bool = False  # strictly
    kind = tuple

    def allows(self, value) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) < self.min_length:
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        if not all(self.item.allows(v) for v in value):
            return False
        if self.distinct and len(set(value)) != len(value):
            return False
        return not self.increasing or all(a < b for a, b in zip(value, value[1:]))

    def describe(self) -> str:
        text = f"a tuple of values, each {self.item.describe()}"
        extra = [f"at least {self.min_length}" if self.min_length else "",
                 f"at most {self.max_length}" if self.max_length is not None else "",
                 "no repeats" if self.distinct else "", "increasing" if self.increasing else "",
                 "write (x,) for one value"]
        return f"{text} ({'; '.join(e for e in extra if e)})"

    def problem(self, value) -> str:
        if isinstance(value, (tuple, list)):
            wrong = [v for v in value if not self.item.allows(v)]
            if wrong:
                return f"{wrong[0]!r} is not {self.item.describe()}"
            if self.distinct and len(set(value)) != len(value):
                repeated = next(v for v in value if value.count(v) > 1)
                return f"it lists {repeated!r} twice; list each value once"
            if self.increasing and len(value) >= self.min_length:
                return "its values must increase"
        return ""


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default, the values it allows and what it means."""

    default: Any
    rule: Rule
    help: str = ""


Fields = Mapping[str, "Field | Fields"]


def defaults(fields: Fields) -> ml_collections.ConfigDict:
    """The fields' defaults as a ConfigDict; a None default is a placeholder of the rule's type,
    so ``--config.<path>=<value>`` can set it from the command line."""
    values = {}
    for name, field in fields.items():
        if not isinstance(field, Field):
            values[name] = defaults(field)
        elif field.default is None:
            values[name] = config_dict.placeholder(field.rule.kind)
        else:
            values[name] = field.default
    return ml_collections.ConfigDict(values)


def check(section, fields: Fields, path: str, partial: bool = False) -> None:
    """Raises ConfigError for the first key of ``section`` that ``fields`` does not declare or whose
    value its rule does not allow; ``partial``: keys may be missing (an override section)."""
    values = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(join(path, k) for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; {path or 'the config'} has the fields "
                          f"{', '.join(sorted(fields))}")
    for name, field in fields.items():
        if name not in values:
            if partial:
                continue
            raise ConfigError(f"config lacks {join(path, name)}; start from configs/digits.py")
        if not isinstance(field, Field):
            if not isinstance(values[name], (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{join(path, name)}={values[name]!r} must be a section with "
                                  f"the fields {', '.join(sorted(field))}")
            check(values[name], field, join(path, name), partial)
        elif not field.rule.allows(values[name]):
            raise ConfigError(bad_value(join(path, name), values[name], field))


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def bad_value(path: str, value, field: Field) -> str:
    problem = field.rule.problem(value)
    default = "" if field.default is None else f" (default {field.default!r})"
    return (f"{path}={value!r} is not allowed: {problem + '; ' if problem else ''}set "
            f"--config.{path} to {field.rule.describe()}{default}")
