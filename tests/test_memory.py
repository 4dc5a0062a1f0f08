"""Exemplar memory: capacity and bytes, class-balanced shares, herding, reservoir's uniformity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cil import memory
from cil.errors import BudgetError, ConfigError
from cil.strategy import Budget

SHAPE = (2, 2, 1)
NUM_CLASSES = 8
LENGTH = 48  # every task's arrays are padded to this many examples, as a trainer pads them


def task(classes, per_class, first_id):
    """Padded (images, labels, size); each example's id + 1 fills its pixels (0: padding)."""
    labels = np.repeat(np.asarray(classes, np.int32), per_class)
    ids = first_id + np.arange(len(labels))
    images = np.zeros((LENGTH, *SHAPE), np.uint8)
    images[: len(labels)] = (ids + 1)[:, None, None, None]
    padded = np.zeros(LENGTH, np.int32)
    padded[: len(labels)] = labels
    return images, padded, len(labels)


def stream():
    """Four tasks of two classes each, of different sizes."""
    return [task((0, 1), 10, 0), task((2, 3), 7, 20), task((4, 5), 12, 34), task((6, 7), 5, 58)]


def features_of(images):
    """Fixed random features per example id (what a network would give)."""
    table = np.random.default_rng(0).normal(size=(256, 6)).astype(np.float32)
    return jnp.asarray(table[np.asarray(images)[:, 0, 0, 0]])


def contents(buffer):
    size = int(buffer.size)
    ids = np.asarray(buffer.images)[:size, 0, 0, 0].astype(int) - 1
    return ids, np.asarray(buffer.labels)[:size]


def run(mem, tasks, key=0):
    """The buffer after each task."""
    buffer, buffers = mem.empty(), []
    for t, (images, labels, size) in enumerate(tasks):
        feats = features_of(images) if mem.selection == "herding" else None
        buffer = mem.update(buffer, images, labels, size, jax.random.key(key * 100 + t), feats)
        buffers.append(buffer)
    return buffers


POLICIES = [("random", True), ("random", False), ("reservoir", False), ("herding", True)]
CAPACITY = 9
_memories = {}


def memory_of(selection, balanced):
    """One memory per policy for the whole module: each compiles its update once."""
    if (selection, balanced) not in _memories:
        _memories[selection, balanced] = memory.ExemplarMemory(CAPACITY, SHAPE, NUM_CLASSES,
                                                               selection, balanced)
    return _memories[selection, balanced]


@pytest.mark.parametrize("selection,balanced", POLICIES)
def test_buffer_never_exceeds_capacity_and_reports_exact_bytes(selection, balanced):
    mem = memory_of(selection, balanced)
    offered_ids, offered_labels = set(), {}
    for buffer, (images, labels, size) in zip(run(mem, stream()), stream()):
        ids = np.asarray(images)[:size, 0, 0, 0].astype(int) - 1
        offered_ids |= set(ids)
        offered_labels.update(zip(ids, labels[:size]))
        kept, kept_labels = contents(buffer)
        assert int(buffer.size) == min(CAPACITY, len(offered_ids))
        assert set(kept) <= offered_ids and len(set(kept)) == len(kept)  # no copies, no made-up
        assert [offered_labels[i] for i in kept] == list(kept_labels)
        assert not np.asarray(buffer.images)[int(buffer.size):].any()  # unused slots stay empty
        report = mem.report(buffer)
        assert report.exemplars == int(buffer.size) * (4 + 1)  # uint8 2x2 image + uint8 label
        assert report.num_exemplars == int(buffer.size)
        assert report.side_state == memory.COUNTER_BYTES


def test_capacity_from_a_byte_budget_is_what_the_model_leaves():
    per = memory.exemplar_bytes(SHAPE, NUM_CLASSES)
    assert per == 5
    assert memory.exemplar_capacity(Budget(max_bytes=1000), per, 512, default=7) == 97
    assert memory.exemplar_capacity(Budget(max_bytes=1000, max_exemplars=20), per, 512, 7) == 20
    assert memory.exemplar_capacity(Budget(max_exemplars=30), per, 512, default=7) == 30
    assert memory.exemplar_capacity(Budget(), per, 512, default=7) == 7
    with pytest.raises(BudgetError, match="budget_bytes"):
        memory.exemplar_capacity(Budget(max_bytes=100), per, 512, default=7)
    # Filled to that capacity, the buffer and the model fit the budget.
    model = 200
    budget = Budget(max_bytes=model + memory.COUNTER_BYTES + CAPACITY * per + per - 1)
    assert memory.exemplar_capacity(budget, per, model + memory.COUNTER_BYTES, 0) == CAPACITY
    report = memory_of("random", True).report(run(memory_of("random", True), stream())[-1])
    assert report.num_exemplars == CAPACITY
    assert model + report.charged_bytes() <= budget.max_bytes


