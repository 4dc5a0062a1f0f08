"""The networks: MLP, a small CNN, the peer protocol's SmallCNN, ResNet-32 (CIFAR) and ResNet-18.

    net = mlp((28, 28, 1), 10, hidden=(400, 400), rngs=nnx.Rngs(0))
    net(images, train=True)   # uint8 or float images, NHWC
    net.activations(images)   # the input, then every stage's output (the last: net.features)
    net.use_local_similarity(10, key)   # PODNet: cosine head with 10 proxies a class, last ReLU off

Every stage that ends in a ReLU has a ``relu`` flag, so the last one can end without it (PODNet's
"last ReLU removed": its features keep their negative half, which the cosine head reads).

Max-pooling is written as reshape + max: on XLA:CPU the backward of ``max_pool``
(select-and-scatter) took half of a small CNN's step, and this form ran twice as fast (DESIGN.md).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def to_float(images, mean=None, std=None):
    """uint8 pixels -> float32 in [0, 1], then standardised if ``mean``/``std`` (per channel) are
    given; float inputs (already features) pass through."""
    if not jnp.issubdtype(images.dtype, jnp.integer):
        return images
    x = images.astype(jnp.float32) / 255.0
    if mean is not None:
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x


def pytorch_init(model: nnx.Module, key) -> None:
    """Re-draws every Linear and Conv weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    PyTorch's default, so a result can be compared with a PyTorch pipeline's like for like."""
    for i, (_, node) in enumerate(nnx.iter_graph(model)):
        if isinstance(node, (nnx.Linear, nnx.Conv)):
            bound = math.prod(node.kernel.shape[:-1]) ** -0.5
            kernel_key, bias_key = jax.random.split(jax.random.fold_in(key, i))
            node.kernel[...] = jax.random.uniform(kernel_key, node.kernel.shape, minval=-bound,
                                                  maxval=bound)
            if node.bias is not None:
                node.bias[...] = jax.random.uniform(bias_key, node.bias.shape, minval=-bound,
                                                    maxval=bound)


def rectify(x, relu: bool):
    """ReLU of ``x``, or ``x`` itself for a stage whose ReLU is off (``relu``: a static flag)."""
    return jax.nn.relu(x) if relu else x


def max_pool_2x2(x):
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def safe_norm(x, axis=-1, keepdims: bool = False):
    """The L2 norm along ``axis``, with gradient 0 at 0 (as PyTorch's norm) where
    ``jnp.linalg.norm``'s is NaN: a student equal to its teacher, at a task's first step."""
    squares = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def normalize(x):
    """``x`` / its L2 norm along the last axis (floored at 1e-12, as PyTorch's F.normalize)."""
    return x / jnp.maximum(safe_norm(x, keepdims=True), 1e-12)


class LocalSimilarityClassifier(nnx.Module):
    """PODNet's local similarity classifier (LSC; Douillard et al. 2020, eq. 8-9).

    ``proxies_per_class`` proxies per class, each class's contiguous (rows [c K, (c + 1) K)).
    With s_{c,k} the cosine between the features and proxy k of class c, class c scores
    ``scale`` x sum_k softmax_k(s_{c,k}) s_{c,k}: a soft maximum over the class's proxies,
    temperature 1. ``scale`` is learned and starts at 1 (PyCIL's sigma, the authors' learned
    scaling). Proxies start uniform in +-1/sqrt(features), as PyCIL's CosineLinear.

    The authors' code compares by -||x - w||^2 of the normalised vectors (their
    ``neg_stable_cosine_distance``), which is 2 cos - 2: the same ordering and softmax over proxies
    up to a factor 2 in temperature; cil uses cos, as PyCIL and the paper's equation.
    """

    def __init__(self, feature_dim: int, num_classes: int, proxies_per_class: int, *, key):
        bound = feature_dim ** -0.5
        self.in_features = feature_dim
        self.proxies_per_class = proxies_per_class
        self.proxies = nnx.Param(jax.random.uniform(
            key, (num_classes * proxies_per_class, feature_dim), minval=-bound, maxval=bound))
        self.scale = nnx.Param(jnp.ones(()))

    def __call__(self, x):
        cosines = normalize(x) @ normalize(self.proxies[...]).T
        per_class = cosines.reshape(x.shape[0], -1, self.proxies_per_class)
        merged = jnp.sum(jax.nn.softmax(per_class, axis=-1) * per_class, axis=-1)
        return self.scale[...] * merged


class BiasCorrection(nnx.Variable):
    """BiC's bias-correction layers: row 0 the scale, row 1 the shift of each task's logits.

    Not an ``nnx.Param``: it is model state (as BatchNorm's statistics are), which the optimiser
    never touches; BiC sets it in its own second stage (baselines/bic.py)."""


class Network(nnx.Module):
    """``stages`` (a list of modules called as ``stage(x, train)``) followed by a linear ``head``
    (or, after ``use_local_similarity``, PODNet's LSC); with ``correct_bias(task_of_class)``, each
    task's logits are then scaled and shifted."""

    def __init__(self, stages, feature_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.stages = nnx.List(stages)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)
        self.input_mean = self.input_std = None  # per-channel standardisation (static floats)
        self.task_of_class = None  # static: the task index of each class, for the correction
        self.bias_correction = nnx.data(None)  # data, not static: set by correct_bias

    def correct_bias(self, task_of_class: tuple[int, ...]) -> None:
        """Adds one (scale, shift) per task to the logits, starting as the identity (1, 0)."""
        num_tasks = max(task_of_class) + 1
        self.task_of_class = tuple(int(t) for t in task_of_class)
        self.bias_correction = BiasCorrection(
            jnp.stack([jnp.ones(num_tasks), jnp.zeros(num_tasks)]))

    def use_local_similarity(self, proxies_per_class: int, key) -> None:
        """PODNet's network: the head becomes a ``LocalSimilarityClassifier`` over the same
        features, and the last stage that ends in a ReLU ends without it (PyCIL's cosine
        ResNet-32: the last block of stage 3 adds its residual and stops)."""
        in_features = self.head.in_features
        num_classes = self.head.out_features
        self.head = LocalSimilarityClassifier(in_features, num_classes, proxies_per_class, key=key)
        rectified = [stage for stage in self.stages if getattr(stage, "relu", False)]
        if rectified:  # an MLP without hidden layers has none
            rectified[-1].relu = False

    def activations(self, images, train: bool = False, start: int = 0,
                    stop: int | None = None) -> list:
        """The input of stage ``start`` (``images``, made float when start == 0), then the output
        of each stage in [start, stop): what PODNet's pooled distillation compares."""
        outputs = [to_float(images, self.input_mean, self.input_std) if start == 0 else images]
        for stage in list(self.stages)[start:stop]:
            outputs.append(stage(outputs[-1], train))
        return outputs

    def features(self, images, train: bool = False, start: int = 0, stop: int | None = None):
        """Runs stages [start, stop) on ``images`` (raw images when start == 0)."""
        return self.activations(images, train, start, stop)[-1]

    def scores(self, features):
        """The logits of the head's input ``features`` (bias-corrected when BiC set it up)."""
        logits = self.head(features)
        if self.bias_correction is None:
            return logits
        scale, shift = self.bias_correction[...][:, jnp.asarray(self.task_of_class)]
        return logits * scale + shift

    def __call__(self, images, train: bool = False):
        return self.scores(self.features(images, train))


class Dense(nnx.Module):
    """Flatten, linear, ReLU (unless ``relu`` is off): one MLP stage."""

    def __init__(self, din, dout, *, rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.relu = True

    def __call__(self, x, train):
        return rectify(self.linear(x.reshape(x.shape[0], -1)), self.relu)


class Flatten(nnx.Module):
    """The one stage of an MLP without hidden layers: the head reads the flattened pixels."""

    def __call__(self, x, train):
        return x.reshape(x.shape[0], -1)


def mlp(image_shape, num_classes, *, hidden, rngs):
    sizes = [math.prod(image_shape), *hidden]
    stages = [Dense(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])] or [Flatten()]
    return Network(stages, sizes[-1], num_classes, rngs=rngs)


class ConvBlock(nnx.Module):
    """3x3 conv, ReLU (unless ``relu`` is off), optional 2x2 max-pool."""

    def __init__(self, cin, cout, pool, *, rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.pool = pool
        self.relu = True

    def __call__(self, x, train):
        x = rectify(self.conv(x), self.relu)
        return max_pool_2x2(x) if self.pool else x


class GlobalPool(nnx.Module):
    """Mean over the spatial axes (no parameters), ending a convolutional network's features."""

    def __call__(self, x, train):
        return x.mean(axis=(1, 2))


def cnn(image_shape, num_classes, *, channels, rngs):
    """Conv-pool blocks then global mean pooling: a small CNN that trains in seconds on a CPU."""
    cins = [image_shape[-1], *channels]
    stages = [ConvBlock(a, b, pool=True, rngs=rngs) for a, b in zip(cins, cins[1:])]
    return Network([*stages, GlobalPool()], channels[-1], num_classes, rngs=rngs)


def small_cnn(image_shape, num_classes, *, rngs):
    """The comparison protocol's SmallCNN: conv 3x3 32 + ReLU + max-pool 2, conv 3x3 64 + ReLU +
    max-pool 2, flatten, linear to 128 + ReLU, linear to the classes (3,136 -> 128 on 28x28x1).

    Convolutions pad by one pixel ('SAME'), as PyTorch's ``padding=1``; with
    ``model.init="pytorch"`` every layer is drawn as PyTorch draws it.
    """
    h, w, c = image_shape
    flat = (h // 4) * (w // 4) * 64
    stages = [ConvBlock(c, 32, pool=True, rngs=rngs), ConvBlock(32, 64, pool=True, rngs=rngs),
              Dense(flat, 128, rngs=rngs)]
    return Network(stages, 128, num_classes, rngs=rngs)


class ResidualBlock(nnx.Module):
    """Basic block: two 3x3 conv + BatchNorm; a strided 1x1 projection when the shape changes."""

    def __init__(self, cin, cout, stride, *, rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        if stride != 1 or cin != cout:
            self.project = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.project_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        else:
            self.project = None
        self.relu = True  # after the residual sum

    def __call__(self, x, train):
        frozen_stats = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=frozen_stats))
        y = self.bn2(self.conv2(y), use_running_average=frozen_stats)
        if self.project is not None:
            x = self.project_bn(self.project(x), use_running_average=frozen_stats)
        return rectify(x + y, self.relu)


class Stem(nnx.Module):
    def __init__(self, cin, cout, *, rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.relu = True

    def __call__(self, x, train):
        return rectify(self.bn(self.conv(x), use_running_average=not train), self.relu)


def _resnet(image_shape, num_classes, widths, blocks_per_stage, *, rngs):
    stages = [Stem(image_shape[-1], widths[0], rngs=rngs)]
    cin = widths[0]
    for i, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            stages.append(ResidualBlock(cin, width, stride, rngs=rngs))
            cin = width
    stages.append(GlobalPool())
    return Network(stages, cin, num_classes, rngs=rngs)


def resnet32(image_shape, num_classes, *, rngs):
    """ResNet-32 for 32x32 inputs (He et al. 2016, CIFAR variant; as in iCaRL and PyCIL): 3x5 blocks."""
    return _resnet(image_shape, num_classes, (16, 32, 64), (5, 5, 5), rngs=rngs)


def resnet18(image_shape, num_classes, *, rngs):
    """ResNet-18 with a 3x3 stem and no initial max-pool (the usual 32x32 adaptation)."""
    return _resnet(image_shape, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), rngs=rngs)
