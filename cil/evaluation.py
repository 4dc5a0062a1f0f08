"""The uniform evaluator: accuracy matrix, summary metrics and budget checks (PROTOCOL.md).

    predictions = predict_seen(strategy, state, test.images, num_seen, batch_size=1024)
    a_row, A_t = accuracy_row(predictions, test.labels, stream.tasks[: t + 1])
    ...
    metrics = summary_metrics(acc_matrix, A)   # avg_inc_acc, last_acc, forgetting, bwt
    check_budget(strategy.memory(state), budget, strategy_name, t)

The formulas are exactly PROTOCOL.md's; tests check them against hand-computed values.
Accuracies are fractions in [0, 1]. ``acc_matrix[t][j]`` is defined for j <= t only (the matrix is
lower-triangular; entries above the diagonal are NaN in arrays and absent in results files).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cil import parallel
from cil.training import NEG_INF, mask_unseen
from cil.data.stream import TaskSpan
from cil.errors import BudgetError
from cil.strategy import Budget, MemoryReport, Strategy


@jax.jit
def _masked_argmax(scores, num_seen):
    return jnp.argmax(mask_unseen(scores, num_seen), axis=-1)


@jax.jit
def _argmax_within(scores, allowed):
    return jnp.argmax(jnp.where(allowed, scores, NEG_INF), axis=-1)


def predict_seen(strategy: Strategy, state, images: np.ndarray, num_seen: int,
                 batch_size: int) -> np.ndarray:
    """Arg-max over the classes seen so far, in fixed-size batches (the last one padded).

    Fixed shapes mean ``predict`` compiles once per run, whatever the test set's size.
    """
    return predict_seen_and_within(strategy, state, images, num_seen, batch_size)[0]


def predict_seen_and_within(strategy: Strategy, state, images: np.ndarray, num_seen: int,
                            batch_size: int, within: np.ndarray | None = None):
    """``predict_seen``'s arg-max and, when ``within`` ((N, classes) bool) is given, each
    example's arg-max over its own allowed classes (the task-given evaluator, cil/evaluators.py),
    from the same scores: one ``predict`` per batch. The second is None without ``within``."""
    seen, restricted = [], []
    masks = (parallel.fixed_size_batches(within, batch_size) if within is not None
             else itertools.repeat((None, 0)))
    for (batch, real), (mask, _) in zip(parallel.fixed_size_batches(images, batch_size), masks):
        scores = strategy.predict(state, batch)
        seen.append(parallel.to_host(_masked_argmax(scores, num_seen))[:real])
        if mask is not None:
            restricted.append(parallel.to_host(_argmax_within(scores, mask))[:real])
    return _joined(seen), (_joined(restricted) if within is not None else None)


def _joined(parts) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def accuracy_row(predictions: np.ndarray, labels: np.ndarray,
                 seen_tasks: Sequence[TaskSpan]) -> tuple[list[float], float]:
    """a[t][j] for every seen task j, and A[t] (example-weighted over all seen test examples)."""
    correct = predictions == labels
    row = []
    for span in seen_tasks:
        in_task = np.isin(labels, span.classes)
        row.append(float(correct[in_task].mean()))
    return row, float(correct.mean())


def forgetting(acc_matrix: np.ndarray) -> float:
    """Chaudhry et al.: mean over j < T-1 of (max over l in [j, T-2] of a[l][j]) - a[T-1][j]."""
    T = len(acc_matrix)
    if T < 2:
        return float("nan")
    drops = [max(acc_matrix[l][j] for l in range(j, T - 1)) - acc_matrix[T - 1][j] for j in range(T - 1)]
    return float(np.mean(drops))


def backward_transfer(acc_matrix: np.ndarray) -> float:
    """Lopez-Paz and Ranzato: mean over j < T-1 of a[T-1][j] - a[j][j]."""
    T = len(acc_matrix)
    if T < 2:
        return float("nan")
    return float(np.mean([acc_matrix[T - 1][j] - acc_matrix[j][j] for j in range(T - 1)]))


def intransigence(acc_matrix, reference_acc_matrix) -> float:
    """Mean over t >= 1 of a_ref[t][t] - a[t][t], given the reference run (joint, unless a table
    names another: cil/aggregate.py) of the same stream and seed."""
    T = len(acc_matrix)
    if T < 2:
        return float("nan")
    return float(np.mean([reference_acc_matrix[t][t] - acc_matrix[t][t] for t in range(1, T)]))


def summary_metrics(acc_matrix: Sequence[Sequence[float]], A: Sequence[float]) -> dict:
    """PROTOCOL.md's summary figures of one run from its accuracy matrix rows and A[t]."""
    return {
        "avg_inc_acc": float(np.mean(A)),
        "last_acc": float(A[-1]),
        "forgetting": forgetting(acc_matrix),
        "bwt": backward_transfer(acc_matrix),
    }


def check_budget(report: MemoryReport, budget: Budget, strategy_name: str, task: int) -> None:
    """Fails the run loudly if the strategy keeps more than the budget allows."""
    charged = report.charged_bytes(budget)
    if budget.max_bytes is not None and charged > budget.max_bytes:
        raise BudgetError(
            f"{strategy_name} keeps {charged:,} bytes after task {task}, over the budget of "
            f"{budget.max_bytes:,} (exemplars {report.exemplars:,}, learner params "
            f"{report.learner_params:,}, side state {report.side_state:,}"
            + (f", teacher {report.teacher_params:,}" if budget.charge_teacher else "")
            + "); no result is written")
    if budget.max_exemplars is not None and report.num_exemplars > budget.max_exemplars:
        raise BudgetError(
            f"{strategy_name} stores {report.num_exemplars} exemplars after task {task}, over the "
            f"budget of {budget.max_exemplars}; no result is written")
