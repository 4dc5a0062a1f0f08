"""DER (Yan, Xie and He, "DER: Dynamically Expandable Representation for Class Incremental
Learning", CVPR 2021): a new feature extractor per task, the old ones frozen, one classifier over
all their features, an auxiliary classifier, exemplars, and weight aligning of the classifier.

    config.strategies = ("der",)
    config.memory.exemplars = 2000             # herding, an equal share per class seen
    config.der = ConfigDict({"aux_weight": 1.0, "backbone_init": "previous"})

Task t (of T, spec.tasks) goes:
1. Expand: backbone t (``config.model``'s stages, without its head) joins the t frozen ones,
   starting as a copy of backbone t - 1 (weights and BatchNorm statistics; ``backbone_init``).
   The classifier reads the concatenation of the t + 1 backbones' features: its weights of the old
   classes on the old features are kept, every other weight of the seen classes (backbone t's
   features, the new classes) is drawn afresh, the new classes' biases are 0. The auxiliary
   classifier is drawn afresh over backbone t's features alone: the new classes + 1 "old" class.
2. Train on the task's data and every exemplar as one set (as iCaRL), minimising
       cross-entropy of the classifier over the seen classes
       + aux_weight x cross-entropy of the auxiliary classifier, every old class's label being "old"
   (task 0: the first term alone). Only backbone t and the two classifiers move; the frozen
   backbones run with their running BatchNorm statistics, which never change again.
3. After each task but the first, weight aligning: the new classes' classifier weights scaled to the
   old classes' mean norm (``cil.baselines.wa.align_weights``, the function WA uses).
4. The auxiliary classifier is dropped (zeroed: nothing reads it after the task); the memory
   takes in the task's data by herding on the concatenated features, an equal share per class.
Prediction: the classifier's arg-max over the concatenated features.

Read against the paper (arXiv 2103.16788), the authors' code (Rhyssiyan/DER-ClassIL.pytorch,
``inclearn/models/incmodel.py``, ``convnet/network.py``) and PyCIL's ``models/der.py`` and
``utils/inc_net.py`` ``DERNet`` (G-U-N/PyCIL, commit 87cc411); where they differ, cil follows
PyCIL, the suite's reference implementation (PROTOCOL.md):
- Missing: the paper's channel-level masks, their sparsity loss and the pruning they drive (the
  paper's "DER", against its "DER w/o P"). PyCIL and the authors' public code leave them out too.
- Missing: the paper's classifier learning stage (the classifier re-initialised and retrained on
  class-balanced data with a temperature, the authors' ``decouple``). PyCIL replaces it with weight
  aligning, as cil does.
- The authors' code draws a whole new classifier each task, without biases; PyCIL keeps the old
  block (old classes x old features) and has biases, as cil. New weights are drawn as PyCIL's
  ``SimpleLinear`` draws them (Kaiming-uniform, gain 1: U(+-sqrt(3 / fan_in)), fan_in the active
  feature width).
- The auxiliary loss: weight 1 and none at task 0 in PyCIL and the authors' code alike.
- Exemplars: herding on the L2-normalised concatenated features, equal shares (PyCIL's
  ``fixed_memory=False``). cil gives the capacity % classes leftover slots to the first classes
  (cil/memory.py); PyCIL leaves them empty.
- PyCIL's recipe (SGD, momentum 0.9, batch 128; task 0: 200 epochs, lr 0.1, milestones 60/120/170,
  weight decay 5e-4; later tasks: 170 epochs, milestones 80/120/150, weight decay 2e-4) is not
  hard-coded: it is ``config.train`` and ``train.first_task``, as for every strategy.

Fixed shapes: all T backbones are allocated at ``init``, stacked along a leading axis of every
parameter (built by ``nnx.vmap``), and the classifier is one (T x d, C) matrix, d a backbone's
feature width. A model-state counter says how many backbones are active; the others' features are
zeroed, and their classifier rows and the unseen classes' columns are held at 0 (frozen through
``Objective.trainable``). So every task runs the same compiled step, expansion, alignment and
herding: one compile each per run, not one per grown size. The price: each training step runs
the frozen forward pass of all T slots (in evaluation mode, no gradient), not only the t active
ones as PyCIL, and backbone t once more in training mode.

MEMO (cil/baselines/memo.py) is this code with a shared trunk in front of the slots: ``Backbone``
takes a range of the network's stages, ``DERNet.trunk`` runs the first ``DER.shared_stages``
stages once (none for DER), ``trainable_mask`` and the memory accounting cover it.

Weight aligning, measured (tests/test_baselines.py's Split-Digits stream, tiny MLP, 5 epochs,
seeds 0-5, 2026-12-03): old-task mean at the end 0.502-0.685 with it, 0.855-0.938 without
(``weight_aligning=False``). Here gamma (old mean norm / new) was 1.3-1.8: the old classes'
weights gain norm task after task, the new ones start from a fresh draw, and short training on
barely imbalanced data does not make up for it, so aligning boosts the new classes. It is on by
default because PyCIL's DER does it.

Memory (PROTOCOL.md), by what is active after the task, not what is preallocated:
``learner_params`` = the active backbones' parameters + the classifier's block of active features x
seen classes (and their biases); ``side_state`` = the active backbones' BatchNorm statistics, the
active counter, the buffer's counters; ``exemplars`` as Replay. The old backbones are part of the
model, not a teacher: ``teacher_params`` is 0. The auxiliary classifier is redrawn at each task's
start and zeroed at its end, so nothing of it is kept: not charged. ``extras`` records the active
backbones, the feature width and the parameter bytes per task.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cil import models, parallel
from cil.baselines.replay import Replay
from cil.baselines.wa import align_weights
from cil.fields import Field, Flag, Integer, Number, OneOf
from cil.models.networks import Network, to_float
from cil.strategy import Learned, MemoryReport, StreamSpec, pytree_bytes
from cil.training import NEG_INF, Objective, seen_class_xent

BACKBONE_INITS = ("previous", "fresh")
ACTIVE_BYTES = 4  # the int32 count of active backbones (model state)


def auxiliary_labels(labels, num_old):
    """The auxiliary classifier's label of each class label: 0 ("old") for the classes before
    ``num_old``, 1 + its index among the new classes for the others (PyCIL's
    ``where(y - known + 1 > 0, y - known + 1, 0)``)."""
    return jnp.where(labels >= num_old, labels - num_old + 1, 0)


def der_loss(logits, labels, num_seen, *, num_classes: int, aux_weight: float):
    """Per-example DER loss from ``DERNet``'s training output: its first ``num_classes`` columns
    are the classifier's logits, the rest the auxiliary log-likelihood of each class's auxiliary
    label (``DERNet.auxiliary_log_likelihoods``; zeros at task 0, so no auxiliary term there).

    Why the network, not the loss, maps labels to auxiliary labels: the shared trainer hands a loss
    only (logits, labels, num_seen), while the network knows its task from its active count. So it
    returns, for every class, the log-probability of that class's auxiliary label, and the loss
    takes the example's column: PyCIL's auxiliary cross-entropy exactly, with no second label
    array and nothing recompiled per task."""
    main, auxiliary = logits[:, :num_classes], logits[:, num_classes:]
    aux_nll = -jnp.take_along_axis(auxiliary, labels[:, None], axis=-1)[:, 0]
    return seen_class_xent(main, labels, num_seen) + aux_weight * aux_nll


class ActiveBackbones(nnx.Variable):
    """How many backbones are active: model state, set at each task's start, never trained."""


