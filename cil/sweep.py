"""Grids of runs: strategies x memory budgets x seeds x any config field, whole or one shard of it.

    python run.py --config=configs/sweep_digits.py --workdir=/tmp/sweep        # the whole grid
    python run.py --config=configs/sweep_digits.py --workdir=/tmp/sweep/1 \\
        --shard_index=1 --num_shards=4                                          # one machine's part
    python -m cil.tables /tmp/sweep/0 /tmp/sweep/1 /tmp/sweep/2 /tmp/sweep/3   # shards merge

    points = expand(config)                    # every run of the grid, always in the same order
    mine = shard(points, index=1, count=4)     # points 1, 5, 9, ...: point k goes to shard k mod 4
    summaries = run_grid(config, workdir, shard_index=1, num_shards=4)

A grid is declared in an optional ``config.sweep`` section (example: configs/sweep_digits.py):

    config.sweep = ml_collections.ConfigDict({
        "budget_bytes": (40_000, 80_000),          # memory-aligned: each strategy at each budget
        "unbudgeted": ("joint",),                  # run once, without a budget (the default)
        "fields": {"train": {"epochs": (5, 10)}},  # any config field, nested as in the config
    })

The axes are ``config.strategies``, ``sweep.budget_bytes`` (each value becomes
``memory.budget_bytes``; strategies that store exemplars fill what their model leaves of it, the
others just run under the budget check), every leaf of ``sweep.fields`` (a tuple of the values that
field takes) and ``config.seeds``. A field of a strategy's own section (``replay.selection``) varies
that strategy only. A config without a sweep section is the grid strategies x seeds, so sharding
works for every config. A run's id depends on its settings, not on the grid or the shard: a point
already finished in the workdir is skipped, and shards merge by reading all their workdirs.

Fields that define the stream (``dataset``, ``stream``, ``memory.charge_encoder``) cannot vary in a
grid: a table compares runs of one stream, so sweep one stream per workdir.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Callable

import ml_collections

from cil import experiment
from cil.errors import ConfigError, RunError
from cil.fields import check
from cil.strategy import available_strategies

SWEEP_KEYS = ("budget_bytes", "unbudgeted", "fields")
# Joint keeps all data, so any budget would refuse it; it runs unbudgeted, as the upper bound.
DEFAULT_UNBUDGETED = ("joint",)
BUDGET_FIELD = "memory.budget_bytes"
# Fields a grid may not vary: axes of their own, or the stream's identity and its evaluation.
FIXED_FIELDS = ("strategies", "seeds", "sweep", "dataset", "stream", BUDGET_FIELD,
                "memory.charge_encoder")


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a grid: a strategy and seed, and the config fields set for it (dotted paths)."""

    strategy: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()

    def cell(self) -> str:
        """The point without its seed, e.g. ``replay (memory.budget_bytes=40000)``."""
        settings = ", ".join(f"{path}={value}" for path, value in self.overrides)
        return f"{self.strategy} ({settings})" if settings else self.strategy


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated sweep section."""

    budgets: tuple[int, ...]
    unbudgeted: tuple[str, ...]
    fields: tuple[tuple[str, tuple], ...]  # (dotted path, the values it takes)


def frozen(value):
    """Lists (from JSON or the command line) as tuples, so points hash and compare by value."""
    return tuple(frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def field_axes(fields, prefix: str = "") -> list[tuple[str, tuple]]:
    """Leaves of ``sweep.fields`` as (dotted path, values), in the config's key order."""
    axes = []
    for key, values in fields.items():
        path = f"{prefix}{key}"
        if isinstance(values, (dict, ml_collections.ConfigDict)):
            axes += field_axes(values, path + ".")
        elif isinstance(values, (list, tuple)) and len(values) > 0:
            axes.append((path, frozen(values)))
        else:
            raise ConfigError(f"sweep.fields.{path} must be a non-empty tuple of the values it "
                              f"takes, got {values!r}; e.g. sweep.fields.train.epochs=(5, 10)")
    return axes


def grid(config: ml_collections.ConfigDict) -> Grid:
    """The config's sweep section, checked (an absent section is an empty grid)."""
    sweep = config.get("sweep") or {}
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {', '.join(unknown)}; config.sweep accepts "
                          f"{', '.join(SWEEP_KEYS)}")
    budgets = frozen(sweep.get("budget_bytes") or ())
    if any(not isinstance(b, int) or b <= 0 for b in budgets) or len(set(budgets)) < len(budgets):
        raise ConfigError(f"sweep.budget_bytes={budgets} must list distinct positive byte counts")
    if budgets and config.memory.exemplars is not None:
        raise ConfigError("memory.exemplars is set, but a memory-aligned sweep derives the "
                          "exemplar count from each budget; unset memory.exemplars")
    unbudgeted = frozen(sweep.get("unbudgeted", DEFAULT_UNBUDGETED) or ())
    stray = [name for name in unbudgeted if name not in config.strategies]
    if stray and "unbudgeted" in sweep:
        raise ConfigError(f"sweep.unbudgeted names {', '.join(stray)}, which config.strategies "
                          f"does not list")
    fields = field_axes(sweep.get("fields") or {})
    for path, _ in fields:
        fixed = [f for f in FIXED_FIELDS if path == f or path.startswith(f + ".")]
        if fixed:
            hint = ("use sweep.budget_bytes" if fixed[0] == BUDGET_FIELD else
                    "strategies and seeds are axes already" if fixed[0] in ("strategies", "seeds")
                    else "it changes the stream; sweep one stream per workdir")
            raise ConfigError(f"sweep.fields.{path} cannot vary in a grid: {hint}")
    return Grid(budgets, unbudgeted, tuple(fields))


