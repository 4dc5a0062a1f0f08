"""The run loop end to end on Split-Digits: forgetting shows, reruns skip, interrupted runs resume."""

import json

import pytest

from cil import experiment
from cil.errors import ConfigError
from cil.results import read_records
from configs.digits import get_config
from tests.helpers import tiny_config


def quiet(_):
    pass


def test_finetune_forgets_and_joint_does_not(tmp_path):
    config = get_config()  # the default benchmark, one seed
    config.seeds = (0,)
    finetune, joint = experiment.run_experiment(config, str(tmp_path), progress=quiet)
    assert finetune["strategy"] == "finetune" and finetune["forgetting"] > 0.5
    assert joint["strategy"] == "joint" and joint["forgetting"] < 0.15
    assert joint["last_acc"] > finetune["last_acc"] + 0.5
    assert joint["memory_by_category"]["exemplars"] > 0  # joint keeps all data, and says so


def test_rerun_skips_finished_runs(tmp_path):
    config = tiny_config()
    config.strategies = ("finetune",)
    experiment.run_experiment(config, str(tmp_path), progress=quiet)
    lines = (tmp_path / "results.jsonl").read_text()
    messages = []
    assert experiment.run_experiment(config, str(tmp_path), progress=messages.append) == []
    assert (tmp_path / "results.jsonl").read_text() == lines
    assert any("skipped" in m for m in messages)


class Interrupt(Exception):
    pass


def interrupt_at(message_fragment):
    def progress(message):
        if message_fragment in message:
            raise Interrupt(message)
    return progress


def test_interrupted_run_resumes_with_identical_results(tmp_path):
    config = tiny_config()
    config.strategies = ("finetune",)
    [reference] = experiment.run_experiment(config, str(tmp_path / "straight"), progress=quiet)

    workdir = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        experiment.run_experiment(config, str(workdir), progress=interrupt_at("task 3/5"))
    assert read_records(workdir, kind="summary") == []
    messages = []
    [resumed] = experiment.run_experiment(config, str(workdir), progress=messages.append)
    assert any("resuming at task 2" in m for m in messages)
    assert resumed["acc_matrix"] == reference["acc_matrix"]
    assert resumed["run_id"] == reference["run_id"]
    assert not (workdir / "checkpoints" / resumed["run_id"]).exists()
    # The interrupted attempt's task-3 line stays, told apart by its attempt id.
    tasks = [r for r in read_records(workdir, kind="task") if r["task"] == 2]
    assert len({r["attempt"] for r in tasks}) == 2


def test_config_snapshot_and_record_fields(tmp_path):
    config = tiny_config()
    config.strategies = ("finetune",)
    [summary] = experiment.run_experiment(config, str(tmp_path), progress=quiet)
    assert json.loads((tmp_path / "config.json").read_text())["strategies"] == ["finetune"]
    assert summary["split"] == "B0-Inc2" and summary["class_order_seed"] == 1993
    assert summary["trained_examples"] == 1347  # 1 epoch over every training image
    assert summary["train_images_per_second"] > 0
    assert len(summary["train_seconds_per_task"]) == 5


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c, "strategies", ("nope",)), "'nope' is not one of 'agem', 'bic', 'der', 'dkvb'"),
    (lambda c: c.unlock().__setitem__("finetune", {"lr": 1}), "unknown config key"),
    (lambda c: c.unlock().__setitem__("tarin", {}), "unknown config key"),
    (lambda c: setattr(c, "strategies", ()), r"strategies=\(\) is not allowed"),
])
def test_config_errors_before_any_work(tmp_path, mutate, message):
    config = tiny_config()
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        experiment.run_experiment(config, str(tmp_path), progress=quiet)
    assert not (tmp_path / "results.jsonl").exists()
