"""Flax NNX networks, built by name from ``config.model``.

    from cil import models
    net = models.build(ConfigDict({"name": "mlp", "hidden": (400, 400)}), (28, 28, 1), 10, seed=0)
    logits = net(images_uint8)                    # (N, 10); images are scaled to [0, 1] inside
    feats = net.features(images_uint8)            # the input of the head

Every network is a list of ``stages`` followed by a linear ``head``, so a strategy can freeze,
share or clone "the first k stages" the same way for the MLP, the CNN and the ResNets.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from cil.errors import ConfigError
from cil.models.networks import Network, cnn, mlp, resnet18, resnet32

_BUILDERS = {"mlp": mlp, "cnn": cnn, "resnet32": resnet32, "resnet18": resnet18}


def check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(_BUILDERS)}")


def build(config: ml_collections.ConfigDict, image_shape, num_classes: int, seed) -> Network:
    """The network ``config.name`` with ``config``'s other fields as options; ``seed``: int or key."""
    check_name(config.name)
    builder = _BUILDERS[config.name]
    options = {k: v for k, v in config.items() if k != "name"}
    try:
        return builder(tuple(image_shape), num_classes, rngs=nnx.Rngs(seed), **options)
    except TypeError as e:  # an option the builder does not take
        raise ConfigError(f"model '{config.name}': {e}") from None


__all__ = ["Network", "build"]
