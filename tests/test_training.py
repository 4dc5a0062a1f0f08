"""The shared trainer: one compile per run, memory batches, masking, data parallel, distillation."""

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from cil import models, parallel
from cil.errors import ConfigError
from cil.training import (DeviceData, Distillation, MemoryBatches, Objective, Schedule, Trainer,
                          distillation_loss, task_schedule)

SHAPE = (4, 4, 1)
TRAIN = ml_collections.ConfigDict({"optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.0,
                                   "weight_decay": 0.0, "batch_size": 16})
CAPACITY, MEMORY_BATCH = 128, 8


def epochs(n):
    return Schedule.constant(n, TRAIN.learning_rate)


def network(seed=0):
    model = models.build(ml_collections.ConfigDict({"name": "mlp", "hidden": (16,)}), SHAPE, 4,
                         seed=seed)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    return graphdef, {"params": params, "model_state": model_state}


def images_of(classes, seed=0):
    """Class c is bright in pixel c, dim noise elsewhere."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (len(classes), *SHAPE)).astype(np.uint8)
    images.reshape(len(classes), -1)[np.arange(len(classes)), classes] = 255
    return images


def memory_of(classes, slots=32):
    """A buffer of ``slots`` slots holding examples of ``classes`` (uint8 labels, as cil.memory)."""
    images = np.zeros((slots, *SHAPE), np.uint8)
    labels = np.zeros(slots, np.uint8)
    images[: len(classes)] = images_of(np.asarray(classes), seed=1)
    labels[: len(classes)] = classes
    return DeviceData(jnp.asarray(images), jnp.asarray(labels), jnp.int32(len(classes)))


@pytest.fixture(scope="module")
def shared():
    """One trainer for the module's tests, so each of its variants compiles once."""
    graphdef, net = network()
    return Trainer(graphdef, TRAIN, parallel.data_mesh(), capacity=CAPACITY), net


class CompileCounter:
    """Counts XLA compilations while active (what a recompile per task would show)."""

    count = 0
    active = False

    @classmethod
    def listen(cls, event, duration, **_):
        if cls.active and event == "/jax/core/compile/backend_compile_duration":
            cls.count += 1


jax.monitoring.register_event_duration_secs_listener(CompileCounter.listen)


