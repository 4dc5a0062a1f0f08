"""Pretraining inside the suite: the encoder sees only the stream's base task, and loads back."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cil import encoders, pretrain
from cil.errors import ConfigError
from configs.pretrain_digits import get_config

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**pretrain_changes):
    config = get_config()
    config.train.epochs = 2
    config.model.channels = (4, 8)
    config.pretrain.update(pretrain_changes)
    return config


def test_base_task_encoder_sees_only_task_zero_and_loads_back(tmp_path):
    config = tiny_config()
    directory = pretrain.run_pretrain(config, str(tmp_path / "enc"), progress=lambda _: None)
    record = json.loads((directory / encoders.META_FILE).read_text())
    seen = record["trained_on"]
    assert seen["data"] == "base_task" and seen["split"] == "B4-Inc2"
    assert seen["stream_labels"] == [0, 1, 2, 3] and record["num_classes"] == 4
    assert seen["classes"] == [str(c) for c in seen["class_order"][:4]]
    data, _ = pretrain.pretraining_data(config)
    assert set(np.unique(data.train_labels)) == {0, 1, 2, 3} == set(np.unique(data.test_labels))
    encoder = encoders.load_encoder(directory, expected_image_shape=(8, 8, 1))
    assert encoder.feature_dim == 8 and 0.0 <= seen["test_accuracy"] <= 1.0


def test_whole_dataset_source_and_bad_configs(tmp_path):
    data, seen = pretrain.pretraining_data(tiny_config(data="dataset"))
    assert data.num_classes == 10 and seen["data"] == "dataset"
    with pytest.raises(ConfigError, match="pretrain.data"):
        pretrain.run_pretrain(tiny_config(data="stream"), str(tmp_path))
    config = tiny_config()
    with config.unlocked():
        config.strategies = ("ncm",)
    with pytest.raises(ConfigError, match="unknown: strategies"):
        pretrain.run_pretrain(config, str(tmp_path))


def test_run_py_dispatches_a_pretraining_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "run.py", "--config=configs/pretrain_digits.py", "--config.train.epochs=1",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "encoder saved to" in result.stdout
    assert encoders.load_encoder(tmp_path).feature_dim == 32
