"""Evaluators by name: what each task's test pass measures beside the class-incremental accuracy.

    config.evaluators = ("task_given", "per_class")     # default (): the accuracy matrix only
    within = task_masks(test.labels, seen_tasks, num_classes)     # only if "task_given" is asked
    predictions, task_given = evaluation.predict_seen_and_within(strategy, state, test.images,
                                                                 num_seen, batch_size, within)
    figures = run_evaluators(names, predictions, task_given, test.labels, seen_tasks)
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
- ``per_class``: the accuracy of each seen class (stream label -> accuracy), from the same
  predictions as the accuracy row; the summary keeps the last task's.
"""

from __future__ import annotations

import numpy as np

from cil import evaluation

NAMES = ("task_given", "per_class")


def task_masks(labels: np.ndarray, seen_tasks, num_classes: int) -> np.ndarray:
    """(N, classes) bool: the classes of each example's own task."""
    task_classes = np.zeros((len(seen_tasks), num_classes), bool)
    task_of_label = np.full(num_classes, -1)
    for t, span in enumerate(seen_tasks):
        task_classes[t, list(span.classes)] = True
        task_of_label[list(span.classes)] = t
    return task_classes[task_of_label[labels]]


def run_evaluators(names, predictions: np.ndarray, task_given: np.ndarray | None,
                   labels: np.ndarray, seen_tasks) -> dict:
    """{name: figures} of one task's test pass: ``predictions`` are the class-incremental ones,
    ``task_given`` the arg-max within each example's task (``task_masks``), when asked for."""
    figures = {}
    if "task_given" in names:
        row, A_t = evaluation.accuracy_row(task_given, labels, seen_tasks)
        figures["task_given"] = {"acc_row": row, "A": A_t}
    if "per_class" in names:
        correct = predictions == labels
        figures["per_class"] = {str(c): float(correct[labels == c].mean())
                                for c in sorted(set(labels.tolist()))}
    return figures


def summarize(names, tasks: list[dict]) -> tuple[dict, dict]:
    """({name: summary figures}, flat summary fields) from the task records of a run."""
    summary, flat = {}, {}
    if "task_given" in names:
        rows = [r["evaluations"]["task_given"]["acc_row"] for r in tasks]
        A = [r["evaluations"]["task_given"]["A"] for r in tasks]
        metrics = evaluation.summary_metrics(rows, A)
        summary["task_given"] = {"acc_matrix": rows, "A": A, **metrics}
        flat = {"task_given_avg_inc_acc": metrics["avg_inc_acc"],
                "task_given_last_acc": metrics["last_acc"]}
    if "per_class" in names:
        summary["per_class"] = tasks[-1]["evaluations"]["per_class"]
    return summary, flat