def test_one_compile_per_variant_whatever_the_data_and_memory_sizes(shared):
    trainer, net = shared
    key = jax.random.key(0)

    def fit(n, memory_size):
        labels = np.arange(n) % 2
        data = trainer.put(images_of(labels), labels)
        memory = None
        if memory_size:
            memory = MemoryBatches(memory_of([2, 3] * (memory_size // 2)), MEMORY_BATCH)
        return trainer.fit(net, data, key, num_seen=4, schedule=epochs(2), memory=memory)

    fit(30, 0), fit(30, 4)  # compiles the epoch without memory and the epoch with it
    CompileCounter.count, CompileCounter.active = 0, True
    try:
        counts = [fit(n, m)[1] for n, m in ((128, 0), (7, 0), (64, 10), (33, 30), (16, 2))]
    finally:
        CompileCounter.active = False
    assert CompileCounter.count == 0
    # Every trained example counts, the memory's too: epochs x (n + steps x min(batch, memory)).
    assert counts == [2 * 128, 2 * 7, 2 * (64 + 4 * 8), 2 * (33 + 3 * 8), 2 * (16 + 1 * 2)]


def accuracy(trainer, net, images, labels):
    return float(np.mean(np.argmax(np.asarray(trainer.logits(net, images))[:, :2], -1) == labels))


def test_memory_batches_are_trained_on(shared):
    # New data holds class 0 only, the memory class 1 only: the model learns class 1 only from
    # the memory batches gathered inside the step.
    trainer, net = shared
    data = trainer.put(images_of(np.zeros(64, int)), np.zeros(64, np.int32))
    memory = memory_of([1] * 6)
    test_images = images_of(np.ones(20, int), seed=5)
    key = jax.random.key(1)
    with_memory, _ = trainer.fit(net, data, key, 2, epochs(5), memory=MemoryBatches(memory, MEMORY_BATCH))
    without, _ = trainer.fit(net, data, key, 2, epochs(5))
    assert accuracy(trainer, with_memory, test_images, 1) == 1.0
    assert accuracy(trainer, without, test_images, 1) == 0.0


def test_padding_never_reaches_the_loss(shared):
    # 10 real examples of class 1 in a capacity of 128: the 118 padding slots hold blank images
    # labelled 0. Were they trained on, a blank image would come out as class 0.
    trainer, net = shared
    data = trainer.put(images_of(np.ones(10, int)), np.ones(10, np.int32))
    trained, count = trainer.fit(net, data, jax.random.key(2), 2, epochs(20))
    assert count == 200
    blank = np.zeros((4, *SHAPE), np.uint8)
    assert accuracy(trainer, trained, blank, 1) == 1.0


def test_fit_leaves_its_input_network_intact(shared):
    # Epochs donate their buffers; fit copies first, so a teacher (iCaRL) or old state survives.
    trainer, net = shared[0], network(seed=3)[1]
    before = jax.tree.map(np.asarray, net)
    data = trainer.put(images_of(np.arange(32) % 2), np.arange(32, dtype=np.int32) % 2)
    trainer.fit(net, data, jax.random.key(3), 2, epochs(1))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, net), before)


def test_data_parallel_training_matches_one_device():
    assert len(jax.devices()) == 2  # tests/conftest.py asks for two virtual devices
    graphdef, net = network()
    labels = np.arange(48) % 4
    key = jax.random.key(4)
    results = []
    for mesh in (parallel.data_mesh(), Mesh(jax.devices()[:1], ("data",))):
        trainer = Trainer(graphdef, TRAIN, mesh, capacity=48)
        memory = MemoryBatches(memory_of([0, 1, 2, 3] * 3), 8)
        trained, _ = trainer.fit(net, trainer.put(images_of(labels), labels), key, 4, epochs(2), memory)
        results.append(jax.tree.map(np.asarray, trained["params"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)


def test_distillation_loss_on_old_classes_only():
    logits = jnp.array([[1.0, 2.0, 30.0], [0.5, -1.0, -7.0]])
    teacher = jnp.array([[3.0, 1.0, -50.0], [0.0, 2.0, 9.0]])
    got = distillation_loss(logits, teacher, 2, temperature=2.0)
    expected = [-np.sum(jax.nn.softmax(t[:2] / 2) * jax.nn.log_softmax(s[:2] / 2))
                for s, t in zip(np.asarray(logits), np.asarray(teacher))]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Its gradient vanishes where the student already matches the teacher on the old classes.
    grad = jax.grad(lambda s: distillation_loss(s, teacher, 2, 2.0).sum())(
        teacher.at[:, 2].set(5.0))
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_distillation_holds_the_teacher_on_the_old_classes(shared):
    # A teacher learns classes 0/1, then students learn classes 2/3 only: with distillation, the
    # student's scores among the old classes stay much closer to the teacher's.
    trainer, net = shared
    old_labels, new_labels = np.arange(64) % 2, 2 + np.arange(64) % 2
    teacher, _ = trainer.fit(net, trainer.put(images_of(old_labels), old_labels),
                             jax.random.key(5), 2, epochs(10))
    new_data = trainer.put(images_of(new_labels), new_labels)
    old_images = images_of(np.arange(40) % 2, seed=9)
    teacher_scores = trainer.logits(teacher, old_images)
    gap = {}
    for name, objective in (("plain", None),
                            ("distilled", Objective(distill=Distillation(teacher, 2)))):
        student, _ = trainer.fit(teacher, new_data, jax.random.key(6), 4, epochs(3),
                                 objective=objective)
        student_scores = trainer.logits(student, old_images)
        gap[name] = float(jnp.mean(distillation_loss(student_scores, teacher_scores, 2, 2.0)
                                   - distillation_loss(teacher_scores, teacher_scores, 2, 2.0)))
    assert gap["distilled"] < gap["plain"] / 2, gap


def test_memory_batch_must_split_over_the_devices(shared):
    trainer, net = shared
    data = trainer.put(images_of(np.arange(32) % 2), np.arange(32, dtype=np.int32) % 2)
    with pytest.raises(ConfigError, match="memory batch size=7 must be a multiple of the 2"):
        trainer.fit(net, data, jax.random.key(0), 2, epochs(1), memory=MemoryBatches(memory_of([0]), 7))


def primitives_inside_loops(jaxpr, inside=False) -> set[tuple[str, bool]]:
    """(primitive name, whether it sits inside a while or cond) for every equation, recursively."""
    found = set()
    for eqn in jaxpr.eqns:
        found.add((eqn.primitive.name, inside))
        nested = inside or eqn.primitive.name in ("while", "cond")
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= primitives_inside_loops(sub, nested)
    return found


def traced_epoch_call(trainer, net, shape):
    """The jaxpr of one compiled call of ``trainer``'s epoch on 40 examples of ``shape``."""
    labels = np.arange(40) % 4
    data = trainer.put(np.zeros((40, *shape), np.uint8), labels.astype(np.int32))
    key = jax.random.key(0)
    orders = trainer._orders(key, data.size, None, None)
    hyper = (jnp.float32(0.1), jnp.float32(0.0))
    state = trainer.init(net["params"], net["model_state"])
    return jax.make_jaxpr(trainer._steps_impl)(state, data, orders, jnp.int32(0), jnp.int32(3),
                                               key, jnp.int32(4), hyper, None, None).jaxpr


def test_no_loop_around_convolutions_on_cpu_and_one_loop_per_epoch_otherwise():
    # XLA:CPU runs a convolution inside a while (or cond) 13-25x slower than outside one
    # (cil/training.py): on the CPU a convolutional network's calls must be loop-free, while the
    # MLP keeps its whole epoch in one loop. A regression of either shows here, without timing.
    if jax.default_backend() != "cpu":
        pytest.skip("the unrolled calls are the CPU's choice")
    for name, shape in (("cnn", (8, 8, 1)), ("small_cnn", (8, 8, 1))):  # (tracing a ResNet: 30 s)
        model = models.build(ml_collections.ConfigDict({"name": name}), shape, 4, seed=0)
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        trainer = Trainer(graphdef, TRAIN, parallel.data_mesh(), capacity=64)
        assert trainer.steps_per_call == 4, name
        found = primitives_inside_loops(traced_epoch_call(
            trainer, {"params": params, "model_state": model_state}, shape))
        assert ("conv_general_dilated", False) in found, name
        assert not any(inside for _, inside in found), (name, sorted(p for p, i in found if i))
    graphdef, net = network()
    trainer = Trainer(graphdef, TRAIN, parallel.data_mesh(), capacity=40)
    assert trainer.steps_per_call == 0
    assert ("while", False) in primitives_inside_loops(traced_epoch_call(trainer, net, SHAPE))


def test_unrolled_calls_train_exactly_as_one_loop():
    # Four steps per call with the steps past the epoch's end masked out must give the very
    # network the one-loop epoch gives: 7 batches = calls of 4 + 3, the last step a no-op.
    graphdef, net = network()
    labels = np.arange(100) % 4  # 7 batches of 16, the last one partial
    memory = MemoryBatches(memory_of([0, 1, 2, 3] * 3), MEMORY_BATCH)
    results = []
    for steps in (0, 4):
        train = ml_collections.ConfigDict({**TRAIN.to_dict(), "steps_per_call": steps,
                                           "momentum": 0.9, "weight_decay": 1e-3})
        trainer = Trainer(graphdef, train, parallel.data_mesh(), capacity=128)
        trained, _ = trainer.fit(net, trainer.put(images_of(labels), labels), jax.random.key(7),
                                 4, Schedule.constant(2, 0.2, 1e-3), memory)
        results.append(jax.tree.map(np.asarray, trained))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)


def recipe(**fields):
    train = ml_collections.ConfigDict({**TRAIN.to_dict(), "epochs": 1, "schedule": "constant",
                                       "milestones": (), "gamma": 0.1, "warmup_epochs": 0,
                                       "first_task": {}})
    train.update(fields)
    return train


def test_multistep_schedule_as_pycil_with_its_own_first_task():
    # PyCIL's replay: task 0 200 epochs lr 0.1, x0.1 at 60, 120, 170, weight decay 5e-4; later
    # tasks 70 epochs, x0.1 at 30 and 50, weight decay 2e-4 (torch MultiStepLR, stepped per epoch).
    train = recipe(epochs=70, learning_rate=0.1, schedule="multistep", milestones=(30, 50),
                   weight_decay=2e-4, first_task={"epochs": 200, "milestones": (60, 120, 170),
                                                  "weight_decay": 5e-4})
    first = task_schedule(train, 0)
    assert first.epochs == 200 and first.weight_decay == 5e-4
    expected = [0.1] * 60 + [0.01] * 60 + [0.001] * 50 + [0.0001] * 30
    np.testing.assert_allclose(first.learning_rates, expected, rtol=1e-6)
    later = task_schedule(train, 3)
    assert later.epochs == 70 and later.weight_decay == 2e-4
    np.testing.assert_allclose(later.learning_rates, [0.1] * 30 + [0.01] * 20 + [0.001] * 20,
                               rtol=1e-6)


def test_cosine_schedule_with_and_without_warmup():
    plain = task_schedule(recipe(epochs=4, learning_rate=1.0, schedule="cosine"), 1)
    # torch CosineAnnealingLR(T_max=4): (1 + cos(pi e / 4)) / 2 for e = 0..3
    np.testing.assert_allclose(plain.learning_rates, [1.0, 0.8535534, 0.5, 0.1464466], rtol=1e-5)
    warm = task_schedule(recipe(epochs=6, learning_rate=0.3, schedule="cosine", warmup_epochs=2), 1)
    # 0.1, 0.2 rising to 0.3 at epoch 2, then cosine over the 4 epochs left: 0.3 (1 + cos(pi k/4))/2
    np.testing.assert_allclose(warm.learning_rates,
                               [0.1, 0.2, 0.3, 0.2560660, 0.15, 0.0439340], rtol=1e-5)


@pytest.mark.parametrize("fields, message", [
    ({"schedule": "step"}, "train.schedule='step' is not allowed: set --config.train.schedule to "
                           "one of 'constant', 'multistep', 'cosine'"),
    ({"schedule": "multistep", "milestones": (50, 30)}, "its values must increase"),
    ({"schedule": "multistep", "epochs": 20, "milestones": (10, 20)},
     r"train.milestones=\(10, 20\) reaches past the last epoch \(train.epochs=20\)"),
    ({"epochs": 0}, "train.epochs=0 is not allowed: set --config.train.epochs to an integer >= 1"),
    ({"learning_rate": -0.1}, "train.learning_rate=-0.1 is not allowed: set --config.train."
                              "learning_rate to a number > 0"),
    ({"schedule": "cosine", "warmup_epochs": 5, "epochs": 5}, "warmup_epochs=5 must be below"),
    ({"first_task": {"epochs": 0}}, "train.first_task.epochs=0 is not allowed"),
    ({"first_task": {"epoch": 3}}, r"unknown config key\(s\) train.first_task.epoch;"),
    ({"schedule": "multistep", "gamma": 0.0}, "train.gamma=0.0 is not allowed"),
])
def test_bad_schedules_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        task_schedule(recipe(**fields), 0)


def test_the_learning_rate_of_each_epoch_is_the_one_applied():
    # The rate applied is the schedule's, not train.learning_rate (0.2): a schedule of zeros
    # leaves the network as it was; (0.2, 0) trains in the first epoch, (0.2, 0.2) in both.
    graphdef, net = network()
    trainer = Trainer(graphdef, TRAIN, parallel.data_mesh(), capacity=16)
    labels = np.arange(16) % 2
    data = trainer.put(images_of(labels), labels)
    frozen, _ = trainer.fit(net, data, jax.random.key(0), 2, Schedule((0.0, 0.0), 0.0))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen["params"]),
                 jax.tree.map(np.asarray, net["params"]))
    once, _ = trainer.fit(net, data, jax.random.key(0), 2, Schedule((0.2, 0.0), 0.0))
    twice, _ = trainer.fit(net, data, jax.random.key(0), 2, Schedule((0.2, 0.2), 0.0))
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                           once["params"], net["params"])
    assert max(jax.tree.leaves(changed)) > 1e-3
    assert not all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), once["params"], twice["params"])))


