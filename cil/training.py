"""The shared, jitted training loop: fixed shapes, compiled once per run, a schedule per task.

    trainer = Trainer(graphdef, config.train, mesh, capacity=max_task_size)
    data = trainer.put(task.images, task.labels)          # padded to capacity, on the devices
    schedule = task_schedule(config.train, task.index)    # epochs, lr per epoch, weight decay
    net, examples = trainer.fit(net, data, key, num_seen, schedule)
    # replay: each step also draws a batch from an exemplar buffer, gathered inside the step
    net, examples = trainer.fit(net, data, key, num_seen, schedule,
                                memory=MemoryBatches(DeviceData(images, labels, size), 128))
    # what each step minimises, beyond cross-entropy over the seen classes (iCaRL, LwF, WA, EWC)
    net, examples = trainer.fit(..., objective=Objective(
        distill=Distillation(old_net, num_old, temperature=2.0), first_class=num_old,
        penalty=ParameterPenalty(anchor_params, fisher, weight=1000.0)))
    # PODNet: pooled-outputs distillation from the old net; parameters outside ``mask`` held fixed
    net, examples = trainer.fit(..., objective=Objective(
        pod=PooledOutputsDistillation(old_net, spatial_weight=5.0, flat_weight=1.0),
        trainable=mask))
    scores = trainer.logits(net, images); feats = trainer.features(net, images)

``net`` is ``{"params", "model_state"}``; ``fit`` starts a fresh optimiser state (``init``) and
calls ``epoch`` once per epoch, which is the lower-level API.

The recipe (``config.train``): SGD, Adam or AdamW; a learning-rate schedule over epochs
(``constant``, ``multistep`` with ``milestones`` and ``gamma``, ``cosine`` with optional
``warmup_epochs``), restarted at every task, as PyCIL's per-task MultiStepLR is; the fields of
``train.first_task`` override the others for task 0 (PyCIL trains the base task for 200 epochs,
later ones for 70-170); ``train.augment`` (cil/data/augment.py) is applied to every batch inside
the compiled step, exemplars included. Learning rate and weight decay are traced values of the
optimiser state (``optax.inject_hyperparams``), so a new schedule never recompiles.

Why it is shaped this way (DESIGN.md, "Speed on CPU"):
- a task's data is padded to a fixed ``capacity`` and its true size passed as a traced number, so
  tasks of different sizes reuse one compiled program (no recompile per task); a memory buffer is
  likewise a fixed number of slots and a traced count;
- an epoch runs in calls of ``steps_per_call`` training steps: shuffling is a sort of random keys
  with the padding pushed to the end, a batch is a gather by index, the last partial batch is
  masked, and the memory batch is a gather from the buffer in the same step;
- ``steps_per_call``: XLA:CPU runs a convolution inside a loop (``while``, and ``cond`` too) 13-25x
  slower than outside one (jax-ml/jax#12868; ``benchmarks/train_throughput.md``, one device: CNN
  41-46 images/s in a ``fori_loop``, about 1,150 as a jitted step called from Python, 1,440-1,490
  as four steps unrolled in one call). So on the CPU a network with convolutions runs 4 steps
  unrolled per call (a balance of speed and compile time, which grows with the steps unrolled;
  ``--unroll`` of benchmarks/train_throughput.py measures other counts), steps past the epoch's
  end masked into no-ops; every other network, and every network on GPU and TPU, runs the whole
  epoch as one ``fori_loop`` (0), where the loop costs nothing and saves a dispatch per step.
  ``train.steps_per_call`` overrides the choice;
- each batch is sharded over the devices' ``data`` axis, so the same code is data-parallel on
  several GPUs, TPU cores or virtual CPU devices; the row indices are split before the gathers,
  so each device gathers its own rows and only gradients (and loss sums) cross devices. On
  several CPU devices each call is waited for before the next is sent (``wait_for_each_call``):
  with many calls in flight their all-reduces deadlocked.

The loss is cross-entropy over the classes seen so far (logits of later classes are masked out),
which is what a growing classifier head computes (or the ``loss`` given to the Trainer: PODNet's
NCA), and what an ``Objective`` adds to it: a weight on it, a first class (the new task's head
only), distillation, a parameter penalty, PODNet's pooled-outputs distillation, frozen entries.
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

from cil import monitor, parallel
from cil.data import augment
from cil.errors import ConfigError, DivergenceError
from cil.fields import Field, Integer, Number, OneOf, Optional, Sequence, check
from cil.models.networks import normalize, safe_norm, to_float

NEG_INF = -1e9  # stands for minus infinity in masked logits (avoids inf - inf = nan)


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The fields of config.train that make up a task's schedule; train.first_task may override each.
SCHEDULE_FIELDS = {
    "epochs": Field(1, Integer(min=1), "epochs per task"),
    "learning_rate": Field(0.01, Number(above=0), "the schedule's peak (and starting) rate"),
    # constant, multistep (times gamma at each milestone epoch) or cosine (after warmup_epochs)
    "schedule": Field("constant", OneOf(*SCHEDULES), "learning rate over the epochs of a task"),
    "milestones": Field((), Sequence(Integer(min=1), increasing=True), "multistep's epochs"),
    "gamma": Field(0.1, Number(above=0), "multistep's factor at each milestone"),
    "warmup_epochs": Field(0, Integer(min=0), "cosine's linear warmup"),
    "weight_decay": Field(0.0, Number(min=0), "L2 penalty, as PyTorch's SGD and Adam apply it"),
}
SCHEDULE_DEFAULTS = {k: f.default for k, f in SCHEDULE_FIELDS.items()}
# config.train: the recipe of every task, restarted at each (cil/experiment.py checks it).
FIELDS = {
    "optimizer": Field("sgd", OneOf(*OPTIMIZERS)),
    "momentum": Field(0.0, Number(min=0, below=1), "SGD's momentum (0: none)"),
    "batch_size": Field(128, Integer(min=1), "new examples per step, split over the devices"),
    **SCHEDULE_FIELDS,
    # Task 0's own recipe: each field set here overrides the one above for task 0 only.
    "first_task": {k: Field(None, Optional(f.rule), f.help) for k, f in SCHEDULE_FIELDS.items()},
    "augment": augment.TRAINING_FIELDS,  # per batch, on the device; off by default
    "compute_dtype": Field("float32", OneOf(*COMPUTE_DTYPES),
                           "bfloat16: mixed precision, parameters kept in float32"),
    "steps_per_call": Field(None, Optional(Integer(min=0)),
                            "steps per compiled call; unset: by network and backend (0: a loop)"),
}
# Training steps per compiled call for a network with convolutions on XLA:CPU (see above).
CPU_CONV_STEPS_PER_CALL = 4


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``train.optimizer`` in {sgd, adam, adamw}; learning rate and weight decay are injected
    hyperparameters, set per epoch by the schedule (``set_hyperparameters``).

    Weight decay as PyTorch's SGD and Adam apply it (added to the gradient before momentum);
    AdamW's is decoupled.
    """
    kind, momentum = train.optimizer, train.momentum or None

    def build(learning_rate, weight_decay):
        if kind == "adamw":
            return optax.adamw(learning_rate, weight_decay=weight_decay)
        base = optax.sgd(learning_rate, momentum=momentum) if kind == "sgd" else optax.adam(
            learning_rate)
        return optax.chain(optax.add_decayed_weights(weight_decay), base)

    return optax.inject_hyperparams(build)(learning_rate=train.learning_rate,
                                           weight_decay=train.weight_decay)


