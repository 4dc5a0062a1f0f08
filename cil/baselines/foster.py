"""FOSTER (Wang, Zhou, Ye and Zhan, "FOSTER: Feature Boosting and Compression for Class-Incremental
Learning", ECCV 2022): each task boosts the old model with a second backbone, then compresses the
two-backbone model into one backbone by balanced distillation; exemplars by herding.

    config.strategies = ("foster",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen
    config.foster = ConfigDict({"beta1": 0.96, "beta2": 0.97, "boosting_epochs": 170,
                                "compression_epochs": 130})

Task 0: one backbone (``config.model``'s stages, without its head) and a linear head over the
task's classes, trained by cross-entropy, by ``config.train`` (``train.first_task``).
Task t > 0, with n_c the number of training examples of class c (the task's data and the
exemplars) and w(beta)_c = (1 - beta) / (1 - beta^n_c), scaled to sum to the seen classes' count
(the "effective number" weights of Cui et al., PyCIL's ``per_cls_weights``; ``class_weights``):
1. Boosting: a new backbone starts as a copy of the old one (weights and BatchNorm statistics);
   the classifier ``fc`` reads both backbones' features side by side: its old classes x old
   features block is the old head's, every other entry of the seen classes drawn afresh, new
   biases 0; ``fe_fc`` over the new backbone alone is drawn afresh over the seen classes. The old
   backbone and the old head (PyCIL's ``oldfc``) are frozen, the old backbone runs with its
   running statistics. On the task's data and every exemplar as one set (as iCaRL), minimise
       xent(fc logits / w(beta1))  +  xent(fe_fc logits)  +  lambda x KD_T(fc logits, oldfc logits)
   (cross-entropies over the seen classes; KD on the old classes, temperature T, as
   cil/training.py ``distillation_loss`` and PyCIL's ``_KD_loss``), by ``config.train``'s recipe
   for the task with ``boosting_epochs`` epochs.
2. Compression: a student (one backbone and a head over the seen classes) starts as the old
   model: its backbone a copy of the old one, its head the old head for the old classes and a
   fresh draw for the new ones. On the same set, it minimises the balanced distillation
       BKD = - sum_c q_c log softmax(student / T)_c,
       q_c proportional to w(beta2)_c softmax(teacher / T)_c
   against the boosted two-backbone model (evaluation mode, frozen), everything of the student
   trained, by ``config.train``'s recipe with ``compression_epochs`` epochs and
   ``compression_weight_decay`` (PyCIL: none).
3. The memory takes in the task's data by herding on the boosted model's concatenated features
   (task 0: the one backbone's), an equal share per class. The student becomes the model: it
   predicts until the next task, whose old model it is; the boosted model is dropped.

Read against the paper (arXiv 2204.04662) and PyCIL's ``models/foster.py``, ``exps/foster.json``
and ``utils/inc_net.py`` ``FOSTERNet`` (G-U-N/PyCIL, commit 87cc411). Where cil differs:
- Prediction after a task is the student's. PyCIL's ``eval_task`` runs after
  ``incremental_train`` on its ``_network``, which is then still the boosted two-backbone model
  (it logs the student's accuracy separately, "darknet eval", and swaps the student in at the next
  task). cil predicts with what it keeps: the boosted model is not kept, so it cannot predict.
  ``extras`` records both models' accuracy on the task's training set (the task's data and the
  exemplars): ``boosting_train_acc`` (the boosted model's) and ``train_acc`` (the kept model's:
  task 0's one network, later the student's).
- Class counts: PyCIL computes them from its settings (``memory_per_class`` or memory_size //
  old classes per old class, the class's training size per new class); cil counts the labels of
  the set it trains on. The same when every old class holds its share; cil/memory.py gives
  the capacity % classes leftover slots to the first classes, so counts may differ by one. A class
  with no example (a memory of 0) is counted as 1, where PyCIL would divide by zero.
- Exemplars: herding on L2-normalised features, an equal share of ``memory.exemplars`` per seen
  class (PyCIL's ``fixed_memory=False``). PyCIL's FOSTER config sets ``fixed_memory`` (20 per
  class, growing to 2000 on CIFAR-100); cil's budget is fixed from the start, as for every method.
- Weight aligning: PyCIL's ``is_teacher_wa`` and ``is_student_wa`` are off in its config, and so
  by default here (``teacher_weight_aligning``, ``student_weight_aligning``; gamma = old mean norm
  / new mean norm x ``wa_value`` ^ (old / new classes), on the weights, not the biases, as
  ``FOSTERNet.weight_align``).
- Not offered: PyCIL's ``oofc="az"`` (new classes' weights on the old features held at 0; its
  config uses ``"ft"``, trained as every other weight, which is what cil does).
- New weights are drawn as PyCIL's ``SimpleLinear`` (Kaiming-uniform, gain 1: U(+-sqrt(3 /
  fan_in))), biases 0; at task 0 the head too, not ``config.model``'s own initialisation.
- PyCIL's recipe (SGD, momentum 0.9, batch 128, cosine; task 0: 200 epochs, lr 0.1, weight decay
  5e-4; boosting 170 epochs, lr 0.1, weight decay 5e-4; compression 130 epochs, lr 0.1, no weight
  decay) is not hard-coded: ``config.train`` (and ``train.first_task``) gives it, except the two
  epoch counts (``boosting_epochs``, ``compression_epochs``; unset: ``train.epochs``) and the
  compression's weight decay. lambda (``lambda_okd``) 1, T 2, beta1 0.96, beta2 0.97 as PyCIL.

Fixed shapes: the network holds three backbones at all times (``backbone``: the kept model's and
boosting's old one; ``new_backbone``; ``student``), ``head`` (d x C, the kept classifier and
boosting's ``oldfc``), ``fc`` (2d x C), ``fe_fc`` and ``student_head`` (d x C), C the stream's
classes; the classes not seen yet have zero weights held at 0 (``Objective.trainable``). Its
``stage`` (plain, boost, compress; static) picks which parts a forward pass runs, so each stage
is one compiled program for every task, and runs only what it needs: plain the kept model;
boosting the old backbone (evaluation mode, no gradient) and the new one; compression the
boosted model (evaluation mode, no gradient) and the student. After the task the student is moved
into ``backbone`` and ``head``, and the boosted parts and the student's slot are zeroed. A step
runs the backbone passes PyCIL's does: boosting two, compression three (the teacher's two frozen).

Measured (tests/test_baselines.py's Split-Digits stream, tiny MLP, 5 epochs per task for boosting
and compression alike, seeds 0-5, 2026-12-03): a[0][0] 0.966-0.989, old-task mean at the end
0.647-0.815, but the newest task 0.00-0.58 at the end: 5 epochs of distillation (SGD without
momentum, lr 0.05) from the old model leave the student short of the boosted model on the new
classes (training-set accuracy at the last task 0.53-0.69 against 0.86-0.90). With
``compression_epochs=30`` (seed 0) the student reaches 0.85 against 0.89, and the old-task mean
and the last accuracy are 0.866 and 0.869.

Memory (PROTOCOL.md), by what is kept after the task: ``learner_params`` = one backbone's
parameters + the head's seen classes (weights and biases); ``side_state`` = its BatchNorm
statistics, the class weights (C float32) and the (old, seen) class counts (2 int32), and the
buffer's counters; ``exemplars`` as Replay. ``teacher_params`` = the boosted model the task built
and dropped: two backbones with their statistics, ``fc``, ``fe_fc`` and ``oldfc`` at the task's
classes (0 after task 0); the student exists during the task too, but it is what is kept.
Charged only with ``memory.charge_teacher`` (then the budget leaves room for the largest one).
``extras``: ``student_bytes`` (kept parameters and statistics), ``teacher_bytes``, and the
training-set accuracies above, which the strategy holds from its last ``learn`` (not state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cil import models, parallel
from cil.baselines.replay import Replay
from cil.errors import ConfigError
from cil.fields import Field, Flag, Integer, Number, Optional
from cil.memory import COUNTER_BYTES, ExemplarMemory, exemplar_bytes, exemplar_capacity
from cil.models.networks import Network, to_float
from cil.strategy import Learned, MemoryReport, StreamSpec, pytree_bytes
from cil.training import (Objective, Trainer, distillation_loss, mask_unseen, schedule_settings,
                          seen_class_xent, settings_schedule)

PLAIN, BOOST, COMPRESS = "plain", "boost", "compress"
STAGES = (PLAIN, BOOST, COMPRESS)
# What each stage trains: its backbone (whole) and its heads (the seen classes' columns).
TRAINED = {PLAIN: ("backbone", ("head",)), BOOST: ("new_backbone", ("fc", "fe_fc")),
           COMPRESS: ("student", ("student_head",))}


def class_weights(counts, beta: float):
    """PyCIL's ``per_cls_weights``: (1 - beta) / (1 - beta^n_c) per class, scaled to sum to the
    number of classes (``counts``: training examples per class; 0 counted as 1)."""
    counts = np.maximum(np.asarray(counts, np.float64), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)


def balanced_distillation(logits, teacher_logits, weights, num_seen, temperature: float):
    """Per-example BKD (PyCIL's ``FOSTER.BKD``): cross-entropy of the student's tempered softmax
    against the teacher's, reweighted per class by ``weights`` and renormalised; seen classes."""
    student = jax.nn.log_softmax(mask_unseen(logits, num_seen) / temperature)
    teacher = jax.nn.softmax(mask_unseen(teacher_logits, num_seen) / temperature) * weights
    teacher = teacher / jnp.sum(teacher, axis=-1, keepdims=True)
    return -jnp.sum(teacher * student, axis=-1)


def boosting_loss(output, labels, num_seen, *, num_classes: int):
    """Per-example boosting loss from ``FOSTERNet``'s training output in stage boost: the fc
    logits divided by the class weights, the fe_fc logits, and the weighted KD term."""
    c = num_classes
    return (seen_class_xent(output[:, :c], labels, num_seen)
            + seen_class_xent(output[:, c:2 * c], labels, num_seen) + output[:, 2 * c])


def compression_loss(output, labels, num_seen, *, num_classes: int):
    """Per-example BKD: the last column of ``FOSTERNet``'s training output in stage compress."""
    return output[:, num_classes]


class ClassInfo(nnx.Variable):
    """Model state set at each stage's start, never trained: the class weights, the class counts."""


class Backbone(nnx.Module):
    """A network's stages without its head."""

    def __init__(self, network: Network):
        self.stages = network.stages
        self.input_mean, self.input_std = network.input_mean, network.input_std

    def __call__(self, images, train: bool = False):
        x = to_float(images, self.input_mean, self.input_std)
        for stage in self.stages:
            x = stage(x, train)
        return x


def frozen(module, *inputs):
    """``module``'s output in evaluation mode, with no gradient to its parameters."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))(*inputs)


class FOSTERNet(nnx.Module):
    """The kept model (``backbone``, ``head``), boosting's parts (``new_backbone``, ``fc``,
    ``fe_fc``) and the student (``student``, ``student_head``); ``stage`` (static) says which run.
    ``class_weights``: w(beta1) while boosting, w(beta2) while compressing (ones past the seen
    classes); ``classes``: (old, seen) class counts of the task."""

    def __init__(self, networks, num_classes: int, temperature: float, kd_weight: float):
        d = networks[0].head.in_features
        zeros = nnx.initializers.zeros
        rngs = nnx.Rngs(0)  # unused: every head starts at 0 and is drawn when its stage starts
        linear = lambda n_in: nnx.Linear(n_in, num_classes, kernel_init=zeros,  # noqa: E731
                                         bias_init=zeros, rngs=rngs)
        self.backbone, self.new_backbone, self.student = (Backbone(n) for n in networks)
        self.head, self.fc = linear(d), linear(2 * d)
        self.fe_fc, self.student_head = linear(d), linear(d)
        self.class_weights = ClassInfo(jnp.ones(num_classes, jnp.float32))
        self.classes = ClassInfo(jnp.zeros(2, jnp.int32))
        self.feature_dim, self.num_classes = d, num_classes
        self.temperature, self.kd_weight = float(temperature), float(kd_weight)
        self.stage = PLAIN
        self.input_mean, self.input_std = networks[0].input_mean, networks[0].input_std

    def features(self, images, train: bool = False):
        """The stage's classifier input: the kept backbone's, both boosting backbones' side by
        side, or the student's."""
        if self.stage == PLAIN:
            return self.backbone(images, train)
        if self.stage == COMPRESS:
            return self.student(images, train)
        old = frozen(self.backbone, images) if train else self.backbone(images)
        return jnp.concatenate([old, self.new_backbone(images, train)], axis=-1)

    def __call__(self, images, train: bool = False):
        """The stage's logits (N, C); in training, boost: [fc logits / w, fe_fc logits, lambda x
        KD] (N, 2C + 1), compress: [student logits, BKD] (N, C + 1), which the losses read."""
        if self.stage == PLAIN:
            return self.head(self.backbone(images, train))
        num_old, num_seen = self.classes[...][0], self.classes[...][1]
        weights = self.class_weights[...]
        if self.stage == COMPRESS:
            logits = self.student_head(self.student(images, train))
            if not train:
                return logits
            teacher = jnp.concatenate([frozen(self.backbone, images),
                                       frozen(self.new_backbone, images)], axis=-1)
            teacher_logits = jax.lax.stop_gradient(self.fc(teacher))
            bkd = balanced_distillation(logits, teacher_logits, weights, num_seen,
                                        self.temperature)
            return jnp.concatenate([logits, bkd[:, None].astype(logits.dtype)], axis=-1)
        if not train:
            return self.fc(self.features(images))
        old = frozen(self.backbone, images)
        new = self.new_backbone(images, train=True)
        logits = self.fc(jnp.concatenate([old, new], axis=-1))
        old_logits = jax.lax.stop_gradient(self.head(old))  # oldfc: frozen
        kd = self.kd_weight * distillation_loss(logits.astype(jnp.float32),
                                                old_logits.astype(jnp.float32), num_old,
                                                self.temperature)
        return jnp.concatenate([logits / weights.astype(logits.dtype), self.fe_fc(new),
                                kd[:, None].astype(logits.dtype)], axis=-1)


