"""The key side of a discrete key-value bottleneck: projections, nearest keys, key initialisation.

    settings = KeySettings(num_codebooks=64, keys_per_codebook=512, key_dim=14)
    keys = init_keys(unlabelled_features, projection_seed, settings, jax.random.key(1))  # (C, K, d)
    heads = project(features, random_projections(projection_seed, features.shape[1], settings))
    idx = nearest_keys(heads, keys)                   # (N, C) int32: one key per codebook
    idx = nearest_keys(heads, keys, allowed=used)     # only keys with ``used[c, j]`` may be chosen
    keys, from_cache = cached_keys("~/.cache/cil/dkvb_keys", fingerprint, lambda: init_keys(...))

What Träuble et al. ("Discrete Key-Value Bottleneck", ICML 2023) fix in their code
(github.com/ftraeuble/discrete_key_value_bottleneck), and what this module does:
- codebook c sees the feature through its own fixed Gaussian projection to ``key_dim``, whose
  columns are L2-normalised (their ``RandomDownProjection``); the projection is a pure function
  of a seed, so a strategy keeps the seed (8 bytes) and regenerates it instead of storing it;
- the nearest key is the top-1 by squared Euclidean distance, computed for all codebooks at once
  by matrix products (||k||^2 - 2 h.k; ||h||^2 does not change the arg-min);
- keys start random normal and are then updated by exponential moving averages (decay 0.95) of
  the projected features assigned to them, vector-quantisation style, over several epochs of
  unlabelled data; after every batch, a key whose EMA count is below ``dead_key_fraction`` (0.1)
  of a uniform share of the batch (``batch_size / keys_per_codebook``) restarts at a random
  feature of that batch. Then the keys are frozen.

One deliberate difference from their code: a key that restarts also restarts its EMA sum and
count (at the sample, with the threshold's weight, as lucidrains' vector-quantize-pytorch does).
Their code keeps the old statistics, so a restarted key's next update mixes in the features its
previous self had averaged (and, early on, its random initial value); with the restart, the key
becomes the mean of the features that chose it.

The EMA sums start at zero rather than at the random keys, for the same reason: after the first
batch a chosen key is the mean of its features, and every key no feature chose restarts at a
sample. Memory: the lookup over N queries holds N x C x K distances; it runs in chunks of at most
``LOOKUP_ELEMENTS`` distances (``lax.map`` inside the one jitted computation) so that the paper's
256 x 4,096 keys fit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cil import npz_cache, parallel
from cil.results import stable_hash
from cil.training import shuffled_order

LOOKUP_ELEMENTS = 1 << 24  # distances held at once by one lookup chunk (64 MB of float32)
HIGHEST = jax.lax.Precision.HIGHEST  # exact float32 distances on GPU/TPU too: same keys everywhere


@dataclasses.dataclass(frozen=True)
class KeySettings:
    """The bottleneck's shape and how its keys are initialised (defaults: a CPU-sized bottleneck)."""

    num_codebooks: int = 64
    keys_per_codebook: int = 512
    key_dim: int = 14
    epochs: int = 10  # passes over the unlabelled data
    batch_size: int = 256
    decay: float = 0.95  # of the EMA of key sums and counts
    dead_key_fraction: float = 0.1  # restart a key below this fraction of a uniform share

    @property
    def dead_key_threshold(self) -> float:
        """The EMA count under which a key restarts (the authors' "uniform importance" rule)."""
        return self.dead_key_fraction * self.batch_size / self.keys_per_codebook


def by_codebook(mesh, num_codebooks: int) -> NamedSharding:
    """Arrays of codebooks (C, ...) split over the devices along C, when C divides evenly.

    Codebooks never interact, so a lookup or a key update runs on each device's codebooks alone.
    """
    return NamedSharding(mesh, P("data" if num_codebooks % mesh.size == 0 else None))


