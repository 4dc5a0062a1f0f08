"""PODNet (Douillard et al., "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental
Learning", ECCV 2020): a cosine classifier with several proxies per class, trained with NCA, and
distillation of the pooled outputs of every stage; then class-balanced finetuning.

    config.strategies = ("podnet",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen
    config.podnet = ConfigDict({"spatial_weight": 5.0, "flat_weight": 1.0, "finetune": "paper"})

The network (``models.build(..., proxies_per_class=10)``, cil/models/networks.py): the linear head
becomes a local similarity classifier (LSC: 10 proxies per class, the class score a softmax-weighted
sum of its proxies' cosines, times a learned scale starting at 1), and the last ReLU before it is
removed. Each task:
1. trains on its data and every exemplar together (as iCaRL), minimising NCA on the LSC's scores
   plus, after the first task, with f = sqrt(seen classes / new classes) (0 on task 0),
   f x spatial_weight x POD-spatial + f x flat_weight x POD-flat against the network the task
   starts from (cil/training.py ``PooledOutputsDistillation``). The old classes' proxies are
   frozen, and so are the classes not seen yet: their updates are masked after the optimiser
   (``Objective.trainable``), so neither
   weight decay nor momentum moves them. The new classes' proxies start as the k-means centres
   of their normalised features (``new_proxies="imprint"``) or as drawn at initialisation;
2. offers the task's data to the memory (herding, class-balanced), then, after the first task,
   finetunes on the memory alone, which holds an equal number of every seen class, with the same
   loss: ``finetune="paper"`` trains the proxies only (all of them), ``"pycil"`` everything but
   the old proxies (backbone, new proxies, scale);
3. predicts by the LSC's scores (``classifier="logits"``), or by the nearest mean of exemplars
   (``"nme"``; the class means are kept either way and charged as side state, as iCaRL's).

POD-spatial reads, of ResNet-32, the outputs of its three width groups (PyCIL's three stages, not
its 15 blocks); of the CNNs, each pooled convolutional block; of an MLP, every hidden layer's output
as a 1x1 map, for which it compares the L2-normalised squared activations
(``training.pod_maps``). POD-flat compares the head's input.

Read against the paper, the authors' code (arthurdouillard/incremental_learning.pytorch, CIFAR-100
options) and PyCIL's ``models/podnet.py``; where they disagree cil follows the paper by default:
- NCA: the paper's loss is [ -log(exp(eta (s_y - delta)) / sum_{i != y} exp(eta s_i)) ]_+ with
  delta = 0.6, eta = 1 (the learned scale is already in s): ``nca="paper"``. The authors' and
  PyCIL's code subtract the margin from every class (so it cancels), shift by the maximum, and
  put exp(0) in the positive's slot of the denominator, with no hinge: -log(exp(s_y) /
  (exp(max_j s_j) + sum_{i != y} exp(s_i))), ``nca="pycil"``. Both over the seen classes only.
- Finetuning: the paper and the authors tune the classifier only ("tuning: classifier", which
  leaves the scale out), lr 0.05, constant, 20 epochs; PyCIL tunes everything but the old proxies,
  lr 0.005, cosine over 20 epochs. Both on an undersampled, class-balanced set with SGD momentum
  0.9 and the main weight decay. cil tunes on the memory itself, updated first, as the authors'
  code does; PyCIL builds a set of memory_size // old classes per class (the new ones by herding),
  tunes, then reduces it to the memory (whose new-class exemplars it herds again with the tuned
  network, where cil keeps those herded before tuning).
- New proxies: the authors imprint them (k-means of the class's normalised features, scikit-learn's
  KMeans, times the old proxies' mean norm); cil runs ``KMEANS_STEPS`` Lloyd iterations from k
  random examples of the class (a class with fewer than k examples repeats them) on the features
  of the network the task starts from. PyCIL leaves them random (``new_proxies="random"``).
- Weights: spatial 5 (PyCIL's lambda_c; the authors' CIFAR config 3), flat 1. PyCIL's factor
  sqrt(total / new classes) is the authors' too.
- The LSC compares by cosine (paper, PyCIL); the authors' code by -||x - w||^2 of unit vectors,
  2 cos - 2 (see networks.py). The authors classify by the LSC (eval_type cnn), PyCIL reports NME.
- Running statistics of BatchNorm keep updating during finetuning, as in both references (the
  network is in training mode there), even when the backbone's parameters are frozen.

Memory: the network, the exemplars and the class means; the teacher is the network the task
starts from, used for the task and dropped, reported as ``teacher_params`` (charged only with
``memory.charge_teacher``, as iCaRL's, whose accounting PODNet inherits).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cil.baselines.icarl import CLASSIFIERS, ICaRL
from cil.baselines.replay import class_means
from cil import models, parallel
from cil.fields import Field, Integer, Number, OneOf, Optional
from cil.models.networks import normalize
from cil.strategy import Learned
from cil.training import (NEG_INF, SCHEDULE_DEFAULTS, Objective, PooledOutputsDistillation,
                          mask_unseen, settings_schedule)

KMEANS_STEPS = 20  # Lloyd iterations when imprinting new proxies
# Finetuning's learning rate when ``finetune_learning_rate`` is unset, and its schedule.
FINETUNE_RECIPES = {"paper": (0.05, "constant"), "pycil": (0.005, "cosine")}


def nca_loss(logits, labels, num_seen, margin: float = 0.6):
    """Per-example NCA as the paper writes it (eq. 10, eta = 1): the hinged
    -(s_y - margin) + log sum_{i != y} exp(s_i), over the first ``num_seen`` classes."""
    scores = mask_unseen(logits, num_seen)
    positive = jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
    is_label = jax.nn.one_hot(labels, scores.shape[-1], dtype=bool)
    others = jax.nn.logsumexp(jnp.where(is_label, NEG_INF, scores), axis=-1)
    return jnp.maximum(others - (positive - margin), 0.0)


def pycil_nca_loss(logits, labels, num_seen):
    """Per-example NCA as PyCIL's and the authors' ``nca`` compute it (exclude_pos_denominator,
    no hinge): the scores shifted by their maximum, the positive's slot of the denominator set to
    0, so exp(0) stands for it. The margin they subtract from every score cancels: not applied."""
    scores = mask_unseen(logits, num_seen)
    scores = scores - jnp.max(scores, axis=-1, keepdims=True)
    positive = jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
    is_label = jax.nn.one_hot(labels, scores.shape[-1], dtype=bool)
    return jax.nn.logsumexp(jnp.where(is_label, 0.0, scores), axis=-1) - positive


def trainable_mask(params, first_free_proxy, end_free_proxy, others: bool):
    """``Objective.trainable`` for PODNet: the head's proxy rows [first_free_proxy,
    end_free_proxy), and every other parameter (backbone, scale) when ``others``; one structure
    for every task. The classes not seen yet stay frozen too: their scores are masked, so weight
    decay alone would shrink their proxies towards 0 before their task comes."""
    def leaf(path, param):
        if [getattr(k, "key", None) for k in path[:2]] == ["head", "proxies"]:
            rows = jnp.arange(param.shape[0])[:, None]
            return (rows >= first_free_proxy) & (rows < end_free_proxy)
        return jnp.asarray(others)

    return jax.tree_util.tree_map_with_path(leaf, params)


def kmeans(points, labels, valid, num_classes: int, k: int, key, steps: int = KMEANS_STEPS):
    """``k`` centres per class of ``points`` (N, d) by Lloyd's algorithm, all classes at once:
    (num_classes, k, d). Rows with ``valid`` False are ignored; a class starts from k of its
    points in random order (repeated when it has fewer), so a class without points gets garbage."""
    labels = jnp.where(valid, labels, num_classes)  # padding sorts after every class
    order = jnp.lexsort((jax.random.uniform(key, labels.shape), labels))
    counts = jnp.bincount(labels, length=num_classes + 1)[:num_classes]
    starts = jnp.cumsum(counts) - counts
    picks = starts[:, None] + jnp.arange(k) % jnp.maximum(counts, 1)[:, None]
    centres = points[order[jnp.minimum(picks, len(points) - 1)]]
    own = jnp.minimum(labels, num_classes - 1)
    weights = valid.astype(points.dtype)

    def lloyd(centres, _):
        candidates = centres[own]  # (N, k, d): each point against its own class's centres
        closeness = 2 * jnp.einsum("nd,nkd->nk", points, candidates) - jnp.sum(
            candidates * candidates, -1)
        cluster = own * k + jnp.argmax(closeness, -1)
        sums = jax.ops.segment_sum(points * weights[:, None], cluster, num_classes * k)
        sizes = jax.ops.segment_sum(weights, cluster, num_classes * k)[:, None]
        flat = centres.reshape(num_classes * k, -1)
        return jnp.where(sizes > 0, sums / jnp.maximum(sizes, 1.0), flat).reshape(centres.shape), None

    return jax.lax.scan(lloyd, centres, None, length=steps)[0]


@functools.partial(jax.jit, static_argnums=0)
def imprint(graphdef, net: dict, features, labels, size, num_old, num_seen, key) -> dict:
    """``net`` with the proxies of classes [num_old, num_seen) set to the k-means centres of their
    normalised ``features`` (rows [0, size) real), times the old proxies' mean norm (the
    authors' weight imprinting)."""
    model = nnx.merge(graphdef, net["params"], net["model_state"], copy=True)
    proxies, k = model.head.proxies[...], model.head.proxies_per_class
    num_classes = proxies.shape[0] // k
    valid = jnp.arange(features.shape[0]) < size
    centres = kmeans(normalize(features), labels, valid, num_classes, k, key)
    row_class = jnp.arange(proxies.shape[0]) // k
    old, new = row_class < num_old, (row_class >= num_old) & (row_class < num_seen)
    old_norm = jnp.sum(jnp.linalg.norm(proxies, axis=-1) * old) / jnp.sum(old)
    imprinted = centres.reshape(proxies.shape) * old_norm
    model.head.proxies[...] = jnp.where(new[:, None], imprinted, proxies)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return {**net, "params": params}


