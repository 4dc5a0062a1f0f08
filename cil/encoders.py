"""Frozen encoders: Orbax checkpoints of a cil.models Network, loaded read-only, and their features.

    save_encoder("encoders/fmnist_b4_cnn", network, {"model": {"name": "cnn"}, "image_shape": (28, 28, 1),
                 "num_classes": 4, "encoder_stages": None, "trained_on": {"dataset": "fashion_mnist"}})
    encoder = load_encoder("encoders/fmnist_b4_cnn", expected_image_shape=(28, 28, 1))
    encoder = encoder_from_config(config.strategy.encoder, spec.image_shape)   # checkpoint | identity
    encoder.features(images)            # (N, D) float32
    feats = extract_features(encoder, images, key, views=5, augment_config=cfg, batch_size=512)
    feats.shape                         # (5, N, D): every (example, view) computed exactly once

API (one implementation, shared by every frozen-encoder strategy: ncm, dkvb):
- ``save_encoder(directory, network, meta)``: ``directory/weights`` (Orbax: the network's params and
  model_state) and ``directory/encoder.json`` (``meta``: what rebuilds the network: ``model`` config,
  ``image_shape``, ``num_classes`` of its head, ``encoder_stages`` = how many of its stages form the
  encoder (None: all, i.e. the input of the head), ``trained_on``: the data it saw).
- ``load_encoder(directory, expected_image_shape=None) -> Encoder``; a missing, unreadable or
  mismatched checkpoint is a one-line ConfigError / DataError naming the path and the fix.
- ``ENCODER_FIELDS``: the section a strategy embeds: ``name`` ("checkpoint" | "identity"),
  ``checkpoint`` (a directory; "" = not set), ``batch_size``; ``encoder_from_config(cfg, image_shape)``.
- ``Encoder``: frozen. ``.features(images)`` -> (N, D) float32, jitted, in fixed-size batches split
  over the devices; ``.feature_dim``; ``.image_shape``; ``.num_bytes`` (params + state, for
  ``MemoryReport.encoder_params``); inside your own jitted code, the pure ``.apply(.weights, images)``.
  The ``identity`` encoder's features are the flattened pixels in [0, 1] (no weights, 0 bytes).
- ``FEATURES_FIELDS`` (config.features) and ``encode_dataset(dataset, directory)``: a whole run on
  a frozen encoder's features (a linear probe is ``finetune`` with ``model.hidden=()``), the
  encoder reported as ``encoder_params``.
- ``extract_features(encoder, images, key, views, augment_config, batch_size)`` -> (views, N, D):
  the features of ``views`` augmented views (cil/data/augment.py) of every image, keyed by ``key``;
  ``view_features(encoder, weights, images, key, views, augment_config)`` is the same for one batch,
  jittable (what a strategy's jitted ``predict`` calls). Views are keyed by the image's pixels, not
  its position, so features do not depend on batching or order. Compute them once per task in
  ``learn`` and reuse them; never recompute an example's view.

Nothing here trains: the weights are never given to an optimiser, and JAX arrays are immutable, so
an encoder stays bitwise what was loaded (tests/test_ncm.py checks it after a strategy learns).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cil import models, parallel
from cil.data import augment, sources
from cil.errors import ConfigError, DataError
from cil.fields import Field, Integer, OneOf, Text, check
from cil.models.networks import to_float
from cil.strategy import pytree_bytes

META_FILE = "encoder.json"
WEIGHTS_DIR = "weights"
FORMAT_VERSION = 1
META_KEYS = ("model", "image_shape", "num_classes", "encoder_stages", "trained_on")
PRETRAIN_HINT = "python run.py --config=configs/pretrain_fmnist.py writes one"
# Images per compiled encoder call. On the 2-core CPU, batches of 1,000-2,000 ran 1.5-2x slower
# than 100-500 (activations outgrow the caches); a GPU would take more, but 256 keeps it busy
# for the small networks used here.
DEFAULT_BATCH = 256


# The ``encoder`` section of a frozen-encoder strategy's config.
ENCODER_FIELDS = {
    "name": Field("checkpoint", OneOf("checkpoint", "identity"),
                  "checkpoint: load ``checkpoint``; identity: raw pixels"),
    "checkpoint": Field("", Text(), "a save_encoder directory (\"\" = not set)"),
    "batch_size": Field(DEFAULT_BATCH, Integer(min=1),
                        "images per compiled encoder call (rounded up to the devices)"),
}


# config.features: every strategy of a run sees this encoder's features instead of the images.
FEATURES_FIELDS = {
    "encoder": Field("", Text(), "a save_encoder directory whose features replace the images for "
                     "every strategy, computed once per run (\"\" = the images themselves)"),
}


class Encoder:
    """A frozen feature extractor: ``apply(weights, images) -> (n, feature_dim)`` float32, pure."""

    def __init__(self, apply: Callable, weights: Any, image_shape, feature_dim: int,
                 description: str, meta: dict | None = None, batch_size: int = DEFAULT_BATCH):
        self.mesh = parallel.data_mesh()
        self.apply = apply
        self.weights = parallel.replicate(self.mesh, weights)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.feature_dim = int(feature_dim)
        self.description = description
        self.meta = meta or {}
        self.batch_size = round_to_devices(batch_size, self.mesh)
        self._compiled = {}  # (views, augmentation) -> jitted batch function

    @property
    def num_bytes(self) -> int:
        return pytree_bytes(self.weights)

    def features(self, images, batch_size: int | None = None) -> jax.Array:
        """(N, feature_dim) float32 features of uint8 images (or float inputs), no augmentation."""
        return extract_features(self, images, jax.random.key(0), 1, _NO_AUGMENTATION,
                                batch_size)[0]

    def check_image_shape(self, image_shape, where: str) -> None:
        if tuple(image_shape) != self.image_shape:
            raise ConfigError(f"encoder {self.description} takes images {self.image_shape} but "
                              f"{where} has {tuple(image_shape)}; pretrain an encoder on this "
                              f"dataset ({PRETRAIN_HINT})")

    def batch_function(self, views: int, augment_config) -> Callable:
        """The jitted ``(weights, images, key) -> (views, n, D)`` for one fixed-size batch."""
        augmentation = (int(augment_config.crop_padding), bool(augment_config.flip),
                        bool(augment_config.include_identity))
        cache_key = (views, augmentation)
        if cache_key not in self._compiled:
            cfg = ml_collections.FrozenConfigDict(dict(zip(
                ("crop_padding", "flip", "include_identity"), augmentation)))

            def batch(weights, images, key):
                images = parallel.shard_batch(self.mesh, images)
                return view_features(self, weights, images, key, views, cfg)

            self._compiled[cache_key] = jax.jit(batch)
        return self._compiled[cache_key]


_NO_AUGMENTATION = ml_collections.FrozenConfigDict(
    {"crop_padding": 0, "flip": False, "include_identity": True})


def round_to_devices(batch_size: int, mesh) -> int:
    """The batch size rounded up to a multiple of the devices it is split over."""
    return -(-max(int(batch_size), 1) // mesh.size) * mesh.size


def view_features(encoder: Encoder, weights, images, key, views: int, augment_config):
    """(views, n, D) features of ``views`` augmented views of one batch; pure, call it under jit."""
    augmented = augment.views(images, key, views, augment_config)
    # One view at a time: a batch of views x n images thrashed the CPU's caches (13x slower than
    # one view for 5 views at n = 500).
    return jax.lax.map(lambda batch: encoder.apply(weights, batch), augmented)


def extract_features(encoder: Encoder, images, key, views: int, augment_config,
                     batch_size: int | None = None) -> jax.Array:
    """(views, N, D) float32 features of every image's ``views`` augmented views.

    Runs in fixed-size batches (the last one padded and cut), so it compiles once per
    (encoder, views, augmentation), whatever N. ``augment_config`` must be resolved
    (``augment.resolve``); view v of an image depends only on ``key``, v and its pixels.
    """
    augment.check_resolved(augment_config)
    images = np.asarray(images)
    if tuple(images.shape[1:]) != encoder.image_shape:
        encoder.check_image_shape(images.shape[1:], "the data")
    size = round_to_devices(batch_size or encoder.batch_size, encoder.mesh)
    function = encoder.batch_function(views, augment_config)
    outputs = []
    for batch, real in parallel.fixed_size_batches(images, size):
        features = function(encoder.weights, batch, key)
        outputs.append(features if real == size else features[:, :real])
    if not outputs:
        return jnp.zeros((views, 0, encoder.feature_dim), jnp.float32)
    return jnp.concatenate(outputs, axis=1)


def identity_encoder(image_shape, batch_size: int = DEFAULT_BATCH) -> Encoder:
    """Features = the flattened pixels in [0, 1]; no weights. For tests and toy checks."""
    def apply(weights, images):
        return to_float(images).reshape(images.shape[0], -1).astype(jnp.float32)

    return Encoder(apply, {}, image_shape, int(np.prod(image_shape)), "identity (raw pixels)",
                   batch_size=batch_size)


# --- checkpoints --------------------------------------------------------------------------------

def _split(network) -> tuple[Any, dict]:
    """The graph definition and the weights as NNX states ``{"params", "model_state"}``."""
    graphdef, params, model_state = nnx.split(network, nnx.Param, ...)
    return graphdef, {"params": params, "model_state": model_state}


def _pure(weights: dict) -> dict:
    """Weights as nested dicts of arrays: what Orbax writes and reads."""
    return {k: nnx.to_pure_dict(state) for k, state in weights.items()}


def _build(meta: dict):
    """The recorded architecture, split, as shapes only: the template the weights load into."""
    return _split(nnx.eval_shape(lambda: models.build(
        ml_collections.ConfigDict(meta["model"]), meta["image_shape"], int(meta["num_classes"]),
        seed=0)))


def save_encoder(directory, network, meta: dict) -> Path:
    """Writes ``network``'s weights (Orbax) and ``meta`` (JSON) to ``directory``; returns its path."""
    import orbax.checkpoint as ocp

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"encoder meta lacks {', '.join(missing)}; it needs {', '.join(META_KEYS)}")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / WEIGHTS_DIR, jax.device_get(_pure(_split(network)[1])), force=True)
    checkpointer.wait_until_finished()
    stages, image_shape = meta["encoder_stages"], tuple(meta["image_shape"])
    feature_dim = _feature_dim(network, image_shape, stages)
    record = {"format_version": FORMAT_VERSION, **meta, "image_shape": list(image_shape),
              "feature_dim": feature_dim}
    (directory / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return directory


def _feature_dim(network, image_shape, stages) -> int:
    shape = jax.eval_shape(lambda x: network.features(x, stop=stages),
                           jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)).shape
    return int(np.prod(shape[1:]))


