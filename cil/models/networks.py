"""The networks: MLP, a small CNN, the peer protocol's SmallCNN, ResNet-32 (CIFAR), ResNet-18
(CIFAR stem), and torchvision's ImageNet ResNet-18 and ResNet-50 (what cil/torch_weights.py loads
pretrained PyTorch weights into).

    net = mlp((28, 28, 1), 10, hidden=(400, 400), rngs=nnx.Rngs(0))
    net(images, train=True)   # uint8 or float images, NHWC
    net.activations(images)   # the input, then every stage's output (the last: net.features)
    net.use_local_similarity(10, key)   # PODNet: cosine head with 10 proxies a class, last ReLU off

Every stage that ends in a ReLU has a ``relu`` flag, so the last one can end without it (PODNet's
"last ReLU removed": its features keep their negative half, which the cosine head reads).

Max-pooling is written as reshape + max: on XLA:CPU the backward of ``max_pool``
(select-and-scatter) took half of a small CNN's step, and this form ran twice as fast (DESIGN.md).
The ImageNet stem's 3x3 stride-2 pool overlaps its windows, so it is ``nnx.max_pool``: its slow
backward only matters when training that network, not for the frozen encoders it serves.
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
    never touches; BiC sets it in its own second stage (cil/baselines/bic.py)."""


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


# torchvision's paddings, written out: Flax's 'SAME' pads a stride-2 conv of an even size by
# (0, 1), PyTorch by (1, 1), which shifts every window by a pixel. The CIFAR networks keep 'SAME'.
TORCH_3X3 = ((1, 1), (1, 1))
TORCH_7X7 = ((3, 3), (3, 3))


def batch_norm(channels, *, rngs):
    """BatchNorm as cil's ResNets use it: running averages with momentum 0.9 (PyTorch's 0.1) and
    epsilon 1e-5, Flax's default and PyTorch's."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class ResidualBlock(nnx.Module):
    """Basic block: two 3x3 conv + BatchNorm; a strided 1x1 projection when the shape changes.
    ``padding`` of the 3x3 convs: 'SAME' (the CIFAR ResNets) or ``TORCH_3X3`` (torchvision's)."""

    expansion = 1  # output channels per ``cout``

    def __init__(self, cin, cout, stride, *, padding="SAME", rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=padding, use_bias=False,
                              rngs=rngs)
        self.bn1 = batch_norm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=padding, use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(cout, rngs=rngs)
        self.project, self.project_bn = projection(cin, cout, stride, rngs=rngs)
        self.relu = True  # after the residual sum

    def __call__(self, x, train):
        frozen_stats = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=frozen_stats))
        y = self.bn2(self.conv2(y), use_running_average=frozen_stats)
        return rectify(shortcut(self, x, frozen_stats) + y, self.relu)


class Bottleneck(nnx.Module):
    """torchvision's Bottleneck (ResNet v1.5): 1x1 conv to ``width``, 3x3 conv (carrying the
    stride), 1x1 conv to 4 x ``width``, each with BatchNorm; a strided 1x1 projection when the
    shape changes; ReLU after the residual sum (unless ``relu`` is off)."""

    expansion = 4

    def __init__(self, cin, width, stride, *, padding=TORCH_3X3, rngs):
        cout = width * self.expansion
        self.conv1 = nnx.Conv(cin, width, (1, 1), padding=0, use_bias=False, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), strides=stride, padding=padding,
                              use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(width, rngs=rngs)
        self.conv3 = nnx.Conv(width, cout, (1, 1), padding=0, use_bias=False, rngs=rngs)
        self.bn3 = batch_norm(cout, rngs=rngs)
        self.project, self.project_bn = projection(cin, cout, stride, rngs=rngs)
        self.relu = True

    def __call__(self, x, train):
        frozen_stats = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=frozen_stats))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=frozen_stats))
        y = self.bn3(self.conv3(y), use_running_average=frozen_stats)
        return rectify(shortcut(self, x, frozen_stats) + y, self.relu)


def projection(cin, cout, stride, *, rngs):
    """The shortcut's strided 1x1 conv + BatchNorm when the shape changes, else (None, None).
    A 1x1 conv pads nothing, 'SAME' or not."""
    if stride == 1 and cin == cout:
        return None, None
    return (nnx.Conv(cin, cout, (1, 1), strides=stride, padding=0, use_bias=False, rngs=rngs),
            batch_norm(cout, rngs=rngs))


