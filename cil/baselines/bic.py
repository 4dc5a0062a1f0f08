"""BiC (Wu et al., "Large Scale Incremental Learning", CVPR 2019): replay with distillation, then
two parameters that correct the new classes' logits, fitted on a held-out validation set.

    config.strategies = ("bic",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen
    config.bic.validation_fraction = 0.1       # held out per class: 10% of an old class's share

The first task is plain training on its data. On every later task:
1. Validation split: from every class seen, ``k`` examples are held out and never trained on,
   drawn at random from the new classes' data and from the old classes' exemplars;
   k = validation_fraction x exemplar capacity / old classes (PyCIL: int(0.1 x 2000 / known)),
   at least 1, at most half of what a class has.
2. Stage 1 trains the network on the rest of the task's data and exemplars as one set,
   minimising (1 - l) x cross-entropy over the seen classes + l x KD(old classes), l = old / seen
   classes (the paper's n / (n + m)), T = 2; the teacher is the network as the task found it,
   bias correction included, so its corrected logits are the distillation targets.
3. Stage 2 fits only the new task's (alpha, beta), its logits becoming alpha x o + beta, on the
   validation set: cross-entropy over the seen classes, by the task's schedule (its epochs and
   learning rate per epoch, ``train.optimizer`` and momentum, ``train.batch_size``).
4. The memory takes in the task's data (herding, class-balanced), validation examples included.
Prediction: the arg-max of the corrected logits.

Read against the paper, the authors' code (wuyuebupt/LargeScaleIncrementalLearning) and PyCIL's
``models/bic.py`` (commit 87cc411):
- Which logits stay corrected. The paper and the authors' code correct the newest task's classes
  only (q = [o_old, alpha o_new + beta]): a correction lives until the next task starts, and after
  that only in the teacher's targets. PyCIL keeps every task's layer on its own classes for good
  (the student trains through the old layers, frozen). ``variant="paper"`` (the default) /
  ``"pycil"``.
- Stage 2's loss. The paper's cross-entropy, without weight decay on alpha and beta;
  ``variant="pycil"`` takes PyCIL's: a softmax applied before its cross-entropy (so softmax twice)
  and ``train.weight_decay`` on both. The authors' code adds 0.1 x beta^2; not offered.
- Stage 2 sees each validation example once, unaugmented, through the network in evaluation mode:
  the logits are computed once and the two parameters fitted on them, so the network is bitwise
  the same after stage 2. PyCIL runs the validation set through the training augmentation with
  BatchNorm in training mode (its running statistics drift on the validation data).
- Stage 2's length: PyCIL repeats stage 1's schedule (170 epochs, 60/100/140), the authors train
  it twice as long; cil repeats the task's schedule.

Memory: the network and the exemplars; the corrections (2 floats per task) are model state
(``Network.correct_bias``), reported with side_state as BatchNorm's statistics are. The teacher is
the network the task starts from, copied for the task and dropped after it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cil.baselines.replay import Replay
from cil.baselines.wa import weighted_distillation
from cil import parallel
from cil.fields import Field, Integer, Number, OneOf
from cil.strategy import Learned, StreamSpec
from cil.training import (make_optimizer, mask_unseen, seen_class_xent, set_hyperparameters,
                          shuffled_order, weighted_mean)

VARIANTS = ("paper", "pycil")
LOGITS_BATCH = 1024  # validation logits are computed this many images at a time


class BiC(Replay):
    name = "bic"
    keeps_teacher = True
    exemplars_in_task_set = True

    def __init__(self, config):
        super().__init__(config)
        # Built once: jit caches the fit per optimiser object, so a new one would recompile.
        self._fit_correction = functools.partial(
            fit_correction, make_optimizer(config.train), config.train.batch_size,
            config.strategy.variant == "pycil")

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget"),
            "temperature": Field(2.0, Number(above=0), "distillation temperature (the paper's)"),
            "validation_fraction": Field(0.1, Number(above=0, below=1),
                                         "held out per class, as a fraction of an old class's "
                                         "exemplar share"),
            "variant": Field("paper", OneOf(*VARIANTS), "paper: only the newest task's logits "
                             "corrected; pycil: every task's kept, stage 2 as PyCIL trains it"),
        }

    def selection(self):
        return "herding", True

    def model(self, spec: StreamSpec, seed) -> nnx.Module:
        model = super().model(spec, seed)
        model.correct_bias(spec.task_of_class)
        return model

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        if not num_old:
            net, buffer, trained = self.fit_with_exemplars(state, task, key)
            return Learned({**state, "net": net, "buffer": buffer}, trained)
        split_key, fit_key, correction_key = jax.random.split(key, 3)
        exemplars = jax.device_get(state["buffer"])
        exemplar_images = exemplars.images[:int(exemplars.size)]
        exemplar_labels = exemplars.labels[:int(exemplars.size)].astype(np.int32)
        per_class = max(1, int(self.config.strategy.validation_fraction
                               * self.exemplar_memory.capacity / num_old))
        task_held = held_out(task.labels, per_class, jax.random.fold_in(split_key, 0))
        exemplar_held = held_out(exemplar_labels, per_class, jax.random.fold_in(split_key, 1))

        teacher = state["net"]
        student = teacher
        if self.config.strategy.variant == "paper":  # the last task's correction stays with it
            student = self.with_correction(teacher, identity_correction(self.spec.num_tasks))
        objective = weighted_distillation(teacher, num_old, num_seen,
                                          self.config.strategy.temperature)
        net, buffer, trained = self.fit_with_exemplars(
            {**state, "net": student}, task, fit_key, objective,
            train_rows=(np.flatnonzero(~task_held), np.flatnonzero(~exemplar_held)))

        images = np.concatenate([task.images[task_held], exemplar_images[exemplar_held]])
        labels = np.concatenate([task.labels[task_held], exemplar_labels[exemplar_held]])
        net = self.correct(net, images, labels, task, correction_key)
        return Learned({**state, "net": net, "buffer": buffer}, trained)

    def correct(self, net, images, labels, task, key) -> dict:
        """``net`` with the task's (alpha, beta) fitted on the validation (images, labels)."""
        logits = np.concatenate([np.asarray(self.predict({"net": net}, batch))[:real]
                                 for batch, real in parallel.fixed_size_batches(images,
                                                                                LOGITS_BATCH)])
        size = len(labels)
        # Padded to the trainer's capacity, which no validation set exceeds: one compiled fit.
        pad = self._trainer.capacity - size
        logits = np.concatenate([logits, np.zeros((pad, logits.shape[1]), logits.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, np.int32)])
        classes = np.arange(logits.shape[1])
        new = (classes >= task.classes[0]) & (classes <= task.classes[-1])
        schedule = self._trainer.schedule(task.index)
        weight_decay = schedule.weight_decay if self.config.strategy.variant == "pycil" else 0.0
        alpha_beta = self._fit_correction(
            jnp.asarray(logits), jnp.asarray(labels), jnp.int32(size), jnp.asarray(new),
            jnp.int32(task.classes[-1] + 1), jnp.asarray(schedule.learning_rates, jnp.float32),
            jnp.float32(weight_decay), key)
        correction = self.correction(net).at[:, task.index].set(alpha_beta)
        return self.with_correction(net, correction)

    def correction(self, net) -> jax.Array:
        """The (2, tasks) scales and shifts ``net`` applies to each task's logits."""
        return nnx.merge(self._trainer.graphdef, net["params"], net["model_state"],
                         copy=True).bias_correction[...]

    def with_correction(self, net, correction) -> dict:
        return _with_correction(self._trainer.graphdef, net, correction)


