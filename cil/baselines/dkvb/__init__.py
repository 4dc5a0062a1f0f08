"""DKVB: a frozen encoder, a discrete key-value bottleneck, and values that learn locally.

    config.strategies = ("dkvb",)
    config.dkvb = ConfigDict({"encoder": {"name": "checkpoint", "checkpoint": "encoders/fmnist"},
                              "key_init": {"source": "dataset", "dataset": {"name": "digits"}}})
    python run.py --config=configs/dkvb_fmnist.py            # CPU-sized bottleneck
    python run.py --config=configs/dkvb_fmnist.py:paper      # the paper's 256 x 4,096 x 14

Träuble et al., "Discrete Key-Value Bottleneck" (ICML 2023), as their code runs it. A frozen
encoder's feature goes through C fixed random projections (cil/baselines/dkvb/keys.py); in each codebook
the nearest key selects a value holding one score per class; the class scores are the mean of the
C fetched values (their "codebook-voting-logits" decoder, which has no parameters). The keys are
fitted once to unlabelled data, then frozen; only the values learn, by SGD on cross-entropy with
label smoothing and gradient clipping, so a step changes only the values its batch fetched, and
learning new classes barely moves the scores of inputs that fetch other keys. No replay, and no use
of task boundaries: ``learn`` trains on what it is given.

Flow:
- the first ``learn`` fits the keys on ``key_init.source``: "base_task" = the images of that first
  task, labels dropped; "dataset" = the training images of ``key_init.dataset`` (a data source as in
  config.dataset, e.g. another dataset), labels dropped; "file" = unlabelled images saved with
  np.save at ``key_init.path``; "held_out" = the training images the stream gives up
  (``config.dataset.held_out``), labels dropped. They are cached in ``key_init.cache_dir``
  under a hash of the source's features, the key settings and the seeds, so runs with the same
  encoder, source and seed share them.
- every ``learn``: the task's features -> nearest key per codebook (all keys) -> ``epochs`` of SGD
  on the values with the shared jitted Trainer (cil/training.py); the keys chosen are marked used.
- ``predict``: nearest *used* key per codebook (keys never chosen in training are masked out of the
  search, as in the authors' evaluation), then the mean of their values.

``decoder="linear"`` or ``"mlp"`` (hidden sizes ``mlp_hidden``, the paper's MLP-128) replaces the
bottleneck by a linear probe or an MLP on the same frozen features, trained the same way: the
paper's baselines. The loss is over the classes seen so far (unseen classes are masked, as for
every strategy here; the authors' softmax spans all ten CIFAR-10 classes from the start).

Memory (PROTOCOL.md): values (or the probe) -> learner_params; keys, the used-key mask and two
8-byte seeds -> side_state. The projections are not stored: every lookup regenerates them from
their seed, so they cost nothing beyond it. The encoder -> encoder_params.

Defaults are sized for a CPU (the paper's are in configs/dkvb_fmnist.py:paper): 64 codebooks of 512
keys of dimension 14 hold 1.8 MB of keys and, with 10 classes, 1.3 MB of values; a lookup is 0.46
MMAC per image (the paper's 256 x 4,096 is 32 times that, 58.7 MB of keys and 41.9 MB of values).
With 12,000 training images per Fashion-MNIST task, 512 keys still give each used key tens of
examples. Value training keeps the paper's SGD lr 0.3, batch 256, clipping 1.0, smoothing 0.1;
it runs 20 epochs per task (the paper: 500 to 2,000; on Split-Fashion-MNIST 100 and 300 epochs
gave the same accuracy as 20). Epochs are cheap because the keys are frozen: each image's nearest
keys are looked up once per task, and an epoch only gathers and updates values.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cil import encoders, models, parallel
from cil.baselines.dkvb import keys as dkvb_keys
from cil.data import sources
from cil.errors import ConfigError, DataError
from cil.fields import Field, Integer, Number, OneOf, Optional, Sequence, Text
from cil.strategy import Learned, MemoryReport, Strategy, pytree_bytes
from cil.training import Schedule, Trainer, mask_unseen

DECODERS = ("key_values", "linear", "mlp")
KEY_SOURCES = ("base_task", "dataset", "file", "held_out")


class ValueTable(nnx.Module):
    """The bottleneck's values (C, K, classes), zero at the start; scores = mean of fetched values."""

    def __init__(self, num_codebooks: int, num_keys: int, num_classes: int):
        self.values = nnx.Param(jnp.zeros((num_codebooks, num_keys, num_classes), jnp.float32))

    def __call__(self, indices, train: bool = False):
        """``indices`` (N, C): each codebook's key -> (N, classes) scores."""
        fetched = self.values[jnp.arange(indices.shape[1])[None, :], indices]  # (N, C, classes)
        return fetched.mean(axis=1)