def _merge(graphdef, net):
    return nnx.merge(graphdef, net["params"], net["model_state"], copy=True)


def _split(model) -> dict:
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return {"params": params, "model_state": model_state}


def _pycil_uniform(key, shape, fan_in):
    """PyCIL's ``SimpleLinear`` weights: Kaiming-uniform with gain 1, U(+-sqrt(3 / fan_in))."""
    bound = jnp.sqrt(3.0 / fan_in)
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def _draw(linear: nnx.Linear, key, num_seen, kept_kernel=None, kept_bias=None, num_old=0,
          kept_rows=0):
    """``linear`` with the seen classes' weights drawn afresh (biases 0), except its rows
    [0, kept_rows) x classes [0, num_old), taken from ``kept_kernel`` (and those classes' biases
    from ``kept_bias``); the unseen classes' entries 0."""
    kernel = linear.kernel[...]
    classes = jnp.arange(kernel.shape[1])
    drawn = jnp.where(classes < num_seen, _pycil_uniform(key, kernel.shape, kernel.shape[0]), 0.0)
    bias = jnp.zeros_like(linear.bias[...])
    if kept_kernel is not None:
        rows = jnp.arange(kernel.shape[0])[:, None]
        padded = jnp.zeros_like(kernel).at[:kept_kernel.shape[0]].set(kept_kernel)
        drawn = jnp.where((rows < kept_rows) & (classes < num_old), padded, drawn)
        bias = jnp.where(classes < num_old, kept_bias, bias)
    linear.kernel[...] = drawn
    linear.bias[...] = bias


