"""Small builders shared by tests: tiny configs and streams that run in seconds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cil.data import stream as streams
from cil.data.sources import Dataset
from configs.digits import get_config


def tiny_config(**strategy_sections) -> ml_collections.ConfigDict:
    """Split-Digits with a small MLP and one epoch; ``strategy_sections`` set config.<name>."""
    config = get_config("smoke")
    config.model.hidden = (32,)
    config.train.batch_size = 32
    with config.unlocked():
        for name, section in strategy_sections.items():
            config[name] = ml_collections.ConfigDict(section)
    return config


def blobs_dataset(num_classes=4, per_class=20, shape=(4, 4, 1), seed=0) -> Dataset:
    """Well-separated random images: class c is bright in pixel c (easy to learn, fast)."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.repeat(np.arange(num_classes), n).astype(np.int32)
        images = rng.integers(0, 40, (len(labels), *shape)).astype(np.uint8)
        flat = images.reshape(len(labels), -1)
        flat[np.arange(len(labels)), labels % flat.shape[1]] = 255
        return images, labels

    x_train, y_train = split(per_class)
    x_test, y_test = split(per_class // 2)
    return Dataset("blobs", x_train, y_train, x_test, y_test,
                   tuple(str(c) for c in range(num_classes)))


def tiny_stream(num_classes=4, increment=2, **kwargs) -> streams.Stream:
    return streams.make_stream(blobs_dataset(num_classes, **kwargs), 0, increment,
                               explicit_order=list(range(num_classes)))


def tree_vdot(a, b):
    """The dot product of two pytrees of the same structure, leaf by leaf, summed."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
