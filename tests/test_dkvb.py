"""DKVB (cil/baselines/dkvb/, cil/baselines/dkvb/keys.py): lookup, key initialisation, local updates, masking.

The strategy is driven through its feature-level functions (``init_state``, ``with_keys``,
``learn_features``, ``predict_features``), except where ``learn`` itself is the point.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cil.baselines.dkvb import DKVB
from cil.baselines.dkvb import keys as dkvb_keys
from cil.data.stream import Task, split_tasks
from cil.errors import ConfigError, DataError
from cil.strategy import Budget, StreamSpec, load_strategy
from tests.helpers import tiny_config

SETTINGS = dkvb_keys.KeySettings(num_codebooks=4, keys_per_codebook=16, key_dim=3, epochs=2,
                                 batch_size=32)
FEATURE_DIM = 6
SMALL = {"encoder": {"name": "identity"}, "num_codebooks": 4, "keys_per_codebook": 16,
         "key_dim": 3, "batch_size": 32, "epochs": 1,
         "key_init": {"epochs": 2, "batch_size": 32, "cache_dir": ""}}


def make_strategy(**overrides) -> DKVB:
    key_init = {**SMALL["key_init"], **overrides.pop("key_init", {})}
    return load_strategy("dkvb", tiny_config(dkvb={**SMALL, **overrides, "key_init": key_init}))


def make_spec(num_classes=4, increment=2, train_size=300, image_shape=(1, 1, FEATURE_DIM)):
    tasks = split_tasks(num_classes, 0, increment)
    return StreamSpec(num_classes=num_classes, image_shape=image_shape, tasks=tasks,
                      train_sizes=(train_size,) * len(tasks), budget=Budget())


def clustered(n, seed=0, dim=FEATURE_DIM, centres=3):
    """(n, dim) features around a few centres, and the centre of each (its class)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0.0, 3.0, (centres, dim))
    labels = rng.integers(0, centres, n).astype(np.int32)
    return (means[labels] + rng.normal(0.0, 0.3, (n, dim))).astype(np.float32), labels


@pytest.fixture(scope="module")
def strategy():
    return make_strategy()


@pytest.fixture
def ready(strategy):
    """A fresh state whose keys are fitted to unlabelled features."""
    state = strategy.init_state(jax.random.key(0), make_spec(), FEATURE_DIM)
    return strategy.with_keys(state, clustered(300, seed=1)[0])


def values_of(state) -> np.ndarray:
    return np.asarray(state["net"]["params"]["values"][...])


def with_values(state, values):
    params = jax.tree.map(lambda _: jnp.asarray(values), state["net"]["params"])
    return {**state, "net": {**state["net"], "params": params}}


def squared_distances(heads, keys, allowed=None):
    """(N, C, K) squared distances from heads to keys, in float64; masked keys at infinity."""
    distances = ((np.asarray(heads, np.float64)[:, :, None, :] - np.asarray(keys)[None]) ** 2).sum(-1)
    if allowed is not None:
        distances = np.where(np.asarray(allowed)[None], distances, np.inf)
    return distances


# --- the key side: projections, lookup, initialisation, cache -----------------------------------

def test_projections_are_seeded_gaussians_with_unit_columns():
    p = np.asarray(dkvb_keys.random_projections(jax.random.key(0), 10, SETTINGS))
    assert p.shape == (4, 10, 3)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
    again = dkvb_keys.random_projections(jax.random.key(0), 10, SETTINGS)
    other = dkvb_keys.random_projections(jax.random.key(1), 10, SETTINGS)
    assert np.array_equal(p, again) and not np.allclose(p, other)


@pytest.mark.parametrize("chunked", [False, True])
def test_nearest_keys_are_the_arg_min_of_distances(chunked, monkeypatch):
    if chunked:  # 7 queries per chunk: 50 queries need 8 chunks, the last one padded
        monkeypatch.setattr(dkvb_keys, "LOOKUP_ELEMENTS", 7 * 4 * 16)
    rng = np.random.default_rng(0)
    heads = rng.normal(size=(50, 4, 3)).astype(np.float32)
    keys = rng.normal(size=(4, 16, 3)).astype(np.float32)
    allowed = rng.random((4, 16)) < 0.3
    allowed[:, 0] = True  # every codebook allows at least one key
    for mask in (None, allowed):
        chosen = np.asarray(dkvb_keys.nearest_keys(jnp.asarray(heads), jnp.asarray(keys),
                                                   None if mask is None else jnp.asarray(mask)))
        distances = squared_distances(heads, keys, mask)
        picked = np.take_along_axis(distances, chosen[..., None], -1)[..., 0]
        np.testing.assert_allclose(picked, distances.min(-1), rtol=1e-5, atol=1e-5)
        if mask is not None:
            assert mask[np.arange(4)[None, :], chosen].all()


