"""Partial network sharing (Sarwar, Ankit and Roy, IEEE Access 2019): a shared trunk, task branches.

    config.strategies = ("partial_sharing",)
    config.partial_sharing = {"shared_stages": 2}      # or {"shared_fraction": 0.5}
    python run.py --config=configs/partial_sharing_fmnist.py

The network grows instead of being overwritten (the paper's "clone-and-branch"):
- task 0 trains a whole base network (``config.model``, a head for task 0's classes);
- its first k stages become the shared trunk, frozen from then on (``Network.stages`` [0, k));
- each later task clones the base network's stages [k, end) into a new branch, adds a fresh head for
  the task's classes and trains only that branch, on the trunk's features of the task's images;
- ``predict`` runs the trunk once, then the base network's own tail and every learned branch, and
  merges their scores into one score per seen class (``merge`` and calibration, below).
Nothing learned is ever changed again, so old classes cannot be forgotten through their weights;
what a new branch can still do is outscore an old one on the old classes' images (class-incremental:
no task id at test time), which is what the merge and calibration are for.

Settings (``config.partial_sharing``) and defaults:
- ``shared_stages`` k: 0 shares nothing (each branch is a whole network, cloned from the base),
  ``len(stages)`` shares all but the head. Unset, ``shared_fraction`` picks it: the longest prefix
  of stages holding at most that fraction of the base network's parameters. Default 0.5: the paper
  chooses the sharing point per application by sweeping it against the accuracy lost; half the
  parameters is our default; configs/partial_sharing_fmnist.py:sweep_mlp / :sweep_cnn measure the
  whole range (benchmarks/partial_sharing_sweep.md).
- ``merge``: how a branch's scores become comparable to another's. ``"softmax"`` (default): each
  branch's log-softmax over its own classes, i.e. every branch states a probability over its
  classes; ``"logits"``: the raw logits side by side (one softmax over all of them).
- ``calibration_per_class`` (default 0, none): hold out that many training images of every class
  from training and keep them (charged as exemplars); after training a branch, fit that branch's
  score offset (and, under ``"logits"``, its scale, as BiC does) so that the merged prediction is
  right on all kept images; the offsets and scales of earlier branches stay fixed, so their scores
  never change. The paper's published version adds a calibration step to clone-and-branch so that
  new classes resembling old ones are told apart; this fit is our form of it (the paper's exact
  procedure was not available to us), optional because it keeps images of old classes.
- ``base_checkpoint`` (default unset: task 0 trains the base): a cil/encoders.py checkpoint of a
  network trained on the stream's task 0 alone (``python run.py --config=configs/pretrain_*.py``
  with ``pretrain.data="base_task"``); task 0 then loads it instead of training, and its model
  config replaces ``config.model``. Its bytes are ``encoder_params`` (frozen, not trained here).

Memory (PROTOCOL.md): the trunk and the base network's tail when trained here, the learned branches
and the calibration scalars are ``learner_params`` (a base loaded from a checkpoint is
``encoder_params`` instead); BatchNorm statistics are ``side_state``; kept images ``exemplars``.
Branch slots not yet learned are preallocated zeros (fixed shapes: one compile per run) and hold
nothing, so they are not charged. ``accounting(num_branches)`` / ``extras(state)`` give the
figures PROTOCOL.md's categories cannot hold: parameters trained per task, bytes against one whole
network per task, and XLA's FLOP counts for training and inference against finetuning one network.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cil import encoders, models, parallel
from cil.data.stream import Task
from cil.errors import ConfigError
from cil.fields import Field, Integer, Number, OneOf, Optional, Text
from cil.models.networks import Network
from cil.strategy import Learned, MemoryReport, Strategy, StreamSpec, pytree_bytes
from cil.training import Trainer, mask_unseen

MERGES = ("softmax", "logits")
# The calibration fit has two parameters per branch (log-scale, offset): Adam at this rate settles
# well within these steps, so they are solver constants, not settings of the method.
_CALIBRATION_STEPS = 300
_CALIBRATION_LR = 0.05
_FLOPS_BATCH = 8  # examples in the batch XLA's cost analysis counts; results are per example


def count_params(module) -> int:
    """The number of trainable parameters (``nnx.Param`` entries) of a module."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def sharing_point(stages, total_params: int, shared_stages: int | None,
                  shared_fraction: float) -> int:
    """k, the number of leading stages shared: ``shared_stages`` if set, else by parameter share."""
    if shared_stages is not None:
        if not 0 <= shared_stages <= len(stages):
            raise ConfigError(f"partial_sharing.shared_stages={shared_stages} is outside "
                              f"0..{len(stages)}, the stages of this network; choose one of those")
        return shared_stages
    if not 0.0 <= shared_fraction <= 1.0:
        raise ConfigError(f"partial_sharing.shared_fraction={shared_fraction} is not in [0, 1]; "
                          f"give the fraction of the network's parameters to share")
    k, shared = 0, 0
    for stage in stages:
        shared += count_params(stage)
        if shared > shared_fraction * total_params:
            break
        k += 1
    return k


