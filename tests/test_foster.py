"""FOSTER (cil/baselines/foster.py): the effective-number class weights and the balanced
distillation by hand; the old backbone and the old head stay bitwise unchanged while boosting;
the memory report after each task is one backbone + head + exemplars, by hand; every task runs
the same compiled programs. That it keeps old tasks where finetune forgets is
tests/test_baselines.py's (OLD_TASK_MARGIN["foster"])."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cil.baselines import foster as foster_module
from cil.baselines.foster import FOSTER, balanced_distillation, class_weights
from cil.experiment import stream_spec
from cil.models.networks import GlobalPool, Network, Stem
from cil.strategy import strategy_config
from tests.helpers import tiny_config, tiny_stream

EXEMPLARS = 12
CHANNELS = 4  # the BatchNorm backbone's feature width d


class BatchNormFOSTER(FOSTER):
    """FOSTER over a tiny backbone with BatchNorm (3x3 conv without bias, BatchNorm, ReLU, global
    pooling), so that the running statistics are checked too."""

    def backbone_network(self, spec, key):
        rngs = nnx.Rngs(key)
        return Network([Stem(spec.image_shape[-1], CHANNELS, rngs=rngs), GlobalPool()], CHANNELS,
                       spec.num_classes, rngs=rngs)


def test_class_weights_by_hand():
    # PyCIL: (1 - beta) / (1 - beta^n), scaled to sum to the number of classes.
    # beta 0.96; two old classes of 2 exemplars, two new ones of 40 examples:
    # 0.04 / (1 - 0.96^2) = 0.04 / 0.0784 = 0.5102041; 0.96^40 = 0.1953662, 0.04 / 0.8046338 =
    # 0.0497121; sum 2 x (0.5102041 + 0.0497121) = 1.1198323; times 4 / sum: 1.822430 and
    # 0.177570.
    np.testing.assert_allclose(class_weights([2, 2, 40, 40], 0.96),
                               [1.822430, 1.822430, 0.177570, 0.177570], rtol=1e-5)
    # Equal counts: all ones; a class without examples counts as one (no division by zero).
    np.testing.assert_allclose(class_weights([7, 7, 7], 0.97), [1.0, 1.0, 1.0])
    assert np.all(np.isfinite(class_weights([0, 5], 0.97)))


def test_balanced_distillation_by_hand():
    student = np.array([[1.0, 0.0, -1.0, 5.0], [0.5, 2.0, 0.0, -3.0]])
    teacher = np.array([[2.0, 1.0, 0.0, 9.0], [0.0, 0.0, 1.0, 9.0]])
    weights = np.array([2.0, 1.0, 0.5, 1.0])  # the last class is not seen: ignored
    T = 2.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(teacher[:, :3] / T) * weights[:3]
    q /= q.sum(1, keepdims=True)
    expected = -(q * np.log(softmax(student[:, :3] / T))).sum(1)
    got = balanced_distillation(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights),
                                3, T)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def three_tasks():
    """The BatchNorm FOSTER through 3 tasks of 2 classes: (strategy, stream, [state after init,
    after task 0, 1, 2], [the network when boosting ended, tasks 1 and 2]), on the host."""
    stream = tiny_stream(num_classes=6, increment=2)
    config = tiny_config()
    config.train.epochs = 2
    config.memory.exemplars = EXEMPLARS
    strategy = BatchNormFOSTER(strategy_config("foster", config))
    spec = stream_spec(stream, strategy.config.memory)
    boosted = []
    original = foster_module.start_compression

    def recording(graphdef, net, *args):  # the network as boosting left it
        boosted.append(jax.device_get(net))
        return original(graphdef, net, *args)

    foster_module.start_compression = recording
    try:
        state = strategy.init(jax.random.key(0), spec)
        states = [jax.device_get(state)]
        for t in range(3):
            state = strategy.learn(state, stream.train_task(t), jax.random.key(t + 1)).state
            states.append(jax.device_get(state))
    finally:
        foster_module.start_compression = original
    return strategy, stream, states, boosted


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("kind", ["params", "model_state"])
def test_old_model_stays_bitwise_unchanged_while_boosting(three_tasks, kind):
    strategy, _, states, boosted = three_tasks
    assert leaves(states[1]["net"]["model_state"]["backbone"])  # the test needs BatchNorm
    for t in (1, 2):
        before, after = states[t]["net"][kind], boosted[t - 1][kind]
        for a, b in zip(leaves(before["backbone"]), leaves(after["backbone"])):
            np.testing.assert_array_equal(a, b)
        if kind == "params":  # oldfc
            for a, b in zip(leaves(before["head"]), leaves(after["head"])):
                np.testing.assert_array_equal(a, b)
        # The new backbone started as a copy of the old one and did train, statistics included.
        assert any(not np.array_equal(a, b) for a, b in
                   zip(leaves(before["backbone"]), leaves(after["new_backbone"])))
    # Every task ran the same compiled step of each stage: one program each for all tasks.
    assert {s: t._steps._cache_size() for s, t in strategy._trainers.items()} == {
        "plain": 1, "boost": 1, "compress": 1}


def test_student_replaces_the_boosted_model(three_tasks):
    _, _, states, boosted = three_tasks
    for t in (2, 3):
        net = states[t]["net"]
        # The kept backbone is the student, not the boosted model's old one.
        assert any(not np.array_equal(a, b) for a, b in
                   zip(leaves(boosted[t - 2]["params"]["backbone"]),
                       leaves(net["params"]["backbone"])))
        # Nothing of the boosted model or the student's slot is left.
        for part in ("new_backbone", "student", "fc", "fe_fc", "student_head"):
            for kind in ("params", "model_state"):
                if part in net[kind]:
                    assert not any(np.any(a) for a in leaves(net[kind][part])), (part, kind)


def test_class_weights_follow_the_training_set(three_tasks):
    strategy, stream, states, boosted = three_tasks
    # Task 2 trains on its 2 x 20 examples and the 12 exemplars of the 4 old classes (3 each).
    counts = [3, 3, 3, 3, 20, 20]
    weights = np.asarray(boosted[1]["model_state"]["class_weights"][...])
    np.testing.assert_allclose(weights, class_weights(counts, 0.96), rtol=1e-6)  # beta1
    weights = np.asarray(states[3]["net"]["model_state"]["class_weights"][...])
    np.testing.assert_allclose(weights, class_weights(counts, 0.97), rtol=1e-6)  # beta2
    assert np.bincount(np.asarray(states[2]["buffer"].labels)[:EXEMPLARS]).tolist() == [3] * 4


def test_memory_by_hand(three_tasks):
    strategy, _, states, _ = three_tasks
    # One backbone: conv 3x3x1x4 (36) + BatchNorm scale and bias (8) = 44 float32 = 176 bytes of
    # parameters; BatchNorm mean and variance (8) = 32 bytes of statistics; d = 4 features.
    # Kept after task t: that backbone, a head of 4 features x seen classes + seen biases.
    # Side state: its statistics + class weights (6 float32) + (old, seen) (2 int32) = 32 bytes +
    # the buffer's two counters (8). 12 exemplars of a 4x4x1 uint8 image and a uint8 label (17 B).
    # The boosted model (not kept): 2 backbones with statistics (416) + fc (8 x seen + seen)
    # + fe_fc (4 x seen + seen) + oldfc (4 x old + old), float32.
    expected = {
        1: dict(learner=176 + (4 * 2 + 2) * 4, teacher=0),                              # 216
        2: dict(learner=176 + (4 * 4 + 4) * 4, teacher=416 + (36 + 20 + 10) * 4),       # 256, 680
        3: dict(learner=176 + (4 * 6 + 6) * 4, teacher=416 + (54 + 30 + 20) * 4),       # 296, 832
    }
    for k, want in expected.items():
        report = strategy.memory(states[k])
        assert report.learner_params == want["learner"]
        assert report.side_state == 32 + 32 + 8
        assert report.num_exemplars == EXEMPLARS and report.exemplars == EXEMPLARS * 17
        assert report.teacher_params == want["teacher"] and report.encoder_params == 0
        stats = strategy.extras(states[k])
        assert stats["student_bytes"] == want["learner"] + 32
        assert stats["teacher_bytes"] == want["teacher"]
    # Charged: what is kept, not the boosted model (unless memory.charge_teacher).
    assert strategy.memory(states[3]).charged_bytes() == 296 + 72 + EXEMPLARS * 17
    assert strategy.memory(states[0]).learner_params == 0


def test_weight_aligning_by_hand(three_tasks):
    # PyCIL's weight_align (off by default): the new classes' weights times old mean norm / new
    # mean norm x value ^ (old / new classes); the old classes and every bias unchanged.
    strategy, _, states, _ = three_tasks
    net = jax.tree.map(jnp.asarray, states[2]["net"])  # 4 classes seen, 2 of them new
    aligned = foster_module.align_weights(strategy._trainers["plain"].graphdef, net, "head",
                                          jnp.int32(2), jnp.int32(4), jnp.float32(0.5))
    kernel = np.asarray(net["params"]["head"]["kernel"][...], np.float64)
    norms = np.linalg.norm(kernel, axis=0)
    gamma = norms[:2].mean() / norms[2:4].mean() * 0.5 ** (2 / 2)
    expected = kernel.copy()
    expected[:, 2:4] *= gamma
    np.testing.assert_allclose(np.asarray(aligned["params"]["head"]["kernel"][...]), expected,
                               rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aligned["params"]["head"]["bias"][...]),
                                  np.asarray(net["params"]["head"]["bias"][...]))