def test_key_initialisation_places_every_key_on_the_data():
    features, labels = clustered(300, seed=2)  # as many as ``ready``'s: one compiled epoch
    seed = jax.random.key(3)
    keys = dkvb_keys.init_keys(features, seed, SETTINGS, jax.random.key(4))
    assert keys.shape == (4, 16, 3)
    heads = np.asarray(dkvb_keys.project(features, dkvb_keys.random_projections(seed, FEATURE_DIM,
                                                                                SETTINGS)))
    # Keys start N(0, 1), far from these clusters; after the EMA updates and restarts every key
    # is a mean or a sample of projected features: within a cluster's spread of some head.
    to_data = squared_distances(heads, keys).min(0)  # (C, K): each key to its nearest head
    assert to_data.max() < 1.0
    spread = ((heads - heads.mean(0)) ** 2).sum(-1).mean()
    assert spread > 5.0  # the clusters are far apart compared with that
    # And no cluster is left without keys: each cluster's mean head has a key close by.
    centres = np.stack([heads[labels == c].mean(0) for c in range(3)])
    assert squared_distances(centres, keys).min(-1).max() < 1.0


def test_rarely_chosen_keys_restart_at_a_sample_of_the_batch():
    heads = jnp.asarray(np.random.default_rng(0).normal(size=(32, 4, 3)), jnp.float32)
    state = dkvb_keys.initial_key_state(jax.random.key(0), SETTINGS)
    far = state.keys.at[:, 1:].set(1e3)  # every key but key 0 is out of reach: never chosen
    step = jax.jit(dkvb_keys.ema_step, static_argnames="settings")
    new = step(state._replace(keys=far), heads, jnp.ones(32), jax.random.key(1), settings=SETTINGS)
    # Key 0 took every head: its EMA mean is the mean of the batch.
    np.testing.assert_allclose(new.keys[:, 0], heads.mean(0), rtol=1e-5, atol=1e-6)
    # The others had an EMA count of 0 < 0.1 * 32 / 16: each restarts at one of the heads.
    restarted = np.asarray(new.keys[:, 1:])
    matches = np.abs(restarted[:, :, None, :] - np.swapaxes(np.asarray(heads), 0, 1)[:, None]).sum(-1)
    assert (matches.min(-1) < 1e-6).all()
    np.testing.assert_allclose(new.ema_count[:, 1:], SETTINGS.dead_key_threshold)


def test_key_cache_is_shared_by_equal_inputs_only(tmp_path):
    features, _ = clustered(64)
    calls = []

    def fingerprint(seed):
        return dkvb_keys.key_fingerprint(features, SETTINGS, jax.random.key(0), jax.random.key(seed))

    def compute():
        calls.append(1)
        return np.full((4, 16, 3), float(len(calls)), np.float32)

    first, hit1 = dkvb_keys.cached_keys(tmp_path, fingerprint(0), compute)
    again, hit2 = dkvb_keys.cached_keys(tmp_path, fingerprint(0), compute)
    other, hit3 = dkvb_keys.cached_keys(tmp_path, fingerprint(1), compute)
    assert (hit1, hit2, hit3) == (False, True, False) and len(calls) == 2
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(list(tmp_path.glob("dkvb_keys_*.npz"))) == 2


# --- the strategy: local updates, frozen keys, masking, the decoder -------------------------------

def heads_of(state, features) -> np.ndarray:
    projections = dkvb_keys.random_projections(jax.random.wrap_key_data(state["projection_seed"]),
                                               FEATURE_DIM, SETTINGS)
    return np.einsum("nd,cdk->nck", features, np.asarray(projections))


def fetched_mask(state, features) -> np.ndarray:
    """(C, K): the keys nearest to ``features`` among all keys, by brute force."""
    indices = squared_distances(heads_of(state, features), state["keys"]).argmin(-1)
    mask = np.zeros((4, 16), bool)
    mask[np.arange(4)[None, :], indices] = True
    return mask