class Backbone(nnx.Module):
    """A network's stages [start, stop) without its head: what DER stacks, one per task (all the
    stages), and what MEMO splits into its shared trunk and the specialized blocks it stacks."""

    def __init__(self, network: Network, start: int = 0, stop: int | None = None):
        self.stages = nnx.List(list(network.stages)[start:stop])
        # Only the first stage reads images; later stages get float features, which ``to_float``
        # passes through.
        self.input_mean, self.input_std = network.input_mean, network.input_std

    def __call__(self, images, train: bool = False):
        x = to_float(images, self.input_mean, self.input_std)
        for stage in self.stages:
            x = stage(x, train)
        return x


class DERNet(nnx.Module):
    """``backbones``: a ``Backbone`` whose every variable has a leading axis of T slots (one per
    task); ``head`` the classifier over all slots' features; ``aux_head`` the auxiliary classifier
    over one slot's features (column 0: "old", column 1 + i: the task's i-th new class).

    ``class_spans[t]``: task t's (first class, end class), static. The slots from ``active`` on
    give zero features; in training mode slot ``active - 1`` runs in training mode (batch
    statistics, its running averages updated), every other slot in evaluation mode.

    ``trunk`` (MEMO; None for DER): stages shared by every slot, run once before them. In
    training mode it runs in training mode (batch statistics) when ``train_shared`` (static) or
    at task 0, else in evaluation mode with its statistics left as they are.
    """

    def __init__(self, backbones: Backbone, feature_dim: int, num_classes: int,
                 class_spans: tuple[tuple[int, int], ...], input_mean=None, input_std=None,
                 trunk: Backbone | None = None, train_shared: bool = True):
        num_tasks = len(class_spans)
        widest_task = max(end - first for first, end in class_spans)
        zeros = nnx.initializers.zeros
        rngs = nnx.Rngs(0)  # unused: every weight starts at 0 and is drawn by ``expand``
        self.backbones = backbones
        self.trunk = trunk
        self.train_shared = bool(train_shared)
        self.head = nnx.Linear(num_tasks * feature_dim, num_classes, kernel_init=zeros,
                               bias_init=zeros, rngs=rngs)
        self.aux_head = nnx.Linear(feature_dim, widest_task + 1, kernel_init=zeros,
                                   bias_init=zeros, rngs=rngs)
        self.active = ActiveBackbones(jnp.int32(0))
        self.num_tasks, self.feature_dim, self.num_classes = num_tasks, feature_dim, num_classes
        self.class_spans = tuple((int(a), int(b)) for a, b in class_spans)
        # Read by the trainer in bfloat16 (it standardises the images itself); the backbones
        # hold the same values for float32.
        self.input_mean, self.input_std = input_mean, input_std

    def slot_features(self, images, train: bool = False):
        """(T, N, d) every slot's features, zero for inactive slots, and the newest active slot's
        features (training mode when ``train``, else None)."""
        if self.trunk is not None:  # gradients reach it through every active slot
            images = self.shared_features(images, train)
        graphdef, state = nnx.split(self.backbones)
        if train:  # frozen slots: no gradient for their weights (their input still passes one
            state = jax.lax.stop_gradient(state)  # on to a MEMO trunk, as PyCIL's autograd does)
        # Every slot, active or not, in evaluation mode (fixed shapes: the count is traced); in
        # training the newest slot's result here is replaced by its training-mode pass below.
        frozen = jax.vmap(lambda s: nnx.merge(graphdef, s)(images, train=False))(state)
        slots = jnp.arange(self.num_tasks)[:, None, None]
        features = jnp.where(slots < self.active[...], frozen, 0.0)
        if not train:
            return features, None
        newest = jnp.maximum(self.active[...] - 1, 0)
        graphdef, state = nnx.split(self.backbones)  # with gradients, this time
        backbone = nnx.merge(graphdef, jax.tree.map(lambda a: a[newest], state))
        new_features = backbone(images, train=True)
        # Its BatchNorm statistics, updated by the batch, go back into its slot only.
        stats = nnx.state(self.backbones, nnx.Not(nnx.Param))
        nnx.update(self.backbones, jax.tree.map(lambda all_, one: all_.at[newest].set(one), stats,
                                                nnx.state(backbone, nnx.Not(nnx.Param))))
        return jnp.where(slots == newest, new_features[None], features), new_features

    def shared_features(self, images, train: bool = False):
        """The trunk's output; see the class docstring for its BatchNorm mode."""
        if not train or self.train_shared:
            return self.trunk(images, train)
        # Frozen after task 0: the mode follows the traced task, so both passes run (one compiled
        # step for every task) and the running statistics keep the training pass's update only
        # at task 0.
        first = self.active[...] <= 1
        before = jax.tree.map(lambda a: a, nnx.state(self.trunk, nnx.Not(nnx.Param)))
        evaluated = self.trunk(images, False)
        trained = self.trunk(images, True)
        after = nnx.state(self.trunk, nnx.Not(nnx.Param))
        nnx.update(self.trunk, jax.tree.map(lambda new, old: jnp.where(first, new, old),
                                            after, before))
        return jnp.where(first, trained, evaluated)

    def features(self, images, train: bool = False):
        """The classifier's input: the slots' features side by side, (N, T x d)."""
        return self._concatenate(self.slot_features(images, train)[0])

    def _concatenate(self, slot_features):
        return jnp.moveaxis(slot_features, 0, 1).reshape(slot_features.shape[1], -1)

    def auxiliary_log_likelihoods(self, new_features):
        """(N, C): for each class c, the auxiliary classifier's log-probability of c's auxiliary
        label (``auxiliary_labels``), over "old" and the task's new classes; zeros at task 0."""
        first, end = (jnp.asarray(column) for column in zip(*self.class_spans))
        task = jnp.maximum(self.active[...] - 1, 0)
        num_old, num_new = first[task], end[task] - first[task]
        logits = self.aux_head(new_features)
        logits = jnp.where(jnp.arange(logits.shape[-1]) <= num_new, logits, NEG_INF)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        # Classes past the task map beyond its columns: clipped, never a label during the task.
        columns = jnp.minimum(auxiliary_labels(jnp.arange(self.num_classes), num_old),
                              logits.shape[-1] - 1)
        return jnp.where(num_old > 0, log_probs[:, columns], 0.0)

    def __call__(self, images, train: bool = False):
        """The classifier's logits (N, C); in training mode followed by
        ``auxiliary_log_likelihoods`` (N, C), which ``der_loss`` reads."""
        slot_features, new_features = self.slot_features(images, train)
        logits = self.head(self._concatenate(slot_features))
        if not train:
            return logits
        return jnp.concatenate([logits, self.auxiliary_log_likelihoods(new_features)], axis=-1)