def clone_branch(base: Network, k: int, num_classes: int, key) -> Network:
    """Copies of the base network's stages [k, end) (weights included) and a fresh head."""
    stages = [nnx.clone(stage) for stage in list(base.stages)[k:]]
    feature_dim = base.head.in_features
    return Network(stages, feature_dim, num_classes, rngs=nnx.Rngs(key))


def merge_scores(logits, calibration, group, merge: str):
    """One comparable score per class from the branches' raw logits.

    ``logits`` (N, C): the branches' logits side by side; ``group`` (C,): the branch of each class;
    ``calibration`` (B, 2): each branch's log-scale and offset.
    """
    z = logits * jnp.exp(calibration[group, 0])
    if merge == "softmax":  # log-softmax within each branch's own classes
        num_groups = calibration.shape[0]
        top = jax.ops.segment_max(z.T, group, num_groups).T
        shifted = z - top[:, group]
        norm = jnp.log(jax.ops.segment_sum(jnp.exp(shifted).T, group, num_groups).T)
        z = shifted - norm[:, group]
    return z + calibration[group, 1]


def run_in_chunks(fn, arrays: np.ndarray, chunk: int) -> np.ndarray:
    """``fn`` over ``arrays`` in fixed-size chunks (the last one padded), so it compiles once."""
    return np.concatenate([np.asarray(fn(batch))[:real]
                           for batch, real in parallel.fixed_size_batches(arrays, chunk)])