def test_a_step_changes_only_the_fetched_values(strategy, ready):
    features, labels = clustered(20, seed=5, centres=2)  # 20 examples < batch 32: one SGD step
    start = np.random.default_rng(0).normal(size=(4, 16, 4)).astype(np.float32)
    state = with_values(ready, start)
    learned = strategy.learn_features(state, features, labels, jax.random.key(0), num_seen=2)
    change = values_of(learned.state) - start
    fetched = fetched_mask(state, features)
    assert 0 < fetched.sum() < fetched.size  # the test means something: some keys are not fetched
    assert not change[~fetched].any()  # bitwise unchanged
    assert (np.abs(change[fetched][:, :2]) > 0).all()  # every fetched value moved on seen classes
    assert not change[..., 2:].any()  # the loss spans the seen classes only


def test_keys_are_fitted_once_then_frozen(strategy):
    state = strategy.init(jax.random.key(0), make_spec())  # loads the identity encoder
    # Task 0 has as many examples as ``ready``'s unlabelled features: the same compiled key fit.
    tasks = []
    for t, size in enumerate((300, 60)):
        features, labels = clustered(size, seed=6 + t, centres=2)
        images = features.reshape(-1, 1, 1, FEATURE_DIM)
        tasks.append(Task(t, (2 * t, 2 * t + 1), images, labels + 2 * t))
    assert not bool(state["keys_ready"])
    after = []
    for task in tasks:
        state = strategy.learn(state, task, jax.random.key(task.index)).state
        after.append(np.asarray(state["keys"]))
    # key_init.source = "base_task": fitted on task 0's images with labels dropped, then unchanged.
    expected = dkvb_keys.init_keys(tasks[0].images.reshape(-1, FEATURE_DIM),
                                   jax.random.wrap_key_data(state["projection_seed"]),
                                   strategy.settings, jax.random.wrap_key_data(state["keys_seed"]))
    assert np.array_equal(after[0], expected) and np.array_equal(after[1], expected)


def test_prediction_searches_only_keys_used_in_training(strategy, ready):
    features, labels = clustered(40, seed=7, centres=2)
    state = strategy.learn_features(ready, features, labels, jax.random.key(0), num_seen=2).state
    used = np.asarray(state["used"])
    assert np.array_equal(used, fetched_mask(ready, features))
    probes = np.random.default_rng(8).normal(0.0, 6.0, (40, FEATURE_DIM)).astype(np.float32)
    masked = np.asarray(strategy.decoder_inputs(state, jnp.asarray(probes), masked=True))
    unmasked = np.asarray(strategy.decoder_inputs(state, jnp.asarray(probes), masked=False))
    assert used[np.arange(4)[None, :], masked].all()
    assert (masked != unmasked).any()  # some probes' nearest key overall was never used
    distances = squared_distances(heads_of(state, probes), state["keys"], used)
    picked = np.take_along_axis(distances, masked[..., None], -1)[..., 0]
    np.testing.assert_allclose(picked, distances.min(-1), rtol=1e-5, atol=1e-5)


def test_scores_are_the_mean_of_the_fetched_values(strategy, ready):
    used = np.random.default_rng(1).random((4, 16)) < 0.5
    used[:, 0] = True  # every codebook has a used key
    state = {**ready, "used": jnp.asarray(used)}
    values = np.random.default_rng(2).normal(size=(4, 16, 4)).astype(np.float32)
    state = with_values(state, values)
    features, _ = clustered(40, seed=9)  # 40 queries, as above: the same compiled lookup
    scores = np.asarray(strategy.predict_features(state, jnp.asarray(features)))
    indices = np.asarray(strategy.decoder_inputs(state, jnp.asarray(features), masked=True))
    expected = values[np.arange(4)[None, :], indices].mean(1)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


def test_memory_charges_values_as_learned_and_keys_as_side_state(strategy, ready):
    report = strategy.memory(ready)
    assert report.learner_params == 4 * 16 * 4 * 4  # values: codebooks x keys x classes, float32
    # keys (float32) + used mask (bool) + two 8-byte seeds + the keys_ready flag; no projections
    assert report.side_state == 4 * 16 * 3 * 4 + 4 * 16 + 2 * 8 + 1
    assert report.encoder_params == 0 and report.exemplars == 0  # identity encoder: no weights


