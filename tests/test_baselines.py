"""Every strategy module in cil/baselines/ runs end to end on a tiny stream, through the real evaluator.

A new strategy is covered the day it is added. Strategies that need settings to run on this stream
(a frozen encoder, say) add them to TINY_SETTINGS; everything else runs on its defaults.
"""

import json

import pytest

from cil import experiment
from cil.strategy import available_strategies
from tests.helpers import tiny_config

TINY_SETTINGS: dict[str, dict] = {
    "ncm": {"encoder": {"name": "identity"}},  # raw pixels: no checkpoint needed
    # Raw pixels, a tiny bottleneck, keys fitted on the base task and not cached on disk.
    "dkvb": {"encoder": {"name": "identity"}, "num_codebooks": 8, "keys_per_codebook": 32,
             "batch_size": 32, "epochs": 2, "key_init": {"epochs": 1, "cache_dir": ""}},
}


@pytest.mark.parametrize("name", available_strategies())
def test_strategy_runs_end_to_end(name, tmp_path):
    config = tiny_config(**{name: TINY_SETTINGS.get(name, {})})
    config.strategies = (name,)
    [summary] = experiment.run_experiment(config, str(tmp_path), progress=lambda _: None)
    T = summary["num_tasks"]
    assert [len(row) for row in summary["acc_matrix"]] == list(range(1, T + 1))
    assert 0.0 <= summary["last_acc"] <= 1.0
    assert summary["memory_bytes"] > 0
    lines = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [l["kind"] for l in lines] == ["task"] * T + ["summary"]
