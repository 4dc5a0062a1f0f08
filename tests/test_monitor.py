"""Epoch progress lines and TensorBoard curves of a run (cil/monitor.py), on tiny digits runs."""

from __future__ import annotations

import pytest

from cil import experiment
from cil.results import read_records
from tests.helpers import tiny_config
from tests.test_experiment import Interrupt, interrupt_at

EPOCHS = 3


def finetune_config(**monitor):
    config = tiny_config()
    config.strategies = ("finetune",)
    config.train.epochs = EPOCHS
    config.monitor.update(monitor)
    return config


def test_an_epoch_line_per_epoch_but_the_last_when_asked(tmp_path):
    lines = []
    config = finetune_config(progress_seconds=0.0)
    experiment.run_experiment(config, str(tmp_path), progress=lines.append)
    epoch_lines = [line for line in lines if " epoch " in line]
    # 5 tasks x (3 epochs - the last, which the task line follows)
    assert len(epoch_lines) == 5 * (EPOCHS - 1)
    assert epoch_lines[0].startswith("[finetune seed 0] task 1/5 epoch 1/3: loss ")
    assert "img/s" in epoch_lines[0]
    assert f"lr {config.train.learning_rate:g} " in epoch_lines[0]  # a constant schedule
    assert epoch_lines[-1].startswith("[finetune seed 0] task 5/5 epoch 2/3: ")


def test_quick_tasks_print_no_epoch_line_by_default(tmp_path):
    lines = []
    experiment.run_experiment(finetune_config(), str(tmp_path), progress=lines.append)
    assert not [line for line in lines if " epoch " in line]


def test_the_monitor_does_not_change_the_run_id(tmp_path):
    quiet_run = experiment.run_experiment(finetune_config(), str(tmp_path / "a"),
                                          progress=lambda _: None)
    loud_run = experiment.run_experiment(finetune_config(progress_seconds=0.0),
                                         str(tmp_path / "b"), progress=lambda _: None)
    assert quiet_run[0]["run_id"] == loud_run[0]["run_id"]
    assert quiet_run[0]["acc_matrix"] == loud_run[0]["acc_matrix"]


def scalars(logdir):
    """{tag: [(step, value)]} of every event file under ``logdir`` (several after a resume)."""
    from tensorboard.backend.event_processing import event_accumulator
    import tensorflow as tf

    curves = {}
    for events in sorted(logdir.glob("events.out.tfevents.*")):
        accumulator = event_accumulator.EventAccumulator(
            str(events), size_guidance={event_accumulator.TENSORS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            curves.setdefault(tag, []).extend(
                (e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag))
    return curves


def test_tensorboard_curves_match_the_results_and_continue_after_a_resume(tmp_path):
    pytest.importorskip("clu")
    pytest.importorskip("tensorboard")
    config = finetune_config(tensorboard=True)
    workdir = tmp_path / "run"
    with pytest.raises(Interrupt):
        experiment.run_experiment(config, str(workdir), progress=interrupt_at("task 3/5"))
    [summary] = experiment.run_experiment(config, str(workdir), progress=lambda _: None)

    [logdir] = (workdir / "tensorboard").iterdir()
    assert logdir.name == f"finetune_seed0_{summary['run_id'][:8]}"
    curves = scalars(logdir)
    # One loss point per epoch of every task, steps numbered on across the resume: the task the
    # interruption cut (task 3, after its line was written) is trained again, so steps 6-8 twice.
    steps = [step for step, _ in curves["train/loss"]]
    assert sorted(set(steps)) == list(range(5 * EPOCHS))
    assert len(steps) == 5 * EPOCHS + EPOCHS
    assert all(value > 0 for _, value in curves["train/loss"])
    rates = [value for _, value in curves["train/learning_rate"]]
    assert rates == pytest.approx([config.train.learning_rate] * len(steps))
    # The accuracies are the summary's: A[t] at step t, a[t][j] under eval/task_j.
    final_A = dict(curves["eval/A"])
    assert [final_A[t] for t in range(5)] == pytest.approx(summary["A"])
    last = {j: dict(curves[f"eval/task_{j}"])[4] for j in range(5)}
    assert [last[j] for j in range(5)] == pytest.approx(summary["acc_matrix"][4])
    task_lines = read_records(workdir, kind="task")
    charged = {r["task"]: r["charged_bytes"] / 1e6 for r in task_lines}
    assert dict(curves["memory/charged_mb"]) == pytest.approx(charged)


def test_task_lines_record_every_epoch_loss_and_the_strategy_extras(tmp_path):
    config = finetune_config()
    config.strategies = ("finetune", "partial_sharing")
    config.partial_sharing = {"shared_stages": 1}
    experiment.run_experiment(config, str(tmp_path), progress=lambda _: None)
    for line in read_records(tmp_path, kind="task"):
        if line["strategy"] == "finetune":  # one fit a task: one loss an epoch
            assert len(line["train_losses"]) == EPOCHS
            assert all(0 < loss < 10 for loss in line["train_losses"])
            assert line["strategy_stats"] == {}  # finetune declares no extras
        else:  # partial sharing: its accounting of what the task stored and trained
            assert line["strategy_stats"]["stored_bytes"] == line["memory"]["learner_params"]
    [summary] = read_records(tmp_path, kind="summary")[1:]
    last_task = [r for r in read_records(tmp_path, kind="task")
                 if r["strategy"] == "partial_sharing"][-1]
    assert summary["strategy_stats"] == last_task["strategy_stats"]
