"""The evaluator's arithmetic against hand-computed values, with a fixed-score fake strategy."""

import numpy as np
import pytest

from cil import evaluation
from cil.data import stream as streams
from cil.data.sources import Dataset
from cil.errors import BudgetError
from cil.experiment import RunLoop, stream_spec
from cil.results import ResultsWriter, read_records
from cil.strategy import Budget, Learned, MemoryReport, Strategy
from tests.helpers import tiny_config

# 6 classes, 3 tasks of 2; two test examples per class. Example i has label i // 2 and its
# single pixel holds i, so the fake strategy knows which example it is looking at.
# PREDICTIONS[t][i]: what the fake predicts for example i after learning task t.
PREDICTIONS = [
    [0, 0, 1, 0],  # task 0 correct: ids 0, 1, 2             -> a[0][0] = 3/4
    [0, 1, 1, 1, 2, 2, 3, 0],  # task 0: ids 0, 2, 3; task 1: ids 4, 5, 6 -> 3/4, 3/4
    [0, 5, 5, 5, 2, 2, 3, 3, 4, 4, 5, 5],  # task 0: id 0; task 1: all; task 2: all -> 1/4, 1, 1
]
EXPECTED_MATRIX = [[0.75], [0.75, 0.75], [0.25, 1.0, 1.0]]
EXPECTED_A = [3 / 4, 6 / 8, 9 / 12]
# forgetting: j=0: max(.75, .75) - .25 = .5; j=1: .75 - 1 = -.25; mean .125
# bwt:        j=0: .25 - .75 = -.5;          j=1: 1 - .75 = .25;   mean -.125


class FixedScores(Strategy):
    """Scores one-hot on PREDICTIONS, plus a large score on class 5 before it is seen, which the
    evaluator (not the strategy) must mask."""

    def init(self, key, spec):
        return {"t": -1}

    def learn(self, state, task, key):
        return Learned({"t": task.index}, trained_examples=len(task.labels))

    def predict(self, state, images):
        t = state["t"]
        ids = np.asarray(images)[:, 0, 0, 0].astype(int)
        table = np.array(PREDICTIONS[t] + [0] * 12)
        scores = np.eye(6)[table[ids]]
        if t < 2:
            scores[:, 5] += 10.0
        return scores

    def memory(self, state):
        return MemoryReport(learner_params=100, side_state=20, encoder_params=1000)


def fake_stream():
    test_images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    test_labels = (np.arange(12) // 2).astype(np.int32)
    train_images = np.zeros((12, 1, 1, 1), np.uint8)
    dataset = Dataset("fake", train_images, test_labels.copy(), test_images, test_labels,
                      tuple("abcdef"))
    return streams.make_stream(dataset, 0, 2, explicit_order=range(6))


def test_summary_metrics_by_hand():
    metrics = evaluation.summary_metrics(EXPECTED_MATRIX, EXPECTED_A)
    assert metrics["avg_inc_acc"] == pytest.approx(0.75)
    assert metrics["last_acc"] == pytest.approx(0.75)
    assert metrics["forgetting"] == pytest.approx(0.125)
    assert metrics["bwt"] == pytest.approx(-0.125)


def test_intransigence_by_hand():
    joint = [[0.9], [0.9, 0.95], [0.9, 0.9, 0.8]]
    # t=1: .95 - .75 = .2; t=2: .8 - 1.0 = -.2
    assert evaluation.intransigence(EXPECTED_MATRIX, joint) == pytest.approx(0.0)


def test_forgetting_uses_the_best_earlier_accuracy():
    matrix = [[0.6], [0.9, 0.5], [0.7, 0.5, 0.4], [0.2, 0.5, 0.4, 1.0]]
    # j=0: max(.6, .9, .7) - .2 = .7; j=1: max(.5, .5) - .5 = 0; j=2: .4 - .4 = 0
    assert evaluation.forgetting(matrix) == pytest.approx(0.7 / 3)
    assert evaluation.backward_transfer(matrix) == pytest.approx((-0.4 + 0.0 + 0.0) / 3)


def test_run_loop_records_the_matrix_and_masks_unseen_classes(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    config.eval_batch_size = 5  # several batches, the last one padded
    spec = stream_spec(stream, config.memory)
    header = {"run_id": "r", "strategy": "fixed", "seed": 0}
    run = RunLoop(FixedScores(config), stream, spec, config, header, ResultsWriter(tmp_path),
                  tmp_path, progress=lambda _: None)
    summary = run.run(settings={})
    np.testing.assert_allclose(summary["acc_matrix"][2], EXPECTED_MATRIX[2])
    for row, expected in zip(summary["acc_matrix"], EXPECTED_MATRIX):
        np.testing.assert_allclose(row, expected)
    np.testing.assert_allclose(summary["A"], EXPECTED_A)
    assert summary["forgetting"] == pytest.approx(0.125)
    assert summary["memory_bytes"] == 120  # the encoder is reported, not charged
    assert summary["memory_by_category"]["encoder_params"] == 1000
    assert summary["trained_examples"] == 12
    assert len(read_records(tmp_path, kind="task")) == 3


def test_budget_is_enforced():
    report = MemoryReport(exemplars=50, learner_params=40, side_state=10, encoder_params=500,
                          num_exemplars=5)
    evaluation.check_budget(report, Budget(max_bytes=100), "x", 0)
    with pytest.raises(BudgetError, match="101"):
        evaluation.check_budget(report._replace(side_state=11), Budget(max_bytes=100), "x", 0)
    with pytest.raises(BudgetError, match="600"):
        evaluation.check_budget(report, Budget(max_bytes=100, charge_encoder=True), "x", 0)
    with pytest.raises(BudgetError, match="5 exemplars"):
        evaluation.check_budget(report, Budget(max_exemplars=4), "x", 0)


def test_over_budget_run_writes_no_summary(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    config.memory.budget_bytes = 119
    spec = stream_spec(stream, config.memory)
    run = RunLoop(FixedScores(config), stream, spec, config, {"run_id": "r", "strategy": "fixed",
                  "seed": 0}, ResultsWriter(tmp_path), tmp_path, progress=lambda _: None)
    with pytest.raises(BudgetError):
        run.run(settings={})
    [failed] = read_records(tmp_path)  # the failed attempt is marked, nothing else written
    assert failed["kind"] == "failed" and "budget" in failed["error"]


class GrowingMemory(FixedScores):
    """FixedScores whose side state grows by 10 bytes a task: 120, 130, 140 bytes."""

    def memory(self, state):
        return MemoryReport(learner_params=100, side_state=20 + 10 * state["t"])


def test_a_run_over_budget_later_leaves_no_checkpoint_and_marks_its_lines(tmp_path):
    stream = fake_stream()
    config = tiny_config()
    config.memory.budget_bytes = 125  # task 0 fits (120), task 1 does not (130)
    spec = stream_spec(stream, config.memory)
    run = RunLoop(GrowingMemory(config), stream, spec, config, {"run_id": "r", "strategy": "grow",
                  "seed": 0}, ResultsWriter(tmp_path), tmp_path, progress=lambda _: None)
    with pytest.raises(BudgetError, match="130"):
        run.run(settings={})
    [task_line] = read_records(tmp_path, kind="task")
    [failed] = read_records(tmp_path, kind="failed")
    assert task_line["task"] == 0 and failed["attempt"] == task_line["attempt"]
    assert read_records(tmp_path, kind="summary") == []
    assert not list((tmp_path / "checkpoints").glob("r*"))  # a rerun starts from task 0
