"""Named data sources: each returns a whole ``Dataset`` of uint8 NHWC images held in memory.

    from cil.data import sources
    ds = sources.load(ml_collections.ConfigDict({"name": "digits"}))
    ds.train_images.shape   # (1347, 8, 8, 1), uint8
    ds.class_names          # ('0', '1', ..., '9')

Sources: ``digits`` (scikit-learn's bundled 8x8 digits, no download). Every source goes
through ``validate`` so that an empty class or a malformed array is a one-line ``DataError``.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from cil.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled dataset, both splits in memory. Labels are the source's own class ids."""

    name: str
    train_images: np.ndarray  # uint8, (N, H, W, C)
    train_labels: np.ndarray  # int32, (N,), values in [0, num_classes)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


# The digits split: 25 % of each class held out for testing, drawn with this fixed seed.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits, a stratified 75/25 train/test split (seed 0).

    Pixel values 0..16 are scaled to 0..255 so every source yields the same uint8 range.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED)
    return Dataset("digits", x_train, y_train, x_test, y_test,
                   tuple(str(name) for name in bunch.target_names))


_LOADERS = {
    "digits": lambda config: load_digits(),
}


def load(config: ml_collections.ConfigDict) -> Dataset:
    """Loads the source named by ``config.name`` and checks it (see ``validate``)."""
    loader = _LOADERS.get(config.name)
    if loader is None:
        raise ConfigError(
            f"unknown dataset '{config.name}'; choose one of: {', '.join(sorted(_LOADERS))}")
    dataset = loader(config)
    validate(dataset)
    return dataset


def validate(dataset: Dataset) -> None:
    """Raises DataError naming the problem if the dataset cannot feed a stream."""
    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{dataset.name} {split} images must be uint8 NHWC, "
                            f"got {images.dtype} with shape {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"{dataset.name} {split}: {len(images)} images but "
                            f"{len(labels)} labels")
        if images.shape[1:] != dataset.train_images.shape[1:]:
            raise DataError(f"{dataset.name}: {split} images are {images.shape[1:]} but train "
                            f"images are {dataset.train_images.shape[1:]}; resize them to one size")
        counts = np.bincount(labels, minlength=dataset.num_classes)
        if len(counts) > dataset.num_classes:
            raise DataError(f"{dataset.name} {split}: label {labels.max()} is outside the "
                            f"{dataset.num_classes} class names")
        empty = [dataset.class_names[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"{dataset.name} {split}: class(es) {', '.join(empty)} have no "
                            f"examples; add examples or drop the class from the dataset")
