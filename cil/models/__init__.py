"""Flax NNX networks, built by name from ``config.model``.

    from cil import models
    net = models.build(ConfigDict({"name": "mlp", "hidden": (400, 400)}), (28, 28, 1), 10, seed=0)
    logits = net(images_uint8)                    # (N, 10); images are scaled to [0, 1] inside
    feats = net.features(images_uint8)            # the input of the head

Every network is a list of ``stages`` followed by a linear ``head``, so a strategy can freeze,
share or clone "the first k stages" the same way for the MLP, the CNN and the ResNets.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from cil.errors import ConfigError
from cil.models.networks import (Network, cnn, mlp, pytorch_init, resnet18, resnet32,
                                 small_cnn)

_BUILDERS = {"mlp": mlp, "cnn": cnn, "small_cnn": small_cnn, "resnet32": resnet32,
             "resnet18": resnet18}


def check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(_BUILDERS)}")


# Options every network takes, beside its own (hidden sizes, channels, ...):
#   input_mean, input_std: per-channel pixel statistics in [0, 1] to standardise inputs with
#   init: "flax" (Flax's defaults: LeCun normal weights, zero biases) or "pytorch"
#         (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, PyTorch's default)
COMMON_OPTIONS = ("input_mean", "input_std", "init")


def build(config: ml_collections.ConfigDict, image_shape, num_classes: int, seed) -> Network:
    """The network ``config.name`` with ``config``'s other fields as options; ``seed``: int or key."""
    check_name(config.name)
    builder = _BUILDERS[config.name]
    options = {k: v for k, v in config.items() if k not in ("name", *COMMON_OPTIONS)}
    try:
        model = builder(tuple(image_shape), num_classes, rngs=nnx.Rngs(seed), **options)
    except TypeError as e:  # an option the builder does not take
        raise ConfigError(f"model '{config.name}': {e}") from None
    mean, std = config.get("input_mean"), config.get("input_std")
    if (mean is None) != (std is None):
        raise ConfigError("model.input_mean and model.input_std must be set together")
    if mean is not None:
        model.input_mean, model.input_std = tuple(mean), tuple(std)
    init = config.get("init") or "flax"
    if init == "pytorch":
        key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
        pytorch_init(model, jax.random.fold_in(key, 1))
    elif init != "flax":
        raise ConfigError(f"unknown model.init '{init}'; choose flax or pytorch")
    return model


__all__ = ["Network", "build"]