def read_meta(directory) -> dict:
    """The JSON beside an encoder checkpoint; ConfigError if there is none, DataError if unreadable."""
    directory = Path(directory).expanduser()
    path = directory / META_FILE
    if not path.is_file():
        raise ConfigError(f"no encoder checkpoint at {directory} ({META_FILE} missing); set the "
                          f"strategy's encoder.checkpoint to a save_encoder directory ({PRETRAIN_HINT})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; pretrain the encoder again") from None
    missing = [k for k in META_KEYS if k not in meta]
    if missing or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} is not a format-{FORMAT_VERSION} encoder record (lacks "
                        f"{', '.join(missing) or 'format_version'}); pretrain the encoder again")
    return meta


def load_encoder(directory, expected_image_shape=None, batch_size: int = DEFAULT_BATCH) -> Encoder:
    """The frozen encoder saved in ``directory``; checks the image shape it takes if given."""
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser().resolve()
    meta = read_meta(directory)
    image_shape = tuple(meta["image_shape"])
    if expected_image_shape is not None and tuple(expected_image_shape) != image_shape:
        raise ConfigError(f"encoder {directory} takes images {image_shape} but the stream has "
                          f"{tuple(expected_image_shape)}; pretrain an encoder on this dataset "
                          f"({PRETRAIN_HINT})")
    graphdef, weights = _build(meta)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _pure(weights))
    try:
        restored = ocp.StandardCheckpointer().restore(directory / WEIGHTS_DIR, abstract)
        # Orbax may hand back the stored shapes rather than the template's: compare them.
        fits = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, abstract, restored)
        if not all(jax.tree.leaves(fits)):
            raise ValueError("array shapes differ from the recorded architecture's")
        for name, state in weights.items():
            nnx.replace_by_pure_dict(state, restored[name])
    except Exception as error:  # Orbax raises many types; any of them means "cannot use this"
        reason = " ".join(str(error).split())[:200]
        raise DataError(f"cannot restore encoder weights from {directory / WEIGHTS_DIR} ({reason}); "
                        f"the checkpoint does not match its {META_FILE}: pretrain it again") from None
    stages = meta["encoder_stages"]

    def apply(weights, images):
        network = nnx.merge(graphdef, weights["params"], weights["model_state"])
        features = network.features(images, train=False, stop=stages)
        return features.reshape(features.shape[0], -1).astype(jnp.float32)

    return Encoder(apply, weights, image_shape, meta["feature_dim"],
                   f"{directory} ({meta['model'].get('name')})", meta, batch_size)


def encode_dataset(dataset: sources.Dataset, directory: str) -> tuple[sources.Dataset, int]:
    """(``dataset`` with every image replaced by its float32 features, the encoder's bytes)."""
    encoder = load_encoder(directory, dataset.image_shape)
    as_features = lambda images: np.asarray(encoder.features(images))  # noqa: E731
    return (dataclasses.replace(dataset, train_images=as_features(dataset.train_images),
                                test_images=as_features(dataset.test_images)),
            encoder.num_bytes)


def encoder_from_config(config: ml_collections.ConfigDict, expected_image_shape) -> Encoder:
    """The encoder a strategy's ``encoder`` section names (``ENCODER_FIELDS``)."""
    check(config, ENCODER_FIELDS, "encoder", partial=True)
    batch_size = config.get("batch_size") or DEFAULT_BATCH
    if config.name == "identity":
        return identity_encoder(expected_image_shape, batch_size)
    if not config.get("checkpoint"):
        raise ConfigError(f"encoder.checkpoint is not set; name a frozen encoder directory "
                          f"({PRETRAIN_HINT}) or set encoder.name='identity' for raw pixels")
    return load_encoder(config.checkpoint, expected_image_shape, batch_size)