def _copy_backbone(target: Backbone, source: Backbone):
    nnx.update(target, jax.tree.map(jnp.copy, nnx.state(source)))


@functools.partial(jax.jit, static_argnums=0)
def begin(graphdef, net: dict, num_seen, key) -> dict:
    """Task 0: the head drawn over the task's classes."""
    model = _merge(graphdef, net)
    _draw(model.head, key, num_seen)
    model.classes[...] = jnp.stack([jnp.int32(0), jnp.int32(num_seen)])
    return _split(model)


@functools.partial(jax.jit, static_argnums=0)
def expand(graphdef, net: dict, num_old, num_seen, weights, key) -> dict:
    """Boosting's start: the new backbone a copy of the old one, ``fc`` keeping the old head's
    old classes x old features block, ``fe_fc`` drawn, the class weights w(beta1)."""
    model = _merge(graphdef, net)
    _copy_backbone(model.new_backbone, model.backbone)
    fc_key, fe_key = jax.random.split(key)
    _draw(model.fc, fc_key, num_seen, model.head.kernel[...], model.head.bias[...], num_old,
          model.feature_dim)
    _draw(model.fe_fc, fe_key, num_seen)
    model.class_weights[...] = weights
    model.classes[...] = jnp.stack([jnp.int32(num_old), jnp.int32(num_seen)])
    return _split(model)


