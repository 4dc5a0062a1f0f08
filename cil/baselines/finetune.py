"""Finetune: one network trained on each task in turn, nothing kept but the network (lower bound).

    config.strategies = ("finetune",)      # settings: config.model, config.train

Subclasses (joint, replay) reuse its network, trainer and memory report and change what it trains
on. The optimiser state is created afresh for every task and dropped after it, so only the network
is carried from one task to the next.
"""

from __future__ import annotations

from typing import Callable

from flax import nnx

from cil import models, parallel
from cil.data.stream import Task
from cil.strategy import Learned, MemoryReport, Strategy, StreamSpec, pytree_bytes
from cil.training import Objective, Trainer, seen_class_xent


class Finetune(Strategy):
    name = "finetune"

    def __init__(self, config):
        super().__init__(config)
        self._trainer = None
        self._trainer_key = None

    def capacity(self, spec: StreamSpec) -> int:
        """The most examples one ``learn`` call trains on: fixes the compiled epoch's shape."""
        return max(spec.train_sizes)

    def model(self, spec: StreamSpec, seed) -> nnx.Module:
        """The strategy's network for ``spec`` (``config.model``; BiC adds to it)."""
        return models.build(self.config.model, spec.image_shape, spec.num_classes, seed=seed)

    def classification_loss(self) -> Callable:
        """The per-example loss(logits, labels, num_seen) the trainer minimises (PODNet: NCA)."""
        return seen_class_xent

    def build_network(self, key, spec: StreamSpec) -> dict:
        """A fresh network as a state dict; builds the (cached) trainer on first use."""
        self.spec = spec
        model = self.model(spec, key)
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        trainer_key = (graphdef, spec)
        if self._trainer_key != trainer_key:  # compile once per stream, reuse across seeds
            self._trainer = Trainer(graphdef, self.config.train, parallel.data_mesh(),
                                    self.capacity(spec), loss=self.classification_loss())
            self._trainer_key = trainer_key
        return parallel.replicate(self._trainer.mesh, {"params": params, "model_state": model_state})

    def init(self, key, spec):
        return {"net": self.build_network(key, spec)}

    def fit(self, net: dict, images, labels, key, num_seen: int, task_index: int,
            objective: Objective | None = None) -> tuple[dict, int]:
        """Trains ``net`` on (images, labels) by ``train``'s schedule for task ``task_index``
        (minimising ``objective``, cil/training.py); returns it and the examples seen."""
        data = self._trainer.put(images, labels)
        return self._trainer.fit(net, data, key, num_seen, self._trainer.schedule(task_index),
                                 objective=objective)

    def learn(self, state, task: Task, key):
        net, examples = self.fit(state["net"], task.images, task.labels, key,
                                 task.classes[-1] + 1, task.index)
        return Learned({**state, "net": net}, examples)

    def predict(self, state, images):
        return self._trainer.logits(state["net"], images)

    def memory(self, state):
        params, model_state = (pytree_bytes(state["net"][k]) for k in ("params", "model_state"))
        # A distilling strategy's teacher: a copy of this network for each later task.
        return MemoryReport(learner_params=params, side_state=model_state,
                            teacher_params=params + model_state if self.keeps_teacher else 0)