def xla_flops(fn, *args) -> float:
    """FLOPs of one call of ``fn`` as XLA's cost analysis counts them (a multiply-add is 2)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def forward_flops(net: Network, x, stop: int | None = None) -> float:
    """Inference FLOPs per example: stages [0, stop) when ``stop`` is given, else the network."""
    graphdef, state = nnx.split(net)

    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model.features(x, stop=stop) if stop is not None else model(x)

    return xla_flops(forward, state, x) / len(x)


def train_flops(net: Network, x) -> float:
    """Training FLOPs per example: a forward and backward pass in training mode."""
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def objective(params, rest, x):
        return nnx.merge(graphdef, params, rest, copy=True)(x, train=True).sum()

    return xla_flops(jax.grad(objective), params, rest, x) / len(x)


class PartialSharing(Strategy):
    name = "partial_sharing"

    @classmethod
    def fields(cls):
        return {
            "shared_stages": Field(None, Optional(Integer(min=0)),
                                   "k; unset: chosen by shared_fraction"),
            "shared_fraction": Field(0.5, Number(min=0, max=1), "share the longest prefix "
                                     "holding at most this share of the parameters"),
            "merge": Field("softmax", OneOf(*MERGES)),
            "calibration_per_class": Field(0, Integer(min=0), "kept images per class for the "
                                           "calibration fit (0: none)"),
            "base_checkpoint": Field(None, Optional(Text()), "a base trained on task 0 alone"),
        }

    def __init__(self, config):
        super().__init__(config)
        self._built_for = None

    # --- set-up --------------------------------------------------------------------------------

    def _build(self, key, spec: StreamSpec):
        """The base network, the sharing point, the branch template, trainers and jitted functions.

        The base is a fresh network (trained on task 0) or the one in ``base_checkpoint``, with
        its weights. Everything else depends on the stream's shapes only, so it is built once per
        stream and reused across seeds (as Finetune does): one compile per run, not per task.
        """
        base = self._base_network(key, spec)
        if self._built_for == spec:
            return base
        settings = self.config.strategy
        self.spec = spec
        self.k = sharing_point(list(base.stages), count_params(base), settings.shared_stages,
                               settings.shared_fraction)
        self.num_base_classes = len(spec.tasks[0].classes)
        self.branch_classes = len(spec.tasks[1].classes) if spec.num_tasks > 1 else 0
        # group[c] = the branch that scores class c: 0 is the base network's own tail.
        self.group = np.concatenate([np.full(len(s.classes), t, np.int32)
                                     for t, s in enumerate(spec.tasks)])
        mesh = parallel.data_mesh()
        self.base_graphdef = nnx.split(base, nnx.Param, ...)[0]
        self.base_trainer = Trainer(self.base_graphdef, self.config.train, mesh,
                                    spec.train_sizes[0])
        if spec.num_tasks > 1:
            branch = clone_branch(base, self.k, self.branch_classes, key)
            self.branch_graphdef = nnx.split(branch, nnx.Param, ...)[0]
            self.branch_trainer = Trainer(self.branch_graphdef, self.config.train, mesh,
                                          max(spec.train_sizes[1:]))
        self._trunk = jax.jit(self._trunk_impl)
        self._logits = jax.jit(self._logits_impl)
        self._predict = jax.jit(self._predict_impl)
        self._calibrate = jax.jit(self._calibrate_impl)
        self._accounting = {}
        self._built_for = spec
        logging.info("partial_sharing: %d of %d stages shared", self.k, len(base.stages))
        return base

    def _base_network(self, key, spec: StreamSpec) -> Network:
        """A fresh base network for task 0's classes, or the checkpointed one (weights loaded)."""
        path = self.config.strategy.base_checkpoint
        num_classes = len(spec.tasks[0].classes)
        if not path:
            self.model_config = self.config.model
            return models.build(self.model_config, spec.image_shape, num_classes, seed=key)
        encoder = encoders.load_encoder(path, expected_image_shape=spec.image_shape)
        trained_on = encoder.meta.get("trained_on", {})
        if (encoder.meta["num_classes"] != num_classes or trained_on.get("data") != "base_task"
                or trained_on.get("dataset") != spec.dataset_name):
            raise ConfigError(f"partial_sharing.base_checkpoint {path} was not trained on this "
                              f"stream's task 0 ({num_classes} classes of {spec.dataset_name}); "
                              f"pretrain one with pretrain.data='base_task' on this stream")
        self.model_config = ml_collections.ConfigDict(encoder.meta["model"])
        base = models.build(self.model_config, spec.image_shape, num_classes, seed=0)
        nnx.update(base, encoder.weights["params"], encoder.weights["model_state"])
        return base

    def init(self, key, spec):
        base_key, branch_key = jax.random.split(key)
        base = self._build(base_key, spec)
        _, params, model_state = nnx.split(base, nnx.Param, ...)
        T = spec.num_tasks
        if T > 1:  # preallocated slots for the T - 1 branches (fixed shapes)
            template = clone_branch(base, self.k, self.branch_classes, branch_key)
            _, b_params, b_state = nnx.split(template, nnx.Param, ...)
            branches = jax.tree.map(lambda x: jnp.zeros((T - 1, *x.shape), x.dtype),
                                    {"params": b_params, "model_state": b_state})
        else:
            branches = {}
        per_class = self.config.strategy.calibration_per_class
        return parallel.replicate(parallel.data_mesh(), {
            "base": {"params": params, "model_state": model_state},
            "branches": branches,
            "num_branches": jnp.int32(0),
            # Per branch (0 = the base's tail): log-scale and offset of its scores.
            "calibration": jnp.zeros((T, 2), jnp.float32),
        }) | {
            # Kept images for calibration: class c owns slots [c * per_class, (c + 1) * per_class).
            "exemplar_images": np.zeros((spec.num_classes * per_class, *spec.image_shape),
                                        spec.input_dtype),
            "exemplar_labels": np.full(spec.num_classes * per_class, -1, np.int32),
        }

    # --- learning ------------------------------------------------------------------------------

    def learn(self, state, task: Task, key):
        train_key, branch_key, keep_key = jax.random.split(key, 3)
        state, train = self._hold_out(state, task, keep_key)
        if task.index == 0:
            trained_examples = 0  # a checkpointed base is used as it is
            if not self.config.strategy.base_checkpoint:
                data = self.base_trainer.put(task.images[train], task.labels[train])
                base, trained_examples = self.base_trainer.fit(
                    state["base"], data, train_key, self.num_base_classes,
                    self.base_trainer.schedule(0))
                state = {**state, "base": base}
        else:
            slot = task.index - 1
            if int(state["num_branches"]) != slot:
                raise ValueError(f"task {task.index} arrives after {int(state['num_branches'])} "
                                 f"branches; tasks must be learned in stream order")
            branch = clone_branch(self._base(state), self.k, self.branch_classes, branch_key)
            _, params, model_state = nnx.split(branch, nnx.Param, ...)
            # The trunk is frozen and deterministic: its features are computed once per task.
            features = run_in_chunks(lambda x: self._trunk(state["base"], x), task.images[train],
                                     self.config.eval_batch_size)
            data = self.branch_trainer.put(features, task.labels[train] - task.classes[0])
            trained, trained_examples = self.branch_trainer.fit(
                {"params": params, "model_state": model_state}, data, train_key,
                self.branch_classes, self.branch_trainer.schedule(task.index))
            branches = jax.tree.map(lambda stack, x: stack.at[slot].set(x),
                                    state["branches"], trained)
            state = {**state, "branches": branches, "num_branches": jnp.int32(slot + 1)}
            if self.config.strategy.calibration_per_class:
                state = {**state, "calibration": self._fit_calibration(state, task.index)}
        return Learned(state, trained_examples)

    def _hold_out(self, state, task: Task, key) -> tuple[dict, np.ndarray]:
        """Keeps ``calibration_per_class`` random images of each of the task's classes, held out
        from training (a branch is overconfident on its own training images, which would bias the
        fit, as BiC's held-out split avoids); returns the state and the indices left to train on."""
        per_class = self.config.strategy.calibration_per_class
        if not per_class:
            return state, np.arange(len(task.labels))
        images, labels = state["exemplar_images"].copy(), state["exemplar_labels"].copy()
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
        train = np.ones(len(task.labels), bool)
        for c in task.classes:
            chosen = rng.permutation(np.flatnonzero(task.labels == c))[:per_class]
            slots = slice(c * per_class, c * per_class + len(chosen))
            images[slots], labels[slots] = task.images[chosen], c
            train[chosen] = False
        state = {**state, "exemplar_images": images, "exemplar_labels": labels}
        return state, np.flatnonzero(train)

    def _fit_calibration(self, state, branch: int):
        """The new branch's (log-scale, offset) that best classify the kept images; others fixed."""
        logits = run_in_chunks(lambda x: self._logits(self._scoring_state(state), x),
                               state["exemplar_images"], self.config.eval_batch_size)
        num_seen = self.spec.tasks[branch].classes[-1] + 1
        return self._calibrate(state["calibration"], logits, state["exemplar_labels"],
                               jnp.int32(branch), jnp.int32(num_seen))

    def _calibrate_impl(self, calibration, logits, labels, branch, num_seen):
        kept = (labels >= 0).astype(jnp.float32)

        def loss(own):
            scores = merge_scores(logits, calibration.at[branch].set(own), self.group,
                                  self.config.strategy.merge)
            xent = optax.softmax_cross_entropy_with_integer_labels(
                mask_unseen(scores, num_seen), jnp.maximum(labels, 0))
            return jnp.sum(xent * kept) / jnp.maximum(jnp.sum(kept), 1.0)

        optimizer = optax.adam(_CALIBRATION_LR)
        # Under "softmax" a scale would sharpen a branch's log-probabilities until its top class
        # scores ~0 on any image, a degenerate fit: only the offset is fitted there.
        fitted = jnp.array([float(self.config.strategy.merge == "logits"), 1.0])

        def step(_, carry):
            own, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(loss)(own) * fitted, opt_state)
            return optax.apply_updates(own, updates), opt_state

        own = calibration[branch]
        own, _ = jax.lax.fori_loop(0, _CALIBRATION_STEPS, step, (own, optimizer.init(own)))
        return calibration.at[branch].set(own)

    # --- inference -----------------------------------------------------------------------------

    def _base(self, state) -> Network:
        return nnx.merge(self.base_graphdef, state["base"]["params"], state["base"]["model_state"])

    def _trunk_impl(self, base_state, images):
        base = nnx.merge(self.base_graphdef, base_state["params"], base_state["model_state"])
        return base.features(images, train=False, stop=self.k)

    def _logits_impl(self, state, images):
        """Every branch's raw logits side by side, (N, C); the trunk runs once."""
        base = nnx.merge(self.base_graphdef, state["base"]["params"], state["base"]["model_state"])
        features = base.features(images, train=False, stop=self.k)
        base_logits = base.head(base.features(features, train=False, start=self.k))
        if self.spec.num_tasks == 1:
            return base_logits

        def run_branch(b, out):
            net = jax.tree.map(lambda stack: stack[b], state["branches"])
            branch = nnx.merge(self.branch_graphdef, net["params"], net["model_state"])
            return out.at[b].set(branch(features, train=False))

        # Only the learned branches run (a loop to a traced count: no recompile as branches grow).
        slots = jnp.zeros((self.spec.num_tasks - 1, len(images), self.branch_classes), jnp.float32)
        slots = jax.lax.fori_loop(0, state["num_branches"], run_branch, slots)
        return jnp.concatenate([base_logits, slots.transpose(1, 0, 2).reshape(len(images), -1)], 1)

    def _predict_impl(self, state, images):
        return merge_scores(self._logits_impl(state, images), state["calibration"], self.group,
                            self.config.strategy.merge)

    @staticmethod
    def _scoring_state(state) -> dict:
        """The arrays inference needs (not the kept images)."""
        return {k: state[k] for k in ("base", "branches", "num_branches", "calibration")}

    def predict(self, state, images):
        return self._predict(self._scoring_state(state), images)

    # --- accounting ----------------------------------------------------------------------------

    def memory(self, state):
        learned = int(state["num_branches"])
        branch = jax.tree.map(lambda stack: stack[0], state["branches"]) if learned else {}
        kept = int(np.sum(state["exemplar_labels"] >= 0))
        # Each branch's two calibration scalars (float32), when they are fitted at all.
        calibration = learned * 2 * 4 if self.config.strategy.calibration_per_class else 0
        base_params = pytree_bytes(state["base"]["params"])
        base_state = pytree_bytes(state["base"]["model_state"])
        frozen = bool(self.config.strategy.base_checkpoint)  # not trained here: an encoder
        return MemoryReport(
            learner_params=(0 if frozen else base_params) + calibration
            + learned * pytree_bytes(branch.get("params", {})),
            encoder_params=base_params + base_state if frozen else 0,
            side_state=(0 if frozen else base_state)
            + learned * pytree_bytes(branch.get("model_state", {})),
            exemplars=kept * (self.spec.image_bytes + 4),  # image (uint8 or features) + int32 label
            num_exemplars=kept)

    def extras(self, state) -> dict:
        """Per-task figures beyond MemoryReport's categories (see ``accounting``)."""
        return self.accounting(int(state["num_branches"]))

    def accounting(self, num_branches: int) -> dict:
        """Parameters, bytes and FLOPs once ``num_branches`` branches are learned (shapes only).

        Compared against finetuning one network with a head for every class, and against keeping
        one whole network per task. FLOPs are XLA's cost analysis of the compiled computations,
        per example: training counts a forward and backward pass per epoch, plus (for branches) the
        trunk's forward pass once, since the trunk's features are computed once per task.
        """
        if not self._accounting:
            self._accounting = self._static_accounting()
        a = self._accounting
        learned_tasks = num_branches + 1
        task_net_bytes = [a["task_network_bytes"][min(t, 1)] for t in range(learned_tasks)]
        stored = a["base_bytes"] + num_branches * a["branch_bytes"]
        training_branch = num_branches > 0
        return {
            "shared_stages": self.k, "num_stages": a["num_stages"],
            "shared_params": a["trunk_params"],
            "shared_fraction": a["trunk_params"] / a["base_params"],
            "params_trained": a["branch_params"] if training_branch else a["base_params"],
            "finetune_params_trained": a["finetune_params"],
            "stored_bytes": stored,
            "one_network_per_task_bytes": int(sum(task_net_bytes)),
            "train_flops_per_example_epoch":
                a["branch_train_flops"] if training_branch else a["base_train_flops"],
            "trunk_flops_per_example": a["trunk_flops"] if training_branch else 0.0,
            "finetune_train_flops_per_example_epoch": a["finetune_train_flops"],
            "inference_flops_per_example":
                a["trunk_flops"] + a["tail_flops"] + num_branches * a["branch_flops"],
            "one_network_inference_flops_per_example": a["finetune_flops"],
        }

    def _static_accounting(self) -> dict:
        spec = self.spec
        base = models.build(self.model_config, spec.image_shape, self.num_base_classes, seed=0)
        full = models.build(self.model_config, spec.image_shape, spec.num_classes, seed=0)
        tail = Network([nnx.clone(s) for s in list(base.stages)[self.k:]], base.head.in_features,
                       self.num_base_classes, rngs=nnx.Rngs(0))
        images = jnp.zeros((_FLOPS_BATCH, *spec.image_shape), spec.input_dtype)
        features = base.features(images, stop=self.k)
        out = {
            "num_stages": len(base.stages),
            "trunk_params": sum(count_params(s) for s in list(base.stages)[: self.k]),
            "base_params": count_params(base), "finetune_params": count_params(full),
            "base_bytes": pytree_bytes(nnx.state(base)),
            "task_network_bytes": [pytree_bytes(nnx.state(base))],
            "base_train_flops": train_flops(base, images),
            "finetune_train_flops": train_flops(full, images),
            "finetune_flops": forward_flops(full, images),
            "trunk_flops": forward_flops(base, images, stop=self.k),
            "tail_flops": forward_flops(tail, features),
            "branch_params": 0, "branch_bytes": 0, "branch_flops": 0.0, "branch_train_flops": 0.0,
        }
        if spec.num_tasks > 1:
            branch = clone_branch(base, self.k, self.branch_classes, jax.random.key(0))
            task_net = models.build(self.model_config, spec.image_shape, self.branch_classes,
                                    seed=0)
            out.update({
                "branch_params": count_params(branch),
                "branch_bytes": pytree_bytes(nnx.state(branch)),
                "branch_flops": forward_flops(branch, features),
                "branch_train_flops": train_flops(branch, features),
                "task_network_bytes": [out["base_bytes"], pytree_bytes(nnx.state(task_net))],
            })
        return out
