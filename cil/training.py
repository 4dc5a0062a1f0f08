"""The shared, jitted training loop: one compiled call per epoch, compiled once per run.

    trainer = Trainer(graphdef, config.train, mesh, capacity=max_task_size)
    data = trainer.put(task.images, task.labels)          # padded to capacity, on the devices
    net, examples = trainer.fit(net, data, key, num_seen, epochs=config.train.epochs)
    # replay: each step also draws a batch from an exemplar buffer, gathered inside the step
    net, examples = trainer.fit(net, data, key, num_seen, epochs,
                                memory=MemoryBatches(DeviceData(images, labels, size), 128))
    # distillation from a frozen teacher on its classes (iCaRL, LwF)
    net, examples = trainer.fit(..., distill=Distillation(old_net, num_old, temperature=2.0))
    scores = trainer.logits(net, images); feats = trainer.features(net, images)

``net`` is ``{"params", "model_state"}``; ``fit`` starts a fresh optimiser state (``init``) and
calls ``epoch`` once per epoch, which is the lower-level API.

Why it is shaped this way (DESIGN.md, "Speed on CPU"):
- a task's data is padded to a fixed ``capacity`` and its true size passed as a traced number, so
  tasks of different sizes reuse one compiled epoch (no recompile per task); a memory buffer is
  likewise a fixed number of slots and a traced count, so it too compiles once (a run compiles at
  most one epoch without memory and one with);
- an epoch is a ``fori_loop`` over batches inside one jit: shuffling is a sort of random keys with
  the padding pushed to the end, a batch is a gather by index, the last partial batch is masked,
  and the memory batch is a gather from the buffer in the same step: no per-batch Python work;
- each batch is sharded over the devices' ``data`` axis, so the same code is data-parallel on
  several GPUs, TPU cores or virtual CPU devices; the row indices are split before the gathers,
  so each device gathers its own rows and only gradients (and loss sums) cross devices.

The loss is cross-entropy over the classes seen so far (logits of later classes are masked out),
which is what a growing classifier head computes, plus the distillation term when asked.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

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


def distillation_loss(logits, teacher_logits, num_classes, temperature: float):
    """Per-example knowledge distillation on the first ``num_classes`` classes (Hinton et al.).

    Cross-entropy of the student's tempered softmax against the teacher's, as in iCaRL's and LwF's
    PyCIL implementations (no T^2 factor); classes from ``num_classes`` on are ignored.
    """
    student = jax.nn.log_softmax(mask_unseen(logits, num_classes) / temperature)
    teacher = jax.nn.softmax(mask_unseen(teacher_logits, num_classes) / temperature)
    return -jnp.sum(teacher * student, axis=-1)


class DeviceData(NamedTuple):
    """A dataset padded to a fixed number of slots and placed on the devices."""

    images: jax.Array
    labels: jax.Array  # any integer dtype; cast to int32 in the step
    size: jax.Array  # the number of real (unpadded) examples, as a traced int32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MemoryBatches:
    """Replay: every step adds ``batch_size`` examples drawn from ``data`` (an exemplar buffer).

    The buffer is walked in one random order per epoch, wrapping around, so each step's memory
    examples are distinct; when it holds fewer than ``batch_size`` the extra slots are masked.
    """

    data: DeviceData
    batch_size: int = dataclasses.field(metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Distillation:
    """Adds ``weight`` x ``distillation_loss`` against a frozen ``teacher`` net on its classes."""

    teacher: dict  # {"params", "model_state"} of the same graphdef
    num_classes: jax.Array  # distil on classes [0, num_classes): those the teacher knew
    temperature: float = dataclasses.field(default=2.0, metadata={"static": True})
    weight: float = dataclasses.field(default=1.0, metadata={"static": True})


def shuffled_order(key, size, capacity: int):
    """A permutation of [0, capacity) with the ``size`` real indices first, in random order."""
    scores = jax.random.uniform(key, (capacity,))
    return jnp.argsort(jnp.where(jnp.arange(capacity) < size, scores, 2.0))


class Trainer:
    """Trains a network given by its NNX ``graphdef`` with optax; state is a plain dict pytree."""

    def __init__(self, graphdef, train: ml_collections.ConfigDict, mesh, capacity: int,
                 loss: Callable = seen_class_xent, feature_batch_size: int = 1024):
        parallel.check_divisible(train.batch_size, mesh)
        self.graphdef = graphdef
        self.mesh = mesh
        self.batch_size = train.batch_size
        # Whole batches only: the padded tail is masked, never a differently shaped batch.
        self.capacity = -(-max(capacity, 1) // self.batch_size) * self.batch_size
        self.optimizer = make_optimizer(train)
        self.loss = loss
        self.feature_batch_size = feature_batch_size
        self._init = jax.jit(self._init_impl, out_shardings=NamedSharding(mesh, P()))
        self._epoch = jax.jit(self._epoch_impl, donate_argnums=0)
        self._logits = jax.jit(self._logits_impl)
        self._features = jax.jit(self._features_impl)

    def init(self, params, model_state) -> dict:
        """A training state with a fresh optimiser state, replicated on the mesh.

        Its arrays are copies, so ``params`` and ``model_state`` survive the epochs' donation (an
        old network kept as a teacher, a branch cloned from a base). ``device_put`` may alias.
        """
        return self._init(params, model_state)

    def put(self, images: np.ndarray, labels: np.ndarray) -> DeviceData:
        n = len(images)
        if n > self.capacity:
            raise ValueError(f"{n} examples exceed the trainer's capacity {self.capacity}")
        pad = self.capacity - n
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32)
        return parallel.replicate(self.mesh, DeviceData(images, labels, np.int32(n)))

    def epoch(self, net: dict, data: DeviceData, key, num_seen: int,
              memory: MemoryBatches | None = None, distill: Distillation | None = None):
        """One pass over ``data`` in random order; returns (net, mean loss). ``net`` is donated."""
        if memory is not None:
            parallel.check_divisible(memory.batch_size, self.mesh, "the memory batch size")
        return self._epoch(net, data, key, jnp.int32(num_seen), memory, distill)

    def fit(self, net: dict, data: DeviceData, key, num_seen: int, epochs: int,
            memory: MemoryBatches | None = None,
            distill: Distillation | None = None) -> tuple[dict, int]:
        """Trains ``net`` for ``epochs`` from a fresh optimiser state.

        Returns the trained ``{"params", "model_state"}`` and the number of examples trained on,
        epochs counted, memory examples included.
        """
        train_net = self.init(net["params"], net["model_state"])
        for _ in range(epochs):
            key, epoch_key = jax.random.split(key)
            train_net, _ = self.epoch(train_net, data, epoch_key, num_seen, memory, distill)
        size = int(data.size)
        per_epoch = size
        if memory is not None:
            per_epoch += self.steps_per_epoch(size) * min(memory.batch_size, int(memory.data.size))
        trained = {"params": train_net["params"], "model_state": train_net["model_state"]}
        return trained, per_epoch * epochs

    def logits(self, net: dict, images):
        return self._logits(net, images)

    def features(self, net: dict, images):
        """The head's input for every image, computed ``feature_batch_size`` at a time."""
        return self._features(net, images)

    def steps_per_epoch(self, size: int) -> int:
        return -(-size // self.batch_size)

    def _model(self, net):
        return nnx.merge(self.graphdef, net["params"], net["model_state"], copy=True)

    def _init_impl(self, params, model_state):
        params, model_state = jax.tree.map(jnp.copy, (params, model_state))
        return {"params": params, "model_state": model_state,
                "opt_state": self.optimizer.init(params)}

    def _logits_impl(self, net, images):
        return self._model(net)(images, train=False)

    def _features_impl(self, net, images):
        model = self._model(net)
        return jax.lax.map(lambda x: model.features(x[None], train=False)[0], images,
                           batch_size=self.feature_batch_size)

    def _step(self, net, images, labels, weights, num_seen, distill):
        if distill is not None:
            teacher_logits = jax.lax.stop_gradient(self._logits_impl(distill.teacher, images))

        def objective(params):
            model = nnx.merge(self.graphdef, params, net["model_state"], copy=True)
            logits = model(images, train=True)
            per_example = self.loss(logits, labels, num_seen)
            if distill is not None:
                per_example += distill.weight * distillation_loss(
                    logits, teacher_logits, distill.num_classes, distill.temperature)
            loss = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
            _, model_state = nnx.split(model, nnx.Param, ...)[1:]
            return loss, model_state

        (loss, model_state), grads = jax.value_and_grad(objective, has_aux=True)(net["params"])
        updates, opt_state = self.optimizer.update(grads, net["opt_state"], net["params"])
        params = optax.apply_updates(net["params"], updates)
        return {"params": params, "model_state": model_state, "opt_state": opt_state}, loss

    def _epoch_impl(self, net, data: DeviceData, key, num_seen, memory, distill):
        order = shuffled_order(key, data.size, self.capacity)
        num_batches = (data.size + self.batch_size - 1) // self.batch_size
        offsets = jnp.arange(self.batch_size)
        if memory is not None:
            # A key of its own, so that the new data's order is the same with or without memory.
            slots = memory.data.images.shape[0]
            memory_order = shuffled_order(jax.random.fold_in(key, 1), memory.data.size, slots)
            memory_offsets = jnp.arange(memory.batch_size)
            memory_weights = (memory_offsets < memory.data.size).astype(jnp.float32)

        def batch(b):
            # The row indices are split over the devices before the gathers, so each device
            # gathers only its own rows from the replicated data: no images move between devices.
            start = b * self.batch_size
            rows = jax.lax.dynamic_slice(order, (start,), (self.batch_size,))
            weights = (start + offsets < data.size).astype(jnp.float32)
            if memory is None:
                rows, weights = parallel.shard_batch(self.mesh, (rows, weights))
                return data.images[rows], data.labels[rows].astype(jnp.int32), weights
            position = b * memory.batch_size + memory_offsets
            position = position % jnp.maximum(memory.data.size, 1)
            # Rows from capacity on are memory slots: one index vector for both sources.
            rows = jnp.concatenate([rows, self.capacity + memory_order[position]])
            weights = jnp.concatenate([weights, memory_weights])
            rows, weights = parallel.shard_batch(self.mesh, (rows, weights))
            in_memory = rows >= self.capacity
            data_rows = jnp.minimum(rows, self.capacity - 1)
            memory_rows = jnp.clip(rows - self.capacity, 0, slots - 1)
            images = jnp.where(in_memory.reshape(-1, *[1] * (data.images.ndim - 1)),
                               memory.data.images[memory_rows], data.images[data_rows])
            labels = jnp.where(in_memory, memory.data.labels[memory_rows].astype(jnp.int32),
                               data.labels[data_rows].astype(jnp.int32))
            return images, labels, weights

        def body(b, carry):
            net, loss_sum = carry
            net, loss = self._step(net, *batch(b), num_seen, distill)
            return net, loss_sum + loss

        net, loss_sum = jax.lax.fori_loop(0, num_batches, body, (net, jnp.float32(0.0)))
        return net, loss_sum / jnp.maximum(num_batches, 1)
