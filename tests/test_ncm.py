"""The ncm (TILDA) strategy against brute-force NumPy: class means, online anchors and voting."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cil.baselines import ncm
from cil import encoders, experiment, models
from cil.data.stream import Task
from cil.errors import ConfigError
from cil.strategy import load_strategy, pytree_bytes
from tests.helpers import tiny_config, tiny_stream

STREAM = tiny_stream(num_classes=4, increment=2, per_class=12)  # 4x4x1 images, tasks (0,1), (2,3)
KEY = jax.random.key(5)


def make(**section):
    # Small encoder batches: the tiny tasks are padded to one batch, not to 500 images.
    section["encoder"] = {"name": "identity", "batch_size": 32, **section.get("encoder", {})}
    config = tiny_config(ncm=section)
    strategy = load_strategy("ncm", config)
    spec = experiment.stream_spec(STREAM, config.memory)
    return strategy, strategy.init(jax.random.key(0), spec)


def train_features(strategy, task, key=KEY):
    """What learn must add: (N * views, P, s) sub-vectors in arrival order, labels alike."""
    views = int(strategy.config.strategy.train_views)
    feats = np.asarray(encoders.extract_features(strategy.encoder, task.images, key, views,
                                                 strategy.augment))
    feats = np.swapaxes(feats, 0, 1).reshape(-1, feats.shape[-1])
    return np.asarray(strategy.split(feats)), np.repeat(task.labels, views)


def means(state):
    return np.asarray(state["sums"]) / np.maximum(np.asarray(state["counts"]), 1)[..., None]


@pytest.mark.parametrize("subspaces, views", [(1, 1), (3, 3)])  # 3 does not divide 16: padding
def test_class_means_equal_numpy(subspaces, views):
    strategy, state = make(subspaces=subspaces, train_views=views, test_views=1)
    task = STREAM.train_task(0)
    state = strategy.learn(state, task, KEY).state
    x, y = train_features(strategy, task)
    for c in range(4):
        expected_count = np.sum(y == c)
        np.testing.assert_array_equal(np.asarray(state["counts"])[c, :, 0], expected_count)
        if expected_count:
            np.testing.assert_allclose(means(state)[c, :, 0], x[y == c].mean(axis=0), atol=1e-6)
    if views == 1:  # plain nearest class mean on pixels: the blobs are easy
        state = strategy.learn(state, STREAM.train_task(1), KEY).state
        predictions = np.argmax(strategy.predict(state, STREAM.test_images), -1)
        assert np.mean(predictions == STREAM.test_labels) > 0.9


def test_learning_does_not_depend_on_the_order_of_examples():
    strategy, init = make(subspaces=2, train_views=3, test_views=3)
    task = STREAM.train_task(0)
    perm = np.random.default_rng(0).permutation(len(task.labels))
    shuffled = Task(task.index, task.classes, task.images[perm], task.labels[perm])
    a = strategy.learn(init, task, KEY).state
    b = strategy.learn(init, shuffled, KEY).state
    np.testing.assert_array_equal(np.asarray(a["counts"]), np.asarray(b["counts"]))
    np.testing.assert_allclose(means(a), means(b), atol=1e-6)
    test = STREAM.test_seen(0).images
    np.testing.assert_array_equal(np.argmax(strategy.predict(a, test), -1),
                                  np.argmax(strategy.predict(b, test), -1))


def online_kmeans(x, y, num_classes, k):
    """One example at a time: seed empty anchors in turn, else join the nearest; running means."""
    sums = np.zeros((num_classes, x.shape[1], k, x.shape[2]))
    counts = np.zeros((num_classes, x.shape[1], k), int)
    for xi, c in zip(x, y):
        for p in range(x.shape[1]):
            empty = np.flatnonzero(counts[c, p] == 0)
            if len(empty):
                j = empty[0]
            else:
                centres = sums[c, p] / counts[c, p][:, None]
                j = np.argmin(((centres - xi[p]) ** 2).sum(-1))
            sums[c, p, j] += xi[p]
            counts[c, p, j] += 1
    return sums, counts


def test_several_anchors_are_online_kmeans_running_means():
    strategy, state = make(subspaces=2, anchors=3, train_views=2, test_views=1)
    task = STREAM.train_task(0)
    state = strategy.learn(state, task, KEY).state
    sums, counts = online_kmeans(*train_features(strategy, task), 4, 3)
    np.testing.assert_array_equal(np.asarray(state["counts"]), counts)
    np.testing.assert_allclose(np.asarray(state["sums"]), sums, rtol=1e-5, atol=1e-5)


def numpy_votes(strategy, state, images):
    """Each (view, subspace) votes for the class of its nearest anchor among all learned anchors."""
    views = int(strategy.config.strategy.test_views)
    key = jax.random.wrap_key_data(state["test_key"])
    feats = np.asarray(encoders.extract_features(strategy.encoder, images, key, views,
                                                 strategy.augment))
    x = np.asarray(strategy.split(feats))  # (V, n, P, s)
    centres, valid = means(state), np.asarray(state["counts"]) > 0  # (C, P, k, s), (C, P, k)
    votes = np.zeros((len(images), centres.shape[0]))
    for v in range(x.shape[0]):
        for i in range(x.shape[1]):
            for p in range(x.shape[2]):
                d = ((centres[:, p] - x[v, i, p]) ** 2).sum(-1)
                d[~valid[:, p]] = np.inf
                votes[i, np.unravel_index(np.argmin(d), d.shape)[0]] += 1
    return votes


def test_votes_equal_numpy_and_unseen_classes_get_none():
    strategy, state = make(subspaces=2, anchors=2, train_views=2, test_views=3,
                           tie_break="lowest_label")
    state = strategy.learn(state, STREAM.train_task(0), KEY).state
    images = STREAM.test_images[:16]  # examples of every class, seen or not
    scores = np.asarray(strategy.predict(state, images))
    np.testing.assert_array_equal(scores, numpy_votes(strategy, state, images))
    assert np.all(scores[:, 2:] == 0)  # classes 2 and 3 are not learned yet
    np.testing.assert_array_equal(scores.sum(-1), 3 * 2)  # every (view, subspace) votes once


def test_distance_tie_break_only_orders_ties_and_predict_is_deterministic():
    strategy, state = make(subspaces=2, train_views=1, test_views=3)
    state = strategy.learn(state, STREAM.train_task(0), KEY).state
    state = strategy.learn(state, STREAM.train_task(1), jax.random.key(6)).state
    images = STREAM.test_images
    scores = np.asarray(strategy.predict(state, images))
    np.testing.assert_array_equal(np.floor(scores), numpy_votes(strategy, state, images))
    assert np.all((scores - np.floor(scores) > 0) & (scores - np.floor(scores) <= 0.5))
    perm = np.random.default_rng(1).permutation(len(images))
    np.testing.assert_array_equal(np.asarray(strategy.predict(state, images[perm])), scores[perm])


def test_frozen_encoder_is_bitwise_unchanged_and_reported_apart(tmp_path):
    network = models.build(ml_collections.ConfigDict({"name": "cnn", "channels": (4, 8)}),
                           STREAM.image_shape, 2, seed=0)
    directory = encoders.save_encoder(tmp_path, network, {
        "model": {"name": "cnn", "channels": (4, 8)}, "image_shape": STREAM.image_shape,
        "num_classes": 2, "encoder_stages": None, "trained_on": {"data": "none"}})
    strategy, state = make(encoder={"name": "checkpoint", "checkpoint": str(directory)}, anchors=2)
    before = jax.tree.map(np.array, strategy.encoder.weights)
    for t in range(STREAM.num_tasks):
        state = strategy.learn(state, STREAM.train_task(t), jax.random.key(t)).state
        strategy.predict(state, STREAM.test_images[:8])
    after = jax.tree.map(np.array, strategy.encoder.weights)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
                                     before, after))
    report = strategy.memory(state)
    assert report.encoder_params == strategy.encoder.num_bytes > 0
    assert report.side_state == pytree_bytes((state["sums"], state["counts"]))
    assert report.charged_bytes() == report.side_state  # the encoder is not charged


def test_bad_settings_fail_before_any_work():
    with pytest.raises(ConfigError, match="subspaces"):
        make(subspaces=0)
    with pytest.raises(ConfigError, match="tie_break"):
        make(tie_break="random")
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        make(encoder={"name": "checkpoint"})


def test_quantizer_and_packing_on_hand_values():
    low, high = jnp.array([0.0, -1.0]), jnp.array([3.0, 1.0])
    x = jnp.array([[1.4, 0.2], [5.0, -3.0]])  # 2 bits: steps 1 and 2/3
    codes = ncm.quantize(x, low, high, 2)
    np.testing.assert_array_equal(codes, [[1, 2], [3, 0]])  # 0.2 -> (1.2 / (2/3)) = 1.8 -> 2
    np.testing.assert_allclose(ncm.dequantize(codes, low, high, 2), [[1.0, 1 / 3], [3.0, -1.0]],
                               atol=1e-6)
    # Codes 1, 2, 3 at 2 bits, then 3 padded to a byte: 1 + 2*4 + 3*16 = 57.
    np.testing.assert_array_equal(ncm.pack(jnp.array([1, 2, 3], jnp.uint8), 2), [57])
    for bits in (1, 2, 4, 8):
        codes = jax.random.randint(KEY, (3, 13), 0, 2 ** bits).astype(jnp.uint8)
        packed = ncm.pack(codes, bits)
        assert packed.shape == (3, -(-13 * bits // 8))
        np.testing.assert_array_equal(ncm.unpack(packed, bits, 13), codes)


@pytest.mark.parametrize("bits", [1, 8])
def test_quantised_anchors_are_the_quantised_means_of_quantised_outputs(bits):
    strategy, state = make(subspaces=3, train_views=1, test_views=1, quantize_bits=bits)
    task = STREAM.train_task(0)
    state = strategy.learn(state, task, KEY).state
    # The range: each coordinate's min and max over task 0's plain outputs (pixels in [0, 1]).
    x, y = train_features(strategy, task)
    np.testing.assert_allclose(state["low"], x.min(axis=0))
    np.testing.assert_allclose(state["high"], x.max(axis=0))
    levels = 2 ** bits - 1
    step = np.maximum((x.max(0) - x.min(0)) / levels, 1e-12)
    seen = np.clip(np.round((x - x.min(0)) / step), 0, levels) * step + x.min(0)
    means, learned = strategy.anchor_means(state)
    for c in range(4):
        assert bool(np.all(np.asarray(learned)[c])) == (c < 2)
        if c < 2:
            # The mean in grid steps, rounded to the nearest; a mean halfway between two grid
            # points (common at 1 bit) may round either way in float32.
            position = (seen[y == c].mean(0) - x.min(0)) / step
            code = (np.asarray(means)[c, :, 0] - x.min(0)) / step
            halfway = np.abs(position % 1 - 0.5) < 1e-4
            np.testing.assert_allclose(code[~halfway], np.round(position)[~halfway], atol=1e-3)
            assert np.all(np.isin(np.round(code - np.floor(position))[halfway], (0, 1)))
    assert "sums" not in state and "counts" not in state


def test_quantised_ncm_learns_and_charges_its_packed_bytes():
    accuracy, charged = {}, {}
    for bits in (0, 8, 1):
        strategy, state = make(subspaces=3, train_views=1, test_views=1, quantize_bits=bits)
        for t in range(STREAM.num_tasks):
            state = strategy.learn(state, STREAM.train_task(t), KEY).state
        predictions = np.argmax(strategy.predict(state, STREAM.test_images), -1)
        accuracy[bits] = np.mean(predictions == STREAM.test_labels)
        charged[bits] = strategy.memory(state).side_state
    # C = 4 classes, P = 3, k = 1, s = ceil(16 / 3) = 6 coordinates a subspace.
    assert charged[0] == 4 * 3 * 6 * 4 + 4 * 3 * 4  # float32 sums, int32 counts
    range_bytes = 2 * 3 * 6 * 4
    assert charged[8] == 4 * 3 * 6 + 4 * 3 + range_bytes  # a byte a code, a byte a 'learned'
    assert charged[1] == 4 * 3 * 1 + 4 * 3 + range_bytes  # 6 one-bit codes in one byte
    # 24 test images of easy blobs, chance 0.25: float32 gets 21 right with P = 3 (measured),
    # 8 bits may lose a couple to rounding, one bit a pixel (bright or not) still most.
    assert accuracy[0] > 0.8
    assert accuracy[8] >= accuracy[0] - 2 / 24
    assert accuracy[1] > 0.5