class PODNet(ICaRL):
    name = "podnet"
    exemplars_in_task_set = True

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget"),
            "proxies_per_class": Field(10, Integer(min=1), "the LSC's proxies per class (K)"),
            "spatial_weight": Field(5.0, Number(min=0), "lambda_c of POD-spatial (PyCIL 5, the "
                                    "authors' CIFAR config 3)"),
            "flat_weight": Field(1.0, Number(min=0), "lambda_f of POD-flat"),
            "nca": Field("paper", OneOf("paper", "pycil"), "the paper's hinged NCA with margin, "
                         "or PyCIL's (and the authors' code's)"),
            "margin": Field(0.6, Number(min=0), "delta of the paper's NCA"),
            "new_proxies": Field("imprint", OneOf("imprint", "random"), "k-means imprinting "
                                 "(the authors) or left as drawn (PyCIL)"),
            "finetune": Field("paper", OneOf("paper", "pycil"), "class-balanced finetuning of "
                              "the proxies only, or of all but the old proxies (PyCIL)"),
            "finetune_epochs": Field(20, Integer(min=0), "class-balanced finetuning's epochs "
                                     "(0: none)"),
            "finetune_learning_rate": Field(None, Optional(Number(above=0)), "unset: 0.05 "
                                            "constant (paper), 0.005 cosine (pycil)"),
            "classifier": Field("logits", OneOf(*CLASSIFIERS), "logits: the LSC's scores; nme: "
                                "nearest mean of exemplars (what PyCIL reports)"),
        }

    def model(self, spec, seed) -> nnx.Module:
        return models.build(self.config.model, spec.image_shape, spec.num_classes, seed=seed,
                            proxies_per_class=self.config.strategy.proxies_per_class)

    def classification_loss(self):
        if self.config.strategy.nca == "pycil":
            return pycil_nca_loss
        return functools.partial(nca_loss, margin=self.config.strategy.margin)

    def trainable(self, first_free_proxy: int, end_free_proxy: int, others: bool):
        """``trainable_mask`` of this strategy's network, replicated on the mesh."""
        params = nnx.split(self.abstract_network(self.spec), nnx.Param, ...)[1]
        mask = trainable_mask(params, jnp.int32(first_free_proxy), jnp.int32(end_free_proxy),
                              others)
        return parallel.replicate(self._trainer.mesh, mask)

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        fit_key, proxy_key, tune_key = jax.random.split(key, 3)
        cfg = self.config.strategy
        seen_rows = num_seen * cfg.proxies_per_class
        objective = Objective(trainable=self.trainable(0, seen_rows, others=True))
        if num_old:
            factor = math.sqrt(num_seen / (num_seen - num_old))
            pod = PooledOutputsDistillation(state["net"], cfg.spatial_weight * factor,
                                            cfg.flat_weight * factor)
            old_rows = num_old * cfg.proxies_per_class
            objective = Objective(pod=pod, trainable=self.trainable(old_rows, seen_rows,
                                                                    others=True))
            state = {**state, "net": self.new_proxies(state["net"], task, proxy_key)}
        net, buffer, trained = self.fit_with_exemplars(state, task, fit_key, objective)
        if num_old and self.config.strategy.finetune_epochs:
            net, tuned = self.balanced_finetuning(net, buffer, objective, task.index, num_seen,
                                                  tune_key)
            trained += tuned
        means = class_means(self._trainer.features(net, buffer.images), buffer.labels,
                            buffer.size, self.spec.num_classes)
        return Learned({"net": net, "buffer": buffer, "means": means}, trained)

    def new_proxies(self, net: dict, task, key) -> dict:
        """``net`` with the task's classes' proxies imprinted from its features, or as it is."""
        if self.config.strategy.new_proxies == "random":
            return net
        data = self._trainer.put(task.images, task.labels)
        return imprint(self._trainer.graphdef, net, self._trainer.features(net, data.images),
                       data.labels, data.size, jnp.int32(task.classes[0]),
                       jnp.int32(task.classes[-1] + 1), key)

    def balanced_finetuning(self, net, buffer, objective: Objective, task_index: int,
                            num_seen: int, key):
        """Trains ``net`` on the (class-balanced) memory by ``finetune``'s recipe, with the main
        training's loss; returns it and the examples trained on."""
        cfg = self.config.strategy
        default_lr, schedule = FINETUNE_RECIPES[cfg.finetune]
        if cfg.finetune == "paper":  # every proxy, nothing else (not the scale)
            objective = Objective(pod=objective.pod,
                                  trainable=self.trainable(0, num_seen * cfg.proxies_per_class,
                                                           others=False))
        kept = jax.device_get(buffer)
        size = int(kept.size)
        data = self._trainer.put(kept.images[:size], kept.labels[:size].astype(np.int32))
        recipe = settings_schedule({
            **SCHEDULE_DEFAULTS, "epochs": cfg.finetune_epochs, "schedule": schedule,
            "learning_rate": cfg.finetune_learning_rate or default_lr,
            "weight_decay": self._trainer.schedule(task_index).weight_decay})
        return self._trainer.fit(net, data, key, num_seen, recipe, objective=objective)
