"""Exemplar memory: a fixed-capacity buffer of uint8 images and labels, and the policies filling it.

    memory = ExemplarMemory(capacity=1000, image_shape=(28, 28, 1), num_classes=10,
                            selection="random", class_balanced=True)
    buffer = memory.empty()                                      # a pytree of fixed shapes
    buffer = memory.update(buffer, images, labels, size, key)    # after a task (padded arrays)
    buffer = memory.update(buffer, images, labels, size, key, features=feats)   # herding
    memory.report(buffer)           # MemoryReport: exemplar bytes (images + labels), count
    count = exemplar_capacity(budget, exemplar_bytes((28, 28, 1), 10), model_bytes, default=2000)

The buffer is ``capacity`` slots of which the first ``size`` hold examples, so a training step can
gather from it inside jit and nothing recompiles as it fills. ``update`` takes a task's data padded
to a fixed length with its true ``size``, so it too compiles once per run.

Selection (``selection``), and what ``class_balanced`` does with it:

- ``random``: the buffer becomes a uniformly random subset of its old contents and the new
  examples (with ``class_balanced``: of each class's).
- ``reservoir``: every example of the stream so far has the same chance, capacity / seen, to be in
  the buffer (Vitter's algorithm R). Any batch size, from one example to a whole task: the
  sequential algorithm's draws are independent, so a batch is one vectorised scatter in which the
  last example aimed at a slot wins, as it would one at a time. Not class-balanced.
- ``herding`` (iCaRL, Rebuffi et al. 2017): per class, greedily pick the example that brings the
  mean of the picked (L2-normalised) features nearest the class mean. Needs ``class_balanced``.
- ``class_balanced``: each class present gets an equal share of the slots (capacity // classes,
  the first capacity % classes of them one more), so shares shrink as classes arrive. The buffer
  is kept sorted by class, then by the policy's priority, and a shrinking class loses its tail: a
  random subset for ``random``, the last picks for ``herding`` (iCaRL's "reduce exemplar set").

Every policy is vectorised over examples; herding's greedy picks are a ``fori_loop`` whose step
scores all candidates of all classes at once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cil.errors import BudgetError, ConfigError
from cil.strategy import Budget, MemoryReport

SELECTIONS = ("random", "reservoir", "herding")
COUNTER_BYTES = 8  # the buffer's two int32 counters, size and seen: charged as side state


class Buffer(NamedTuple):
    """``capacity`` slots; slots [0, size) hold exemplars, the rest are zeros."""

    images: jax.Array  # (capacity, H, W, C) uint8, or (capacity, D) float32 features
    labels: jax.Array  # (capacity,) the smallest unsigned dtype that holds every label
    size: jax.Array  # int32: slots in use
    seen: jax.Array  # int32: examples offered so far (reservoir's stream position)


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds labels 0 .. num_classes - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ConfigError(f"{num_classes} classes do not fit a uint32 label")


def exemplar_bytes(image_shape, num_classes: int, dtype="uint8") -> int:
    """Bytes one exemplar takes: its image (uint8, or float32 features) and its label."""
    return int(np.prod(image_shape)) * np.dtype(dtype).itemsize + label_dtype(num_classes).itemsize


def exemplar_capacity(budget: Budget, bytes_per_exemplar: int, other_bytes: int,
                      default: int) -> int:
    """How many exemplars a strategy may keep: what the budget leaves after its other bytes.

    With ``max_bytes`` (memory.budget_bytes), floor((max_bytes - other_bytes) / bytes_per_exemplar):
    the memory-aligned comparison of Zhou et al. (4.4), with ``other_bytes`` the network and any
    side state. With ``max_exemplars`` (memory.exemplars), that count; with both, the smaller;
    with neither, ``default`` (the strategy's own setting).
    """
    counts = []
    if budget.max_exemplars is not None:
        counts.append(int(budget.max_exemplars))
    if budget.max_bytes is not None:
        room = int(budget.max_bytes) - other_bytes
        if room < 0:
            raise BudgetError(f"memory.budget_bytes={budget.max_bytes:,} is less than the "
                              f"{other_bytes:,} bytes the model and its state take; raise it to "
                              f"at least {other_bytes:,} (plus {bytes_per_exemplar} per exemplar)")
        counts.append(room // bytes_per_exemplar)
    return min(counts) if counts else int(default)


def _per_row(mask, images):
    """``mask`` (N,) shaped to broadcast against images (N, H, W, C)."""
    return mask.reshape(mask.shape[0], *([1] * (images.ndim - 1)))


def _segment_positions(sorted_keys):
    """Each element's position within its run of equal keys (keys sorted)."""
    index = jnp.arange(sorted_keys.shape[0])
    starts = jnp.concatenate([jnp.array([True]), sorted_keys[1:] != sorted_keys[:-1]])
    return index - jax.lax.cummax(jnp.where(starts, index, 0))


def class_shares(labels, valid, capacity: int, num_classes: int):
    """Slots per class: equal shares of ``capacity`` over the classes present (off by one)."""
    present = jnp.zeros(num_classes, jnp.int32).at[labels].max(valid.astype(jnp.int32), mode="drop")
    count = jnp.maximum(present.sum(), 1)
    rank = jnp.cumsum(present) - present  # the class's index among present classes
    return jnp.where(present > 0, capacity // count + (rank < capacity % count), 0)


def herding_ranks(features, labels, size, picks, num_classes: int):
    """Each example's herding pick number within its class (0 first), inf if not among ``picks``.

    iCaRL's greedy rule on L2-normalised features f: the k-th pick (k = 0, 1, ...) of class c is the
    unpicked x minimising || mu_c - (S_c + f(x)) / (k + 1) ||, with mu_c the class mean and S_c the
    sum of the picks so far; i.e. minimising |f(x)|^2 - 2 f(x) . ((k + 1) mu_c - S_c). Every class
    picks at once; a step scores all candidates. The first pick is the example nearest the mean.
    """
    n = features.shape[0]
    valid = jnp.arange(n) < size
    f = features.astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    segments = jnp.where(valid, labels.astype(jnp.int32), num_classes)  # padding: its own segment
    counts = jax.ops.segment_sum(valid.astype(jnp.float32), segments, num_classes + 1)
    means = jax.ops.segment_sum(f, segments, num_classes + 1) / jnp.maximum(counts, 1.0)[:, None]
    squared = jnp.sum(f * f, axis=-1)
    index = jnp.arange(n)

    def pick(k, carry):
        picked_sum, rank = carry
        target = (k + 1) * means - picked_sum
        score = squared - 2.0 * jnp.sum(f * target[segments], axis=-1)
        score = jnp.where(valid & jnp.isinf(rank), score, jnp.inf)
        best = jax.ops.segment_min(score, segments, num_classes + 1)
        is_best = (score == best[segments]) & jnp.isfinite(score)
        winner = jax.ops.segment_min(jnp.where(is_best, index, n), segments, num_classes + 1)
        rank = rank.at[winner].set(k.astype(jnp.float32), mode="drop")  # n: no pick, dropped
        gained = jnp.where((winner < n)[:, None], f[jnp.minimum(winner, n - 1)], 0.0)
        return picked_sum + gained, rank

    start = (jnp.zeros_like(means), jnp.full(n, jnp.inf, jnp.float32))
    return jax.lax.fori_loop(0, picks, pick, start)[1]


class ExemplarMemory:
    """A selection policy over a buffer of ``capacity`` exemplars; ``update`` is jitted once."""

    def __init__(self, capacity: int, image_shape, num_classes: int,
                 selection: str = "random", class_balanced: bool = True, dtype="uint8"):
        if selection not in SELECTIONS:
            raise ConfigError(f"unknown memory selection '{selection}'; choose one of: "
                              f"{', '.join(SELECTIONS)}")
        if selection == "herding" and not class_balanced:
            raise ConfigError("herding picks exemplars per class; set class_balanced=True")
        if selection == "reservoir" and class_balanced:
            raise ConfigError("reservoir sampling is uniform over the stream, not per class; "
                              "set class_balanced=False or selection='random'")
        self.capacity = int(capacity)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.selection = selection
        self.class_balanced = class_balanced
        self.label_dtype = label_dtype(num_classes)
        self.dtype = np.dtype(dtype)  # the stream's: uint8 images or float32 features
        self.bytes_per_exemplar = exemplar_bytes(self.image_shape, num_classes, self.dtype)
        self._update = jax.jit(self._update_impl)

    def empty(self) -> Buffer:
        return Buffer(images=jnp.zeros((self.capacity, *self.image_shape), self.dtype),
                      labels=jnp.zeros((self.capacity,), self.label_dtype),
                      size=jnp.int32(0), seen=jnp.int32(0))

    def report(self, buffer: Buffer) -> MemoryReport:
        """Exemplar bytes (images + labels of the slots in use); the two counters as side state."""
        size = int(buffer.size)
        return MemoryReport(exemplars=size * self.bytes_per_exemplar, side_state=COUNTER_BYTES,
                            num_exemplars=size)

    def update(self, buffer: Buffer, images, labels, size, key, features=None) -> Buffer:
        """Offers the first ``size`` (images, labels) to the buffer; herding needs ``features``."""
        if (features is None) == (self.selection == "herding"):
            raise ValueError("herding needs the candidates' features; the other policies take none")
        return self._update(buffer, images, labels, jnp.int32(size), key, features)

    def _update_impl(self, buffer, images, labels, size, key, features):
        if self.selection == "reservoir":
            return self._reservoir(buffer, images, labels, size, key)
        n = images.shape[0]
        valid = jnp.concatenate([jnp.arange(self.capacity) < buffer.size, jnp.arange(n) < size])
        all_labels = jnp.concatenate([buffer.labels.astype(jnp.int32), labels.astype(jnp.int32)])
        if self.selection == "random":  # fresh random priorities for old and new alike
            group = jnp.zeros(self.capacity + n, jnp.int32)
            rank = jax.random.uniform(key, (self.capacity + n,))
        else:  # herding: old exemplars keep their order; new ones follow in pick order
            shares = class_shares(all_labels, valid, self.capacity, self.num_classes)
            offered = (jnp.arange(n) < size).astype(jnp.int32)
            per_class = jnp.zeros(self.num_classes, jnp.int32).at[labels].add(offered, mode="drop")
            picks = jnp.minimum(shares.max(), per_class.max())  # no class needs more picks
            new_ranks = herding_ranks(features, labels, size, picks, self.num_classes)
            group = jnp.concatenate([jnp.zeros(self.capacity, jnp.int32), jnp.ones(n, jnp.int32)])
            rank = jnp.concatenate([jnp.arange(self.capacity, dtype=jnp.float32), new_ranks])
        chosen, kept = self._keep(all_labels, valid, group, rank)
        return self._gather(buffer, images, labels, chosen, kept, buffer.seen + size)

    def _keep(self, all_labels, valid, group, rank):
        """Candidate indices to keep, in (class, group, rank) order, and how many there are."""
        if self.class_balanced:
            first_key = jnp.where(valid, all_labels, self.num_classes)
        else:
            first_key = jnp.where(valid, 0, 1)
        candidates = jnp.arange(first_key.shape[0])
        first_key, _, _, order = jax.lax.sort((first_key, group, rank, candidates), num_keys=3)
        position = _segment_positions(first_key)
        if self.class_balanced:
            shares = class_shares(all_labels, valid, self.capacity, self.num_classes)
            quota = shares[jnp.minimum(first_key, self.num_classes - 1)]
            keep = (first_key < self.num_classes) & (position < quota)
        else:
            keep = (first_key == 0) & (position < self.capacity)
        (slots,) = jnp.nonzero(keep, size=self.capacity, fill_value=0)
        return order[slots], jnp.minimum(keep.sum(), self.capacity).astype(jnp.int32)

    def _gather(self, buffer, images, labels, chosen, kept, seen) -> Buffer:
        """The candidates ``chosen`` (old slots, then new examples) in slots [0, kept)."""
        used = jnp.arange(self.capacity) < kept
        from_old = chosen < self.capacity
        new_index = jnp.clip(chosen - self.capacity, 0, images.shape[0] - 1)
        old_index = jnp.minimum(chosen, self.capacity - 1)
        pick_old = _per_row(from_old & used, images)
        new_images = jnp.where(pick_old, buffer.images[old_index], images[new_index])
        new_images = jnp.where(_per_row(used, images), new_images, 0).astype(self.dtype)
        new_labels = jnp.where(from_old, buffer.labels[old_index].astype(jnp.int32),
                               labels[new_index].astype(jnp.int32))
        new_labels = jnp.where(used, new_labels, 0).astype(self.label_dtype)
        return Buffer(new_images, new_labels, kept, seen.astype(jnp.int32))

    def _reservoir(self, buffer, images, labels, size, key) -> Buffer:
        n = images.shape[0]
        offered = jnp.arange(n) < size
        position = buffer.seen + jnp.arange(n)  # each example's index in the stream
        draw = jax.random.randint(key, (n,), 0, jnp.maximum(position + 1, 1))
        slot = jnp.where(position < self.capacity, position, draw)
        aimed = jnp.where(offered & (slot < self.capacity), slot, self.capacity)
        # The last example aimed at a slot wins, as in the one-at-a-time algorithm.
        winner = jnp.full(self.capacity, -1, jnp.int32)
        winner = winner.at[aimed].max(jnp.arange(n, dtype=jnp.int32), mode="drop")
        replaced = winner >= 0
        source = jnp.maximum(winner, 0)
        new_images = jnp.where(_per_row(replaced, images), images[source], buffer.images)
        new_labels = jnp.where(replaced, labels[source].astype(self.label_dtype), buffer.labels)
        seen = buffer.seen + size
        return Buffer(new_images, new_labels, jnp.minimum(seen, self.capacity), seen)