def smoothed_seen_class_xent(smoothing: float):
    """Cross-entropy over the classes seen so far, labels smoothed over those classes."""
    def loss(logits, labels, num_seen):
        seen = (jnp.arange(logits.shape[-1]) < num_seen).astype(jnp.float32)
        one_hot = jax.nn.one_hot(labels, logits.shape[-1])
        targets = (1.0 - smoothing) * one_hot + smoothing * seen / num_seen
        return optax.softmax_cross_entropy(mask_unseen(logits, num_seen), targets)
    return loss


class ClippedTrainer(Trainer):
    """The shared Trainer with the gradient clipped to a global norm before the optimiser."""

    def __init__(self, graphdef, train, mesh, capacity, loss, clip_norm: float):
        super().__init__(graphdef, train, mesh, capacity, loss=loss)
        if clip_norm:
            self.optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), self.optimizer)


@functools.partial(jax.jit, static_argnames="settings")
def lookup(keys, allowed, projection_seed, features, settings: dkvb_keys.KeySettings):
    """(N, C) nearest allowed key per codebook; the projections are regenerated from their seed."""
    seed = jax.random.wrap_key_data(projection_seed)
    projections = dkvb_keys.random_projections(seed, features.shape[1], settings)
    heads = dkvb_keys.project(features, projections)
    return dkvb_keys.nearest_keys(heads, keys, allowed)


def read_images(path) -> np.ndarray:
    """Unlabelled images from a .npy file, or from the array 'images' of an .npz file."""
    path = Path(path).expanduser()
    try:
        loaded = np.load(path)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read key_init.path {path}: {error}; save the images with "
                        f"np.save (uint8, N x H x W x C)") from None
    images = loaded["images"] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"key_init.path {path} holds an array of shape {images.shape}; it must "
                        f"hold images (N, H, W, C)")
    return images


def one_device_mesh() -> Mesh:
    """Where the decoder trains. Data parallelism does not pay for a model this small: an epoch
    of the 64 x 512 value table on 10,000 examples took 131 ms on two virtual CPU devices (the
    dense gradient all-reduced every step) and 28 ms on one."""
    return Mesh(jax.devices()[:1], ("data",))


@jax.jit
def mark_used(used, indices, size):
    """``used`` (C, K) with the keys chosen by the first ``size`` rows of ``indices`` (N, C) set."""
    chosen = jnp.broadcast_to((jnp.arange(indices.shape[0]) < size)[:, None], indices.shape)
    return used.at[jnp.arange(indices.shape[1])[None, :], indices].max(chosen)


