"""NCM with augmentation voting (TILDA): a frozen encoder, running means in subspaces, majority votes.

    config.strategies = ("ncm",)
    config.ncm = ConfigDict({"encoder": {"checkpoint": "workdir/encoders/fmnist_b4_cnn"},
                             "subspaces": 8, "anchors": 1, "train_views": 5, "test_views": 5})

TILDA (Boukli Hacene, Gripon, Farrugia, Arzel, Jezequel, "Transfer Incremental Learning using Data
Augmentation", Applied Sciences 8(12) 2512, 2018) learns classes with no gradient and no stored
example:
- a frozen pretrained network maps an image to a feature vector x of dimension d
  (``encoder``: see cil/encoders.py; it is reported as ``encoder_params``, never trained);
- x is cut into P = ``subspaces`` consecutive sub-vectors of d/P coordinates (zero-padded up to a
  multiple of P: padded coordinates add nothing to any distance);
- each class keeps, per subspace, k = ``anchors`` anchor vectors. An example of class c is learned
  in O(d): in each subspace its sub-vector joins the nearest of c's k anchors (the first k
  sub-vectors of a class seed them, one each), and that anchor becomes the running mean of its
  members;
- training-time augmentation: each training image is learned as ``train_views`` views (view 0 the
  image itself, the others random crops of the zero-padded image and, where it makes sense for the
  dataset, horizontal flips: cil/data/augment.py);
- prediction: each of ``test_views`` views of a test image and each subspace casts one vote, for the
  class of its nearest anchor among all anchors of all classes seen so far; the class with most
  votes wins. ``predict`` returns the vote counts (a class never seen has no anchor, so no votes).

Choices the paper leaves open, as config fields (defaults in ``fields``):
- ``tie_break``: "distance" (default) adds to each class's votes 0.5 / (1 + its mean distance, over
  views and subspaces, to its nearest anchor): always less than one vote, so it only orders classes
  that tie on votes, the nearest first. "lowest_label": no bonus; the evaluator's arg-max then
  picks the tied class learned first.
- The anchors are kept as sums and counts (means = sums / counts), so with k = 1 learning a task is a
  scatter-add of its features: the same class means as one-at-a-time running means, up to float
  rounding, in any order. With k > 1 the assignment to the nearest anchor is online k-means
  (MacQueen): one example at a time, in the order given (examples in stream order, each example's
  views together), so it depends on that order by nature.
- Test-time views use a key fixed at ``init`` and kept in the state (8 bytes, regenerated from the
  seed, not charged), so ``predict`` is deterministic given the state. Views are keyed by an image's
  pixels, not its position, so a test image's prediction does not depend on its batch.

P = 1, k = 1, one view of each is the plain nearest-class-mean classifier on the encoder's features.
Memory charged (``side_state``): the anchor sums (C x P x k x d/P float32) and counts (C x P x k
int32), allocated for all C classes at ``init``.

Quantised outputs (``quantize_bits`` = b in 1, 2, 4, 8; 0 = float32, the default). The paper's
summary (ICLR 2018 workshop version: "NCM-inspired classifiers with quantized outputs of a Deep
CNN") speaks of quantised outputs, but the text reachable from here (the journal version's
sections 3.2.1-3.2.5: algorithms 1-2 and remark (c), "it only stores averages of feature vectors")
gives no quantiser; the authors' earlier work on the same pipeline quantised the outputs to feed
binary associative memories. cil implements the plainest reading and says so:
- every output of the encoder (each training and test view) is quantised coordinate by coordinate
  to b bits, uniformly between that coordinate's minimum and maximum over the first task's
  training images (one extra encoder pass over task 0, no augmentation; values outside are
  clipped), and the classifier sees the de-quantised value low + code x step;
- a class's anchors are learned as above from the quantised outputs during its task, then stored
  as b-bit codes of the same quantiser (packed, 8 / b codes a byte) and their sums and counts
  dropped: in a class-incremental stream a class's examples all come in one task, so its anchors
  are final when the task ends (a class that came back would be learned afresh);
- charged: the packed codes (C x P x k x ceil(d/P x b / 8) bytes), a byte per anchor saying it
  has members, and the quantiser's range (2 x P x d/P float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cil import encoders, parallel
from cil.data import augment
from cil.fields import Field, Integer, OneOf
from cil.strategy import Learned, MemoryReport, Strategy, pytree_bytes

TIE_BREAKS = ("distance", "lowest_label")
QUANTIZE_BITS = (0, 1, 2, 4, 8)


def quantize(x, low, high, bits: int):
    """Codes in [0, 2^bits - 1] of ``x`` on the uniform grid from ``low`` to ``high`` (clipped)."""
    levels = 2 ** bits - 1
    step = jnp.maximum((high - low) / levels, 1e-12)  # a constant coordinate: every code 0
    return jnp.clip(jnp.round((x - low) / step), 0, levels).astype(jnp.uint8)


def dequantize(codes, low, high, bits: int):
    step = jnp.maximum((high - low) / (2 ** bits - 1), 1e-12)
    return low + codes.astype(jnp.float32) * step


def anchor_range(quantizer):
    """The (P, s) range as (P, 1, s), to quantise (C, P, k, s) anchors coordinate by coordinate."""
    return tuple(bound[:, None, :] for bound in quantizer)


def pack(codes, bits: int):
    """(..., s) b-bit codes -> (..., ceil(s b / 8)) bytes, code i of a byte in bits [i b, (i+1) b)."""
    per_byte = 8 // bits
    pad = -codes.shape[-1] % per_byte
    codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, pad)])
    codes = codes.reshape(*codes.shape[:-1], -1, per_byte).astype(jnp.uint32)
    shifts = jnp.arange(per_byte, dtype=jnp.uint32) * bits
    return jnp.sum(codes << shifts, axis=-1).astype(jnp.uint8)


def unpack(packed, bits: int, size: int):
    """The inverse of ``pack``: (..., bytes) -> (..., size) codes."""
    per_byte = 8 // bits
    shifts = jnp.arange(per_byte, dtype=jnp.uint8) * bits
    codes = (packed[..., None] >> shifts) & jnp.uint8(2 ** bits - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :size]


class NCM(Strategy):
    name = "ncm"

    @classmethod
    def fields(cls):
        return {
            "encoder": encoders.ENCODER_FIELDS,
            "subspaces": Field(8, Integer(min=1), "P: the features cut into P parts, each votes"),
            "anchors": Field(1, Integer(min=1), "k: anchors per class and subspace (1: means)"),
            "train_views": Field(5, Integer(min=1), "views learned per training image (1: none)"),
            "test_views": Field(5, Integer(min=1), "views voting per test image (1: no voting)"),
            "augment": augment.VIEW_FIELDS,
            "tie_break": Field("distance", OneOf(*TIE_BREAKS), "see the module docstring"),
            "quantize_bits": Field(0, OneOf(*QUANTIZE_BITS),
                                   "b: outputs and anchors at b bits a coordinate (0: float32)"),
        }

    def __init__(self, config):
        super().__init__(config)
        self._built_for = None

    def _build(self, spec) -> None:
        """Loads the encoder and compiles learn/predict, once per stream (reused across seeds)."""
        if self._built_for == spec:
            return
        cfg = self.config.strategy
        self.encoder = encoders.encoder_from_config(cfg.encoder, spec.image_shape)
        self.augment = augment.resolve(cfg.augment, spec.dataset_name)
        self.num_subspaces, self.num_anchors = int(cfg.subspaces), int(cfg.anchors)
        self.sub_dim = -(-self.encoder.feature_dim // self.num_subspaces)
        self.bits = int(cfg.quantize_bits)
        self.mesh = self.encoder.mesh
        self._learn_batch = jax.jit(self._learn_batch_impl)
        self._predict = jax.jit(self._predict_impl)
        self._store_codes = jax.jit(self._store_codes_impl)
        self._built_for = spec

    def init(self, key, spec):
        self._build(spec)
        state = {"test_key": jax.random.key_data(jax.random.fold_in(key, 1))}
        if self.bits:
            shape = self.anchor_shape(spec.num_classes)
            packed = -(-self.sub_dim * self.bits // 8)
            state.update(codes=jnp.zeros((*shape, packed), jnp.uint8),
                         learned=jnp.zeros(shape, jnp.bool_),
                         low=jnp.zeros((self.num_subspaces, self.sub_dim), jnp.float32),
                         high=jnp.zeros((self.num_subspaces, self.sub_dim), jnp.float32))
        else:
            state.update(self.empty_sums(spec.num_classes))
        return parallel.replicate(self.mesh, state)

    def anchor_shape(self, num_classes: int) -> tuple[int, int, int]:
        return num_classes, self.num_subspaces, self.num_anchors

    def empty_sums(self, num_classes: int) -> dict:
        shape = self.anchor_shape(num_classes)
        return {"sums": jnp.zeros((*shape, self.sub_dim), jnp.float32),
                "counts": jnp.zeros(shape, jnp.int32)}

    def quantizer(self, state):
        """(low, high) of the quantised outputs, or None for float32 outputs."""
        return (state["low"], state["high"]) if self.bits else None

    def round_trip(self, x, quantizer):
        """Sub-vectors as the classifier sees them: quantised to b bits and back, or unchanged."""
        if quantizer is None:
            return x
        return dequantize(quantize(x, *quantizer, self.bits), *quantizer, self.bits)

    def anchor_means(self, state):
        """(C, P, k, s) anchors and (C, P, k) whether each has members."""
        if self.bits:
            codes = unpack(state["codes"], self.bits, self.sub_dim)
            low, high = anchor_range(self.quantizer(state))
            return dequantize(codes, low, high, self.bits), state["learned"]
        return state["sums"] / jnp.maximum(state["counts"], 1)[..., None], state["counts"] > 0

    def split(self, features):
        """(..., d) features -> (..., P, d/P) sub-vectors, zero-padded to a multiple of P."""
        pad = self.num_subspaces * self.sub_dim - features.shape[-1]
        features = jnp.pad(features, [(0, 0)] * (features.ndim - 1) + [(0, pad)])
        return features.reshape(*features.shape[:-1], self.num_subspaces, self.sub_dim)

    def learn(self, state, task, key):
        """Streams the task through the encoder in fixed-size batches; each batch's views are
        learned as soon as they are computed (one compiled call per batch, never recomputed)."""
        size = self.encoder.batch_size
        if self.bits:  # this task's classes start empty; their anchors are stored as codes after
            if task.index == 0:
                state = {**state, **self.calibrate(task.images)}
            running = self.empty_sums(state["learned"].shape[0])
        else:
            running = state
        sums, counts, quantizer = running["sums"], running["counts"], self.quantizer(state)
        for start in range(0, len(task.labels), size):
            images, labels = task.images[start:start + size], task.labels[start:start + size]
            real = len(labels)
            if real < size:  # the last batch: padded, and the padding masked out
                images = np.concatenate([images, np.zeros((size - real, *images.shape[1:]), images.dtype)])
                labels = np.concatenate([labels, np.zeros(size - real, labels.dtype)])
            sums, counts = self._learn_batch(self.encoder.weights, sums, counts, quantizer, images,
                                             labels.astype(np.int32), key, jnp.int32(real))
        views = int(self.config.strategy.train_views)
        if self.bits:
            learned = self._store_codes(state["codes"], state["learned"], sums, counts, quantizer)
        else:
            learned = {"sums": sums, "counts": counts}
        return Learned({**state, **learned}, len(task.labels) * views)

    def calibrate(self, images) -> dict:
        """The quantiser's range: each coordinate's min and max over ``images``' outputs."""
        x = self.split(self.encoder.features(images))  # (N, P, s)
        return {"low": jnp.min(x, axis=0), "high": jnp.max(x, axis=0)}

    def _store_codes_impl(self, codes, learned, sums, counts, quantizer):
        """The anchors learned in this task, as packed codes in place of their classes' rows."""
        means = sums / jnp.maximum(counts, 1)[..., None]
        new_codes = pack(quantize(means, *anchor_range(quantizer), self.bits), self.bits)
        new = counts > 0
        return {"codes": jnp.where(new[..., None], new_codes, codes), "learned": learned | new}

    def _learn_batch_impl(self, weights, sums, counts, quantizer, images, labels, key, real):
        views = int(self.config.strategy.train_views)
        if images.shape[0] % self.mesh.size == 0:
            images = parallel.shard_batch(self.mesh, images)
        features = encoders.view_features(self.encoder, weights, images, key, views, self.augment)
        # Arrival order: example by example, each example's views together.
        features = jnp.swapaxes(features, 0, 1).reshape(-1, features.shape[-1])
        x = self.round_trip(self.split(features), quantizer)  # (M, P, s)
        return self._update_impl(sums, counts, x, jnp.repeat(labels, views), real * views)

    def _update_impl(self, sums, counts, x, labels, size):
        """Adds the first ``size`` (sub-vectors, label) pairs to their class's anchors, in order."""
        subspace = jnp.arange(self.num_subspaces)
        if self.num_anchors == 1:  # every example joins its class's only anchor: a scatter-add
            real = (jnp.arange(len(labels)) < size)
            sums = sums.at[labels, :, 0].add(x * real[:, None, None])
            counts = counts.at[labels, :, 0].add(real.astype(jnp.int32)[:, None])
            return sums, counts

        def learn_one(i, carry):  # online k-means step for one example: O(k d)
            sums, counts = carry
            y, xi = labels[i], x[i]
            class_counts = counts[y]  # (P, k)
            means = sums[y] / jnp.maximum(class_counts, 1)[..., None]
            distances = jnp.sum((means - xi[:, None, :]) ** 2, axis=-1)
            empty = class_counts == 0
            nearest = jnp.where(empty.any(axis=1), jnp.argmax(empty, axis=1),
                                jnp.argmin(distances, axis=1))  # seed empty anchors first
            sums = sums.at[y, subspace, nearest].add(xi)
            counts = counts.at[y, subspace, nearest].add(1)
            return sums, counts

        return jax.lax.fori_loop(0, size, learn_one, (sums, counts))

    def predict(self, state, images):
        return self._predict(self.encoder.weights, state, images)

    def _predict_impl(self, weights, state, images):
        key = jax.random.wrap_key_data(state["test_key"])
        if images.shape[0] % self.mesh.size == 0:  # split the batch over the devices when it can
            images = parallel.shard_batch(self.mesh, images)
        views = int(self.config.strategy.test_views)
        features = encoders.view_features(self.encoder, weights, images, key, views, self.augment)
        x = self.round_trip(self.split(features), self.quantizer(state))  # (V, n, P, s)
        means, learned = self.anchor_means(state)  # (C, P, k, s), (C, P, k)
        num_classes = means.shape[0]
        squared = (jnp.sum(x ** 2, -1)[..., None, None]  # (V, n, P, 1, 1)
                   - 2 * jnp.einsum("vnps,cpks->vnpck", x, means)
                   + jnp.einsum("cpks,cpks->pck", means, means))
        squared = jnp.where(jnp.moveaxis(learned, 0, 1), squared, jnp.inf)  # (V, n, P, C, k)
        to_class = jnp.min(squared, axis=-1)  # each class's nearest anchor: (V, n, P, C)
        winner = jnp.argmin(to_class, axis=-1)
        voted = jnp.isfinite(jnp.min(to_class, axis=-1))  # no anchor at all: no vote
        votes = jnp.sum(jax.nn.one_hot(winner, num_classes) * voted[..., None], axis=(0, 2))
        if self.config.strategy.tie_break == "lowest_label":
            return votes
        distance = jnp.mean(jnp.sqrt(jnp.maximum(to_class, 0.0)), axis=(0, 2))  # (n, C)
        return votes + 0.5 / (1.0 + distance)  # inf distance (never seen): bonus 0

    def memory(self, state):
        kept = {k: v for k, v in state.items() if k != "test_key"}  # the key is not charged
        return MemoryReport(side_state=pytree_bytes(kept), encoder_params=self.encoder.num_bytes)