def set_hyperparameters(opt_state, learning_rate, weight_decay):
    """``opt_state`` (of ``make_optimizer``, possibly chained) with this epoch's values."""
    return optax.tree_utils.tree_set(opt_state, learning_rate=learning_rate,
                                     weight_decay=weight_decay)


class Schedule(NamedTuple):
    """How one task is trained: the learning rate of each epoch, and the weight decay."""

    learning_rates: tuple[float, ...]  # one per epoch
    weight_decay: float

    @property
    def epochs(self) -> int:
        return len(self.learning_rates)

    @classmethod
    def constant(cls, epochs: int, learning_rate: float, weight_decay: float = 0.0) -> "Schedule":
        return cls((float(learning_rate),) * int(epochs), float(weight_decay))


def epoch_schedule(settings) -> optax.Schedule:
    """The learning rate as an optax schedule over epochs (PyTorch's schedulers step per epoch)."""
    name, lr, epochs = settings["schedule"], settings["learning_rate"], settings["epochs"]
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "multistep":  # torch MultiStepLR: times gamma from each milestone epoch on
        return optax.piecewise_constant_schedule(
            lr, {int(m): settings["gamma"] for m in settings["milestones"]})
    warmup = int(settings["warmup_epochs"])
    if not warmup:  # torch CosineAnnealingLR(T_max=epochs), eta_min 0
        return optax.cosine_decay_schedule(lr, epochs)
    # Linear from lr / (warmup + 1) up to lr at epoch ``warmup``, then cosine to 0 at ``epochs``.
    return optax.warmup_cosine_decay_schedule(lr / (warmup + 1), lr, warmup, epochs)


