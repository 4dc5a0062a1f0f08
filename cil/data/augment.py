"""Jittable image augmentations keyed by PRNG, shared by training-time views and test-time voting.

    cfg = augment.resolve(augment.default_config(), "fashion_mnist")    # flip "auto" -> True
    views = augment.views(images_uint8, key, 5, cfg)      # (5, N, H, W, C), same dtype as images
    augment.flip_makes_sense("digits")                     # False: a mirrored digit is another glyph

An augmented view of an image is a random crop of the image padded by ``crop_padding`` zero pixels
on every side (a shift of up to that many pixels, as in the usual CIFAR recipe) and, where it makes
sense for the dataset, a horizontal flip with probability 1/2. With ``include_identity`` (default)
view 0 is the unchanged image, so ``views=1`` means "no augmentation".

Each example's random draws come from ``fold_in(view key, hash of its pixels)``, not from its
position: the same image gets the same views whatever batch, task or order it arrives in. That is
what makes a strategy built on these views independent of the order of its examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cil.errors import ConfigError

# Datasets whose classes change meaning when mirrored (digits, letters, house numbers).
_NO_FLIP_DATASETS = ("digits", "mnist", "emnist", "kmnist", "svhn", "svhn_cropped", "omniglot")
_HASH_SEED = 0x5EED  # fixes the pixel hash's random weights; not a tunable


def default_config() -> ml_collections.ConfigDict:
    """The augmentation settings a strategy embeds in its own config section."""
    return ml_collections.ConfigDict({
        "crop_padding": 2,  # pixels of zero padding before the random crop (0: no shift)
        "flip": "auto",  # horizontal flips: "on", "off", or "auto" = by dataset (flip_makes_sense)
        "include_identity": True,  # view 0 is the unchanged image
    })


def flip_makes_sense(dataset_name: str) -> bool:
    """False for datasets of glyphs (a mirrored digit is not a digit), True for objects and clothes."""
    name = dataset_name.removeprefix("tfds:").split(":")[0].split("/")[0]
    return name not in _NO_FLIP_DATASETS


FLIP_CHOICES = {"on": True, "off": False}


def resolve(config: ml_collections.ConfigDict, dataset_name: str) -> ml_collections.FrozenConfigDict:
    """``config`` with ``flip`` as a bool ("auto": this dataset's choice), checked; hashable."""
    if config.flip == "auto":
        flip = flip_makes_sense(dataset_name)
    elif config.flip in FLIP_CHOICES:
        flip = FLIP_CHOICES[config.flip]
    else:
        raise ConfigError(f"augment.flip='{config.flip}'; choose 'on', 'off' or 'auto' (by dataset)")
    resolved = ml_collections.FrozenConfigDict({**config.to_dict(), "flip": flip})
    check(resolved)
    return resolved


def check(config) -> None:
    """A resolved config (``flip`` a bool) with a padding that makes sense."""
    if not isinstance(config.flip, bool):
        raise ConfigError(f"augment.flip={config.flip!r} is not resolved; pass the config "
                          f"through cil.data.augment.resolve first")
    if int(config.crop_padding) < 0:
        raise ConfigError(f"augment.crop_padding={config.crop_padding} is negative; use 0 or more")


def image_hashes(images):
    """A 32-bit hash of each image's pixels (a random linear map modulo 2**32), shape (N,)."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.uint32)
    weights = jax.random.bits(jax.random.key(_HASH_SEED), (flat.shape[1],), jnp.uint32)
    return jnp.sum(flat * weights, axis=1, dtype=jnp.uint32)  # wraps modulo 2**32 by design


def random_view(image, key, crop_padding: int, flip: bool):
    """One augmented copy of one (H, W, C) image: a padded random crop, maybe a horizontal flip."""
    # One draw of random bits serves all three choices (fewer PRNG calls, faster to compile);
    # the modulo bias is below 1e-9 for any sensible padding.
    dy, dx, flip_bit = jax.random.bits(key, (3,), jnp.uint32)
    if crop_padding:
        padded = jnp.pad(image, ((crop_padding, crop_padding), (crop_padding, crop_padding), (0, 0)))
        span = jnp.uint32(2 * crop_padding + 1)
        image = jax.lax.dynamic_slice(padded, (dy % span, dx % span, jnp.uint32(0)), image.shape)
    if flip:
        image = jnp.where(flip_bit & 1, image[:, ::-1], image)
    return image


def views(images, key, num_views: int, config):
    """``num_views`` augmented copies of a batch, (num_views, N, H, W, C); jittable, shape-static."""
    pad, flip = int(config.crop_padding), bool(config.flip)
    hashes = image_hashes(images)

    def one_view(v):
        view_key = jax.random.fold_in(key, v)
        keys = jax.vmap(lambda h: jax.random.fold_in(view_key, h))(hashes)
        augmented = jax.vmap(lambda x, k: random_view(x, k, pad, flip))(images, keys)
        if config.include_identity:
            augmented = jnp.where(v == 0, images, augmented)
        return augmented

    return jax.vmap(one_view)(jnp.arange(num_views))  # traced once, whatever num_views
