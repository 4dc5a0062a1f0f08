"""Evaluators by name (cil/evaluators.py): task-given, nearest-mean-of-exemplars and per-class accuracy, by hand."""

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


class TrueClassNearest(PrefersTwoAhead):
    """PrefersTwoAhead whose nearest-mean-of-exemplars classifier scores the true class alone."""

    def nearest_mean_classifier(self, state):
        def scores(images):
            labels = np.asarray(images)[:, 0, 0, 0].astype(int) // 2
            return np.eye(6)[labels]
        return scores


def test_nme_is_its_own_matrix_beside_the_strategys_scores(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    config.evaluators = ("nme",)
    header = {"run_id": "r", "strategy": "two_ahead", "seed": 0, "dataset": "fake",
              "split": "B0-Inc2", "class_order_seed": 0, "class_order": list(range(6)),
              "num_tasks": 3, "config_hash": "h"}
    for strategy, workdir in ((TrueClassNearest(config), tmp_path / "a"),
                              (PrefersTwoAhead(config), tmp_path / "b")):
        RunLoop(strategy, stream, stream_spec(stream, config.memory), config, header,
                ResultsWriter(workdir), workdir, progress=lambda _: None).run(settings={})
    summary = read_records(tmp_path / "a", kind="summary")[0]
    assert summary["acc_matrix"] == [[1.0], [0.0, 1.0], [0.0, 0.0, 0.0]]
    assert summary["evaluations"]["nme"]["acc_matrix"] == [[1.0], [1.0, 1.0], [1.0, 1.0, 1.0]]
    assert summary["nme_last_acc"] == 1.0
    # A strategy without the classifier records no NME figures; the table still shows the
    # column (some run has it), blank for that row.
    assert "nme_last_acc" not in read_records(tmp_path / "b", kind="summary")[0]
    text = tables.markdown_table(tables.load(tmp_path / "a"))
    assert "A_last NME (%)" in text and "nearest mean of exemplars" in text


def test_icarls_nme_figures_are_its_own_predictions(tmp_path):
    """iCaRL classifies by the nearest mean of exemplars: the evaluator, which recomputes the
    means from the buffer through Replay.nearest_mean_classifier, must give its matrix exactly;
    for replay (the network's head) it is a different matrix of the same shape."""
    from cil import experiment

    config = tiny_config()
    config.strategies = ("icarl", "replay")
    config.seeds = (0,)
    config.memory.exemplars = 40
    config.evaluators = ("nme",)
    summaries = {s["strategy"]: s for s in experiment.run_experiment(
        config, str(tmp_path), progress=lambda _: None)}
    icarl, replay = summaries["icarl"], summaries["replay"]
    assert icarl["evaluations"]["nme"]["acc_matrix"] == icarl["acc_matrix"]
    nme = replay["evaluations"]["nme"]["acc_matrix"]
    assert [len(row) for row in nme] == [len(row) for row in replay["acc_matrix"]]
    assert nme != replay["acc_matrix"] and nme[0][0] > 0.8