def _merge(graphdef, net):
    return nnx.merge(graphdef, net["params"], net["model_state"], copy=True)


def _split(model) -> dict:
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return {"params": params, "model_state": model_state}


def _pycil_uniform(key, shape, fan_in):
    """PyCIL's ``SimpleLinear`` weights: Kaiming-uniform with gain 1, U(+-sqrt(3 / fan_in))."""
    bound = jnp.sqrt(3.0 / fan_in)
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


@functools.partial(jax.jit, static_argnums=(0, 4))
def expand(graphdef, net: dict, task, key, copy_previous: bool) -> dict:
    """``net`` ready for task ``task``: slot ``task`` active (a copy of slot task - 1 when
    ``copy_previous``), the classifier's new entries drawn, a fresh auxiliary classifier."""
    model = _merge(graphdef, net)
    if copy_previous:  # PyCIL and the authors: load_state_dict of the previous extractor
        source = jnp.maximum(task - 1, 0)  # task 0 copies slot 0 onto itself: keeps its draw
        state = nnx.state(model.backbones)
        nnx.update(model.backbones, jax.tree.map(lambda a: a.at[task].set(a[source]), state))
    first, end = (jnp.asarray(column) for column in zip(*model.class_spans))
    num_old, num_seen = first[task], end[task]
    d = model.feature_dim
    kernel = model.head.kernel[...]
    rows = jnp.arange(kernel.shape[0])[:, None]
    classes = jnp.arange(kernel.shape[1])[None, :]
    active = (rows < (task + 1) * d) & (classes < num_seen)
    kept = (rows < task * d) & (classes < num_old)  # old classes on old features
    head_key, aux_key = jax.random.split(key)
    drawn = _pycil_uniform(head_key, kernel.shape, (task + 1) * d)
    model.head.kernel[...] = jnp.where(kept, kernel, jnp.where(active, drawn, 0.0))
    bias = model.head.bias[...]
    model.head.bias[...] = jnp.where(jnp.arange(bias.shape[0]) < num_old, bias, 0.0)
    aux = model.aux_head.kernel[...]
    model.aux_head.kernel[...] = jnp.where(jnp.arange(aux.shape[1]) <= num_seen - num_old,
                                           _pycil_uniform(aux_key, aux.shape, d), 0.0)
    model.aux_head.bias[...] = jnp.zeros_like(model.aux_head.bias[...])
    model.active[...] = jnp.int32(task + 1)
    return _split(model)