def random_projections(seed, feature_dim: int, settings: KeySettings) -> jax.Array:
    """(C, D, d) Gaussian projections, each column L2-normalised; ``seed`` is a PRNG key."""
    shape = (settings.num_codebooks, feature_dim, settings.key_dim)
    projections = _normal(seed, shape)
    return projections / jnp.linalg.norm(projections, axis=1, keepdims=True)


def _normal(key, shape) -> jax.Array:
    # Drawn flat and reshaped: XLA:CPU took 5 s to compile a 3-D draw, 0.5 s for the flat one.
    return jax.random.normal(key, (int(np.prod(shape)),), jnp.float32).reshape(shape)


def project(features, projections) -> jax.Array:
    """(N, D) features -> (N, C, d) heads, one per codebook."""
    return jnp.einsum("nd,cdk->nck", features, projections, precision=HIGHEST)


def _nearest(heads, keys, key_norms):
    # Codebook-major (C, N, K): XLA:CPU ran this batched product 2x faster than with C in the middle.
    cross = jnp.einsum("nck,cjk->cnj", heads, keys, precision=HIGHEST)
    return jnp.argmin(key_norms[:, None, :] - 2.0 * cross, axis=-1).T.astype(jnp.int32)


def nearest_keys(heads, keys, allowed=None) -> jax.Array:
    """(N, C) index of the nearest key to each head in its codebook; pure, call it under jit.

    ``allowed`` (C, K) bool masks keys out of the search (they are never chosen unless a codebook
    allows none, when its key 0 is returned).
    """
    key_norms = jnp.sum(keys * keys, axis=-1)
    if allowed is not None:
        key_norms = jnp.where(allowed, key_norms, jnp.inf)
    n, c, _ = heads.shape
    chunk = max(1, LOOKUP_ELEMENTS // (c * keys.shape[1]))
    if n <= chunk:
        return _nearest(heads, keys, key_norms)
    pad = -n % chunk
    blocks = jnp.pad(heads, ((0, pad), (0, 0), (0, 0))).reshape(-1, chunk, *heads.shape[1:])
    indices = jax.lax.map(lambda block: _nearest(block, keys, key_norms), blocks)
    return indices.reshape(-1, c)[:n]


class KeyState(NamedTuple):
    """Keys being initialised, with the EMA statistics that move them."""

    keys: jax.Array  # (C, K, d)
    ema_sum: jax.Array  # (C, K, d): EMA of the sum of the heads assigned to each key
    ema_count: jax.Array  # (C, K): EMA of how many heads chose each key


def initial_key_state(key, settings: KeySettings) -> KeyState:
    shape = (settings.num_codebooks, settings.keys_per_codebook, settings.key_dim)
    return KeyState(_normal(key, shape), jnp.zeros(shape, jnp.float32),
                    jnp.zeros(shape[:2], jnp.float32))


def ema_step(state: KeyState, heads, weights, key, settings: KeySettings) -> KeyState:
    """One vector-quantisation EMA update on a batch of heads (B, C, d); ``weights`` (B,) mask padding.

    Real rows must come first in the batch (restarted keys sample among the first sum(weights) rows).
    """
    num_codebooks, num_keys = state.ema_count.shape
    books = jnp.arange(num_codebooks)
    chosen = nearest_keys(heads, state.keys)  # (B, C)
    counts = jnp.zeros((num_codebooks, num_keys)).at[books[None, :], chosen].add(
        jnp.broadcast_to(weights[:, None], chosen.shape))
    sums = jnp.zeros_like(state.ema_sum).at[books[None, :], chosen].add(heads * weights[:, None, None])
    decay = settings.decay
    ema_count = decay * state.ema_count + (1.0 - decay) * counts
    ema_sum = decay * state.ema_sum + (1.0 - decay) * sums
    threshold = settings.dead_key_threshold
    dead = ema_count < threshold
    real = jnp.maximum(jnp.sum(weights > 0), 1).astype(jnp.uint32)
    # A random real row per key (bits modulo: a negligible bias, and a cheaper compile than randint).
    rows = (jax.random.bits(key, (num_codebooks * num_keys,)) % real).reshape(num_codebooks, num_keys)
    samples = heads[rows, books[:, None]]  # (C, K, d): a random real head per key
    means = ema_sum / jnp.maximum(ema_count, threshold)[..., None]
    return KeyState(keys=jnp.where(dead[..., None], samples, means),
                    ema_sum=jnp.where(dead[..., None], samples * threshold, ema_sum),
                    ema_count=jnp.where(dead, threshold, ema_count))


@functools.partial(jax.jit, static_argnames="settings")
def _init_epoch(state: KeyState, features, size, projections, key, settings: KeySettings):
    """One pass over ``features`` (padded; the first ``size`` rows are real) in random order."""
    batch = settings.batch_size
    order_key, steps_key = jax.random.split(key)
    order = shuffled_order(order_key, size, features.shape[0])
    offsets = jnp.arange(batch)

    def body(b, state):
        start = b * batch
        rows = jax.lax.dynamic_slice(order, (start,), (batch,))
        heads = project(features[rows], projections)
        weights = (start + offsets < size).astype(jnp.float32)
        return ema_step(state, heads, weights, jax.random.fold_in(steps_key, b), settings)

    return jax.lax.fori_loop(0, (size + batch - 1) // batch, body, state)


def init_keys(features, projection_seed, settings: KeySettings, key) -> np.ndarray:
    """(C, K, d) keys fitted to unlabelled ``features`` (N, D), seen through the projections."""
    features = np.asarray(features, np.float32)
    size = len(features)
    if size == 0:
        raise ValueError("no features to initialise the keys on")
    capacity = -(-size // settings.batch_size) * settings.batch_size
    padded = np.concatenate([features, np.zeros((capacity - size, features.shape[1]), np.float32)])
    # Codebooks are independent: split them over the devices (each device fits its own keys).
    mesh = parallel.data_mesh()
    books = by_codebook(mesh, settings.num_codebooks)
    projections = jax.device_put(random_projections(projection_seed, features.shape[1], settings),
                                 books)
    init_key, key = jax.random.split(key)
    state = jax.device_put(initial_key_state(init_key, settings), books)
    padded = parallel.replicate(mesh, padded)
    for epoch in range(settings.epochs):  # every input committed alike: one compile per shape
        epoch_key = parallel.replicate(mesh, jax.random.fold_in(key, epoch))
        state = _init_epoch(state, padded, jnp.int32(size), projections, epoch_key, settings)
    return np.asarray(state.keys)


def key_fingerprint(features, settings: KeySettings, projection_seed, key) -> dict:
    """What the keys are a pure function of: the source's features, the settings and both seeds.

    Hashing the features covers the encoder and the unlabelled source together (the keys depend
    on them only through the features), so any change to either gives another cache entry.
    """
    features = np.ascontiguousarray(np.asarray(features, np.float32))
    return {"features_sha256": hashlib.sha256(features.tobytes()).hexdigest(),
            "features_shape": list(features.shape),
            "settings": dataclasses.asdict(settings),
            "projection_seed": np.asarray(jax.random.key_data(projection_seed)).tolist(),
            "init_seed": np.asarray(jax.random.key_data(key)).tolist()}


def cached_keys(directory, fingerprint: dict, compute: Callable[[], np.ndarray],
                description: dict | None = None) -> tuple[np.ndarray, bool]:
    """The keys stored under ``fingerprint`` in ``directory``, else ``compute()`` stored there.

    Returns (keys, whether they came from the cache). ``description`` (the encoder, the source)
    is written beside the keys for people reading the cache; it is not part of the hash. An empty
    ``directory`` turns the cache off.
    """
    if not directory:
        return compute(), False
    path = Path(directory).expanduser() / f"dkvb_keys_{stable_hash(fingerprint, 20)}.npz"
    keys = npz_cache.read(path, lambda stored: stored["keys"])
    if keys is not None:
        return keys, True
    keys = compute()
    npz_cache.write(path, keys=keys, fingerprint=json.dumps(fingerprint),
                    description=json.dumps(description or {}, default=str))
    return keys, False
