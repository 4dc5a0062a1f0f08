"""Class-incremental streams: class order, B{m}-Inc{n} split, labels renumbered to stream order.

    from cil.data import sources, stream
    ds = sources.load(ConfigDict({"name": "digits"}))
    s = stream.make_stream(ds, initial=0, increment=2, class_order_seed=1993)
    s.num_tasks                      # 5
    s.tasks[1].classes               # (2, 3): stream labels; s.class_order maps them back
    s.train_task(1).images           # task 1's training images only
    s.test_seen(1)                   # test examples of every class seen after task 1

PROTOCOL.md: the first class of the order becomes label 0, so the classes seen after task t are
exactly the stream labels 0 .. seen_classes(t) - 1. The same arguments give the same arrays, byte
for byte (the order is NumPy's ``RandomState(class_order_seed).permutation``, as in PyCIL).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence as SequenceType

import numpy as np

from cil.data.sources import Dataset
from cil.errors import ConfigError
from cil.fields import Field, Integer, Optional, Sequence


# config.stream; whether a split fits the dataset is checked when the data is known.
FIELDS = {
    "initial": Field(0, Integer(min=0), "B{m}: classes in task 0 (0 means increment)"),
    "increment": Field(2, Integer(min=1), "Inc{n}: classes in every later task"),
    "class_order_seed": Field(1993, Integer(min=0, max=2**32 - 1), "as in iCaRL and PyCIL"),
    "class_order": Field(None, Optional(Sequence(Integer(min=0), min_length=1, distinct=True)),
                         "an explicit permutation of the classes instead"),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task's examples, labelled in stream order."""

    index: int
    classes: tuple[int, ...]  # stream labels this task introduces
    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray  # int32 stream labels


@dataclasses.dataclass(frozen=True)
class TaskSpan:
    index: int
    classes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Stream:
    """A dataset relabelled to a class order and cut into tasks."""

    dataset_name: str
    class_order: tuple[int, ...]  # class_order[stream_label] = the source's class id
    class_names: tuple[str, ...]  # in stream order
    tasks: tuple[TaskSpan, ...]
    initial: int
    increment: int
    train_images: np.ndarray
    train_labels: np.ndarray  # stream labels
    test_images: np.ndarray
    test_labels: np.ndarray
    # Bytes of the frozen encoder whose features the "images" are (config.features), else 0.
    input_encoder_bytes: int = 0

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def split_name(self) -> str:
        return f"B{self.initial}-Inc{self.increment}"

    def seen_classes(self, t: int) -> int:
        """Number of classes seen after task t (they are stream labels 0 .. n-1)."""
        return self.tasks[t].classes[-1] + 1

    def train_task(self, t: int) -> Task:
        return self._select(t, self.train_images, self.train_labels, first_class=self.tasks[t].classes[0])

    def train_seen(self, t: int) -> Task:
        """Training data of every class seen up to task t (what the joint baseline learns)."""
        return self._select(t, self.train_images, self.train_labels, first_class=0)

    def test_seen(self, t: int) -> Task:
        return self._select(t, self.test_images, self.test_labels, first_class=0)

    def _select(self, t, images, labels, first_class):
        keep = (labels >= first_class) & (labels < self.seen_classes(t))
        return Task(t, tuple(range(first_class, self.seen_classes(t))), images[keep], labels[keep])

    def task_sizes(self, split: str = "train") -> tuple[int, ...]:
        labels = self.train_labels if split == "train" else self.test_labels
        return tuple(int(np.isin(labels, span.classes).sum()) for span in self.tasks)


def class_order(num_classes: int, seed: int | None = 1993,
                explicit: SequenceType[int] | None = None) -> tuple[int, ...]:
    """The permutation of classes: ``explicit`` if given, else drawn from ``seed``."""
    if explicit is not None:
        order = tuple(int(c) for c in explicit)
        if sorted(order) != list(range(num_classes)):
            raise ConfigError(
                f"stream.class_order={order} is not a permutation of 0..{num_classes - 1}; "
                f"list every class exactly once, or set it to None to draw one from the seed")
        return order
    # NumPy's legacy RandomState, as PyCIL does (np.random.seed(1993); np.random.permutation(C)),
    # so that the same seed gives the same CIFAR-100 class order as the published runs.
    return tuple(int(c) for c in np.random.RandomState(seed).permutation(num_classes))


def split_tasks(num_classes: int, initial: int, increment: int) -> tuple[TaskSpan, ...]:
    """B{initial}-Inc{increment}: task 0 has ``initial`` classes (``increment`` if 0), then ``increment`` each."""
    first = initial or increment
    if increment <= 0 or initial < 0 or first > num_classes or (num_classes - first) % increment:
        raise ConfigError(
            f"split B{initial}-Inc{increment} does not fit {num_classes} classes; choose "
            f"stream.initial and stream.increment so that initial + k * increment = {num_classes}")
    bounds = [0, first] + list(range(first + increment, num_classes + 1, increment))
    return tuple(TaskSpan(t, tuple(range(lo, hi))) for t, (lo, hi) in enumerate(zip(bounds, bounds[1:])))


def make_stream(dataset: Dataset, initial: int, increment: int,
                class_order_seed: int | None = 1993,
                explicit_order: SequenceType[int] | None = None) -> Stream:
    order = class_order(dataset.num_classes, class_order_seed, explicit_order)
    tasks = split_tasks(dataset.num_classes, initial, increment)
    to_stream = np.empty(dataset.num_classes, np.int32)
    to_stream[list(order)] = np.arange(dataset.num_classes, dtype=np.int32)
    return Stream(
        dataset_name=dataset.name,
        class_order=order,
        class_names=tuple(dataset.class_names[c] for c in order),
        tasks=tasks, initial=initial, increment=increment,
        train_images=dataset.train_images, train_labels=to_stream[dataset.train_labels],
        test_images=dataset.test_images, test_labels=to_stream[dataset.test_labels])
