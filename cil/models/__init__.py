"""Flax NNX networks, built by name from ``config.model``.

    from cil import models
    net = models.build(ConfigDict({"name": "mlp", "hidden": (400, 400)}), (28, 28, 1), 10, seed=0)
    logits = net(images_uint8)                    # (N, 10); images are scaled to [0, 1] inside
    feats = net.features(images_uint8)            # the input of the head

Every network is a list of ``stages`` followed by a linear ``head``, so a strategy can freeze,
share or clone "the first k stages" the same way for the MLP, the CNN and the ResNets. PODNet's
``proxies_per_class`` puts a local similarity classifier in the head's place.

``cifar_resnet`` (``depth`` 6n + 2, three ``widths``) is ``resnet32`` and its smaller variants
(ResNet-8/14/20, narrower widths) for the memory-agnostic comparison of growing methods.
``resnet18`` is the CIFAR adaptation (3x3 stem, no max-pool); ``resnet18_imagenet`` and
``resnet50_imagenet`` are torchvision's ``resnet18`` and ``resnet50`` (7x7 stride-2 stem and
max-pool, PyTorch's paddings), parameter for parameter, so ImageNet-pretrained PyTorch weights load
into them (``python -m cil.torch_weights``, cil/torch_weights.py).
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from cil.errors import ConfigError
from cil.fields import Field, Integer, Number, OneOf, Optional, Sequence
from cil.fields import bad_value, check as check_fields
from cil.models.networks import (Network, cifar_resnet, cnn, mlp, pytorch_init, resnet18,
                                 resnet18_imagenet, resnet32, resnet50_imagenet, small_cnn)

_BUILDERS = {"mlp": mlp, "cnn": cnn, "small_cnn": small_cnn, "resnet32": resnet32,
             "cifar_resnet": cifar_resnet,
             "resnet18": resnet18, "resnet18_imagenet": resnet18_imagenet,
             "resnet50_imagenet": resnet50_imagenet}


# Options every network takes, beside its own (OPTION_FIELDS).
COMMON_FIELDS = {
    "name": Field("mlp", OneOf(*_BUILDERS)),
    # flax: Flax's defaults (LeCun normal weights, zero biases); pytorch: U(-1/sqrt(fan_in),
    # 1/sqrt(fan_in)) for weights and biases, PyTorch's default
    "init": Field("flax", OneOf("flax", "pytorch")),
    # per-channel pixel statistics in [0, 1] to standardise inputs with; set both or neither
    "input_mean": Field(None, Optional(Sequence(Number(min=0, max=1), min_length=1))),
    "input_std": Field(None, Optional(Sequence(Number(above=0), min_length=1))),
}
OPTION_FIELDS = {
    "mlp": {"hidden": Field((400, 400), Sequence(Integer(min=1)), "hidden layer widths")},
    "cnn": {"channels": Field((32, 64), Sequence(Integer(min=1), min_length=1),
                              "channels of each conv-conv-pool stage")},
    "small_cnn": {}, "resnet32": {}, "resnet18": {},
    # depth 6n + 2 (8, 14, 20, 32, ...), three widths: resnet32 and its smaller variants
    "cifar_resnet": {"depth": Field(32, OneOf(*range(8, 111, 6)), "6n + 2 layers: n blocks a width"),
                     "widths": Field((16, 32, 64), Sequence(Integer(min=1), min_length=3,
                                                            max_length=3), "the three widths")},
    # torchvision's ImageNet ResNets: no options (the architecture is what the weights fit)
    "resnet18_imagenet": {}, "resnet50_imagenet": {},
}


def fields(name: str):
    """The fields of ``config.model`` for the network ``name``."""
    return {**COMMON_FIELDS, **OPTION_FIELDS[name]}


def check(config: ml_collections.ConfigDict, image_shape=None, path: str = "model") -> None:
    """``config.model`` against the fields of its network (and the images' channels if known)."""
    name = config.get("name")
    if name not in _BUILDERS:
        raise ConfigError(bad_value(f"{path}.name", name, COMMON_FIELDS["name"]))
    check_fields(config, fields(name), path, partial=True)
    mean, std = config.get("input_mean"), config.get("input_std")
    if (mean is None) != (std is None):
        raise ConfigError(f"{path}.input_mean and {path}.input_std must be set together (one "
                          f"value per image channel), or both left unset")
    if mean is not None and len(mean) != len(std):
        raise ConfigError(f"{path}.input_mean has {len(mean)} values but {path}.input_std has "
                          f"{len(std)}; give one of each per image channel")
    if mean is not None and image_shape is not None and len(mean) != image_shape[-1]:
        raise ConfigError(f"{path}.input_mean has {len(mean)} values but the images have "
                          f"{image_shape[-1]} channel(s); give one per channel")


def build(config: ml_collections.ConfigDict, image_shape, num_classes: int, seed,
          task_of_class: tuple[int, ...] | None = None,
          proxies_per_class: int | None = None) -> Network:
    """The network ``config.name`` with ``config``'s other fields as options; ``seed``: int or key.
    ``task_of_class`` (BiC) adds a bias-correction layer per task (``Network.correct_bias``);
    ``proxies_per_class`` (PODNet) makes the head a local similarity classifier with that many
    proxies per class and drops the last ReLU (``Network.use_local_similarity``)."""
    check(config, image_shape)
    options = {k: config.get(k, f.default) for k, f in OPTION_FIELDS[config.name].items()}
    model = _BUILDERS[config.name](tuple(image_shape), num_classes, rngs=nnx.Rngs(seed), **options)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    if proxies_per_class is not None:
        model.use_local_similarity(proxies_per_class, jax.random.fold_in(key, 2))
    if task_of_class is not None:
        model.correct_bias(task_of_class)
    mean, std = config.get("input_mean"), config.get("input_std")
    if mean is not None:
        model.input_mean, model.input_std = tuple(mean), tuple(std)
    if (config.get("init") or "flax") == "pytorch":
        pytorch_init(model, jax.random.fold_in(key, 1))
    return model


__all__ = ["Network", "build"]
