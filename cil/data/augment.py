"""Jittable image augmentations keyed by PRNG, shared by training-time views and test-time voting.

    cfg = augment.resolve(augment.default_config(), "fashion_mnist")    # flip "auto" -> True
    views = augment.views(images_uint8, key, 5, cfg)      # (5, N, H, W, C), same dtype as images
    augment.flip_makes_sense("digits")                     # False: a mirrored digit is another glyph

    # training (cil/training.py, inside the compiled step): one random view per example
    train_cfg = augment.resolve_training(config.train.augment)    # crop 4, flip, brightness 63/255
    batch = augment.training_views(images_uint8, key, train_cfg)  # same shape and dtype

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

from cil.fields import Field, Flag, Integer, Number, OneOf, check, defaults

# Datasets whose classes change meaning when mirrored (digits, letters, house numbers).
_NO_FLIP_DATASETS = ("digits", "mnist", "emnist", "kmnist", "svhn", "svhn_cropped", "omniglot")
_HASH_SEED = 0x5EED  # fixes the pixel hash's random weights; not a tunable


# A strategy's test-time views (ncm.augment); the defaults shift by up to 2 pixels.
VIEW_FIELDS = {
    "crop_padding": Field(2, Integer(min=0), "zero pixels padded before the crop (0: no shift)"),
    "flip": Field("auto", OneOf("on", "off", "auto"), "auto: by dataset (flip_makes_sense)"),
    "include_identity": Field(True, Flag(), "view 0 is the unchanged image"),
}
# config.train.augment: what the trainer does to every batch; off by default. PyCIL's CIFAR recipe
# is crop_padding=4, flip="on", brightness=63/255 (torchvision's RandomCrop(32, padding=4),
# RandomHorizontalFlip, ColorJitter(brightness=63/255)); the per-channel normalisation that follows
# it there is the model's input_mean/input_std.
TRAINING_FIELDS = {
    "crop_padding": Field(0, Integer(min=0), "zero pixels padded before a random crop (0: none)"),
    "flip": Field("off", OneOf("on", "off"), "random horizontal flips"),
    "brightness": Field(0.0, Number(min=0, below=1),
                        "pixels times a factor from U[1 - b, 1 + b], clipped to 0..255"),
}


def default_config() -> ml_collections.ConfigDict:
    """The augmentation settings a strategy embeds in its own config section."""
    return defaults(VIEW_FIELDS)


def flip_makes_sense(dataset_name: str) -> bool:
    """False for datasets of glyphs (a mirrored digit is not a digit), True for objects and clothes."""
    name = dataset_name.removeprefix("tfds:").split(":")[0].split("/")[0]
    return name not in _NO_FLIP_DATASETS


FLIP_CHOICES = {"on": True, "off": False}


def resolve(config: ml_collections.ConfigDict, dataset_name: str,
            path: str = "augment") -> ml_collections.FrozenConfigDict:
    """``config`` (``VIEW_FIELDS``, checked) with ``flip`` as a bool ("auto": this dataset's
    choice); hashable."""
    check(config, VIEW_FIELDS, path)
    flip = flip_makes_sense(dataset_name) if config.flip == "auto" else FLIP_CHOICES[config.flip]
    return ml_collections.FrozenConfigDict({**config.to_dict(), "flip": flip})


def check_resolved(config) -> None:
    """``config`` came through ``resolve`` (``flip`` a bool): an unresolved "off" would flip."""
    if not isinstance(config.flip, bool):
        raise ValueError(f"augment.flip={config.flip!r} is not resolved; pass the config through "
                         f"cil.data.augment.resolve first")


def image_hashes(images):
    """A 32-bit hash of each image's pixels (a random linear map modulo 2**32), shape (N,)."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.uint32)
    weights = jax.random.bits(jax.random.key(_HASH_SEED), (flat.shape[1],), jnp.uint32)
    return jnp.sum(flat * weights, axis=1, dtype=jnp.uint32)  # wraps modulo 2**32 by design


