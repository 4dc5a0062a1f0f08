"""WA (Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental Learning", CVPR
2020): replay with distillation, then weight aligning of the new classes' classifier.

    config.strategies = ("wa",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen

Each task trains on its data and every exemplar together (as iCaRL), minimising

    (1 - l) x cross-entropy over the seen classes  +  l x KD(old classes),  l = old / seen classes

(PyCIL's ``kd_lambda = known / total``; KD as cil/training.py ``distillation_loss``, T = 2). After
each task but the first, the new classes' weight vectors of the head are scaled by
gamma = mean norm of the old classes' vectors / mean norm of the new classes' ones, so that the
new classes no longer win by the size of their weights alone. Prediction is the head's arg-max.

Read against the paper and PyCIL's ``models/wa.py``:
- Both align the weights only, never the biases (the paper's network has none; PyCIL's does and
  leaves them). cil's head has biases and leaves them, as PyCIL.
- The paper also clips the weights to be non-negative after each step (its "weight clipping");
  PyCIL does not, nor does cil (not offered: it needs a projection inside the optimiser step).
- Exemplars by herding with an equal share per class, as PyCIL.

Memory: the network and the exemplars; the teacher is the network the task starts from, copied for
the task and dropped after it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cil.baselines.replay import Replay
from cil.fields import Field, Integer, Number
from cil.strategy import Learned
from cil.training import Distillation, Objective


class WA(Replay):
    name = "wa"
    keeps_teacher = True
    exemplars_in_task_set = True

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget"),
            "temperature": Field(2.0, Number(above=0), "distillation temperature (PyCIL)"),
        }

    def selection(self):
        return "herding", True

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        objective = None
        if num_old:
            objective = weighted_distillation(state["net"], num_old, num_seen,
                                              self.config.strategy.temperature)
        net, buffer, trained = self.fit_with_exemplars(state, task, key, objective)
        if num_old:
            net = align_weights(self._trainer.graphdef, net, num_old, num_seen)
        return Learned({**state, "net": net, "buffer": buffer}, trained)


def weighted_distillation(teacher, num_old: int, num_seen: int, temperature: float) -> Objective:
    """(1 - l) x cross-entropy over the seen classes + l x KD(old classes) from ``teacher``,
    l = old / seen classes: WA's and BiC's loss (PyCIL's kd_lambda, BiC's n / (n + m))."""
    kept = num_old / num_seen
    return Objective(xent_weight=1.0 - kept, distill=Distillation(
        teacher, num_old, temperature=temperature, weight=kept))


@functools.partial(jax.jit, static_argnums=0)
def align_weights(graphdef, net: dict, num_old, num_seen) -> dict:
    """``net`` with the head's columns [num_old, num_seen) scaled to the old columns' mean norm."""
    model = nnx.merge(graphdef, net["params"], net["model_state"], copy=True)
    kernel = model.head.kernel[...]  # (features, classes)
    classes = jnp.arange(kernel.shape[1])
    old, new = classes < num_old, (classes >= num_old) & (classes < num_seen)
    norms = jnp.linalg.norm(kernel, axis=0)
    gamma = (jnp.sum(norms * old) / jnp.sum(old)) / (jnp.sum(norms * new) / jnp.sum(new))
    model.head.kernel[...] = jnp.where(new, kernel * gamma, kernel)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return {**net, "params": params}
