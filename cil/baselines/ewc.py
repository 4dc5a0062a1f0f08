"""EWC (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017):
no exemplars; a quadratic penalty holds each parameter near its value after the previous tasks,
weighted by its (diagonal) Fisher information.

    config.strategies = ("ewc",)
    config.ewc.weight = 1000.0                 # lambda, PyCIL's value

On every task after the first, a step minimises

    cross-entropy over the new task's classes  +  weight / 2 x sum_i F_i (theta_i - theta*_i)^2

theta* are the parameters after the previous task, F the Fisher diagonal. After each task the
task's Fisher is estimated on its training data, as PyCIL's ``getFisherDiagonal`` does: the
squared gradient of the mean cross-entropy (over the classes seen so far) of each batch of
``train.batch_size``, averaged over the batches, each entry clipped to ``fisher_max`` (1e-4). The
estimates are merged online: F = a F_old + (1 - a) F_task with a = old classes / seen classes.

Read against the paper and PyCIL's ``models/ewc.py``:
- The paper keeps one penalty per task (or, online EWC, a running sum); PyCIL keeps one Fisher
  merged by the class fractions above, and caps it at 1e-4. cil follows PyCIL for both (the issue
  asks for the online merge), and the cap is a field (``fisher_max``; None: no cap).
- The paper's Fisher is the expected squared gradient of the log-likelihood per example; PyCIL's
  (and cil's) is per batch of 128, which is smaller by about the batch size. ``weight`` is tuned
  for the latter (1000 in PyCIL).
- The cross-entropy is over the new classes only (``xent_classes="new"``, PyCIL's
  ``logits[:, known:]``), or over every seen class (``"seen"``).
- The Fisher is taken with the network in training mode (BatchNorm on batch statistics, running
  statistics left as they are) on the unaugmented images, in a fixed order.

Memory: the network, plus the anchor parameters and the Fisher as side state (PROTOCOL.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cil.baselines.finetune import Finetune
from cil.baselines.lwf import XENT_CLASSES, first_class
from cil.fields import Field, Number, Optional
from cil.strategy import Learned, pytree_bytes
from cil.training import Objective, ParameterPenalty, seen_class_xent, weighted_mean


class EWC(Finetune):
    name = "ewc"

    @classmethod
    def fields(cls):
        return {
            "weight": Field(1000.0, Number(min=0), "lambda of the penalty (PyCIL: 1000)"),
            "fisher_max": Field(1e-4, Optional(Number(above=0)), "cap on each Fisher entry "
                                "(PyCIL's fishermax); None: no cap"),
            "xent_classes": XENT_CLASSES,
        }

    def init(self, key, spec):
        net = self.build_network(key, spec)
        zeros = jax.tree.map(jnp.zeros_like, net["params"])
        return {"net": net, "anchor": net["params"], "fisher": zeros}

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        objective = None
        if num_old:
            objective = Objective(
                first_class=first_class(self.config.strategy.xent_classes, num_old),
                penalty=ParameterPenalty(state["anchor"], state["fisher"],
                                         self.config.strategy.weight))
        net, examples = self.fit(state["net"], task.images, task.labels, key, num_seen,
                                 task.index, objective)
        fisher = self.fisher(net, task, num_seen)
        if num_old:
            kept = num_old / num_seen
            fisher = jax.tree.map(lambda old, new: kept * old + (1 - kept) * new,
                                  state["fisher"], fisher)
        return Learned({"net": net, "anchor": net["params"], "fisher": fisher}, examples)

    def fisher(self, net: dict, task, num_seen: int):
        """The mean over batches of the squared gradient of each batch's mean cross-entropy."""
        data = self._trainer.put(task.images, task.labels)
        batch = self._trainer.batch_size
        total = jax.tree.map(jnp.zeros_like, net["params"])
        batches = -(-len(task.images) // batch)
        for b in range(batches):
            rows = slice(b * batch, (b + 1) * batch)
            weights = (jnp.arange(b * batch, (b + 1) * batch) < data.size).astype(jnp.float32)
            total = batch_fisher(self._trainer.graphdef, total, net, data.images[rows],
                                 data.labels[rows], weights, jnp.int32(num_seen))
        fisher = jax.tree.map(lambda f: f / batches, total)
        cap = self.config.strategy.fisher_max
        return fisher if cap is None else jax.tree.map(lambda f: jnp.minimum(f, cap), fisher)

    def memory(self, state):
        report = super().memory(state)
        extra = pytree_bytes(state["anchor"]) + pytree_bytes(state["fisher"])
        return report._replace(side_state=report.side_state + extra)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def batch_fisher(graphdef, total, net, images, labels, weights, num_seen):
    """``total`` plus the squared gradient of one batch's mean cross-entropy (padding weighed 0)."""
    def loss(params):
        model = nnx.merge(graphdef, params, net["model_state"], copy=True)
        per_example = seen_class_xent(model(images, train=True), labels.astype(jnp.int32),
                                      num_seen)
        return weighted_mean(per_example, weights)

    grads = jax.grad(loss)(net["params"])
    return jax.tree.map(lambda t, g: t + jnp.square(g), total, grads)
