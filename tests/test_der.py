"""DER (cil/baselines/der.py): frozen backbones stay bitwise unchanged, BatchNorm statistics
included; the auxiliary head's labels and the loss by hand; the memory report by hand. That it
keeps old tasks where finetune forgets is tests/test_baselines.py's (OLD_TASK_MARGIN["der"])."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cil.baselines.der import DER, auxiliary_labels, der_loss, expand
from cil.data import stream as streams
from cil.experiment import stream_spec
from cil.models.networks import GlobalPool, Network, Stem
from cil.strategy import Budget, strategy_config
from tests.helpers import blobs_dataset, tiny_config, tiny_stream

EXEMPLARS = 12
CHANNELS = 4  # the BatchNorm backbone's feature width d


class BatchNormDER(DER):
    """DER over a tiny backbone with BatchNorm (3x3 conv without bias, BatchNorm, ReLU, global
    pooling): the suite's ResNets have BatchNorm too but compile for a minute on a CPU."""

    def backbone_network(self, spec, key):
        rngs = nnx.Rngs(key)
        return Network([Stem(spec.image_shape[-1], CHANNELS, rngs=rngs), GlobalPool()], CHANNELS,
                       spec.num_classes, rngs=rngs)


def batch_norm_der(**settings):
    config = tiny_config(der=settings)
    config.train.epochs = 2
    config.memory.exemplars = EXEMPLARS
    return BatchNormDER(strategy_config("der", config))


@pytest.fixture(scope="module")
def three_tasks():
    """The BatchNorm DER through 3 tasks of 2 classes: (strategy, spec, stream, [state after
    init, after task 0, 1, 2]), each state copied to the host."""
    stream = tiny_stream(num_classes=6, increment=2)
    strategy = batch_norm_der()
    spec = stream_spec(stream, strategy.config.memory)
    state = strategy.init(jax.random.key(0), spec)
    states = [jax.device_get(state)]
    for t in range(3):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t + 1)).state
        states.append(jax.device_get(state))
    return strategy, spec, stream, states


def slot(tree, s):
    """Slot ``s`` of every leaf of a stacked backbone state, as NumPy arrays."""
    return [np.asarray(leaf)[s] for leaf in jax.tree.leaves(tree)]


def backbones(state, kind):
    """The backbones' parameters ("params") or BatchNorm statistics ("model_state")."""
    return state["net"][kind]["backbones"]


@pytest.mark.parametrize("kind", ["params", "model_state"])
def test_old_backbones_stay_bitwise_unchanged(three_tasks, kind):
    strategy, _, _, states = three_tasks
    assert jax.tree.leaves(backbones(states[0], "model_state"))  # the test needs BatchNorm
    for t in (1, 2):  # while learning task t
        before, after = states[t], states[t + 1]  # states[t + 1]: after task t
        for s in range(t):
            for a, b in zip(slot(backbones(before, kind), s), slot(backbones(after, kind), s)):
                np.testing.assert_array_equal(a, b)
        # The new slot did train in training mode: it moved away from the copy it started as
        # (slot t - 1's), its BatchNorm statistics included.
        assert any(not np.array_equal(a, b) for a, b in
                   zip(slot(backbones(before, kind), t - 1), slot(backbones(after, kind), t)))
    # Slots not yet active keep their initial draw.
    for a, b in zip(slot(backbones(states[0], kind), 2), slot(backbones(states[2], kind), 2)):
        np.testing.assert_array_equal(a, b)
    # Every task ran the same compiled step: one program for all sizes.
    assert strategy._trainer._steps._cache_size() == 1


def test_frozen_slots_use_running_statistics_in_training_mode(three_tasks):
    strategy, _, stream, states = three_tasks
    net = jax.tree.map(jnp.asarray, states[2]["net"])  # two active backbones, writable
    model = nnx.merge(strategy._trainer.graphdef, net["params"], net["model_state"], copy=True)
    images = jnp.asarray(stream.train_images[:16])
    training = np.asarray(model.features(images, train=True))
    evaluation = np.asarray(model.features(images, train=False))
    d = CHANNELS
    np.testing.assert_allclose(training[:, :d], evaluation[:, :d], rtol=1e-6)  # frozen slot 0
    assert not np.allclose(training[:, d:2 * d], evaluation[:, d:2 * d])  # batch statistics
    assert not np.any(training[:, 2 * d:]) and not np.any(evaluation[:, 2 * d:])  # inactive