@pytest.mark.parametrize("selection", ["random", "herding"])
def test_class_balanced_shares_are_equal_and_shrink_by_removal(selection):
    mem = memory_of(selection, True)
    previous = {}
    for t, buffer in enumerate(run(mem, stream())):
        ids, labels = contents(buffer)
        counts = np.bincount(labels, minlength=2 * (t + 1))
        assert counts.sum() == CAPACITY and counts.max() - counts.min() <= 1, counts
        if t:  # the old classes gave way
            assert sum(len(ids[labels == c]) for c in range(2 * t)) < CAPACITY
        assert list(labels) == sorted(labels)  # kept sorted by class
        for c in range(2 * t):  # an old class only loses exemplars, never gains other ones
            now = ids[labels == c]
            assert set(now) <= set(previous[c]) and len(now) <= len(previous[c])
            if selection == "herding":  # iCaRL's reduce: the first picks stay, in order
                assert list(now) == list(previous[c][: len(now)])
        previous = {c: ids[labels == c] for c in range(2 * (t + 1))}


def herding_reference(features, m):
    """iCaRL's herding, one example at a time (NumPy): the order of the first m picks."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    mean, picked, total = f.mean(0), [], np.zeros_like(f[0])
    for k in range(1, m + 1):
        distance = np.linalg.norm(mean - (total + f) / k, axis=1)
        distance[picked] = np.inf
        picked.append(int(np.argmin(distance)))
        total += f[picked[-1]]
    return picked


def test_herding_first_pick_is_nearest_the_class_mean_and_order_matches_icarl():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 5)).astype(np.float32)
    labels = np.repeat([3, 5], 20).astype(np.int32)
    labels[-4:] = 0  # padding beyond size: never picked
    ranks = np.asarray(memory.herding_ranks(jnp.asarray(features), jnp.asarray(labels), 36, 8,
                                            NUM_CLASSES))
    assert np.isinf(ranks[36:]).all()
    for c in (3, 5):
        members = np.flatnonzero(labels[:36] == c)
        f = features[members] / np.linalg.norm(features[members], axis=1, keepdims=True)
        nearest = members[np.argmin(np.linalg.norm(f - f.mean(0), axis=1))]
        assert ranks[nearest] == 0
        order = members[np.argsort(ranks[members])][:8]
        assert list(order) == list(members[herding_reference(features[members], 8)])
        assert np.isinf(np.sort(ranks[members])[8:]).all()  # only ``picks`` are ranked


def inclusion_counts(mem, batches, trials):
    """How often each stream example is in the buffer at the end, over ``trials`` seeds."""
    def one_trial(key):
        def offer(buffer, batch):
            images, labels, size, t = batch
            return mem._update_impl(buffer, images, labels, size, jax.random.fold_in(key, t),
                                    None), None
        stacked = [jnp.stack(parts) for parts in zip(*batches)]
        buffer, _ = jax.lax.scan(offer, mem.empty(), (*stacked, jnp.arange(len(batches))))
        ids = buffer.images[:, 0, 0, 0].astype(jnp.int32) - 1
        return jnp.zeros(64, jnp.int32).at[ids].add(jnp.arange(mem.capacity) < buffer.size,
                                                    mode="drop")
    keys = jax.random.split(jax.random.key(1234), trials)
    return np.asarray(jax.jit(jax.vmap(one_trial))(keys).sum(0))


def test_reservoir_gives_every_example_of_a_stream_the_same_inclusion_probability():
    # 60 examples arrive in batches of uneven sizes (one of a single example); 12 slots.
    sizes, batches, start = (7, 1, 13, 20, 19), [], 0
    for size in sizes:
        images = np.zeros((LENGTH, *SHAPE), np.uint8)
        images[:size] = (start + np.arange(size) + 1)[:, None, None, None]
        batches.append((jnp.asarray(images), jnp.zeros(LENGTH, jnp.int32), jnp.int32(size)))
        start += size
    trials, p = 4000, 12 / 60

    def chi_square(mem):
        counts = inclusion_counts(mem, batches, trials)[:60]
        assert counts.sum() == 12 * trials  # the buffer is full at the end of every trial
        return np.sum((counts - trials * p) ** 2 / (trials * p * (1 - p)))

    # Chi-square with 59 degrees of freedom: mean 59, sd 10.9; 120 is beyond 5 sd.
    assert chi_square(memory.ExemplarMemory(12, SHAPE, NUM_CLASSES, "reservoir", False)) < 120
    # The test has power: a buffer refilled at random from (itself + the batch) favours late ones.
    assert chi_square(memory.ExemplarMemory(12, SHAPE, NUM_CLASSES, "random", False)) > 1000


@pytest.mark.parametrize("selection,balanced,match", [
    ("herding", False, "class_balanced=True"),
    ("reservoir", True, "class_balanced=False"),
    ("fifo", True, "unknown memory selection"),
])
def test_meaningless_policies_are_config_errors(selection, balanced, match):
    with pytest.raises(ConfigError, match=match):
        memory.ExemplarMemory(4, SHAPE, NUM_CLASSES, selection, balanced)


def test_labels_take_the_smallest_dtype():
    assert memory.label_dtype(10) == np.uint8
    assert memory.label_dtype(256) == np.uint8
    assert memory.label_dtype(1000) == np.uint16
