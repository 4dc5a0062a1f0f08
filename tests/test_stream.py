"""Class order, B{m}-Inc{n} splits and relabelling to stream order."""

import numpy as np
import pytest

from cil.data import stream as streams
from cil.errors import ConfigError
from tests.helpers import blobs_dataset


def test_class_order_from_seed_matches_pycil():
    # PyCIL: np.random.seed(1993); np.random.permutation(100) starts 68, 56, 78, 8, 23, 84.
    assert streams.class_order(100, seed=1993)[:6] == (68, 56, 78, 8, 23, 84)
    assert streams.class_order(10, seed=5) != streams.class_order(10, seed=6)


@pytest.mark.parametrize("order", [[0, 1, 1, 2], [0, 1, 2], [0, 1, 2, 4]])
def test_explicit_order_must_be_a_permutation(order):
    with pytest.raises(ConfigError, match="not a permutation"):
        streams.class_order(4, explicit=order)


def test_splits():
    assert [s.classes for s in streams.split_tasks(10, 0, 2)] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    b50 = streams.split_tasks(100, 50, 10)
    assert len(b50) == 6 and b50[0].classes == tuple(range(50)) and b50[-1].classes == tuple(range(90, 100))
    assert len(streams.split_tasks(100, 0, 10)) == 10
    for bad in [(0, 3), (4, 4), (12, 2), (0, 0)]:
        with pytest.raises(ConfigError, match="does not fit 10 classes"):
            streams.split_tasks(10, *bad)


def test_relabelling_follows_the_order():
    dataset = blobs_dataset(num_classes=4)
    stream = streams.make_stream(dataset, 0, 2, explicit_order=[2, 0, 3, 1])
    # Source class 2 becomes stream label 0, class 0 becomes 1, and so on.
    np.testing.assert_array_equal(stream.train_labels, np.array([1, 3, 0, 2])[dataset.train_labels])
    task1 = stream.train_task(1)
    assert task1.classes == (2, 3)
    assert set(np.unique(task1.labels)) == {2, 3}
    np.testing.assert_array_equal(task1.images, dataset.train_images[np.isin(dataset.train_labels, [3, 1])])
    assert stream.class_names == ("2", "0", "3", "1")
    assert stream.seen_classes(1) == 4
    assert len(stream.test_seen(0).labels) == 2 * 10


def test_same_seed_same_tasks_byte_for_byte():
    a = streams.make_stream(blobs_dataset(6), 0, 2, class_order_seed=7)
    b = streams.make_stream(blobs_dataset(6), 0, 2, class_order_seed=7)
    for t in range(a.num_tasks):
        assert a.train_task(t).images.tobytes() == b.train_task(t).images.tobytes()
        assert a.train_task(t).labels.tobytes() == b.train_task(t).labels.tobytes()
