"""BiC: the validation split, the second stage's arithmetic against finite differences, and a second
stage that touches nothing but the new task's (alpha, beta)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cil.baselines.bic import fit_correction, held_out
from cil.experiment import stream_spec
from cil.strategy import load_strategy
from cil.training import make_optimizer
from tests.helpers import tiny_config, tiny_stream


def test_held_out_takes_per_class_examples_and_never_more_than_half_a_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 8, np.int32)
    held = held_out(labels, 4, jax.random.key(0))
    assert np.bincount(labels[held], minlength=4).tolist() == [4, 1, 0, 4]
    np.testing.assert_array_equal(held, held_out(labels, 4, jax.random.key(0)))
    assert not np.array_equal(held, held_out(labels, 4, jax.random.key(1)))  # at random


def correction_loss(alpha_beta, logits, labels, new, num_seen, double_softmax):
    """The second stage's mean loss in NumPy, written from the paper (and PyCIL's variant)."""
    z = np.where(new, logits * alpha_beta[0] + alpha_beta[1], logits)[:, :num_seen]
    if double_softmax:
        z = np.exp(z - z.max(1, keepdims=True))
        z = z / z.sum(1, keepdims=True)
    log_p = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(
        1, keepdims=True)
    return -log_p[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("double_softmax", [False, True])
def test_one_step_of_the_second_stage_follows_the_gradient_by_finite_differences(double_softmax):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 4)).astype(np.float32) * 2
    logits[:, 3] = 50.0  # an unseen class: it must not enter the loss
    labels = np.array([0, 1, 2, 1], np.int32)
    new = np.array([False, True, True, False])
    train = ml_collections.ConfigDict({"optimizer": "sgd", "momentum": 0.0,
                                       "learning_rate": 0.5, "weight_decay": 0.0})
    after = fit_correction(make_optimizer(train), 4, double_softmax, jnp.asarray(logits),
                           jnp.asarray(labels), jnp.int32(4), jnp.asarray(new), jnp.int32(3),
                           jnp.array([0.5]), jnp.float32(0.0), jax.random.key(0))
    start, eps = np.array([1.0, 0.0]), 1e-3
    grad = [(correction_loss(start + d, logits, labels, new, 3, double_softmax)
             - correction_loss(start - d, logits, labels, new, 3, double_softmax)) / (2 * eps)
            for d in np.eye(2) * eps]
    np.testing.assert_allclose(np.asarray(after), start - 0.5 * np.array(grad), atol=1e-4)
    assert abs(grad[0]) > 1e-4 and abs(grad[1]) > 1e-4  # a step that moves both parameters


def test_padding_rows_do_not_enter_the_second_stage():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
    labels = jnp.array([0, 2, 1, 2, 0, 0, 0, 0], jnp.int32)
    new = jnp.array([False, False, True])
    train = ml_collections.ConfigDict({"optimizer": "sgd", "momentum": 0.9,
                                       "learning_rate": 0.1, "weight_decay": 0.0})
    fit = lambda rows, padding: fit_correction(  # noqa: E731
        make_optimizer(train), 4, False, logits.at[4:].set(padding), labels, jnp.int32(rows),
        new, jnp.int32(3), jnp.array([0.1, 0.1, 0.05]), jnp.float32(0.0), jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(fit(4, 0.0)), np.asarray(fit(4, 99.0)))
    assert not np.allclose(np.asarray(fit(4, 0.0)), np.asarray(fit(8, 0.0)))


def leaves(net):
    return [np.asarray(x) for x in jax.tree.leaves(net)]


@pytest.mark.parametrize("variant", ["paper", "pycil"])
def test_the_second_stage_changes_only_the_new_tasks_correction(variant):
    config = tiny_config(bic={"variant": variant})
    config.train.epochs = 3
    config.memory.exemplars = 40
    stream = tiny_stream(num_classes=6, increment=2)
    strategy = load_strategy("bic", config)
    state = strategy.init(jax.random.key(0), stream_spec(stream, config.memory))
    for t in range(3):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t + 1)).state
    correction = np.array(strategy.correction(state["net"]))
    np.testing.assert_array_equal(correction[:, 0], [1.0, 0.0])  # task 0 is never corrected
    assert not np.allclose(correction[:, 2], [1.0, 0.0])  # the newest task's was fitted
    if variant == "paper":  # task 1's correction was dropped when task 2 began
        np.testing.assert_array_equal(correction[:, 1], [1.0, 0.0])
    else:  # PyCIL: kept for good
        assert not np.allclose(correction[:, 1], [1.0, 0.0])

    # The second stage alone: the network and every other task's correction bitwise unchanged.
    task = stream.train_task(2)
    correction[:, 2] = [1.0, 0.0]
    net = strategy.with_correction(state["net"], jnp.asarray(correction))
    corrected = strategy.correct(net, task.images[:30], task.labels[:30], task,
                                 jax.random.key(9))
    assert [a.tolist() for a in leaves(corrected["params"])] == [
        a.tolist() for a in leaves(net["params"])]
    fitted = np.asarray(strategy.correction(corrected))
    np.testing.assert_array_equal(np.delete(fitted, 2, axis=1), np.delete(
        np.asarray(strategy.correction(net)), 2, axis=1))
    assert not np.allclose(fitted[:, 2], [1.0, 0.0])
    for a, b in zip(jax.tree.leaves(corrected["model_state"]), jax.tree.leaves(net["model_state"])):
        if a.shape != fitted.shape:  # every other model state (none for the MLP) untouched
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predictions_are_the_corrected_logits():
    config = tiny_config()
    stream = tiny_stream(num_classes=4, increment=2)
    strategy = load_strategy("bic", config)
    state = strategy.init(jax.random.key(0), stream_spec(stream, config.memory))
    images = stream.test_images[:5]
    raw = np.asarray(strategy.predict(state, images))
    correction = np.array([[1.0, 3.0], [0.0, -2.0]], np.float32)  # task 1: classes 2, 3
    shifted = {**state, "net": strategy.with_correction(state["net"], jnp.asarray(correction))}
    np.testing.assert_allclose(np.asarray(strategy.predict(shifted, images)),
                               np.concatenate([raw[:, :2], raw[:, 2:] * 3.0 - 2.0], 1),
                               rtol=1e-6)
