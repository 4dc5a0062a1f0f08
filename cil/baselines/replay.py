"""Replay (experience replay): finetune, with every step also training on a batch of exemplars.

    config.strategies = ("replay",)
    config.memory.exemplars = 1000      # or memory.budget_bytes: exemplars = what the model leaves
    config.replay = ConfigDict({"memory_batch_size": 128, "selection": "random",
                                "class_balanced": True})

Each training step draws ``train.batch_size`` examples of the task and ``memory_batch_size``
exemplars, gathered from the buffer inside the compiled step (cil/training.py); after the task the
buffer takes in the task's data by its selection policy (cil/memory.py). The first task, with the
buffer empty, trains on new data alone. ``trained_examples`` counts the exemplars trained on too.

The buffer's size is the run's budget: ``memory.exemplars``, or with ``memory.budget_bytes`` the
exemplars the budget leaves after the network's bytes (Zhou et al. 4.4); ``replay.exemplars``
only when config.memory sets neither. Subclasses (icarl) reuse the buffer and its accounting.
``nearest_mean_classifier`` gives the ``nme`` evaluator the nearest mean of exemplars on the
network's features (``class_means`` / ``nearest_mean_scores``, iCaRL's classifier).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cil.baselines.finetune import Finetune
from cil import parallel
from cil.fields import Field, Flag, Integer, OneOf, Optional
from cil.memory import (COUNTER_BYTES, SELECTIONS, ExemplarMemory, exemplar_bytes,
                        exemplar_capacity)
from cil.models.networks import normalize
from cil.strategy import Learned, StreamSpec, pytree_bytes
from cil.training import DeviceData, MemoryBatches, Objective


@functools.partial(jax.jit, static_argnames="num_classes")
def class_means(features, labels, size, num_classes: int):
    """Normalised mean of the normalised features of slots [0, size), per class (zeros if none)."""
    valid = jnp.arange(features.shape[0]) < size
    segments = jnp.where(valid, labels.astype(jnp.int32), num_classes)
    sums = jax.ops.segment_sum(normalize(features), segments, num_classes + 1)[:num_classes]
    return normalize(sums)


@jax.jit
def nearest_mean_scores(features, means):
    """Minus the squared distance from each normalised feature vector to each class mean."""
    f = normalize(features)
    return 2.0 * f @ means.T - jnp.sum(f * f, -1, keepdims=True) - jnp.sum(means * means, -1)


class Replay(Finetune):
    name = "replay"

    def __init__(self, config):
        super().__init__(config)
        self.exemplar_memory = None
        self._memory_spec = None

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "kept only when config.memory sets no "
                               "budget (Zhou et al.'s CIFAR figure)"),
            "selection": Field("random", OneOf(*SELECTIONS), "which examples stay (cil/memory.py)"),
            "class_balanced": Field(True, Flag(), "equal shares per class seen"),
            "memory_batch_size": Field(None, Optional(Integer(min=1)), "exemplars per step, "
                                       "besides train.batch_size new examples; unset: the same"),
        }

    # Whether exemplars join the task's data as one training set (iCaRL, WA) instead of coming as
    # a second batch in every step (replay).
    exemplars_in_task_set = False

    def selection(self) -> tuple[str, bool]:
        """The memory's (selection, class_balanced)."""
        return self.config.strategy.selection, self.config.strategy.class_balanced

    def abstract_network(self, spec: StreamSpec):
        """The network's shapes and dtypes, without computing its weights."""
        return nnx.eval_shape(lambda: self.model(spec, 0))

    def network_bytes(self, spec: StreamSpec) -> int:
        """Bytes ``memory`` charges for the network (params + model state), before building it."""
        _, params, model_state = nnx.split(self.abstract_network(spec), nnx.Param, ...)
        return pytree_bytes(params) + pytree_bytes(model_state)

    def side_bytes(self, spec: StreamSpec) -> int:
        """Bytes of side state besides the network and the buffer (none for replay)."""
        return 0

    def build_memory(self, spec: StreamSpec) -> ExemplarMemory:
        """The exemplar memory, sized by the budget after every other byte this strategy keeps."""
        network = self.network_bytes(spec)
        teacher = network if self.keeps_teacher and spec.budget.charge_teacher else 0
        other = network + teacher + self.side_bytes(spec) + COUNTER_BYTES
        per_exemplar = exemplar_bytes(spec.image_shape, spec.num_classes, spec.input_dtype)
        capacity = exemplar_capacity(spec.budget, per_exemplar, other,
                                     default=self.config.strategy.exemplars)
        selection, class_balanced = self.selection()
        return ExemplarMemory(capacity, spec.image_shape, spec.num_classes, selection,
                              class_balanced, spec.input_dtype)

    def capacity(self, spec: StreamSpec) -> int:
        extra = self.exemplar_memory.capacity if self.exemplars_in_task_set else 0
        return max(spec.train_sizes) + extra

    def init(self, key, spec):
        if self._memory_spec != spec:  # its update compiles once per stream, reused across seeds
            self.exemplar_memory = self.build_memory(spec)
            self._memory_spec = spec
        net = self.build_network(key, spec)
        buffer = parallel.replicate(self._trainer.mesh, self.exemplar_memory.empty())
        return {"net": net, "buffer": buffer}

    def learn(self, state, task, key):
        fit_key, memory_key = jax.random.split(key)
        trainer = self._trainer
        data = trainer.put(task.images, task.labels)
        buffer = state["buffer"]
        batches = None
        if int(buffer.size):  # the first task has nothing to replay: no wasted, masked half-batch
            batch_size = self.config.strategy.memory_batch_size or self.config.train.batch_size
            stored = DeviceData(buffer.images, buffer.labels, buffer.size)
            batches = MemoryBatches(stored, batch_size)
        net, trained = trainer.fit(state["net"], data, fit_key, task.classes[-1] + 1,
                                   trainer.schedule(task.index), memory=batches,
                                   objective=self.replay_objective() if batches else None)
        buffer = self.update_memory(buffer, net, data, memory_key)
        return Learned({**state, "net": net, "buffer": buffer}, trained)

    def replay_objective(self) -> Objective | None:
        """What the steps of a task with a non-empty memory minimise (None: the cross-entropy
        over new and memory examples alike)."""
        return None

    def fit_with_exemplars(self, state, task, key, objective: Objective | None = None,
                           train_rows: tuple[np.ndarray, np.ndarray] | None = None):
        """Trains on the task's data and every exemplar as one set, then offers the task's data
        to the memory; returns (net, buffer, examples trained on).

        ``train_rows``: the indices of the task's examples and of the exemplars to train on, when
        some are held out (BiC's validation split); the memory is still offered the whole task.
        """
        fit_key, memory_key = jax.random.split(key)
        trainer = self._trainer
        buffer = jax.device_get(state["buffer"])
        task_rows, exemplar_rows = train_rows or (slice(None), slice(0, int(buffer.size)))
        # The task's examples first: the memory update offers it the first len(task) of them.
        images = np.concatenate([task.images[task_rows], buffer.images[exemplar_rows]])
        labels = np.concatenate([task.labels[task_rows],
                                 buffer.labels[exemplar_rows].astype(np.int32)])
        data = trainer.put(images, labels)
        net, trained = trainer.fit(state["net"], data, fit_key, task.classes[-1] + 1,
                                   trainer.schedule(task.index), objective=objective)
        if train_rows is None:
            task_data = data._replace(size=jnp.int32(len(task.images)))
        else:
            task_data = trainer.put(task.images, task.labels)
        return net, self.update_memory(state["buffer"], net, task_data, memory_key), trained

    def update_memory(self, buffer, net, data: DeviceData, key):
        """The buffer after offering it the task's examples (the first ``data.size``)."""
        features = None
        if self.exemplar_memory.selection == "herding":
            features = self._trainer.features(net, data.images)
        return self.exemplar_memory.update(buffer, data.images, data.labels, data.size, key,
                                           features)

    def nearest_mean_classifier(self, state):
        """The nearest mean of the exemplars' normalised features (iCaRL's rule), means taken
        from the buffer as it is now; PyCIL also averages in each exemplar's flipped image."""
        net, buffer = state["net"], state["buffer"]
        means = class_means(self._trainer.features(net, buffer.images), buffer.labels,
                            buffer.size, self.spec.num_classes)
        return lambda images: nearest_mean_scores(self._trainer.features(net, images), means)

    def memory(self, state):
        network = super().memory(state)
        buffer = self.exemplar_memory.report(state["buffer"])
        return network._replace(exemplars=buffer.exemplars, num_exemplars=buffer.num_exemplars,
                                side_state=network.side_state + buffer.side_state)
