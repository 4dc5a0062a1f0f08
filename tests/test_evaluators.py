"""Evaluators by name (cil/evaluators.py): task-given accuracy and per-class accuracy, by hand."""

from __future__ import annotations

import numpy as np

from cil import tables
from cil.experiment import RunLoop, stream_spec
from cil.results import ResultsWriter, read_records
from cil.strategy import Learned, MemoryReport, Strategy
from tests.helpers import tiny_config
from tests.test_evaluation import fake_stream


class PrefersTwoAhead(Strategy):
    """Scores 1 on an image's true class and 2 on the class two ahead (mod 6): that class wins
    whenever it is seen, and it always lies in another task (tasks are (0,1), (2,3), (4,5))."""

    def init(self, key, spec):
        return {"t": -1}

    def learn(self, state, task, key):
        return Learned({"t": task.index}, trained_examples=len(task.labels))

    def predict(self, state, images):
        labels = np.asarray(images)[:, 0, 0, 0].astype(int) // 2  # fake_stream: image i has label i // 2
        scores = np.zeros((len(labels), 6))
        scores[np.arange(len(labels)), labels] = 1.0
        scores[np.arange(len(labels)), (labels + 2) % 6] = 2.0
        return scores

    def memory(self, state):
        return MemoryReport(learner_params=100)


def test_task_given_and_per_class_accuracy_by_hand(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    config.evaluators = ("task_given", "per_class")
    run = RunLoop(PrefersTwoAhead(config), stream, stream_spec(stream, config.memory), config,
                  {"run_id": "r", "strategy": "two_ahead", "seed": 0, "dataset": "fake",
                   "split": "B0-Inc2", "class_order_seed": 0, "class_order": list(range(6)),
                   "num_tasks": 3, "config_hash": "h"},
                  ResultsWriter(tmp_path), tmp_path, progress=lambda _: None)
    summary = run.run(settings={})
    # Class-incremental: after task 1, classes 0 and 1 lose to 2 and 3; after task 2, every
    # class loses to the class two ahead (5 -> 1, 4 -> 0).
    assert summary["acc_matrix"] == [[1.0], [0.0, 1.0], [0.0, 0.0, 0.0]]
    # Task given: the class two ahead is never in the example's own task: always right.
    given = summary["evaluations"]["task_given"]
    assert given["acc_matrix"] == [[1.0], [1.0, 1.0], [1.0, 1.0, 1.0]]
    assert summary["task_given_last_acc"] == 1.0 and summary["task_given_avg_inc_acc"] == 1.0
    assert summary["evaluations"]["per_class"] == {str(c): 0.0 for c in range(6)}
    task_lines = read_records(tmp_path, kind="task")
    assert task_lines[1]["evaluations"]["per_class"] == {"0": 0.0, "1": 0.0, "2": 1.0, "3": 1.0}
    # The table shows the task-given columns, since every run has them.
    table = tables.load(tmp_path)
    text = tables.markdown_table(table)
    assert "A_last task given (%)" in text and "| 100.00 |" in text
    assert "arg-max over its own task's classes" in text


def test_without_evaluators_nothing_is_added(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    run = RunLoop(PrefersTwoAhead(config), stream, stream_spec(stream, config.memory), config,
                  {"run_id": "r", "strategy": "two_ahead", "seed": 0}, ResultsWriter(tmp_path),
                  tmp_path, progress=lambda _: None)
    summary = run.run(settings={})
    assert "evaluations" not in summary and "task_given_last_acc" not in summary
