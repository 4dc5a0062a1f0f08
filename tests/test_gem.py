"""GEM: the dual program against an exact solution, and a step that raises no past task's loss to
first order, with each example's loss over its own task's classes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cil.experiment import stream_spec
from cil.strategy import load_strategy
from cil.training import NEG_INF, project_onto_memory, seen_class_xent, solve_memory_dual
from tests.helpers import tiny_stream, tree_vdot
from tests.test_survey_methods import linear_config


def exact_dual(gram, dots, margin):
    """min 1/2 v'Pv + p'v over v >= margin by enumerating which variables sit at the bound: the
    feasible point that satisfies the optimality conditions (convex problem: it is the optimum)."""
    k = len(dots)
    for free in itertools.chain.from_iterable(itertools.combinations(range(k), n)
                                              for n in range(k + 1)):
        v = np.full(k, margin, float)
        free = list(free)
        if free:
            fixed = [i for i in range(k) if i not in free]
            rhs = -(dots[free] + gram[np.ix_(free, fixed)] @ v[fixed])
            v[free] = np.linalg.solve(gram[np.ix_(free, free)], rhs)
        gradient = gram @ v + dots
        if (v >= margin - 1e-9).all() and (gradient[[i for i in range(k) if i not in free]]
                                           >= -1e-9).all():
            return v
    raise AssertionError("no optimum found")


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_the_dual_reaches_the_exact_optimum(margin):
    rng = np.random.default_rng(0)
    shared = rng.normal(size=20)
    memory = np.stack([shared + 0.7 * rng.normal(size=20) for _ in range(4)])  # correlated tasks
    g = -memory[0] + 1.5 * (memory[3] - memory[0]) + 0.3 * rng.normal(size=20)  # conflicts with 3
    gram, dots = memory @ memory.T, memory @ g
    assert (dots < 0).any() and (dots > 0).any()
    v = np.asarray(solve_memory_dual(jnp.asarray(gram, jnp.float32),
                                     jnp.asarray(dots, jnp.float32), margin))
    np.testing.assert_allclose(v, exact_dual(gram, dots, margin), atol=1e-3)
    z = np.asarray(project_onto_memory({"w": jnp.asarray(g, jnp.float32)},
                                       {"w": jnp.asarray(memory, jnp.float32)}, margin)["w"])
    np.testing.assert_allclose(z, g + v @ memory, rtol=1e-4, atol=1e-4)
    if margin == 0.0:  # the primal's constraints: no past task's loss rises to first order
        assert (memory @ z >= -1e-3).all(), memory @ z


def test_a_group_without_examples_has_no_constraint():
    memory = np.array([[1.0, 0.0], [0.0, 0.0]])  # group 1 had no example in the step
    z = project_onto_memory({"w": jnp.array([-1.0, 2.0])}, {"w": jnp.asarray(memory)})["w"]
    np.testing.assert_allclose(z, [0.0, 2.0], atol=1e-6)


def test_a_gem_step_raises_no_past_tasks_loss_with_losses_within_each_task():
    # Three tasks of two classes; the batch holds task 2's new examples and exemplars of tasks 0
    # and 1. A plain step on the new examples raises some past task's loss to first order; GEM's
    # step must raise none, each task's loss taken over its own two classes.
    config = linear_config()
    config.train.batch_size = 8
    stream = tiny_stream(num_classes=6, increment=2)
    strategy = load_strategy("gem", config)
    state = strategy.init(jax.random.key(0), stream_spec(stream, config.memory))
    trainer = strategy._trainer
    for t in range(2):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t + 1)).state
    trained = state["net"]
    tasks = [stream.train_task(t) for t in (2, 0, 1)]
    images = jnp.concatenate([jnp.asarray(t.images[:4]) for t in tasks])
    labels = jnp.concatenate([jnp.asarray(t.labels[:4]) for t in tasks])
    from_memory = jnp.arange(12) >= 4
    task_of_label = labels // 2

    def task_loss(params, task):
        model = nnx.merge(trainer.graphdef, params, trained["model_state"])
        own = jnp.arange(6) // 2 == task
        per_example = seen_class_xent(jnp.where(own, model(images), NEG_INF), labels, 6)
        mask = (task_of_label == task).astype(jnp.float32)
        return jnp.sum(per_example * mask) / jnp.sum(mask)

    objective = strategy.replay_objective()
    assert objective.memory_constraints.num_groups == 2  # tasks 0 and 1: the last has no memory
    references = [jax.grad(task_loss)(trained["params"], k) for k in (0, 1)]
    along = {}
    for name in ("plain", "gem"):
        net = trainer.init(trained["params"], trained["model_state"])
        weights = (1.0 - from_memory) if name == "plain" else jnp.ones(12)
        stepped, loss = jax.jit(trainer.step)(net, images, labels, weights, jnp.int32(6),
                                              objective if name == "gem" else None, from_memory)
        update = jax.tree.map(lambda a, b: a - b, stepped["params"], trained["params"])
        along[name] = [float(tree_vdot(update, ref)) for ref in references]
        if name == "gem":  # the reported loss: the new examples' over the new task's classes
            np.testing.assert_allclose(float(loss), float(task_loss(trained["params"], 2)),
                                       rtol=1e-5)
    assert max(along["plain"]) > 0, along  # the conflict the test needs
    assert max(along["gem"]) <= 1e-6, along