@functools.partial(jax.jit, static_argnums=0)
def trainable_mask(graphdef, net: dict):
    """``Objective.trainable`` for the task ``net`` was expanded for: the newest backbone slot,
    the classifier's block of active features x seen classes, the auxiliary classifier."""
    model = _merge(graphdef, net)
    task = model.active[...] - 1
    num_seen = jnp.asarray([end for _, end in model.class_spans])[task]
    d = model.feature_dim

    def leaf(path, param):
        name = getattr(path[0], "key", None)
        if name == "backbones":
            return (jnp.arange(param.shape[0]) == task).reshape(-1, *[1] * (param.ndim - 1))
        if name == "trunk":  # MEMO's shared stages: trained at task 0, later if train_shared
            return (task == 0) | jnp.asarray(model.train_shared)
        if name == "head":
            classes = jnp.arange(param.shape[-1]) < num_seen
            if param.ndim == 1:
                return classes
            return (jnp.arange(param.shape[0]) < (task + 1) * d)[:, None] & classes[None, :]
        return jnp.ones((), bool)

    return jax.tree_util.tree_map_with_path(leaf, net["params"])


@functools.partial(jax.jit, static_argnums=0)
def drop_auxiliary(graphdef, net: dict) -> dict:
    """``net`` with the auxiliary classifier zeroed: nothing reads it after its task."""
    model = _merge(graphdef, net)
    for weight in (model.aux_head.kernel, model.aux_head.bias):
        weight[...] = jnp.zeros_like(weight[...])
    return _split(model)


