"""Joint: after each task, a network trained from scratch on every class seen so far (upper bound).

    config.strategies = ("joint",)

It keeps all training data it has seen, and reports it as exemplars, so a run with a memory
budget refuses it (the evaluator checks every strategy the same way). ``joint.reinit=False``
continues from the previous network instead of starting afresh.
"""

from __future__ import annotations

import jax
import numpy as np

from cil.baselines.finetune import Finetune
from cil.fields import Field, Flag
from cil.strategy import Learned


class Joint(Finetune):
    name = "joint"

    @classmethod
    def fields(cls):
        return {"reinit": Field(True, Flag(), "train from scratch on all data seen at each task")}

    def capacity(self, spec):
        return sum(spec.train_sizes)

    def init(self, key, spec):
        return {"net": self.build_network(key, spec),
                "images": np.zeros((0, *spec.image_shape), spec.input_dtype),
                "labels": np.zeros((0,), np.int32)}

    def learn(self, state, task, key):
        images = np.concatenate([state["images"], task.images])
        labels = np.concatenate([state["labels"], task.labels])
        net, schedule_index = state["net"], task.index
        if self.config.strategy.reinit:
            # A network trained from scratch gets the from-scratch recipe (train.first_task).
            init_key, key = jax.random.split(key)
            net, schedule_index = self.build_network(init_key, self.spec), 0
        net, examples = self.fit(net, images, labels, key, task.classes[-1] + 1, schedule_index)
        return Learned({"net": net, "images": images, "labels": labels}, examples)

    def memory(self, state):
        network = super().memory(state)
        stored = state["images"].nbytes + state["labels"].nbytes
        return network._replace(exemplars=stored, num_exemplars=len(state["labels"]))
