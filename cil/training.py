"""The shared, jitted training loop: one compiled call per epoch, compiled once per run.

    trainer = Trainer(graphdef, config.train, mesh, capacity=max_task_size)
    net = trainer.init(params, model_state)               # {"params", "model_state", "opt_state"}
    data = trainer.put(task.images, task.labels)          # padded to capacity, on the devices
    for epoch in range(config.train.epochs):
        net, loss = trainer.epoch(net, data, key, num_seen)
    scores = trainer.logits(net, images)

Why it is shaped this way (DESIGN.md, "Speed on CPU"):
- a task's data is padded to a fixed ``capacity`` and its true size passed as a traced number, so
  tasks of different sizes reuse one compiled epoch (no recompile per task);
- an epoch is a ``fori_loop`` over batches inside one jit: shuffling is a sort of random keys with
  the padding pushed to the end, a batch is a gather by index, and the last partial batch is masked;
- each batch is sharded over the devices' ``data`` axis, so the same code is data-parallel on
  several GPUs, TPU cores or virtual CPU devices.

The loss is cross-entropy over the classes seen so far (logits of later classes are masked out),
which is what a growing classifier head computes.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cil import parallel
from cil.errors import ConfigError

NEG_INF = -1e9  # stands for minus infinity in masked logits (avoids inf - inf = nan)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``train.optimizer`` in {sgd, adam, adamw} at a constant ``train.learning_rate``."""
    lr = train.learning_rate
    if train.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=train.momentum or None)
    elif train.optimizer == "adam":
        opt = optax.adam(lr)
    elif train.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=train.weight_decay)
    else:
        raise ConfigError(f"unknown train.optimizer '{train.optimizer}'; choose sgd, adam or adamw")
    if train.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(train.weight_decay), opt)
    return opt


def mask_unseen(logits, num_seen):
    classes = jnp.arange(logits.shape[-1])
    return jnp.where(classes < num_seen, logits, NEG_INF)


def seen_class_xent(logits, labels, num_seen):
    """Per-example cross-entropy over the first ``num_seen`` classes."""
    return optax.softmax_cross_entropy_with_integer_labels(mask_unseen(logits, num_seen), labels)


class DeviceData(NamedTuple):
    """A dataset padded to the trainer's capacity and placed on the devices."""

    images: jax.Array
    labels: jax.Array
    size: jax.Array  # the number of real (unpadded) examples, as a traced int32


def shuffled_order(key, size, capacity: int):
    """A permutation of [0, capacity) with the ``size`` real indices first, in random order."""
    scores = jax.random.uniform(key, (capacity,))
    return jnp.argsort(jnp.where(jnp.arange(capacity) < size, scores, 2.0))


class Trainer:
    """Trains a network given by its NNX ``graphdef`` with optax; state is a plain dict pytree."""

    def __init__(self, graphdef, train: ml_collections.ConfigDict, mesh, capacity: int,
                 loss: Callable = seen_class_xent):
        parallel.check_divisible(train.batch_size, mesh)
        self.graphdef = graphdef
        self.mesh = mesh
        self.batch_size = train.batch_size
        # Whole batches only: the padded tail is masked, never a differently shaped batch.
        self.capacity = -(-max(capacity, 1) // self.batch_size) * self.batch_size
        self.optimizer = make_optimizer(train)
        self.loss = loss
        self._epoch = jax.jit(self._epoch_impl, donate_argnums=0)
        self._logits = jax.jit(self._logits_impl)

    def init(self, params, model_state) -> dict:
        net = {"params": params, "model_state": model_state,
               "opt_state": self.optimizer.init(params)}
        return parallel.replicate(self.mesh, net)

    def put(self, images: np.ndarray, labels: np.ndarray) -> DeviceData:
        n = len(images)
        if n > self.capacity:
            raise ValueError(f"{n} examples exceed the trainer's capacity {self.capacity}")
        pad = self.capacity - n
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32)
        return parallel.replicate(self.mesh, DeviceData(images, labels, np.int32(n)))

    def epoch(self, net: dict, data: DeviceData, key, num_seen: int):
        """One pass over ``data`` in random order; returns (net, mean loss). ``net`` is donated."""
        return self._epoch(net, data, key, jnp.int32(num_seen))

    def logits(self, net: dict, images):
        return self._logits(net, images)

    def steps_per_epoch(self, size: int) -> int:
        return -(-size // self.batch_size)

    def _model(self, net):
        return nnx.merge(self.graphdef, net["params"], net["model_state"])

    def _logits_impl(self, net, images):
        return self._model(net)(images, train=False)

    def _step(self, net, images, labels, weights, num_seen):
        def objective(params):
            model = nnx.merge(self.graphdef, params, net["model_state"])
            per_example = self.loss(model(images, train=True), labels, num_seen)
            loss = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
            _, model_state = nnx.split(model, nnx.Param, ...)[1:]
            return loss, model_state

        (loss, model_state), grads = jax.value_and_grad(objective, has_aux=True)(net["params"])
        updates, opt_state = self.optimizer.update(grads, net["opt_state"], net["params"])
        params = optax.apply_updates(net["params"], updates)
        return {"params": params, "model_state": model_state, "opt_state": opt_state}, loss

    def _epoch_impl(self, net, data: DeviceData, key, num_seen):
        order = shuffled_order(key, data.size, self.capacity)
        num_batches = (data.size + self.batch_size - 1) // self.batch_size
        offsets = jnp.arange(self.batch_size)

        def body(b, carry):
            net, loss_sum = carry
            start = b * self.batch_size
            idx = jax.lax.dynamic_slice(order, (start,), (self.batch_size,))
            batch = parallel.shard_batch(self.mesh, (data.images[idx], data.labels[idx],
                                                     (start + offsets < data.size).astype(jnp.float32)))
            net, loss = self._step(net, *batch, num_seen)
            return net, loss_sum + loss

        net, loss_sum = jax.lax.fori_loop(0, num_batches, body, (net, jnp.float32(0.0)))
        return net, loss_sum / jnp.maximum(num_batches, 1)
