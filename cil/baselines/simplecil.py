"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023):
train the network on the first task only, then freeze it and classify by cosine similarity to one
prototype per class, the mean of its training images' features.

    config.strategies = ("simplecil",)         # the first task trains by train.first_task

After the first task (trained as finetune trains it, by ``train.first_task``'s recipe) the network
never changes. At every task, each new class's prototype is the mean feature (the head's input,
eval mode, unaugmented images) of its training images; a test image gets the cosine similarity of
its feature to every prototype. Nothing else is learned, so nothing is forgotten except what the
base task's features cannot tell apart.

Read against the paper and PyCIL's ``models/simplecil.py``:
- Both build prototypes as above (PyCIL's ``replace_fc`` on the training set without
  augmentation) and score by cosine similarity; the paper's backbone is pretrained elsewhere and
  never trained, PyCIL's CIFAR variant trains it on the first task. cil does the latter; for a
  frozen pretrained encoder, ``ncm`` (nearest class mean on a frozen encoder) is the same model
  with Euclidean instead of cosine distance.
- PyCIL trains that first task with a cosine classifier (``SimpleCosineIncrementalNet``) and a
  cosine schedule; cil trains it with the network's linear head, by ``train.first_task`` (set
  ``schedule="cosine"`` there for PyCIL's schedule).

Memory: the network (frozen after the first task) and the prototypes (side state, C x D float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cil.baselines.finetune import Finetune
from cil import parallel
from cil.models.networks import normalize
from cil.strategy import Learned


@jax.jit
def cosine_scores(features, prototypes):
    return normalize(features) @ normalize(prototypes).T


class SimpleCIL(Finetune):
    name = "simplecil"

    def init(self, key, spec):
        net = self.build_network(key, spec)
        feature_dim = jax.eval_shape(self._trainer.features, net,
                                     jnp.zeros((1, *spec.image_shape), spec.input_dtype)).shape[-1]
        prototypes = jnp.zeros((spec.num_classes, feature_dim), jnp.float32)
        return {"net": net, "prototypes": parallel.replicate(self._trainer.mesh, prototypes)}

    def learn(self, state, task, key):
        net, examples = state["net"], 0
        if task.index == 0:
            net, examples = self.fit(net, task.images, task.labels, key, task.classes[-1] + 1, 0)
        features = np.asarray(self._trainer.features(net, task.images))
        prototypes = np.array(state["prototypes"])
        for c in task.classes:
            prototypes[c] = features[task.labels == c].mean(axis=0)
        prototypes = parallel.replicate(self._trainer.mesh, jnp.asarray(prototypes))
        return Learned({"net": net, "prototypes": prototypes}, examples)

    def predict(self, state, images):
        return cosine_scores(self._trainer.features(state["net"], images), state["prototypes"])

    def memory(self, state):
        report = super().memory(state)
        return report._replace(side_state=report.side_state + int(state["prototypes"].nbytes))