def test_bfloat16_compute_learns_with_float32_parameters():
    graphdef, net = network()
    train = ml_collections.ConfigDict({**TRAIN.to_dict(), "compute_dtype": "bfloat16"})
    trainer = Trainer(graphdef, train, parallel.data_mesh(), capacity=64)
    labels = np.arange(64) % 4
    data = trainer.put(images_of(labels), labels)
    state = trainer.init(net["params"], net["model_state"])
    step = jax.make_jaxpr(lambda s, x, y: trainer.step(s, x, y, jnp.ones(8), 4))(
        state, images_of(labels[:8]), labels[:8].astype(np.int32))
    assert "bf16[8,16]" in str(step)  # the batch's hidden activations are computed in bfloat16
    trained, _ = trainer.fit(net, data, jax.random.key(8), 4, epochs(10))
    assert {leaf.dtype for leaf in jax.tree.leaves(trained)} == {np.dtype(np.float32)}
    test_labels = np.arange(40) % 4
    logits = np.asarray(trainer.logits(trained, images_of(test_labels, seed=11)))
    assert np.mean(np.argmax(logits, -1) == test_labels) == 1.0
    with pytest.raises(ConfigError, match="train.compute_dtype='float16' is not allowed"):
        Trainer(graphdef, ml_collections.ConfigDict({**TRAIN.to_dict(), "compute_dtype": "float16"}),
                parallel.data_mesh(), capacity=64)