@functools.partial(jax.jit, static_argnums=0)
def start_compression(graphdef, net: dict, num_old, num_seen, weights, key) -> dict:
    """Compression's start: the student a copy of the old model (PyCIL: ``convnets[0]`` loaded,
    ``copy_fc(oldfc)``), its new classes drawn; the class weights w(beta2)."""
    model = _merge(graphdef, net)
    _copy_backbone(model.student, model.backbone)
    _draw(model.student_head, key, num_seen, model.head.kernel[...], model.head.bias[...],
          num_old, model.feature_dim)
    model.class_weights[...] = weights
    return _split(model)


@functools.partial(jax.jit, static_argnums=0)
def finish(graphdef, net: dict) -> dict:
    """The student moved into the kept model; the boosted parts and the student's slot zeroed
    (dropped: nothing reads them before the next task draws or copies them afresh)."""
    model = _merge(graphdef, net)
    _copy_backbone(model.backbone, model.student)
    model.head.kernel[...] = model.student_head.kernel[...]
    model.head.bias[...] = model.student_head.bias[...]
    for part in (model.new_backbone, model.student, model.fc, model.fe_fc, model.student_head):
        nnx.update(part, jax.tree.map(jnp.zeros_like, nnx.state(part)))
    return _split(model)


@functools.partial(jax.jit, static_argnums=0)
def trainable_mask(stage: str, net: dict, num_seen):
    """``Objective.trainable`` of a stage: its backbone, its heads' seen classes."""
    backbone, heads = TRAINED[stage]

    def leaf(path, param):
        name = getattr(path[0], "key", None)
        if name == backbone:
            return jnp.ones((), bool)
        if name in heads:
            return jnp.arange(param.shape[-1]) < num_seen
        return jnp.zeros((), bool)

    return jax.tree_util.tree_map_with_path(leaf, net["params"])


