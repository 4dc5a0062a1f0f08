"""Augmented views: real shifts and flips of the image, keyed by the seed and the pixels only."""

import jax
import ml_collections
import numpy as np
import pytest

from cil.data import augment
from cil.errors import ConfigError
from cil.fields import defaults


def config(crop_padding=2, flip=True, include_identity=True):
    return ml_collections.FrozenConfigDict(
        {"crop_padding": crop_padding, "flip": flip, "include_identity": include_identity})


views_of = jax.jit(augment.views, static_argnums=(2, 3))  # how strategies call it: under jit


def images(n=6, shape=(6, 5, 2), seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, *shape)).astype(np.uint8)


def all_shifts_and_flips(image, pad):
    """Every image a padded crop (and optional flip) can produce, by brute force."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops]


def test_views_are_padded_crops_or_flips_and_view_zero_is_the_image():
    x = images(n=4)
    views = np.asarray(views_of(x, jax.random.key(0), 8, config()))
    assert views.shape == (8, *x.shape) and views.dtype == np.uint8
    np.testing.assert_array_equal(views[0], x)
    for v in range(1, 8):
        for i in range(len(x)):
            assert any(np.array_equal(views[v, i], c) for c in all_shifts_and_flips(x[i], 2))
    assert not all(np.array_equal(views[v], x) for v in range(1, 8))  # something did change


def test_views_depend_on_the_pixels_not_the_position():
    x = images(n=9)
    perm = np.random.default_rng(1).permutation(len(x))
    views = np.asarray(views_of(x, jax.random.key(3), 4, config()))
    permuted = np.asarray(views_of(x[perm], jax.random.key(3), 4, config()))
    np.testing.assert_array_equal(permuted, views[:, perm])
    other_key = np.asarray(views_of(x, jax.random.key(4), 4, config()))
    assert not np.array_equal(other_key[1:], views[1:])


def test_no_padding_no_flip_means_no_change_and_identity_can_be_dropped():
    x = images()
    views = np.asarray(views_of(x, jax.random.key(0), 3, config(0, False)))
    np.testing.assert_array_equal(views, np.broadcast_to(x, views.shape))
    flipped = np.asarray(views_of(x, jax.random.key(0), 6, config(0, True, False)))
    assert any(np.array_equal(flipped[v, i], x[i, :, ::-1]) for v in range(6) for i in range(len(x)))


def test_flip_follows_the_dataset_unless_set():
    assert not augment.flip_makes_sense("digits") and not augment.flip_makes_sense("tfds:mnist")
    assert augment.flip_makes_sense("fashion_mnist") and augment.flip_makes_sense("cifar100")
    assert augment.resolve(augment.default_config(), "digits").flip is False
    assert augment.resolve(augment.default_config(), "cifar10").flip is True
    forced = augment.default_config()
    forced.flip = "on"
    assert augment.resolve(forced, "digits").flip is True


@pytest.mark.parametrize("bad", [{"crop_padding": -1}, {"flip": "sometimes"}])
def test_bad_settings_are_config_errors(bad):
    cfg = augment.default_config()
    cfg.update(bad)
    with pytest.raises(ConfigError):
        augment.resolve(cfg, "cifar10")


def training(crop_padding=4, flip="on", brightness=0.0):
    return augment.resolve_training(ml_collections.ConfigDict(
        {"crop_padding": crop_padding, "flip": flip, "brightness": brightness}))


training_views_of = jax.jit(augment.training_views, static_argnums=2)


def test_training_views_are_crops_within_the_padding_of_their_own_image():
    x = images(n=16, shape=(8, 8, 3))
    out = np.asarray(training_views_of(x, jax.random.key(0), training(crop_padding=4)))
    assert out.shape == x.shape and out.dtype == np.uint8
    for i in range(len(x)):  # row i stays image i (its label still applies), shifted <= 4 pixels
        assert any(np.array_equal(out[i], c) for c in all_shifts_and_flips(x[i], 4)), i
    assert not np.array_equal(out, x)
    flipped = [np.array_equal(out[i], x[i][:, ::-1]) for i in range(len(x))]
    shifted = [not np.array_equal(out[i], x[i]) for i in range(len(x))]
    assert any(shifted) and not all(flipped)


def test_training_views_are_fixed_by_the_key_and_differ_across_keys():
    x = images(n=8, shape=(8, 8, 3))
    cfg = training(brightness=63 / 255)
    a, b = (np.asarray(training_views_of(x, jax.random.key(k), cfg)) for k in (1, 1))
    np.testing.assert_array_equal(a, b)
    c = np.asarray(training_views_of(x, jax.random.key(2), cfg))
    assert not np.array_equal(a, c)


def test_brightness_scales_each_image_by_one_factor_within_the_range():
    x = np.full((64, 4, 4, 3), 100, np.uint8)
    out = np.asarray(training_views_of(x, jax.random.key(3), training(0, "off", 0.25)))
    per_image = out.reshape(64, -1)
    assert (per_image == per_image[:, :1]).all()  # one factor per image, no shift or flip
    assert per_image.min() >= 75 and per_image.max() <= 125
    assert per_image.max() - per_image.min() > 25  # the factors do spread over the range
    # Clipped, not wrapped: 250 x [0.5, 1.5] stays in [125, 255] (a wrap past 255 would be < 125).
    bright = np.full((32, 4, 4, 3), 250, np.uint8)
    out = np.asarray(training_views_of(bright, jax.random.key(4), training(0, "off", 0.5)))
    assert out.min() >= 125 and (out == 255).any()


def test_training_augmentation_is_off_by_default_and_checked():
    assert augment.resolve_training(defaults(augment.TRAINING_FIELDS)) is None
    with pytest.raises(ConfigError, match="train.augment.flip='auto' is not allowed"):
        training(flip="auto")
    with pytest.raises(ConfigError, match=r"brightness=1.5 is not allowed: set --config.train."
                                          r"augment.brightness to a number >= 0 and < 1"):
        training(brightness=1.5)
    with pytest.raises(ConfigError, match="crop_padding=-1 is not allowed"):
        training(crop_padding=-1)
