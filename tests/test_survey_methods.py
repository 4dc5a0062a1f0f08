"""The survey's single-network methods (LwF, EWC, WA, SimpleCIL, A-GEM, BiC, GEM; BiC's, GEM's
and PODNet's arithmetic in their own files): their arithmetic against hand computations, and their behaviour on a small stream
against finetune's."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flax import nnx

from cil.baselines.wa import align_weights, weighted_distillation
from cil import experiment, models
from cil.experiment import stream_spec
from cil.strategy import load_strategy
from cil.training import Objective, ParameterPenalty, project_onto_memory, seen_class_xent
from tests.helpers import tiny_config, tiny_stream, tree_vdot


def linear_config(**settings):
    config = tiny_config(**settings)
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": ()})  # logits = W x + b
    config.train.batch_size = 8
    return config


def test_ewc_fisher_is_the_mean_squared_gradient_of_each_batch_by_hand():
    config = linear_config(ewc={"fisher_max": None})
    stream = tiny_stream(num_classes=4, increment=2, per_class=10)  # 20 images: batches 8, 8, 4
    strategy = load_strategy("ewc", config)
    spec = stream_spec(stream, config.memory)
    state = strategy.init(jax.random.key(0), spec)
    task = stream.train_task(0)
    fisher = jax.device_get(strategy.fisher(state["net"], task, num_seen=2))

    # Softmax regression by hand: dL/dW = mean_i x_i (p_i - y_i)^T, dL/db = mean_i (p_i - y_i),
    # over the 2 seen classes (the other logits are masked out: their gradient is 0).
    params = jax.device_get(state["net"]["params"])
    kernel, bias = np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])
    x = task.images.reshape(len(task.images), -1).astype(np.float64) / 255.0
    expected_kernel, expected_bias = np.zeros_like(kernel, np.float64), np.zeros(bias.shape)
    batches = [slice(0, 8), slice(8, 16), slice(16, 20)]
    for rows in batches:
        logits = x[rows] @ kernel[:, :2] + bias[:2]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        error = p - np.eye(2)[task.labels[rows]]
        grad_kernel, grad_bias = np.zeros_like(expected_kernel), np.zeros_like(expected_bias)
        grad_kernel[:, :2] = x[rows].T @ error / len(error)
        grad_bias[:2] = error.mean(0)
        expected_kernel += grad_kernel ** 2 / len(batches)
        expected_bias += grad_bias ** 2 / len(batches)
    np.testing.assert_allclose(np.asarray(fisher["head"]["kernel"]), expected_kernel, rtol=1e-4,
                               atol=1e-9)
    np.testing.assert_allclose(np.asarray(fisher["head"]["bias"]), expected_bias, rtol=1e-4,
                               atol=1e-9)
    # The cap clips every entry.
    strategy.config.strategy.fisher_max = 1e-3
    capped = jax.device_get(strategy.fisher(state["net"], task, num_seen=2))
    np.testing.assert_allclose(np.asarray(capped["head"]["bias"]), np.minimum(expected_bias, 1e-3),
                               rtol=1e-4, atol=1e-9)


def test_the_penalty_is_half_the_weighted_squared_distance():
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
    anchor = {"a": jnp.array([0.0, 2.5]), "b": jnp.array([[1.0]])}
    fisher = {"a": jnp.array([2.0, 4.0]), "b": jnp.array([[0.5]])}
    # 0.5 * 10 * (2*1 + 4*0.25 + 0.5*4) = 25
    assert float(ParameterPenalty(anchor, fisher, 10.0)(params)) == pytest.approx(25.0)


def test_ewc_merges_the_fisher_by_class_fractions_and_the_penalty_holds_parameters():
    config = linear_config()
    # Adam: its steps stay bounded however steep the penalty (SGD diverges past 2 / curvature).
    config.train.update({"epochs": 10, "learning_rate": 0.01, "optimizer": "adam"})
    config.strategies = ("ewc",)
    config.ewc.fisher_max = None
    config.ewc.xent_classes = "seen"  # the old classes' weights get a gradient to resist
    stream = tiny_stream(num_classes=4, increment=2)
    spec = stream_spec(stream, config.memory)
    moved = {}
    for weight in (0.0, 10000.0):
        config.ewc.weight = weight
        strategy = load_strategy("ewc", config)
        state = strategy.init(jax.random.key(0), spec)
        first = strategy.learn(state, stream.train_task(0), jax.random.key(1)).state
        second = strategy.learn(first, stream.train_task(1), jax.random.key(2)).state
        task_fisher = strategy.fisher(second["net"], stream.train_task(1), 4)
        merged = jax.tree.map(lambda old, new: 0.5 * old + 0.5 * new, first["fisher"],
                              task_fisher)  # 2 old classes of 4 seen
        for got, want in zip(jax.tree.leaves(second["fisher"]), jax.tree.leaves(merged)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-12)
        # How far the old classes' weights moved during the second task.
        kernel = lambda s: np.asarray(s["net"]["params"]["head"]["kernel"])[:, :2]  # noqa: E731
        moved[weight] = np.abs(kernel(second) - kernel(first)).sum()
    assert moved[10000.0] < 0.5 * moved[0.0], moved


def test_wa_scales_the_new_classes_weights_to_the_old_mean_norm():
    net = models.build(ml_collections.ConfigDict({"name": "mlp", "hidden": (5,)}), (2, 2, 1), 6,
                       seed=0)
    # The new classes' weights far larger, as after training on them.
    net.head.kernel[...] = net.head.kernel[...].at[:, 2:4].multiply(7.0)
    graphdef, params, model_state = nnx.split(net, nnx.Param, ...)
    kernel = np.asarray(params["head"]["kernel"][...])
    aligned = align_weights(graphdef, {"params": params, "model_state": model_state}, 2, 4)
    after = np.asarray(aligned["params"]["head"]["kernel"][...])
    norms = np.linalg.norm(kernel, axis=0)
    gamma = norms[:2].mean() / norms[2:4].mean()
    np.testing.assert_allclose(after[:, 2:4], kernel[:, 2:4] * gamma, rtol=1e-6)
    np.testing.assert_array_equal(after[:, :2], kernel[:, :2])  # old classes untouched
    np.testing.assert_array_equal(after[:, 4:], kernel[:, 4:])  # unseen classes untouched
    np.testing.assert_allclose(np.linalg.norm(after[:, 2:4], axis=0).mean(), norms[:2].mean(),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(aligned["params"]["head"]["bias"][...]),
                                  np.asarray(params["head"]["bias"][...]))


def test_lwf_and_wa_distil_from_the_network_the_task_starts_from():
    config = tiny_config()
    stream = tiny_stream(num_classes=4, increment=2)
    spec = stream_spec(stream, config.memory)
    lwf = load_strategy("lwf", config)
    state = lwf.init(jax.random.key(0), spec)
    assert lwf.objective(state["net"], 0) is None  # the first task: plain training
    objective = lwf.objective(state["net"], 2)
    assert objective.first_class == 2 and objective.distill.num_classes == 2
    assert objective.distill.teacher is state["net"]
    assert objective.distill.temperature == 2.0 and objective.distill.weight == 3.0
    # WA (and BiC): the task's starting network, weighted by the old classes' share, 3 of 4 here.
    objective = weighted_distillation(state["net"], 3, 4, temperature=2.0)
    assert objective.distill.teacher is state["net"] and objective.distill.num_classes == 3
    assert objective.distill.weight == 0.75 and objective.xent_weight == 0.25
    assert objective.first_class == 0  # the cross-entropy over every seen class
    # The teacher stays frozen through the task's training (whose steps donate their buffers).
    teacher = [np.asarray(x).copy() for x in jax.tree.leaves(state["net"])]
    learned = lwf.learn(state, stream.train_task(1), jax.random.key(1)).state
    assert any(not np.array_equal(a, np.asarray(b))
               for a, b in zip(teacher, jax.tree.leaves(learned["net"])))
    for before, after in zip(teacher, jax.tree.leaves(state["net"])):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_simplecil_prototypes_are_the_class_means_of_the_frozen_features():
    config = tiny_config()
    config.train.epochs = 3
    stream = tiny_stream(num_classes=4, increment=2)
    strategy = load_strategy("simplecil", config)
    state = strategy.init(jax.random.key(0), stream_spec(stream, config.memory))
    first = strategy.learn(state, stream.train_task(0), jax.random.key(1)).state
    second = strategy.learn(first, stream.train_task(1), jax.random.key(2)).state
    for a, b in zip(jax.tree.leaves(first["net"]), jax.tree.leaves(second["net"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen after task 0
    features = np.asarray(strategy._trainer.features(second["net"], stream.train_images))
    for c in range(4):
        np.testing.assert_allclose(np.asarray(second["prototypes"])[c],
                                   features[stream.train_labels == c].mean(0), rtol=1e-5,
                                   atol=1e-6)


def old_task_accuracy(summary) -> float:
    """Mean accuracy on the earlier tasks after the last one: what forgetting takes away."""
    return float(np.mean(summary["acc_matrix"][-1][:-1]))


def test_each_method_keeps_more_of_the_old_tasks_than_finetune(tmp_path):
    # Split-Digits, 5 tasks of 10 epochs at lr 0.2: finetune keeps nothing of tasks 1-4 (0.00
    # measured). Measured with seed 0 (2026-12-03): LwF 0.52, EWC 0.69, WA 0.36, SimpleCIL 0.84,
    # BiC 0.93, GEM 0.64 (one constraint per past task, where A-GEM's single one keeps 0.0 here);
    # each bar sits well below its method and well above finetune, and a method whose
    # mechanism did nothing (no distillation, no penalty, no exemplars, prototypes that move)
    # falls to finetune's 0.0 on this stream. A-GEM keeps little after five tasks in the class-incremental
    # setting (0.0 here; Buzzega et al. 2020 find it near finetune on Seq-CIFAR-10), so it is held
    # to what it does keep: task 1 after task 2 (0.62 measured, finetune 0.0).
    config = tiny_config()
    config.train.update({"epochs": 10, "learning_rate": 0.2})
    config.memory.exemplars = 200
    config.strategies = ("finetune", "lwf", "ewc", "wa", "simplecil", "agem", "bic", "gem")
    config.seeds = (0,)
    summaries = {s["strategy"]: s for s in experiment.run_experiment(config, str(tmp_path),
                                                                     progress=lambda _: None)}
    kept = {name: old_task_accuracy(s) for name, s in summaries.items()}
    assert kept["finetune"] < 0.1, kept
    for name, bar in (("lwf", 0.25), ("ewc", 0.25), ("wa", 0.2), ("simplecil", 0.5), ("bic", 0.5),
                      ("gem", 0.3)):
        assert kept[name] > kept["finetune"] + bar, (name, kept)
    first_task_after_second = {n: s["acc_matrix"][1][0] for n, s in summaries.items()}
    assert first_task_after_second["agem"] > first_task_after_second["finetune"] + 0.3, (
        first_task_after_second)


def test_agem_projection_by_hand():
    grads, reference = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([-1.0, 1.0])}
    one_group = jax.tree.map(lambda r: r[None], reference)  # GEM's projection, one constraint
    # g . r = -1 < 0: g - (-1 / 2) r = (0.5, 0.5), orthogonal to r.
    np.testing.assert_allclose(project_onto_memory(grads, one_group)["w"], [0.5, 0.5])
    agreeing = {"w": jnp.array([1.0, 3.0])}  # g . r = 2 >= 0: unchanged
    np.testing.assert_allclose(project_onto_memory(agreeing, one_group)["w"], [1.0, 3.0])


def test_an_agem_step_never_raises_the_memory_loss_to_first_order():
    # New examples of classes 2, 3 and memory examples of classes 0, 1: the plain step pushes
    # the old classes' logits down (raising the memory's loss); A-GEM's step must not.
    config = linear_config()
    config.train.batch_size = 8
    stream = tiny_stream(num_classes=4, increment=2)
    strategy = load_strategy("agem", config)
    state = strategy.init(jax.random.key(0), stream_spec(stream, config.memory))
    trainer = strategy._trainer
    trained = strategy.learn(state, stream.train_task(0), jax.random.key(1)).state["net"]
    new, old = stream.train_task(1), stream.train_task(0)
    images = jnp.concatenate([jnp.asarray(new.images[:8]), jnp.asarray(old.images[:8])])
    labels = jnp.concatenate([jnp.asarray(new.labels[:8]), jnp.asarray(old.labels[:8])])
    from_memory = jnp.arange(16) >= 8
    memory_weights = from_memory.astype(jnp.float32)

    def memory_loss(params):
        model = nnx.merge(trainer.graphdef, params, trained["model_state"])
        per_example = seen_class_xent(model(images), labels, 4)
        return jnp.sum(per_example * memory_weights) / 8

    reference = jax.grad(memory_loss)(trained["params"])
    along_reference = {}
    for name, objective in (("plain", Objective()), ("agem", strategy.replay_objective())):
        net = trainer.init(trained["params"], trained["model_state"])
        # The plain step on the new examples alone: the gradient A-GEM starts from.
        weights = 1.0 - memory_weights if name == "plain" else jnp.ones(16)
        stepped, _ = jax.jit(trainer.step)(net, images, labels, weights, jnp.int32(4),
                                           objective, from_memory)
        update = jax.tree.map(lambda a, b: a - b, stepped["params"], trained["params"])
        along_reference[name] = float(tree_vdot(update, reference))
    assert along_reference["plain"] > 0, along_reference  # the conflict the test needs
    assert along_reference["agem"] <= 1e-7, along_reference