@functools.partial(jax.jit, static_argnums=(0, 4))
def correct_predictions(graphdef, net: dict, data, num_seen, batch_size: int = 256):
    """How many of ``data``'s first ``size`` examples the stage's logits classify right."""
    model = _merge(graphdef, net)
    scores = jax.lax.map(lambda x: mask_unseen(model(x[None]), num_seen)[0], data.images,
                         batch_size=batch_size)
    right = (jnp.argmax(scores, -1) == data.labels) & (jnp.arange(len(data.labels)) < data.size)
    return jnp.sum(right)


@functools.partial(jax.jit, static_argnums=(0, 2))
def align_weights(graphdef, net: dict, layer: str, num_old, num_seen, value) -> dict:
    """PyCIL's ``FOSTERNet.weight_align`` on ``layer``'s kernel: the new classes' columns times
    old mean norm / new mean norm x value ^ (old / new classes); biases left as they are."""
    model = _merge(graphdef, net)
    linear = getattr(model, layer)
    kernel = linear.kernel[...]
    classes = jnp.arange(kernel.shape[1])
    old, new = classes < num_old, (classes >= num_old) & (classes < num_seen)
    norms = jnp.linalg.norm(kernel, axis=0)
    gamma = (jnp.sum(norms * old) / jnp.sum(old)) / (jnp.sum(norms * new) / jnp.sum(new))
    gamma = gamma * value ** (num_old / (num_seen - num_old))
    linear.kernel[...] = jnp.where(new, kernel * gamma, kernel)
    return _split(model)


