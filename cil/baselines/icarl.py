"""iCaRL (Rebuffi et al. 2017): herding, distillation on old classes, nearest mean of exemplars.

    config.strategies = ("icarl",)
    config.memory.exemplars = 2000      # or memory.budget_bytes (exemplars = what the model leaves)
    config.icarl = ConfigDict({"temperature": 2.0, "classifier": "nme"})

Per task, as in the paper and in the CIL survey's implementation (Zhou et al., PyCIL, whose figures
PROTOCOL.md reproduces):
1. train on the task's data together with the exemplars (one shuffled set, not separate batches),
   with cross-entropy over the classes seen so far plus knowledge distillation (temperature 2,
   weight 1) from the network as it was before the task, on the old classes;
2. reduce each old class's exemplars to its new share and add the new classes' by herding on the
   L2-normalised features of the trained network (cil/memory.py, class-balanced);
3. the class means of the exemplars' normalised features (normalised again) classify a test image
   by the nearest mean (``classifier="nme"``), or the network's own head does (``"logits"``,
   the survey's iCaRL-CNN).

The class means are side state: num_classes x feature_dim float32, charged against the budget.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cil.baselines.replay import Replay, class_means, nearest_mean_scores
from cil import parallel
from cil.fields import Field, Integer, Number, OneOf
from cil.strategy import Learned, StreamSpec
from cil.training import Distillation, Objective

CLASSIFIERS = ("nme", "logits")


class ICaRL(Replay):
    name = "icarl"
    keeps_teacher = True
    exemplars_in_task_set = True

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget "
                               "(the paper's CIFAR figure)"),
            "temperature": Field(2.0, Number(above=0), "distillation temperature (PyCIL)"),
            "classifier": Field("nme", OneOf(*CLASSIFIERS),
                                "nme: nearest mean of exemplars; logits: the network's head"),
        }

    def selection(self):
        return "herding", True

    def feature_dim(self, spec: StreamSpec) -> int:
        return self.abstract_network(spec).head.in_features

    def side_bytes(self, spec):
        return spec.num_classes * self.feature_dim(spec) * np.dtype(np.float32).itemsize

    def init(self, key, spec):
        state = super().init(key, spec)
        means = jnp.zeros((spec.num_classes, self.feature_dim(spec)), jnp.float32)
        return {**state, "means": parallel.replicate(self._trainer.mesh, means)}

    def learn(self, state, task, key):
        num_old = task.classes[0]
        objective = None
        if num_old:
            objective = Objective(distill=Distillation(
                state["net"], num_old, temperature=self.config.strategy.temperature))
        net, buffer, trained = self.fit_with_exemplars(state, task, key, objective)
        means = class_means(self._trainer.features(net, buffer.images), buffer.labels,
                            buffer.size, self.spec.num_classes)
        return Learned({"net": net, "buffer": buffer, "means": means}, trained)

    def predict(self, state, images):
        if self.config.strategy.classifier == "logits":
            return super().predict(state, images)
        return nearest_mean_scores(self._trainer.features(state["net"], images), state["means"])

    def memory(self, state):
        report = super().memory(state)
        return report._replace(side_state=report.side_state + int(state["means"].nbytes))