def shortcut(block, x, frozen_stats: bool):
    if block.project is None:
        return x
    return block.project_bn(block.project(x), use_running_average=frozen_stats)


class Stem(nnx.Module):
    """Conv + BatchNorm + ReLU (unless ``relu`` is off), then an optional max-pool.

    The CIFAR ResNets: a 3x3 conv, no pool. ImageNet (``imagenet_stem``): a 7x7 stride-2 conv
    padded by 3, then a 3x3 stride-2 max-pool padded by 1 with -inf, as torchvision's."""

    def __init__(self, cin, cout, *, kernel=3, stride=1, padding="SAME", pool=False, rngs):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding,
                             use_bias=False, rngs=rngs)
        self.bn = batch_norm(cout, rngs=rngs)
        self.pool = pool
        self.relu = True

    def __call__(self, x, train):
        x = rectify(self.bn(self.conv(x), use_running_average=not train), self.relu)
        if self.pool:  # Flax's max_pool pads with -inf (lax.reduce_window's max identity)
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=TORCH_3X3)
        return x


def imagenet_stem(cin, cout, *, rngs):
    return Stem(cin, cout, kernel=7, stride=2, padding=TORCH_7X7, pool=True, rngs=rngs)


def _resnet(image_shape, num_classes, widths, blocks_per_stage, *, rngs, stem=None,
            block=ResidualBlock, padding="SAME"):
    """``stem`` (default: the CIFAR 3x3 stem), then ``blocks_per_stage`` blocks of each width, the
    first of every width group after the first with stride 2, then global mean pooling.
    Each block is a stage of the Network (torchvision's ``layer{i}.{j}``)."""
    stages = [Stem(image_shape[-1], widths[0], rngs=rngs) if stem is None else stem]
    cin = widths[0]
    for i, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            stages.append(block(cin, width, stride, padding=padding, rngs=rngs))
            cin = width * block.expansion
    stages.append(GlobalPool())
    return Network(stages, cin, num_classes, rngs=rngs)


def resnet32(image_shape, num_classes, *, rngs):
    """ResNet-32 for 32x32 inputs (He et al. 2016, CIFAR variant; as in iCaRL and PyCIL): 3x5 blocks."""
    return cifar_resnet(image_shape, num_classes, depth=32, widths=(16, 32, 64), rngs=rngs)


def cifar_resnet(image_shape, num_classes, *, depth, widths, rngs):
    """He et al.'s CIFAR ResNet of ``depth`` = 6n + 2 layers: n blocks of each of the three
    ``widths``. Depth 32 and widths (16, 32, 64) is ``resnet32``; shallower or narrower ones
    (depth 8, 14, 20; widths (8, 16, 32)) are the smaller backbones a growing method (DER, MEMO)
    takes in the survey's memory-agnostic comparison, where each method must fit a budget."""
    return _resnet(image_shape, num_classes, tuple(widths), ((depth - 2) // 6,) * 3, rngs=rngs)


def resnet18(image_shape, num_classes, *, rngs):
    """ResNet-18 with a 3x3 stem and no initial max-pool (the usual 32x32 adaptation)."""
    return _resnet(image_shape, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), rngs=rngs)


def resnet18_imagenet(image_shape, num_classes, *, rngs):
    """torchvision's ``resnet18``: ImageNet stem, BasicBlocks [2, 2, 2, 2], 512 features.
    Stages: the stem, 8 blocks (``layer1.0`` ... ``layer4.1``), global pooling."""
    return _resnet(image_shape, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), rngs=rngs,
                   stem=imagenet_stem(image_shape[-1], 64, rngs=rngs), padding=TORCH_3X3)


def resnet50_imagenet(image_shape, num_classes, *, rngs):
    """torchvision's ``resnet50`` (v1.5: the stride on the 3x3 conv): ImageNet stem, Bottlenecks
    [3, 4, 6, 3], 2,048 features. Stages: the stem, 16 blocks, global pooling."""
    return _resnet(image_shape, num_classes, (64, 128, 256, 512), (3, 4, 6, 3), rngs=rngs,
                   stem=imagenet_stem(image_shape[-1], 64, rngs=rngs), block=Bottleneck,
                   padding=TORCH_3X3)
