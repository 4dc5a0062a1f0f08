"""Evaluators by name: what each task's test pass measures beside the class-incremental accuracy.

    config.evaluators = ("task_given", "nme", "per_class")   # default (): the accuracy matrix only
    within = task_masks(test.labels, seen_tasks, num_classes)     # only if "task_given" is asked
    predictions, task_given = evaluation.predict_seen_and_within(strategy, state, test.images,
                                                                 num_seen, batch_size, within)
    nme = nme_predictions(strategy, state, test.images, num_seen, batch_size)   # if "nme"
    figures = run_evaluators(names, predictions, task_given, test.labels, seen_tasks, nme)
    summary = summarize(names, task_records)            # {name: figures} for the summary line

The class-incremental accuracy matrix (cil/evaluation.py, PROTOCOL.md) is always computed; these
add to it, and their figures go under ``evaluations`` in the task and summary lines:

- ``task_given``: the accuracy when the task id is given: each test example's scores restricted to
  its own task's classes before the arg-max (task-incremental evaluation; what partial sharing is
  judged on in its paper). Per task t: the row a_tg[t][j] over seen tasks j and A_tg[t] over all
  seen test examples; in the summary the matrix, Ā and A_last of those (PROTOCOL.md's formulas),
  and ``task_given_last_acc`` / ``task_given_avg_inc_acc`` flat, which cil.tables shows as columns
  when every run of a table has them. It reads the same scores as the accuracy row (one
  ``predict`` a batch: cil/evaluation.py ``predict_seen_and_within``).
- ``nme``: the nearest-mean-of-exemplars classifier on the strategy's own features beside its own
  scores, as PyCIL logs both (``Strategy.nearest_mean_classifier``: every strategy that keeps an
  exemplar buffer and a network, i.e. Replay and its subclasses; others have no such figures).
  The same figures as ``task_given``: a_nme[t][j], A_nme[t]; the matrix, Ā and A_last in the
  summary, ``nme_avg_inc_acc`` / ``nme_last_acc`` flat (cil.tables' "Ā NME" columns).
- ``per_class``: the accuracy of each seen class (stream label -> accuracy), from the same
  predictions as the accuracy row; the summary keeps the last task's.
"""

from __future__ import annotations

import numpy as np

from cil import evaluation

NAMES = ("task_given", "nme", "per_class")
MATRIX_EVALUATORS = ("task_given", "nme")  # each a second accuracy matrix of its own predictions


class ScoresOf:
    """What cil/evaluation.py predicts with (``predict(state, images)``) for a scoring function."""

    def __init__(self, scores):
        self.predict = lambda state, images: scores(images)


def nme_predictions(strategy, state, images, num_seen: int, batch_size: int):
    """The arg-max over the seen classes of the strategy's nearest-mean-of-exemplars scores, or
    None when it has no such classifier."""
    classifier = strategy.nearest_mean_classifier(state)
    if classifier is None:
        return None
    return evaluation.predict_seen_and_within(ScoresOf(classifier), state, images, num_seen,
                                              batch_size)[0]


def task_masks(labels: np.ndarray, seen_tasks, num_classes: int) -> np.ndarray:
    """(N, classes) bool: the classes of each example's own task."""
    task_classes = np.zeros((len(seen_tasks), num_classes), bool)
    task_of_label = np.full(num_classes, -1)
    for t, span in enumerate(seen_tasks):
        task_classes[t, list(span.classes)] = True
        task_of_label[list(span.classes)] = t
    return task_classes[task_of_label[labels]]


def run_evaluators(names, predictions: np.ndarray, task_given: np.ndarray | None,
                   labels: np.ndarray, seen_tasks, nme: np.ndarray | None = None) -> dict:
    """{name: figures} of one task's test pass: ``predictions`` are the class-incremental ones,
    ``task_given`` the arg-max within each example's task (``task_masks``), ``nme`` the nearest
    mean of exemplars', when asked for (``nme`` None: the strategy has none, no figures)."""
    figures = {}
    for name, other in (("task_given", task_given), ("nme", nme)):
        if name in names and other is not None:
            row, A_t = evaluation.accuracy_row(other, labels, seen_tasks)
            figures[name] = {"acc_row": row, "A": A_t}
    if "per_class" in names:
        correct = predictions == labels
        figures["per_class"] = {str(c): float(correct[labels == c].mean())
                                for c in sorted(set(labels.tolist()))}
    return figures


def summarize(names, tasks: list[dict]) -> tuple[dict, dict]:
    """({name: summary figures}, flat summary fields) from the task records of a run."""
    summary, flat = {}, {}
    for name in MATRIX_EVALUATORS:
        if name not in names or name not in tasks[-1]["evaluations"]:
            continue
        rows = [r["evaluations"][name]["acc_row"] for r in tasks]
        A = [r["evaluations"][name]["A"] for r in tasks]
        metrics = evaluation.summary_metrics(rows, A)
        summary[name] = {"acc_matrix": rows, "A": A, **metrics}
        flat.update({f"{name}_avg_inc_acc": metrics["avg_inc_acc"],
                     f"{name}_last_acc": metrics["last_acc"]})
    if "per_class" in names:
        summary["per_class"] = tasks[-1]["evaluations"]["per_class"]
    return summary, flat