def shift_and_flip(images, dy, dx, flip, crop_padding: int):
    """Crops each (H, W, C) image of a batch at offset (dy, dx) of its zero-padded copy and mirrors
    those with ``flip``: written as two 0/1 matrix products per image, not a gather.

    Row r of the result is row r + dy - crop_padding of the image (zeros outside it); column c is
    column c' + dx - crop_padding, with c' = W - 1 - c when flipped. XLA:CPU gathers one pixel at a
    time and ran these views several times slower than the encoder; small matmuls are fast on every
    backend and exact (each output pixel is one input pixel times 1).
    """
    n, h, w, _ = images.shape
    rows = jax.nn.one_hot(jnp.arange(h)[None] + dy[:, None] - crop_padding, h)  # (n, H, H)
    columns = jnp.where(flip[:, None], jnp.arange(w)[::-1][None], jnp.arange(w)[None])
    columns = jax.nn.one_hot(columns + dx[:, None] - crop_padding, w)  # (n, W, W)
    moved = jnp.einsum("nrh,nhwc,nkw->nrkc", rows, images.astype(jnp.float32), columns)
    return moved.astype(images.dtype)


def random_views(images, keys, crop_padding: int, flip: bool):
    """One augmented copy of each image, image i drawn with ``keys[i]``."""
    if not crop_padding and not flip:
        return images
    # One draw of random bits per image serves all three choices; the modulo bias is below 1e-9.
    bits = jax.vmap(lambda k: jax.random.bits(k, (3,), jnp.uint32))(keys)
    span = jnp.uint32(2 * crop_padding + 1)
    dy, dx = (bits[:, 0] % span).astype(jnp.int32), (bits[:, 1] % span).astype(jnp.int32)
    flips = (bits[:, 2] & 1).astype(bool) & flip
    return shift_and_flip(images, dy, dx, flips, crop_padding)


def resolve_training(config, path: str = "train.augment") -> ml_collections.FrozenConfigDict | None:
    """``config.train.augment`` checked and hashable (a static jit argument); None when it is off."""
    if config is None:
        return None
    check(config, TRAINING_FIELDS, path)
    resolved = ml_collections.FrozenConfigDict(
        {"crop_padding": int(config.crop_padding), "flip": FLIP_CHOICES[config.flip],
         "brightness": float(config.brightness)})
    if not (resolved.crop_padding or resolved.flip or resolved.brightness):
        return None
    return resolved


def training_views(images, key, config):
    """One random view of each image of a training batch (uint8 in, uint8 out), drawn from ``key``.

    Unlike ``views``, draws depend on the example's position in the batch, not its pixels: each
    step gets a fresh key, so the same image gets a new view every epoch, as in a data loader.
    Brightness follows torchvision's ColorJitter on 8-bit images (what PyCIL applies): pixels are
    multiplied by one factor per image, then rounded and clipped to 0..255 (PIL truncates where
    this rounds: 0.5/255 brighter on average).
    """
    shift_key, brightness_key = jax.random.split(key)
    keys = jax.random.split(shift_key, images.shape[0])
    out = random_views(images, keys, config.crop_padding, config.flip)
    if config.brightness:
        b = config.brightness
        factor = jax.random.uniform(brightness_key, (images.shape[0], 1, 1, 1),
                                    minval=1.0 - b, maxval=1.0 + b)
        out = jnp.clip(jnp.round(out.astype(jnp.float32) * factor), 0, 255).astype(images.dtype)
    return out


def views(images, key, num_views: int, config):
    """``num_views`` augmented copies of a batch, (num_views, N, H, W, C); jittable, shape-static."""
    pad, flip = int(config.crop_padding), bool(config.flip)
    hashes = image_hashes(images)

    def one_view(v):
        view_key = jax.random.fold_in(key, v)
        keys = jax.vmap(lambda h: jax.random.fold_in(view_key, h))(hashes)
        augmented = random_views(images, keys, pad, flip)
        if config.include_identity:
            augmented = jnp.where(v == 0, images, augmented)
        return augmented

    return jax.vmap(one_view)(jnp.arange(num_views))  # traced once, whatever num_views