def test_linear_decoder_is_charged_as_learned_params_and_keeps_no_keys():
    probe = make_strategy(decoder="linear")
    state = probe.init_state(jax.random.key(0), make_spec(), FEATURE_DIM)
    assert set(state) == {"net"}
    assert probe.memory(state).learner_params == (FEATURE_DIM + 1) * 4 * 4
    assert probe.memory(state).side_state == 0


# --- the toy check of the paper's claim -----------------------------------------------------------

def blobs(per_class, seed):
    """Eight 2-D Gaussian blobs on a circle (radius 4, std 0.5): class c at angle 2 pi c / 8."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(8) / 8
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    labels = np.repeat(np.arange(8), per_class).astype(np.int32)
    return (centres[labels] + rng.normal(0.0, 0.5, (len(labels), 2))).astype(np.float32), labels


def last_accuracy(strategy, increment: int) -> float:
    """A_last on the blobs after learning them in tasks of ``increment`` classes (8: jointly)."""
    train_x, train_y = blobs(60, seed=0)
    test_x, test_y = blobs(50, seed=1)
    # Every spec allows 480 examples a task, so that one compiled trainer serves every split.
    spec = make_spec(8, increment, train_size=480, image_shape=(1, 1, 2))
    state = strategy.init_state(jax.random.key(0), spec, 2)
    if strategy.uses_keys:  # keys from unlabelled blobs, disjoint from the training draw
        state = strategy.with_keys(state, blobs(40, seed=2)[0])
    for span in spec.tasks:
        mine = np.isin(train_y, span.classes)
        state = strategy.learn_features(state, train_x[mine], train_y[mine],
                                        jax.random.key(span.index), span.classes[-1] + 1).state
    predictions = np.asarray(strategy.predict_features(state, jnp.asarray(test_x))).argmax(-1)
    return float((predictions == test_y).mean())


def test_toy_blobs_dkvb_keeps_old_classes_where_a_linear_classifier_forgets():
    toy = {"num_codebooks": 16, "keys_per_codebook": 32, "key_dim": 2, "epochs": 10}
    dkvb, linear = make_strategy(**toy), make_strategy(decoder="linear", **toy)
    joint, incremental = last_accuracy(dkvb, increment=8), last_accuracy(dkvb, increment=2)
    linear_joint, linear_incremental = last_accuracy(linear, 8), last_accuracy(linear, 2)
    # Measured: 0.9975, 0.995, 0.995, 0.295. Both learn the eight blobs jointly; learnt in four
    # tasks of two classes with no replay, DKVB's A_last stays at its joint accuracy while the
    # linear classifier trained the same way keeps little more than the last task (2/8 = 0.25).
    assert joint > 0.9 and linear_joint > 0.9
    assert incremental > joint - 0.05
    assert linear_incremental < 0.5


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("section, message", [
    ({"decoder": "attention"}, "dkvb.decoder"),
    ({"key_init": {"source": "stream"}}, "key_init.source"),
    ({"key_init": {"source": "dataset"}}, "key_init.dataset.name"),
    ({"key_init": {"source": "file"}}, "key_init.path"),
    ({"num_codebooks": 0}, "num_codebooks"),
])
def test_bad_settings_are_config_errors_naming_the_field(section, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(**section)


def test_keys_can_come_from_a_file_of_unlabelled_images(tmp_path):
    images = clustered(50, seed=11)[0].reshape(-1, 1, 1, FEATURE_DIM)
    np.save(tmp_path / "unlabelled.npy", images)
    strategy = make_strategy(key_init={"source": "file", "path": str(tmp_path / "unlabelled.npy")})
    strategy.init(jax.random.key(0), make_spec())
    features, where = strategy.unlabelled_features(None, None)  # the file, not a task
    np.testing.assert_array_equal(features, images.reshape(50, FEATURE_DIM))
    assert where["source"] == "file"
    np.save(tmp_path / "flat.npy", images.reshape(50, FEATURE_DIM))
    flat = make_strategy(key_init={"source": "file", "path": str(tmp_path / "flat.npy")})
    flat.init(jax.random.key(0), make_spec())
    with pytest.raises(DataError, match="shape"):
        flat.unlabelled_features(None, None)