class DER(Replay):
    name = "der"
    exemplars_in_task_set = True

    def __init__(self, config):
        super().__init__(config)
        self._slot_sizes = {}

    @classmethod
    def fields(cls):
        return {
            "exemplars": Field(2000, Integer(min=0), "only when config.memory sets no budget"),
            "aux_weight": Field(1.0, Number(min=0), "the auxiliary loss's weight (PyCIL: 1)"),
            "backbone_init": Field("previous", OneOf(*BACKBONE_INITS),
                                   "previous: a new backbone starts as a copy of the last one "
                                   "(PyCIL, the authors); fresh: its own random draw"),
            "weight_aligning": Field(True, Flag(), "align the new classes' classifier weights "
                                     "after each task but the first (PyCIL)"),
        }

    def selection(self):
        return "herding", True

    def backbone_network(self, spec: StreamSpec, key) -> Network:
        """One backbone's network (``config.model``; its head is dropped)."""
        return models.build(self.config.model, spec.image_shape, spec.num_classes, seed=key)

    def shared_stages(self, spec: StreamSpec) -> int:
        """How many of the network's first stages all slots share, run once in front of them
        (MEMO's generalized blocks); DER shares none."""
        return 0

    def train_shared(self) -> bool:
        """Whether the shared stages keep training after task 0 (MEMO; DER has none)."""
        return True

    def model(self, spec: StreamSpec, seed) -> DERNet:
        key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
        shared = self.shared_stages(spec)

        @nnx.vmap(in_axes=0, out_axes=0)
        def stacked(slot_key):  # T backbones, each variable with a leading slot axis
            return Backbone(self.backbone_network(spec, slot_key), start=shared)

        template = nnx.eval_shape(lambda: self.backbone_network(spec, key))
        spans = tuple((span.classes[0], span.classes[-1] + 1) for span in spec.tasks)
        trunk = None
        if shared:  # its own draw, after the slots' T
            trunk_network = self.backbone_network(spec, jax.random.fold_in(key, spec.num_tasks))
            trunk = Backbone(trunk_network, stop=shared)
        return DERNet(stacked(jax.random.split(key, spec.num_tasks)), template.head.in_features,
                      spec.num_classes, spans, template.input_mean, template.input_std,
                      trunk=trunk, train_shared=self.train_shared())

    def classification_loss(self):
        return functools.partial(der_loss, num_classes=self.spec.num_classes,
                                 aux_weight=float(self.config.strategy.aux_weight))

    # --- memory accounting ---------------------------------------------------------------------

    def slot_sizes(self, spec: StreamSpec) -> tuple[int, int, int, int, int, int]:
        """(parameter bytes, BatchNorm statistics bytes, feature width d) of one backbone, the
        classifier's bytes per weight, and (parameter bytes, statistics bytes) of the shared
        trunk (MEMO; 0 and 0 for DER): from the network's shapes, once per stream."""
        if spec not in self._slot_sizes:
            model = self.abstract_network(spec)
            params = pytree_bytes(nnx.state(model.backbones, nnx.Param))
            stats = pytree_bytes(nnx.state(model.backbones, nnx.Not(nnx.Param)))
            trunk_params = trunk_stats = 0
            if model.trunk is not None:
                trunk_params = pytree_bytes(nnx.state(model.trunk, nnx.Param))
                trunk_stats = pytree_bytes(nnx.state(model.trunk, nnx.Not(nnx.Param)))
            itemsize = np.dtype(jax.tree.leaves(nnx.state(model.head))[0].dtype).itemsize
            self._slot_sizes[spec] = (params // spec.num_tasks, stats // spec.num_tasks,
                                      model.feature_dim, itemsize, trunk_params, trunk_stats)
        return self._slot_sizes[spec]

    def active_bytes(self, spec: StreamSpec, active: int) -> tuple[int, int]:
        """(learner parameter bytes, BatchNorm statistics bytes) with ``active`` backbones: the
        backbones, the shared trunk once (when any is active; MEMO) and the classifier's block of
        their features x the classes seen by then."""
        params, stats, d, itemsize, trunk_params, trunk_stats = self.slot_sizes(spec)
        seen = spec.tasks[active - 1].classes[-1] + 1 if active else 0
        head = (active * d * seen + seen) * itemsize
        trunk = active > 0
        return (trunk * trunk_params + active * params + head,
                trunk * trunk_stats + active * stats)

    def network_bytes(self, spec):
        # What the buffer's budget must leave room for: the network at its largest, all T active.
        return sum(self.active_bytes(spec, spec.num_tasks))

    def side_bytes(self, spec):
        return ACTIVE_BYTES

    def active_backbones(self, state) -> int:
        return int(jax.device_get(state["net"]["model_state"]["active"][...]))

    def memory(self, state):
        params, stats = self.active_bytes(self.spec, self.active_backbones(state))
        buffer = self.exemplar_memory.report(state["buffer"])
        return MemoryReport(exemplars=buffer.exemplars, num_exemplars=buffer.num_exemplars,
                            learner_params=params,
                            side_state=stats + ACTIVE_BYTES + buffer.side_state)

    def extras(self, state):
        active = self.active_backbones(state)
        return {"backbones": active, "feature_dim": active * self.slot_sizes(self.spec)[2],
                "param_bytes": self.active_bytes(self.spec, active)[0]}

    # --- learning ------------------------------------------------------------------------------

    def learn(self, state, task, key):
        num_old, num_seen = task.classes[0], task.classes[-1] + 1
        settings = self.config.strategy
        graphdef = self._trainer.graphdef
        expand_key, fit_key = jax.random.split(key)
        net = expand(graphdef, state["net"], task.index, expand_key,
                     settings.backbone_init == "previous")
        mask = parallel.replicate(self._trainer.mesh, trainable_mask(graphdef, net))
        net, buffer, trained = self.fit_with_exemplars(
            {**state, "net": net}, task, fit_key, Objective(trainable=mask))
        if num_old and settings.weight_aligning:
            net = align_weights(graphdef, net, num_old, num_seen)
        net = drop_auxiliary(graphdef, net)
        return Learned({**state, "net": net, "buffer": buffer}, trained)