class DKVB(Strategy):
    name = "dkvb"

    @classmethod
    def fields(cls):
        return {
            "encoder": encoders.ENCODER_FIELDS,
            "decoder": Field("key_values", OneOf(*DECODERS), "linear / mlp: the paper's baselines"),
            "mlp_hidden": Field((128,), Sequence(Integer(min=1)), "decoder='mlp' only"),
            "num_codebooks": Field(64, Integer(min=1), "paper: 256"),
            "keys_per_codebook": Field(512, Integer(min=1), "paper: 4,096"),
            "key_dim": Field(14, Integer(min=1)),
            "key_init": {
                # base_task | dataset: the training images of ``dataset`` | file: ``path`` |
                # held_out: the stream's config.dataset.held_out images
                "source": Field("base_task", OneOf(*KEY_SOURCES)),
                "dataset": sources.FIELDS | {"name": Field(None, Optional(Text()))},
                "path": Field(None, Optional(Text()), ".npy, or .npz with 'images'"),
                "epochs": Field(10, Integer(min=1)),
                "batch_size": Field(256, Integer(min=1)),
                "decay": Field(0.95, Number(min=0, below=1), "EMA decay of the keys"),
                "dead_key_fraction": Field(0.1, Number(min=0, max=1)),
                "cache_dir": Field("~/.cache/cil/dkvb_keys", Optional(Text()),
                                   "'' or None: no cache"),
            },
            "learning_rate": Field(0.3, Number(above=0), "plain SGD, as the paper (0.001 for its "
                                   "probe and MLP)"),
            "batch_size": Field(256, Integer(min=1)),
            "epochs": Field(20, Integer(min=1), "per task (the paper: 500 to 2,000)"),
            "clip_norm": Field(1.0, Number(min=0), "global gradient norm; 0 turns clipping off"),
            "label_smoothing": Field(0.1, Number(min=0, below=1)),
        }

    def __init__(self, config):
        super().__init__(config)
        cfg = config.strategy
        if cfg.key_init.source == "dataset" and not cfg.key_init.dataset.name:
            raise ConfigError("dkvb.key_init.source='dataset' needs key_init.dataset.name, a data "
                              "source disjoint from the stream (e.g. 'digits')")
        if cfg.key_init.source == "file" and not cfg.key_init.path:
            raise ConfigError("dkvb.key_init.source='file' needs key_init.path: a .npy file of "
                              "uint8 images (N, H, W, C), or an .npz holding them as 'images'")
        if cfg.key_init.source == "held_out" and not config.dataset.get("held_out"):
            raise ConfigError("dkvb.key_init.source='held_out' needs dataset.held_out: how many "
                              "training images the stream gives up for the keys")
        self.settings = dkvb_keys.KeySettings(
            num_codebooks=int(cfg.num_codebooks), keys_per_codebook=int(cfg.keys_per_codebook),
            key_dim=int(cfg.key_dim), epochs=int(cfg.key_init.epochs),
            batch_size=int(cfg.key_init.batch_size), decay=float(cfg.key_init.decay),
            dead_key_fraction=float(cfg.key_init.dead_key_fraction))
        self.encoder = None
        self._built_for = None

    @property
    def uses_keys(self) -> bool:
        return self.config.strategy.decoder == "key_values"

    # --- set-up ----------------------------------------------------------------------------------

    def init(self, key, spec):
        if jax.process_count() > 1:  # the decoder's one device is one process's (one_device_mesh)
            raise ConfigError("dkvb trains its decoder on one device and does not run across "
                              "several processes yet; run it in one process (without "
                              "JAX_COORDINATOR_ADDRESS or a multi-task SLURM step)")
        if self.encoder is None or self.encoder.image_shape != tuple(spec.image_shape):
            self.encoder = encoders.encoder_from_config(self.config.strategy.encoder, spec.image_shape)
        return self.init_state(key, spec, self.encoder.feature_dim)

    def init_state(self, key, spec, feature_dim: int) -> dict:
        """The state for features of ``feature_dim``; what ``init`` returns once it has an encoder."""
        decoder_key, projection_key, keys_key = jax.random.split(key, 3)
        decoder = self._build(spec, feature_dim, decoder_key)
        _, params, model_state = nnx.split(decoder, nnx.Param, ...)
        state = {"net": parallel.replicate(self.trainer.mesh,
                                           {"params": params, "model_state": model_state})}
        if self.uses_keys:
            s = self.settings
            mesh = parallel.data_mesh()
            books = dkvb_keys.by_codebook(mesh, s.num_codebooks)
            state.update(jax.device_put({
                "keys": jnp.zeros((s.num_codebooks, s.keys_per_codebook, s.key_dim), jnp.float32),
                "used": jnp.zeros((s.num_codebooks, s.keys_per_codebook), bool)}, books))
            state.update(parallel.replicate(mesh, {
                "keys_ready": jnp.array(False),
                "projection_seed": jax.random.key_data(projection_key),
                "keys_seed": jax.random.key_data(keys_key)}))
        return state

    def _build(self, spec, feature_dim: int, key):
        """A fresh decoder; builds (once per stream and feature size) the trainer that fits it."""
        cfg = self.config.strategy
        if cfg.decoder == "key_values":
            decoder = ValueTable(cfg.num_codebooks, cfg.keys_per_codebook, spec.num_classes)
        else:
            hidden = tuple(cfg.mlp_hidden) if cfg.decoder == "mlp" else ()
            decoder = models.build(ml_collections.ConfigDict({"name": "mlp", "hidden": hidden}),
                                   (feature_dim,), spec.num_classes, seed=key)
        # The trainer depends on the decoder's shapes and the largest task, not on the rest of spec.
        built_for = (max(spec.train_sizes), spec.num_classes, feature_dim)
        if self._built_for != built_for:
            train = ml_collections.ConfigDict({
                "optimizer": "sgd", "learning_rate": cfg.learning_rate, "momentum": 0.0,
                "weight_decay": 0.0, "batch_size": cfg.batch_size, "epochs": cfg.epochs})
            self.trainer = ClippedTrainer(nnx.split(decoder)[0], train, one_device_mesh(),
                                          max(spec.train_sizes),
                                          smoothed_seen_class_xent(cfg.label_smoothing), cfg.clip_norm)
            self._built_for = built_for
        return decoder

    # --- keys ------------------------------------------------------------------------------------

    def with_keys(self, state, unlabelled_features, description: dict | None = None) -> dict:
        """``state`` with keys fitted to ``unlabelled_features`` (N, D), or read from the cache."""
        projection_seed = jax.random.wrap_key_data(state["projection_seed"])
        keys_seed = jax.random.wrap_key_data(state["keys_seed"])
        fingerprint = dkvb_keys.key_fingerprint(unlabelled_features, self.settings,
                                                projection_seed, keys_seed)
        keys, _ = dkvb_keys.cached_keys(
            self.config.strategy.key_init.cache_dir, fingerprint,
            lambda: dkvb_keys.init_keys(unlabelled_features, projection_seed, self.settings,
                                        keys_seed),
            description)
        mesh = parallel.data_mesh()
        books = dkvb_keys.by_codebook(mesh, self.settings.num_codebooks)
        return {**state, "keys": jax.device_put(keys, books),
                "keys_ready": parallel.replicate(mesh, jnp.array(True))}

    def unlabelled_features(self, task, task_features):
        """The features the keys are fitted on (labels dropped), and where they came from.

        ``task_features`` are those of ``task``'s images: the "base_task" source reuses them.
        """
        cfg = self.config.strategy.key_init
        if cfg.source == "base_task":
            where = {"source": "base_task", "task": task.index, "classes": list(task.classes),
                     "encoder": self.encoder.description, "images": len(task.labels)}
            return np.asarray(task_features), where
        if cfg.source in ("dataset", "held_out"):
            dataset = (sources.load(cfg.dataset) if cfg.source == "dataset" else
                       sources.load_held_out(self.config.dataset))
            images = dataset.train_images
            where = {"source": cfg.source, "dataset": dataset.name, "split": "train"}
        else:
            images = read_images(cfg.path)
            where = {"source": "file", "path": str(cfg.path)}
        self.encoder.check_image_shape(images.shape[1:], f"key_init source {where}")
        where.update(encoder=self.encoder.description, images=len(images))
        return np.asarray(self.encoder.features(images)), where

    # --- learning and prediction -----------------------------------------------------------------

    def decoder_inputs(self, state, features, masked: bool):
        """What the decoder reads: nearest-key indices (N, C) for the bottleneck, else the features."""
        if not self.uses_keys:
            return features
        allowed = state["used"] if masked else jnp.ones_like(state["used"])
        return lookup(state["keys"], allowed, state["projection_seed"], features, self.settings)

    def learn(self, state, task, key):
        features = self.encoder.features(task.images)
        if self.uses_keys and not bool(state["keys_ready"]):
            state = self.with_keys(state, *self.unlabelled_features(task, features))
        return self.learn_features(state, features, task.labels, key, task.classes[-1] + 1)

    def learn_features(self, state, features, labels, key, num_seen: int) -> Learned:
        """Trains the decoder on encoder features (N, D) and their labels for ``epochs``."""
        trainer = self.trainer
        size = len(labels)
        # Fixed shapes: the lookup runs on the trainer's capacity, so it compiles once per run.
        features = np.asarray(features, np.float32)
        padded = np.concatenate([features, np.zeros((trainer.capacity - size, features.shape[1]),
                                                    np.float32)])
        inputs = self.decoder_inputs(state, padded, masked=False)
        if self.uses_keys:
            state = {**state, "used": mark_used(state["used"], inputs, jnp.int32(size))}
        data = trainer.put(np.asarray(inputs)[:size], np.asarray(labels))
        cfg = self.config.strategy
        net, trained = trainer.fit(state["net"], data, key, num_seen,
                                   Schedule.constant(cfg.epochs, cfg.learning_rate))
        return Learned({**state, "net": net}, trained)

    def predict(self, state, images):
        return self.predict_features(state, self.encoder.features(images))

    def predict_features(self, state, features):
        """(N, classes) scores of encoder features (N, D)."""
        inputs = self.decoder_inputs(state, features, masked=True)
        return self.trainer.logits(state["net"], parallel.replicate(self.trainer.mesh, inputs))

    def memory(self, state):
        side = {k: v for k, v in state.items() if k != "net"}  # keys, used mask, seeds
        encoder_bytes = self.encoder.num_bytes if self.encoder is not None else 0
        return MemoryReport(learner_params=pytree_bytes(state["net"]["params"]),
                            side_state=pytree_bytes(side) + pytree_bytes(state["net"]["model_state"]),
                            encoder_params=encoder_bytes)
