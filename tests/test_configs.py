"""The CIFAR recipe config: PyCIL's schedules per method, and a run on a small pickled archive."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cil.strategy import strategy_config
from cil.training import task_schedule
from configs import cifar
from tests.test_sources import write_cifar_python

ROOT = Path(__file__).resolve().parents[1]


def test_cifar100_recipe_is_pycils_per_method():
    config = cifar.get_config("cifar100_b0inc10")
    assert config.model.name == "resnet32" and config.memory.exemplars == 2000
    assert config.model.input_mean == (0.5071, 0.4867, 0.4408)
    for name, epochs, milestones in (("finetune", 80, (40, 70)), ("replay", 70, (30, 50)),
                                     ("icarl", 170, (80, 120))):
        train = strategy_config(name, config).train
        first = task_schedule(train, 0)  # the base task: 200 epochs, x0.1 at 60, 120 and 170
        assert first.epochs == 200 and first.weight_decay == 5e-4
        np.testing.assert_allclose(first.learning_rates[59:61], [0.1, 0.01], rtol=1e-6)
        np.testing.assert_allclose(first.learning_rates[-1], 1e-4, rtol=1e-5)
        later = task_schedule(train, 1)
        assert later.epochs == epochs and later.weight_decay == 2e-4, name
        rates = np.asarray(later.learning_rates)
        changes = [e for e in range(1, epochs) if not np.isclose(rates[e], rates[e - 1])]
        assert tuple(changes) == milestones, name
    assert config.train.augment.crop_padding == 4 and config.train.augment.flip == "on"
    assert abs(config.train.augment.brightness - 63 / 255) < 1e-12


def test_cifar10_smoke_runs_the_recipe_on_the_pickled_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python(archive, "cifar10", per_split=(4, 20), classes=10)  # 2 a class
    env = {**os.environ, "CIL_HOST_DEVICES": "2", "CIL_COMPILATION_CACHE": ""}
    result = subprocess.run(
        [sys.executable, "run.py", "--config=configs/cifar.py:cifar10_smoke",
         f"--config.dataset.path={archive}", f"--config.dataset.data_dir={tmp_path}",
         "--config.memory.exemplars=40", f"--workdir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "cifar10 B0-Inc2: 5 tasks, 10 classes, 20 train / 20 test" in result.stdout
    for name in ("finetune", "replay", "icarl"):
        assert f"| {name} | 1 |" in result.stdout, result.stdout


def test_accelerator_overlay_changes_only_its_fields():
    from configs import cifar_gpu

    base = cifar.get_config("cifar100_b0inc10").to_dict()
    overlay = cifar_gpu.get_config("cifar100_b0inc10_bf16").to_dict()
    assert overlay["train"].pop("compute_dtype") == "bfloat16"
    assert base["train"].pop("compute_dtype") == "float32"
    assert (overlay.pop("eval_batch_size"), base.pop("eval_batch_size")) == (2000, 500)
    assert overlay == base