def schedule_settings(train: ml_collections.ConfigDict, task_index: int) -> dict:
    """The schedule fields for task ``task_index``: ``train.first_task``'s set fields win on task 0.

    Each field is checked against its rule (``FIELDS``), then what must fit together.
    """
    check({k: v for k, v in train.items() if k in FIELDS}, FIELDS, "train", partial=True)
    settings = {k: train.get(k, default) for k, default in SCHEDULE_DEFAULTS.items()}
    overridden = {}
    if task_index == 0:
        overridden = {k: v for k, v in dict(train.get("first_task") or {}).items() if v is not None}
        settings.update(overridden)
    field = lambda k: f"train.first_task.{k}" if k in overridden else f"train.{k}"  # noqa: E731
    epochs = int(settings["epochs"])
    if settings["schedule"] == "multistep" and any(m >= epochs for m in settings["milestones"]):
        raise ConfigError(f"{field('milestones')}={tuple(settings['milestones'])} reaches past the "
                          f"last epoch ({field('epochs')}={epochs}), where it never takes effect; "
                          f"use milestones below {epochs} or train more epochs")
    if settings["schedule"] == "cosine" and int(settings["warmup_epochs"]) >= epochs:
        raise ConfigError(f"{field('warmup_epochs')}={settings['warmup_epochs']} must be below "
                          f"{field('epochs')}={epochs}")
    return settings


def task_schedule(train: ml_collections.ConfigDict, task_index: int) -> Schedule:
    """Epochs, the learning rate of each epoch and the weight decay for task ``task_index``,
    restarted at every task."""
    return settings_schedule(schedule_settings(train, task_index))


def settings_schedule(settings) -> Schedule:
    """The ``Schedule`` of a dict of ``SCHEDULE_FIELDS`` (a second stage's own recipe: PODNet's
    class-balanced finetuning)."""
    lr = epoch_schedule(settings)
    return Schedule(tuple(float(lr(e)) for e in range(int(settings["epochs"]))),
                    float(settings["weight_decay"]))


def steps_per_call(train: ml_collections.ConfigDict, graphdef) -> int:
    """Training steps per compiled call; 0: the whole epoch in one ``fori_loop`` (see above)."""
    chosen = train.get("steps_per_call")
    if chosen is not None:
        return int(chosen)
    if jax.default_backend() == "cpu" and has_convolution(graphdef):
        return CPU_CONV_STEPS_PER_CALL
    return 0


def compute_dtype(train: ml_collections.ConfigDict):
    """``train.compute_dtype``: float32, or bfloat16 (mixed precision: parameters, optimiser state
    and gradients stay float32; the forward and backward passes run in bfloat16, the loss in
    float32). Off by default until its effect on accuracy is measured per benchmark."""
    return COMPUTE_DTYPES[train.get("compute_dtype") or "float32"]


def has_convolution(graphdef) -> bool:
    """Whether the network of ``graphdef`` holds an ``nnx.Conv`` (or a subclass of it)."""
    return any(isinstance(kind, type) and issubclass(kind, nnx.Conv)
               for kind in (getattr(node, "metadata", None) for node in graphdef.nodes))


def mask_unseen(logits, num_seen):
    """Scores of classes not seen yet (index >= ``num_seen``) set to NEG_INF: the one mask of the
    suite, for losses and for the evaluator's arg-max alike."""
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
    weight: float | jax.Array = 1.0  # traced: a weight that changes per task never recompiles


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ParameterPenalty:
    """Adds ``weight / 2 * sum(importance * (params - anchor) ** 2)`` (EWC's quadratic penalty);
    ``anchor`` and ``importance`` are pytrees shaped as the network's params."""

    anchor: dict
    importance: dict
    weight: float | jax.Array = 1.0

    def __call__(self, params):
        terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params,
                             self.anchor, self.importance)
        return 0.5 * self.weight * sum(jax.tree.leaves(terms))