def applies_to(path: str, strategy: str) -> bool:
    """A field of another strategy's own section does not change this strategy's runs."""
    head = path.split(".")[0]
    return head == strategy or head not in available_strategies()


GRID_AXES = ("strategies", "seeds")


def expand(config: ml_collections.ConfigDict) -> list[Point]:
    """Every run of the grid, without repeats, in a fixed order: fields, budget, strategy, seed.

    Seeds vary fastest, so round-robin shards get the seeds of one cell on different machines.
    """
    declared = grid(config)
    # What the grid is built from must hold runs: an empty list would run nothing, silently.
    rules = experiment.fields()
    check({k: config.get(k) for k in GRID_AXES}, {k: rules[k] for k in GRID_AXES}, "")
    paths = [path for path, _ in declared.fields]
    points: dict[Point, None] = {}
    for values in itertools.product(*(values for _, values in declared.fields)):
        for budget in declared.budgets or (None,):
            for name in config.strategies:
                overrides = tuple((p, v) for p, v in zip(paths, values) if applies_to(p, name))
                if budget is not None and name not in declared.unbudgeted:
                    overrides = ((BUDGET_FIELD, budget),) + overrides
                for seed in config.seeds:
                    points.setdefault(Point(name, seed, overrides))
    return list(points)


def shard(points: list[Point], index: int, count: int) -> list[Point]:
    """Shard ``index`` of ``count``: points index, index + count, ... (round-robin, balanced)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard_index={index} must be in [0, --num_shards={count})")
    return points[index::count]


def set_field(config: ml_collections.ConfigDict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = config
    for depth, part in enumerate(parents):
        if part not in node and depth == 0 and part in available_strategies():
            node[part] = ml_collections.ConfigDict()  # its defaults fill in the rest
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"sweep.fields.{path}: the config has no section "
                              f"{'.'.join(parents[:depth + 1])}")
        node = node[part]
    is_strategy_section = parents and parents[0] in available_strategies()
    if leaf not in node and not is_strategy_section:  # strategy keys are checked by their defaults
        raise ConfigError(f"sweep.fields.{path} names a field the config does not define")
    try:
        node[leaf] = value
    except TypeError:
        raise ConfigError(f"sweep.fields.{path}: {value!r} is not of the field's type "
                          f"({type(node[leaf]).__name__})") from None


def point_config(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """The plain config of one grid cell: the sweep section dropped, the cell's fields set."""
    plain = config.to_dict()
    plain.pop("sweep", None)
    plain = ml_collections.ConfigDict(plain)
    for path, value in overrides:
        set_field(plain, path, value)
    return plain


def checked_configs(config: ml_collections.ConfigDict, overrides_list) -> dict:
    """{overrides: the plain config of that cell}, each checked (ConfigError before any run)."""
    configs = {overrides: point_config(config, overrides) for overrides in overrides_list}
    for plain in configs.values():
        experiment.validate_config(plain)
    return configs


def run_grid(config: ml_collections.ConfigDict, workdir: str, shard_index: int = 0,
             num_shards: int = 1, progress: Callable[[str], None] = print) -> list[dict]:
    """Runs one shard of the grid in ``workdir`` (by default all of it); returns new summaries.

    Every cell's config is checked before the first run. A run that fails (over its budget,
    diverged) fails alone: the other runs still go, then a RunError names every failed run.
    """
    points = expand(config)
    mine = shard(points, shard_index, num_shards)
    cells: dict[tuple, list[int]] = {}  # (overrides, strategy) -> seeds, in grid order
    for point in mine:
        cells.setdefault((point.overrides, point.strategy), []).append(point.seed)
    configs = checked_configs(config, [overrides for overrides, _ in cells])
    progress(f"grid {describe_grid(config)}: {len(points)} runs; shard {shard_index} of "
             f"{num_shards}: {len(mine)} runs in {len(cells)} cells")
    summaries, failed = [], []
    for (overrides, name), seeds in cells.items():
        cell = Point(name, seeds[0], overrides).cell()
        progress(f"cell {cell}: seeds {', '.join(map(str, seeds))}")
        failures: list[str] = []
        summaries += experiment.run_experiment(configs[overrides], workdir, progress,
                                               runs=[(name, seed) for seed in seeds],
                                               failures=failures)
        failed += [f"{cell}: {message}" for message in failures]
    if failed:
        raise RunError(f"{len(failed)} run(s) of the grid failed (the other runs finished): "
                       f"{'; '.join(failed)}")
    return summaries


def describe_grid(config: ml_collections.ConfigDict) -> str:
    """The grid's axes in one line, for logs and reports."""
    declared = grid(config)
    axes = {"strategies": list(config.strategies), "seeds": list(config.seeds)}
    if declared.budgets:
        axes["budget_bytes"] = list(declared.budgets)
        axes["unbudgeted"] = list(declared.unbudgeted)
    axes.update({path: list(values) for path, values in declared.fields})
    return json.dumps(axes)