class FOSTER(Replay):
    name = "foster"
    exemplars_in_task_set = True

    def __init__(self, config):
        super().__init__(config)
        self._trainers = {}
        self._sizes = {}
        self._task_stats = {}

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget"),
            "beta1": Field(0.96, Number(above=0, below=1), "effective-number weights of "
                           "boosting's logit adjustment (PyCIL)"),
            "beta2": Field(0.97, Number(above=0, below=1), "effective-number weights of the "
                           "compression's balanced distillation (PyCIL)"),
            "lambda_okd": Field(1.0, Number(min=0), "boosting's KD weight (PyCIL)"),
            "temperature": Field(2.0, Number(above=0), "KD and BKD temperature (PyCIL's T)"),
            "boosting_epochs": Field(None, Optional(Integer(min=1)), "unset: train.epochs "
                                     "(PyCIL: 170)"),
            "compression_epochs": Field(None, Optional(Integer(min=1)), "unset: train.epochs "
                                        "(PyCIL: 130)"),
            "compression_weight_decay": Field(0.0, Number(min=0), "PyCIL: none"),
            "teacher_weight_aligning": Field(False, Flag(), "align fc's new classes after "
                                             "boosting (PyCIL's is_teacher_wa, off)"),
            "student_weight_aligning": Field(False, Flag(), "align the student's new classes "
                                             "after compression (PyCIL's is_student_wa, off)"),
            "wa_value": Field(1.0, Number(above=0), "weight aligning's extra factor (PyCIL)"),
        }

    def selection(self):
        return "herding", True

    def backbone_network(self, spec: StreamSpec, key) -> Network:
        """One backbone's network (``config.model``; its head is dropped)."""
        return models.build(self.config.model, spec.image_shape, spec.num_classes, seed=key)

    def model(self, spec: StreamSpec, seed) -> FOSTERNet:
        key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
        networks = [self.backbone_network(spec, k) for k in jax.random.split(key, 3)]
        settings = self.config.strategy
        return FOSTERNet(networks, spec.num_classes, settings.temperature, settings.lambda_okd)

    def build_network(self, key, spec: StreamSpec) -> dict:
        """A fresh network; builds (once per stream) a trainer per stage, each with the
        network's graph for that stage and the stage's loss."""
        self.spec = spec
        model = self.model(spec, key)
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        if self._trainer_key != (graphdef, spec):
            mesh, capacity, c = parallel.data_mesh(), self.capacity(spec), spec.num_classes
            losses = {PLAIN: seen_class_xent,
                      BOOST: functools.partial(boosting_loss, num_classes=c),
                      COMPRESS: functools.partial(compression_loss, num_classes=c)}
            for stage in STAGES:
                model.stage = stage
                self._trainers[stage] = Trainer(nnx.split(model, nnx.Param, ...)[0],
                                                self.config.train, mesh, capacity,
                                                loss=losses[stage])
            model.stage = PLAIN
            self._trainer = self._trainers[PLAIN]
            self._trainer_key = (graphdef, spec)
        return parallel.replicate(self._trainer.mesh, {"params": params,
                                                       "model_state": model_state})

    # --- memory accounting ---------------------------------------------------------------------

    def sizes(self, spec: StreamSpec) -> dict:
        """One backbone's parameter and statistics bytes, d, a head weight's bytes and the class
        information's bytes: from the network's shapes, once per stream."""
        if spec not in self._sizes:
            model = self.abstract_network(spec)
            self._sizes[spec] = {
                "params": pytree_bytes(nnx.state(model.backbone, nnx.Param)),
                "stats": pytree_bytes(nnx.state(model.backbone, nnx.Not(nnx.Param))),
                "d": model.feature_dim,
                "itemsize": np.dtype(jax.tree.leaves(nnx.state(model.head))[0].dtype).itemsize,
                "info": pytree_bytes(nnx.state(model, ClassInfo)),
            }
        return self._sizes[spec]

    def kept_bytes(self, spec: StreamSpec, num_seen: int) -> tuple[int, int]:
        """(parameter bytes, statistics bytes) of the kept model over ``num_seen`` classes."""
        s = self.sizes(spec)
        return s["params"] + (s["d"] * num_seen + num_seen) * s["itemsize"], s["stats"]

    def teacher_bytes(self, spec: StreamSpec, num_old: int, num_seen: int) -> int:
        """The boosted model of a task: two backbones with their statistics, fc, fe_fc, oldfc."""
        if not num_old:
            return 0
        s = self.sizes(spec)
        heads = (2 * s["d"] + 1) * num_seen + (s["d"] + 1) * num_seen + (s["d"] + 1) * num_old
        return 2 * (s["params"] + s["stats"]) + heads * s["itemsize"]

    def network_bytes(self, spec):
        return sum(self.kept_bytes(spec, spec.num_classes))

    def side_bytes(self, spec):
        return self.sizes(spec)["info"]

    def build_memory(self, spec: StreamSpec) -> ExemplarMemory:
        """As Replay's, with the largest boosted model as the teacher when it is charged."""
        teacher = 0
        if spec.budget.charge_teacher:
            teacher = max(self.teacher_bytes(spec, span.classes[0], span.classes[-1] + 1)
                          for span in spec.tasks)
        other = self.network_bytes(spec) + teacher + self.side_bytes(spec) + COUNTER_BYTES
        per_exemplar = exemplar_bytes(spec.image_shape, spec.num_classes, spec.input_dtype)
        capacity = exemplar_capacity(spec.budget, per_exemplar, other,
                                     default=self.config.strategy.exemplars)
        return ExemplarMemory(capacity, spec.image_shape, spec.num_classes, "herding", True,
                              spec.input_dtype)

    def class_counts(self, state) -> tuple[int, int]:
        num_old, num_seen = jax.device_get(state["net"]["model_state"]["classes"][...])
        return int(num_old), int(num_seen)

    def memory(self, state):
        num_old, num_seen = self.class_counts(state)
        params, stats = self.kept_bytes(self.spec, num_seen) if num_seen else (0, 0)
        buffer = self.exemplar_memory.report(state["buffer"])
        return MemoryReport(exemplars=buffer.exemplars, num_exemplars=buffer.num_exemplars,
                            learner_params=params,
                            side_state=stats + self.side_bytes(self.spec) + buffer.side_state,
                            teacher_params=self.teacher_bytes(self.spec, num_old, num_seen))

    def extras(self, state):
        """The kept and the boosted model's bytes, and (from the last ``learn``) the kept and the
        boosted model's accuracy on that task's training set (the boosted one's from task 1)."""
        num_old, num_seen = self.class_counts(state)
        return {"student_bytes": sum(self.kept_bytes(self.spec, num_seen)),
                "teacher_bytes": self.teacher_bytes(self.spec, num_old, num_seen),
                **self._task_stats}

    # --- learning ------------------------------------------------------------------------------

    def stage_schedule(self, task_index: int, epochs_field: str, weight_decay=None):
        """``config.train``'s schedule for the task with the stage's own epochs (and weight
        decay)."""
        settings = schedule_settings(self.config.train, task_index)
        epochs = self.config.strategy[epochs_field]
        if epochs is not None:
            settings["epochs"] = int(epochs)
            if settings["schedule"] == "multistep" and any(m >= epochs
                                                           for m in settings["milestones"]):
                raise ConfigError(f"train.milestones={tuple(settings['milestones'])} reach past "
                                  f"foster.{epochs_field}={epochs}")
            if settings["schedule"] == "cosine" and settings["warmup_epochs"] >= epochs:
                raise ConfigError(f"train.warmup_epochs={settings['warmup_epochs']} must be "
                                  f"below foster.{epochs_field}={epochs}")
        if weight_decay is not None:
            settings["weight_decay"] = float(weight_decay)
        return settings_schedule(settings)

    def trainable(self, stage: str, net, num_seen: int):
        trainer = self._trainers[stage]
        return parallel.replicate(trainer.mesh, trainable_mask(stage, net, jnp.int32(num_seen)))

    def accuracy(self, stage: str, net, data, num_seen: int) -> float:
        right = correct_predictions(self._trainers[stage].graphdef, net, data, jnp.int32(num_seen))
        return float(right) / max(int(data.size), 1)

    def padded_weights(self, labels, num_seen: int, beta: float):
        """w(beta) over the seen classes from the training labels, ones past them."""
        counts = np.bincount(labels, minlength=num_seen)[:num_seen]
        weights = np.ones(self.spec.num_classes, np.float32)
        weights[:num_seen] = class_weights(counts, beta)
        return jnp.asarray(weights)

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        settings = self.config.strategy
        plain, boost, compress = (self._trainers[s] for s in STAGES)
        graphdef = plain.graphdef
        draw_key, fit_key, compress_key, tune_key, memory_key = jax.random.split(key, 5)
        buffer = jax.device_get(state["buffer"])
        size = int(buffer.size)
        # The task's examples first: the memory is offered the first len(task) of them.
        images = np.concatenate([task.images, buffer.images[:size]])
        labels = np.concatenate([task.labels, buffer.labels[:size].astype(np.int32)])
        data = plain.put(images, labels)
        net = state["net"]
        if not num_old:  # task 0: one backbone, cross-entropy (PyCIL's _init_train)
            net = begin(graphdef, net, jnp.int32(num_seen), draw_key)
            net, trained = plain.fit(net, data, fit_key, num_seen, plain.schedule(task.index),
                                     objective=Objective(trainable=self.trainable(PLAIN, net,
                                                                                  num_seen)))
            herding = plain
            self._task_stats = {"train_acc": self.accuracy(PLAIN, net, data, num_seen)}
        else:
            net = expand(graphdef, net, jnp.int32(num_old), jnp.int32(num_seen),
                         self.padded_weights(labels, num_seen, settings.beta1), draw_key)
            net, boosted = boost.fit(
                net, data, fit_key, num_seen, self.stage_schedule(task.index, "boosting_epochs"),
                objective=Objective(trainable=self.trainable(BOOST, net, num_seen)))
            if settings.teacher_weight_aligning:
                net = align_weights(graphdef, net, "fc", jnp.int32(num_old), jnp.int32(num_seen),
                                    jnp.float32(settings.wa_value))
            boosting_acc = self.accuracy(BOOST, net, data, num_seen)
            net = start_compression(graphdef, net, jnp.int32(num_old), jnp.int32(num_seen),
                                    self.padded_weights(labels, num_seen, settings.beta2),
                                    compress_key)
            net, compressed = compress.fit(
                net, data, tune_key, num_seen,
                self.stage_schedule(task.index, "compression_epochs",
                                    settings.compression_weight_decay),
                objective=Objective(trainable=self.trainable(COMPRESS, net, num_seen)))
            if settings.student_weight_aligning:
                net = align_weights(graphdef, net, "student_head", jnp.int32(num_old),
                                    jnp.int32(num_seen), jnp.float32(settings.wa_value))
            self._task_stats = {"train_acc": self.accuracy(COMPRESS, net, data, num_seen),
                                "boosting_train_acc": boosting_acc}
            trained = boosted + compressed
            herding = boost  # PyCIL herds with its _network, the boosted model, after the task
        task_data = data._replace(size=jnp.int32(len(task.images)))
        new_buffer = self.exemplar_memory.update(
            state["buffer"], task_data.images, task_data.labels, task_data.size, memory_key,
            herding.features(net, task_data.images))
        if num_old:
            net = finish(graphdef, net)
        return Learned({**state, "net": net, "buffer": new_buffer}, trained)