def pod_maps(activations: list) -> list:
    """What POD-spatial compares, from ``Network.activations`` (input first), as (B, H, W, C).

    The stage outputs that are feature maps (4-D) and end a run of outputs of their shape: the end
    of each width group of a ResNet (ResNet-32: PyCIL's three stage outputs, not its 15 blocks),
    each pooled block of the CNNs. A network without feature maps (an MLP) has each stage's 2-D
    output read as a 1x1 map, for which POD-spatial is the distance between the L2-normalised
    squared activations (the width and height poolings are then the same vector, twice).
    """
    outputs = activations[1:]
    maps = [a for a, after in zip(outputs, [*outputs[1:], None])
            if a.ndim == 4 and (after is None or after.shape != a.shape)]
    return maps or [a.reshape(a.shape[0], 1, 1, -1) for a in outputs]


def pod_spatial_loss(maps, teacher_maps):
    """Per-example POD-spatial (Douillard et al. 2020, eq. 2-4, as PyCIL's ``pod_spatial_loss``):
    per map, the squared activations summed over the width and over the height, concatenated and
    L2-normalised; the Euclidean distance to the teacher's; the mean over the maps."""
    def pooled(a):
        a = jnp.square(a.astype(jnp.float32))
        n = a.shape[0]
        return normalize(jnp.concatenate([a.sum(2).reshape(n, -1), a.sum(1).reshape(n, -1)], -1))

    distances = [safe_norm(pooled(t) - pooled(s)) for s, t in zip(maps, teacher_maps)]
    return sum(distances) / len(distances)


