"""Grids: expansion, sharding, checks, and a real sharded memory-aligned sweep on Split-Digits."""

import ml_collections
import pytest

from cil import experiment, sweep, tables
from cil.errors import ConfigError, RunError
from tests.helpers import tiny_config

# The tiny MLP (64-32-10) keeps 9,640 bytes of parameters.
MODEL_BYTES = 9_640


def quiet(_):
    pass


def grid_config(**sweep_section):
    config = tiny_config()
    config.strategies = ("finetune", "joint")
    config.seeds = (0, 1)
    with config.unlocked():
        config.sweep = ml_collections.ConfigDict(sweep_section)
    return config


def test_grid_is_strategies_x_budgets_x_fields_x_seeds_without_repeats():
    config = grid_config(budget_bytes=(20_000, 40_000),
                         fields={"train": {"epochs": (1, 2)}, "joint": {"reinit": (True, False)}})
    points = sweep.expand(config)
    # finetune: 2 epochs x 2 budgets x 2 seeds; joint (unbudgeted): 2 epochs x 2 reinit x 2 seeds
    assert len(points) == 16 and len(set(points)) == 16
    assert points[:3] == [
        sweep.Point("finetune", 0, (("memory.budget_bytes", 20_000), ("train.epochs", 1))),
        sweep.Point("finetune", 1, (("memory.budget_bytes", 20_000), ("train.epochs", 1))),
        sweep.Point("joint", 0, (("joint.reinit", True), ("train.epochs", 1))),
    ]
    assert not any(p.strategy == "joint" and "memory.budget_bytes" in dict(p.overrides)
                   for p in points)
    assert not any(p.strategy == "finetune" and "joint.reinit" in dict(p.overrides) for p in points)


def test_a_config_without_sweep_is_strategies_x_seeds():
    config = tiny_config()
    config.strategies = ("finetune", "joint")
    config.seeds = (0, 1, 2)
    assert [(p.strategy, p.seed, p.overrides) for p in sweep.expand(config)] == [
        (name, seed, ()) for name in ("finetune", "joint") for seed in (0, 1, 2)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 17])
def test_shards_partition_the_grid(count):
    points = sweep.expand(grid_config(budget_bytes=(20_000, 40_000, 60_000)))
    shards = [sweep.shard(points, i, count) for i in range(count)]
    together = [p for s in shards for p in s]
    assert len(together) == len(points) and set(together) == set(points)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("section, message", [
    ({"fields": {"stream": {"increment": (1, 2)}}}, "changes the stream"),
    ({"fields": {"memory": {"budget_bytes": (1, 2)}}}, "use sweep.budget_bytes"),
    ({"fields": {"seeds": ((0,), (1,))}}, "axes already"),
    ({"fields": {"train": {"epochz": (1, 2)}}}, "does not define"),
    ({"fields": {"train": {"epochs": ("many",)}}}, "not of the field's type"),
    ({"fields": {"train": {"epochs": ()}}}, "non-empty tuple"),
    ({"budget_bytes": (10, 10)}, "distinct positive"),
    ({"unbudgeted": ("jiont",)}, "does not list"),
    ({"budgets": (10,)}, "unknown sweep key"),
])
def test_bad_grids_are_one_line_config_errors(section, message):
    config = grid_config(**section)
    with pytest.raises(ConfigError, match=message):
        sweep.run_grid(config, "/nonexistent", progress=quiet)


def test_memory_aligned_grid_refuses_a_fixed_exemplar_count():
    config = grid_config(budget_bytes=(20_000,))
    config.memory.exemplars = 100
    with pytest.raises(ConfigError, match="unset memory.exemplars"):
        sweep.expand(config)


def test_shard_index_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="--shard_index=2"):
        sweep.run_grid(grid_config(), "/nonexistent", shard_index=2, num_shards=2, progress=quiet)


def test_point_config_sets_fields_and_drops_the_sweep():
    config = grid_config(fields={"joint": {"reinit": (False,)}})
    [point, *_] = [p for p in sweep.expand(config) if p.strategy == "joint"]
    plain = sweep.point_config(config, point.overrides)
    assert "sweep" not in plain and plain.joint.reinit is False
    experiment.validate_config(plain)
    with pytest.raises(ConfigError, match="config.sweep declares a grid"):
        experiment.run_experiment(config, "/nonexistent", progress=quiet)


def test_sharded_memory_aligned_sweep_merges_into_one_table(tmp_path):
    config = grid_config(budget_bytes=(MODEL_BYTES + 10_000, MODEL_BYTES + 30_000))
    config.seeds = (0,)
    shards = [tmp_path / "shard0", tmp_path / "shard1"]
    done = [sweep.run_grid(config, str(w), i, 2, progress=quiet) for i, w in enumerate(shards)]
    assert sorted(len(d) for d in done) == [1, 2]
    table = tables.load(*shards)
    assert [(r.strategy, r.budget) for r in table.rows] == [
        ("finetune", MODEL_BYTES + 10_000), ("finetune", MODEL_BYTES + 30_000), ("joint", None)]
    [finetune] = table.auc
    # finetune keeps only its network: the same run at both budgets, so AUC = Ā x budget range
    avg = table.rows[0].runs[0]["avg_inc_acc"]
    assert finetune.stats["auc_a"][0] == pytest.approx(avg * 0.02)
    assert table.rows[0].reference_basis == "same seed"

    # Run ids depend on settings, not on the shard: the whole grid over the merged results is done.
    merged = tmp_path / "merged"
    merged.mkdir()
    lines = "".join((w / "results.jsonl").read_text() for w in shards)
    (merged / "results.jsonl").write_text(lines)
    assert sweep.run_grid(config, str(merged), progress=quiet) == []


def test_an_over_budget_cell_fails_alone_and_loudly(tmp_path):
    config = grid_config(budget_bytes=(MODEL_BYTES - 1, MODEL_BYTES + 10_000))
    config.strategies = ("finetune",)
    config.seeds = (0,)
    with pytest.raises(RunError, match=r"1 run\(s\) of the grid failed.*memory.budget_bytes=9639"):
        sweep.run_grid(config, str(tmp_path), progress=quiet)
    [row] = tables.load(tmp_path).rows
    assert row.budget == MODEL_BYTES + 10_000