def identity_correction(num_tasks: int) -> jax.Array:
    return jnp.stack([jnp.ones(num_tasks), jnp.zeros(num_tasks)])


@functools.partial(jax.jit, static_argnums=0)
def _with_correction(graphdef, net: dict, correction) -> dict:
    model = nnx.merge(graphdef, net["params"], net["model_state"], copy=True)
    model.bias_correction[...] = correction
    _, _, model_state = nnx.split(model, nnx.Param, ...)
    return {**net, "model_state": model_state}


def held_out(labels: np.ndarray, per_class: int, key) -> np.ndarray:
    """Which examples form the validation set: ``per_class`` of each class at random (at most
    half of the class, so that each class keeps examples to train on)."""
    scores = np.asarray(jax.random.uniform(key, (len(labels),)))
    order = np.lexsort((scores, labels))  # by class, then at random within each class
    sorted_labels = labels[order]
    rank = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels)
    counts = np.bincount(labels)[sorted_labels]
    held = np.zeros(len(labels), bool)
    held[order] = rank < np.minimum(per_class, counts // 2)
    return held


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def fit_correction(optimizer, batch_size: int, double_softmax: bool, logits, labels, size, new,
                   num_seen, learning_rates, weight_decay, key):
    """(alpha, beta) for the classes where ``new`` holds, fitted on rows [0, size) of ``logits``
    (padded to a multiple of ``batch_size``) by minibatches in a random order per epoch, one learning rate per
    epoch. Returns them as a (2,) array."""

    def loss_of(alpha_beta, rows, weights):
        z = logits[rows]
        z = jnp.where(new, z * alpha_beta[0] + alpha_beta[1], z)
        if double_softmax:  # PyCIL: cross_entropy(softmax(logits)), so a softmax twice
            z = jax.nn.softmax(mask_unseen(z, num_seen))
        per_example = seen_class_xent(z, labels[rows], num_seen)
        return weighted_mean(per_example, weights)

    def epoch(e, carry):
        order = shuffled_order(jax.random.fold_in(key, e), size, logits.shape[0])

        def step(b, carry):
            alpha_beta, opt_state = carry
            rows = jax.lax.dynamic_slice(order, (b * batch_size,), (batch_size,))
            weights = (b * batch_size + jnp.arange(batch_size) < size).astype(jnp.float32)
            grads = jax.grad(loss_of)(alpha_beta, rows, weights)
            opt_state = set_hyperparameters(opt_state, learning_rates[e], weight_decay)
            updates, opt_state = optimizer.update(grads, opt_state, alpha_beta)
            return optax.apply_updates(alpha_beta, updates), opt_state

        return jax.lax.fori_loop(0, (size + batch_size - 1) // batch_size, step, carry)

    alpha_beta = jnp.array([1.0, 0.0])
    carry = (alpha_beta, optimizer.init(alpha_beta))
    return jax.lax.fori_loop(0, learning_rates.shape[0], epoch, carry)[0]