def pod_flat_loss(features, teacher_features):
    """Per-example POD-flat: 1 - the cosine between the student's and the teacher's embedding
    (PyCIL's ``cosine_embedding_loss`` with target 1)."""
    return 1.0 - jnp.sum(normalize(features.astype(jnp.float32))
                         * normalize(teacher_features.astype(jnp.float32)), -1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PooledOutputsDistillation:
    """PODNet: adds ``spatial_weight`` x ``pod_spatial_loss`` over ``pod_maps`` and
    ``flat_weight`` x ``pod_flat_loss`` on the head's input, against a frozen ``teacher`` net
    (evaluation mode), on every example of the batch."""

    teacher: dict  # {"params", "model_state"} of the same graphdef (a ``Network``)
    spatial_weight: float | jax.Array = 1.0  # traced: PODNet's factor changes per task
    flat_weight: float | jax.Array = 1.0

    def __call__(self, activations, teacher_activations):
        spatial = pod_spatial_loss(pod_maps(activations), pod_maps(teacher_activations))
        flat = pod_flat_loss(activations[-1], teacher_activations[-1])
        return self.spatial_weight * spatial + self.flat_weight * flat


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MemoryConstraints:
    """GEM and A-GEM: a step trains on its new examples only, and their gradient g is replaced by
    the z closest to it with z . g_k >= 0 for the gradient g_k of each group k of the step's
    memory examples, so that no group's loss rises to first order (Lopez-Paz and Ranzato 2017,
    eq. 10-13; ``project_onto_memory``). A-GEM (Chaudhry et al. 2019, eq. 11) is one group
    holding the whole memory: the same problem, solved by its closed-form projection.

    ``group_of_class[c]`` is the group of class c's examples (GEM: its task). With
    ``within_group`` every example's loss is the cross-entropy over its own group's classes (GEM's
    per-task losses: the new examples' over the new task's classes), else over the seen classes.
    A parameter penalty cannot be combined with them (no method asks for both; ``traced`` refuses).
    """

    group_of_class: jax.Array  # (num_classes,) int
    num_groups: int = dataclasses.field(metadata={"static": True})
    within_group: bool = dataclasses.field(default=False, metadata={"static": True})
    margin: float | jax.Array = 0.0  # the dual's lower bound (GEM's code: memory_strength)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Objective:
    """What one task's steps minimise: ``xent_weight`` x cross-entropy over classes
    [``first_class``, num_seen), plus the distillation and penalty terms when given.

    ``first_class`` > 0 trains the new task's classes among themselves, as LwF and EWC do in
    PyCIL (``cross_entropy(logits[:, known:], targets - known)``): every label must be at least
    ``first_class``. Numbers are traced, so their values per task share one compiled step.

    ``trainable``: booleans shaped as the params (each leaf broadcastable to its parameter);
    the entries that are False keep their value bitwise, whatever the optimiser computes for
    them (PODNet's frozen old proxies: the mask is applied after weight decay and momentum).
    """

    first_class: int | jax.Array = 0
    xent_weight: float | jax.Array = 1.0
    distill: Distillation | None = None
    penalty: ParameterPenalty | None = None
    memory_constraints: MemoryConstraints | None = None  # GEM, A-GEM
    pod: PooledOutputsDistillation | None = None
    trainable: dict | None = None

    def traced(self) -> "Objective":
        """The same objective with its numbers as int32/float32 arrays (one compile for all)."""
        distill = self.distill
        if distill is not None:
            distill = dataclasses.replace(distill, num_classes=jnp.int32(distill.num_classes),
                                          weight=jnp.float32(distill.weight))
        penalty = self.penalty
        if penalty is not None:
            penalty = dataclasses.replace(penalty, weight=jnp.float32(penalty.weight))
        pod = self.pod
        if pod is not None:
            pod = dataclasses.replace(pod, spatial_weight=jnp.float32(pod.spatial_weight),
                                      flat_weight=jnp.float32(pod.flat_weight))
        constraints = self.memory_constraints
        if constraints is not None and self.penalty is not None:
            raise ValueError("an Objective cannot combine memory constraints with a parameter "
                             "penalty: the constrained step does not add the penalty")
        if constraints is not None:
            constraints = dataclasses.replace(
                constraints, group_of_class=jnp.asarray(constraints.group_of_class, jnp.int32),
                margin=jnp.float32(constraints.margin))
        return dataclasses.replace(self, first_class=jnp.int32(self.first_class),
                                   xent_weight=jnp.float32(self.xent_weight), distill=distill,
                                   penalty=penalty, pod=pod, memory_constraints=constraints)


def weighted_mean(values, weights):
    """The mean of ``values`` weighted by ``weights`` (0 where every weight is 0)."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# Gauss-Seidel sweeps over the groups in ``solve_memory_dual``. A fixed count, no convergence
# test: with nearly parallel task gradients Gauss-Seidel converges slowly and can stop short of
# the exact projection; tests/test_gem.py checks four moderately correlated tasks against an
# exact solver.
DUAL_SWEEPS = 50


def solve_memory_dual(gram, dots, margin, sweeps: int = DUAL_SWEEPS):
    """GEM's dual (Lopez-Paz and Ranzato 2017, eq. 13): the v >= ``margin`` that minimises
    1/2 v'Pv + p'v, P = ``gram`` (K, K), p = ``dots`` (K,), by projected Gauss-Seidel: each
    coordinate minimised exactly in turn, ``sweeps`` times over the K. Groups without a gradient
    (a zero diagonal: no example of theirs in the step) keep v = 0. One group (A-GEM) takes one
    step, which is exact: v = max(margin, -p / P)."""
    num_groups = dots.shape[0]
    sweeps = sweeps if num_groups > 1 else 1
    diagonal = jnp.diagonal(gram)
    active = diagonal > 0

    def coordinate(i, v):
        k = i % num_groups
        step = (gram[k] @ v + dots[k]) / jnp.where(active[k], diagonal[k], 1.0)
        return v.at[k].set(jnp.where(active[k], jnp.maximum(margin, v[k] - step), 0.0))

    start = jnp.where(active, margin, 0.0).astype(dots.dtype)
    return jax.lax.fori_loop(0, sweeps * num_groups, coordinate, start)


def project_onto_memory(grads, memory_grads, margin=0.0):
    """GEM's step direction: ``grads`` + sum_k v_k ``memory_grads``[k] with v from
    ``solve_memory_dual``, when some g . g_k < 0; else ``grads`` unchanged (as GEM's code: the
    program is solved only on a conflict). ``memory_grads``: each leaf with a leading group axis."""
    flat = [m.reshape(m.shape[0], -1) for m in jax.tree.leaves(memory_grads)]
    gram = sum(m @ m.T for m in flat)
    dots = sum(m @ g.reshape(-1) for m, g in zip(flat, jax.tree.leaves(grads)))
    v = jax.lax.cond(jnp.any(dots < 0), lambda: solve_memory_dual(gram, dots, margin),
                     lambda: jnp.zeros_like(dots))
    return jax.tree.map(lambda g, m: g + jnp.tensordot(v, m, axes=1), grads, memory_grads)


def shuffled_order(key, size, capacity: int):
    """A permutation of [0, capacity) with the ``size`` real indices first, in random order."""
    scores = jax.random.uniform(key, (capacity,))
    return jnp.argsort(jnp.where(jnp.arange(capacity) < size, scores, 2.0))


class Trainer:
    """Trains a network given by its NNX ``graphdef`` with optax; state is a plain dict pytree."""

    def __init__(self, graphdef, train: ml_collections.ConfigDict, mesh, capacity: int,
                 loss: Callable = seen_class_xent, feature_batch_size: int = 1024):
        check(train, FIELDS, "train", partial=True)
        parallel.check_divisible(train.batch_size, mesh)
        self.graphdef = graphdef
        self.mesh = mesh
        self.train = train
        self.batch_size = train.batch_size
        # Whole batches only: the padded tail is masked, never a differently shaped batch.
        self.capacity = -(-max(capacity, 1) // self.batch_size) * self.batch_size
        self.optimizer = make_optimizer(train)
        self.augment = augment.resolve_training(train.get("augment"))
        self.compute_dtype = compute_dtype(train)
        # Never more steps per call than the largest epoch has batches: no compiled no-ops.
        self.steps_per_call = min(steps_per_call(train, graphdef),
                                  self.capacity // self.batch_size)
        # Several virtual CPU devices deadlocked in an all-reduce rendezvous ("waiting for all
        # reduce ... may be stuck", then no progress) when many calls were in flight: 3 CIFAR runs
        # of 3 hung within 2 tasks; waiting for each call before sending the next ran through.
        self.wait_for_each_call = mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"
        self.loss = loss
        self.feature_batch_size = feature_batch_size
        self._init = jax.jit(self._init_impl, out_shardings=NamedSharding(mesh, P()))
        self._orders = jax.jit(self._orders_impl, static_argnums=3)
        self._steps = jax.jit(self._steps_impl, donate_argnums=0)
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

    def schedule(self, task_index: int) -> Schedule:
        """This trainer's recipe (``train``) for task ``task_index``."""
        return task_schedule(self.train, task_index)

    def epoch(self, net: dict, data: DeviceData, key, num_seen: int,
              memory: MemoryBatches | None = None, objective: Objective | None = None,
              learning_rate: float | None = None, weight_decay: float | None = None):
        """One pass over ``data`` in random order; returns (net, mean loss). ``net`` is donated.

        The learning rate and weight decay default to ``train``'s (constant) values.
        """
        if memory is not None:
            parallel.check_divisible(memory.batch_size, self.mesh, "the memory batch size")
        lr = self.train.learning_rate if learning_rate is None else learning_rate
        wd = self.train.weight_decay if weight_decay is None else weight_decay
        hyper = (jnp.float32(lr), jnp.float32(wd))
        num_batches = self.steps_per_epoch(int(data.size))
        slots = None if memory is None else memory.data.images.shape[0]
        orders = self._orders(key, data.size, None if memory is None else memory.data.size, slots)
        num_seen, count = jnp.int32(num_seen), jnp.int32(num_batches)
        loss_sum = jnp.float32(0.0)
        for first in range(0, num_batches, self.steps_per_call) if self.steps_per_call else (0,):
            net, loss = self._steps(net, data, orders, jnp.int32(first), count, key, num_seen,
                                    hyper, memory, (objective or Objective()).traced())
            if self.wait_for_each_call:
                loss.block_until_ready()
            loss_sum = loss_sum + loss
        return net, loss_sum / max(num_batches, 1)

    def fit(self, net: dict, data: DeviceData, key, num_seen: int, schedule: Schedule,
            memory: MemoryBatches | None = None, objective: Objective | None = None,
            progress: Callable[[int, float], None] | None = None) -> tuple[dict, int]:
        """Trains ``net`` by ``schedule`` (``self.schedule(task.index)``) from a fresh optimiser
        state; ``progress(epoch, mean loss)`` is called after each epoch when given, and the
        run's monitor (cil/monitor.py) hears of every epoch. A loss that
        is not finite stops training with a DivergenceError naming the epoch and learning rate.

        Returns the trained ``{"params", "model_state"}`` and the number of examples trained on,
        epochs counted, memory examples included.
        """
        size = int(data.size)
        per_epoch = size
        if memory is not None:
            per_epoch += self.steps_per_epoch(size) * min(memory.batch_size, int(memory.data.size))
        train_net = self.init(net["params"], net["model_state"])
        for epoch, lr in enumerate(schedule.learning_rates):
            key, epoch_key = jax.random.split(key)
            train_net, loss = self.epoch(train_net, data, epoch_key, num_seen, memory, objective,
                                         lr, schedule.weight_decay)
            loss = float(loss)  # waits for the epoch: one number per epoch, to stop a divergence
            if not np.isfinite(loss):
                raise DivergenceError(f"training diverged: the loss is {loss} after epoch "
                                      f"{epoch + 1}/{schedule.epochs} at learning rate {lr:g}; "
                                      f"lower the learning rate")
            if progress is not None:
                progress(epoch, loss)
            monitor.epoch_done(epoch, schedule.epochs, loss, float(lr), per_epoch)
        trained = {"params": train_net["params"], "model_state": train_net["model_state"]}
        return trained, per_epoch * schedule.epochs

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

    def step(self, net, images, labels, weights, num_seen, objective: Objective | None = None,
             from_memory=None):
        """One optimisation step on a given batch (traceable; the epoch calls it per batch).
        ``from_memory`` marks the batch's memory examples (only GEM's and A-GEM's
        ``MemoryConstraints`` read it)."""
        objective = objective or Objective()
        distill, pod, constraints = objective.distill, objective.pod, objective.memory_constraints
        if distill is not None:
            teacher_logits = jax.lax.stop_gradient(self._logits_impl(distill.teacher, images))
        if pod is not None:
            teacher_activations = jax.lax.stop_gradient(
                self._model(pod.teacher).activations(images, train=False))

        def per_example_loss(params):
            model = nnx.merge(self.graphdef, self._in_compute_dtype(params), net["model_state"],
                              copy=True)
            inputs = self._inputs(model, images)
            if pod is None:
                logits = model(inputs, train=True)
            else:  # the same forward pass, keeping every stage's output
                activations = model.activations(inputs, train=True)
                logits = model.scores(activations[-1])
            logits = logits.astype(jnp.float32)
            own_classes = jnp.arange(logits.shape[-1]) >= objective.first_class
            if constraints is not None and constraints.within_group:
                groups = constraints.group_of_class
                own_classes = own_classes & (groups[None, :] == groups[labels][:, None])
            per_example = objective.xent_weight * self.loss(
                jnp.where(own_classes, logits, NEG_INF), labels, num_seen)
            if distill is not None:
                per_example += distill.weight * distillation_loss(
                    logits, teacher_logits, distill.num_classes, distill.temperature)
            if pod is not None:
                per_example += pod(activations, teacher_activations)
            _, model_state = nnx.split(model, nnx.Param, ...)[1:]
            # Running statistics stay at their own dtype whatever the compute dtype.
            model_state = jax.tree.map(lambda new, old: new.astype(old.dtype), model_state,
                                       net["model_state"])
            return per_example, model_state

        def loss_of(params):
            per_example, model_state = per_example_loss(params)
            loss = weighted_mean(per_example, weights)
            if objective.penalty is not None:
                loss += objective.penalty(params)
            return loss, model_state

        if constraints is None:
            (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(net["params"])
        else:  # one forward pass, a backward pass per group (vmapped), then the projection
            per_example, backward, model_state = jax.vjp(per_example_loss, net["params"],
                                                         has_aux=True)
            gradient = lambda w: backward(w / jnp.maximum(jnp.sum(w), 1.0))[0]  # noqa: E731
            new = weights * (1.0 - from_memory)
            group = constraints.group_of_class[labels]
            in_group = jnp.arange(constraints.num_groups)[:, None] == group[None, :]
            memory_grads = jax.vmap(gradient)(in_group * (weights * from_memory)[None, :])
            grads = project_onto_memory(gradient(new), memory_grads, constraints.margin)
            loss = weighted_mean(per_example, new)
        updates, opt_state = self.optimizer.update(grads, net["opt_state"], net["params"])
        params = optax.apply_updates(net["params"], updates)
        if objective.trainable is not None:  # a select, not a zeroed update: -0.0 stays -0.0
            params = jax.tree.map(lambda new, old, free: jnp.where(free, new, old), params,
                                  net["params"], objective.trainable)
        return {"params": params, "model_state": model_state, "opt_state": opt_state}, loss

    def _in_compute_dtype(self, tree):
        """``tree``'s floating arrays cast to ``train.compute_dtype`` (float32: unchanged)."""
        if self.compute_dtype == jnp.float32:
            return tree
        return jax.tree.map(lambda x: x.astype(self.compute_dtype)
                            if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def _inputs(self, model, images):
        """What the network reads: raw images, or in bfloat16 the standardised floats (its own
        conversion would hand float32 to bfloat16 layers, which then compute in float32)."""
        if self.compute_dtype == jnp.float32 or not jnp.issubdtype(images.dtype, jnp.integer):
            return self._in_compute_dtype(images)
        return to_float(images, model.input_mean, model.input_std).astype(self.compute_dtype)

    def _orders_impl(self, key, size, memory_size, slots):
        """The epoch's order of the data, and of the memory buffer (its own key, so that the
        data's order is the same with or without memory)."""
        order = shuffled_order(key, size, self.capacity)
        if memory_size is None:
            return order, None
        return order, shuffled_order(jax.random.fold_in(key, 1), memory_size, slots)

    def _batch(self, b, data: DeviceData, orders, memory):
        """Batch ``b`` of the epoch: images, int32 labels, 0/1 weights (0: padding) and whether
        each example comes from the memory."""
        order, memory_order = orders
        # The row indices are split over the devices before the gathers, so each device gathers
        # only its own rows from the replicated data: no images move between devices.
        offsets = jnp.arange(self.batch_size)
        start = b * self.batch_size
        rows = jax.lax.dynamic_slice(order, (start,), (self.batch_size,))
        weights = (start + offsets < data.size).astype(jnp.float32)
        if memory is None:
            rows, weights = parallel.shard_batch(self.mesh, (rows, weights))
            return (data.images[rows], data.labels[rows].astype(jnp.int32), weights,
                    jnp.zeros(rows.shape, bool))
        slots = memory.data.images.shape[0]
        memory_offsets = jnp.arange(memory.batch_size)
        position = (b * memory.batch_size + memory_offsets) % jnp.maximum(memory.data.size, 1)
        # Rows from capacity on are memory slots: one index vector for both sources.
        rows = jnp.concatenate([rows, self.capacity + memory_order[position]])
        weights = jnp.concatenate([weights, (memory_offsets < memory.data.size).astype(jnp.float32)])
        rows, weights = parallel.shard_batch(self.mesh, (rows, weights))
        in_memory = rows >= self.capacity
        data_rows = jnp.minimum(rows, self.capacity - 1)
        memory_rows = jnp.clip(rows - self.capacity, 0, slots - 1)
        images = jnp.where(in_memory.reshape(-1, *[1] * (data.images.ndim - 1)),
                           memory.data.images[memory_rows], data.images[data_rows])
        labels = jnp.where(in_memory, memory.data.labels[memory_rows].astype(jnp.int32),
                           data.labels[data_rows].astype(jnp.int32))
        return images, labels, weights, in_memory

    def _train_on_batch(self, b, carry, data, orders, key, num_seen, memory, objective):
        net, loss_sum = carry
        images, labels, weights, from_memory = self._batch(b, data, orders, memory)
        if self.augment is not None and jnp.issubdtype(images.dtype, jnp.integer):
            # Images only: inputs that are already features (a branch on a trunk) pass through.
            images = augment.training_views(images, jax.random.fold_in(key, b), self.augment)
        net, loss = self.step(net, images, labels, weights, num_seen, objective, from_memory)
        return net, loss_sum + loss

    def _steps_impl(self, net, data: DeviceData, orders, first, num_batches, key, num_seen,
                    hyper, memory, objective):
        """Batches [first, first + steps_per_call) of the epoch, or all of them when
        ``steps_per_call`` is 0; returns (net, summed loss). Steps past ``num_batches`` are
        no-ops."""
        net = {**net, "opt_state": set_hyperparameters(net["opt_state"], *hyper)}
        augment_key = jax.random.fold_in(key, 2)
        args = (data, orders, augment_key, num_seen, memory, objective)
        carry = (net, jnp.float32(0.0))
        if not self.steps_per_call:
            return jax.lax.fori_loop(first, num_batches,
                                     lambda b, c: self._train_on_batch(b, c, *args), carry)
        for i in range(self.steps_per_call):  # unrolled: no loop around the convolutions
            b = first + i
            stepped = self._train_on_batch(b, carry, *args)
            carry = jax.tree.map(lambda new, old: jnp.where(b < num_batches, new, old),
                                 stepped, carry)
        return carry