def test_auxiliary_labels_map_old_classes_to_old():
    # 4 old classes, then the task's 2: old -> 0, class 4 -> 1, class 5 -> 2.
    labels = jnp.array([0, 3, 1, 4, 5, 2, 4])
    np.testing.assert_array_equal(auxiliary_labels(labels, 4), [0, 0, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(auxiliary_labels(labels, 0), [1, 4, 2, 5, 6, 3, 5])  # task 0


def test_der_loss_by_hand():
    # Tasks of 3, 1 and 1 classes: the auxiliary head has 1 + 3 columns (the widest task), of
    # which task 1 uses 2 ("old" and class 3); column 2 and 3 must not enter its softmax.
    data = blobs_dataset(num_classes=5, per_class=4)
    stream = streams.make_stream(data, 3, 1, explicit_order=list(range(5)))
    strategy = DER(strategy_config("der", tiny_config(der={"aux_weight": 0.5})))
    spec = stream_spec(stream, tiny_config().memory)
    state = strategy.init(jax.random.key(0), spec)
    graphdef = strategy._trainer.graphdef
    net = expand(graphdef, state["net"], 0, jax.random.key(1), True)
    net = expand(graphdef, net, 1, jax.random.key(2), True)  # task 1: 3 old classes, 1 new
    model = nnx.merge(graphdef, net["params"], net["model_state"], copy=True)
    images = jnp.asarray(data.train_images[:6])
    labels = np.array([0, 1, 2, 3, 3, 0])
    output = model(images, train=True)
    losses = np.asarray(der_loss(output, jnp.asarray(labels), 4, num_classes=5, aux_weight=0.5))

    # By hand: the classifier on the concatenated features, the auxiliary head on slot 1's.
    features = np.asarray(model.features(images, train=False), np.float64)
    kernel, bias = (np.asarray(v, np.float64) for v in (model.head.kernel[...],
                                                         model.head.bias[...]))
    logits = (features @ kernel + bias)[:, :4]  # 4 seen classes
    aux_kernel, aux_bias = (np.asarray(v, np.float64) for v in (model.aux_head.kernel[...],
                                                                 model.aux_head.bias[...]))
    aux_logits = (features[:, 32:64] @ aux_kernel + aux_bias)[:, :2]  # "old" and class 3
    aux_targets = np.array([0, 0, 0, 1, 1, 0])

    def xent(z, y):
        z = z - z.max(1, keepdims=True)
        return np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]

    expected = xent(logits, labels) + 0.5 * xent(aux_logits, aux_targets)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert np.all(np.asarray(model.aux_head.kernel[...])[:, 2:] == 0)  # unused columns
    # Task 0 has no auxiliary term (PyCIL, the authors): the loss is the classifier's alone.
    first = expand(graphdef, state["net"], 0, jax.random.key(1), True)
    model = nnx.merge(graphdef, first["params"], first["model_state"], copy=True)
    output = np.asarray(model(images, train=True))
    np.testing.assert_array_equal(output[:, 5:], 0.0)


def test_memory_by_hand(three_tasks):
    strategy, spec, _, states = three_tasks
    # One backbone: conv 3x3x1x4 (36) + BatchNorm scale and bias (8) = 44 float32 = 176 bytes of
    # parameters; BatchNorm mean and variance (8) = 32 bytes of statistics; d = 4 features.
    # After task t: t + 1 backbones, 2 (t + 1) classes seen, a classifier of (t + 1) 4 features x
    # seen classes + seen biases; 12 exemplars of a 4x4x1 uint8 image and a uint8 label (17 B).
    # Side state: statistics + the active count (4 B) + the buffer's size and seen counters (8 B).
    expected = {
        1: dict(learner_params=176 + (1 * 4 * 2 + 2) * 4, side_state=32 + 4 + 8),    # 216, 44
        2: dict(learner_params=2 * 176 + (2 * 4 * 4 + 4) * 4, side_state=64 + 12),   # 496, 76
        3: dict(learner_params=3 * 176 + (3 * 4 * 6 + 6) * 4, side_state=96 + 12),   # 840, 108
    }
    for k, want in expected.items():
        report = strategy.memory(states[k])
        assert report.learner_params == want["learner_params"]
        assert report.side_state == want["side_state"]
        assert report.num_exemplars == EXEMPLARS and report.exemplars == EXEMPLARS * 17
        assert report.teacher_params == 0 and report.encoder_params == 0
        assert strategy.extras(states[k]) == {"backbones": k, "feature_dim": 4 * k,
                                              "param_bytes": want["learner_params"]}
    # Before any task nothing is active: only the counters.
    assert strategy.memory(states[0]).learner_params == 0
    # A byte budget leaves room for the network at its largest (all 3 backbones active, their
    # statistics included) and the active count.
    assert strategy.network_bytes(spec) == 840 + 96 and strategy.side_bytes(spec) == 4


def test_a_byte_budget_buys_the_exemplars_of_the_protocol_formula(three_tasks):
    """PROTOCOL.md's memory-aligned count: floor((budget - network - side state) / bytes per
    exemplar), the network at its final size (here all 3 backbones: 840 + 96 bytes, see above),
    side state the active count (4) and the buffer's counters (8), an exemplar 4x4x1 + 1 = 17."""
    _, spec, _, _ = three_tasks
    strategy = batch_norm_der()
    for budget in (1_000, 5_000):
        budgeted = dataclasses.replace(spec, budget=Budget(max_bytes=budget))
        memory = strategy.build_memory(budgeted)
        assert memory.capacity == (budget - (840 + 96) - 4 - 8) // 17
        assert memory.bytes_per_exemplar == 17
