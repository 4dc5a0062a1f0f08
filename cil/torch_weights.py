"""Pretrained PyTorch ResNets (torchvision, timm) as cil encoder checkpoints, in one command.

    python -m cil.torch_weights --arch=resnet50 --weights=resnet50.pth --out=encoders/r50
    python -m cil.torch_weights --arch=resnet18 --weights=r18.pth --out=encoders/r18_96 \\
        --image_size=96 --trained_on="ImageNet-1k, torchvision IMAGENET1K_V1"
    python run.py --config=... --config.ncm.encoder.checkpoint=encoders/r50   # or dkvb.encoder

    directory = convert("resnet50", "resnet50.pth", "encoders/r50", image_shape=(224, 224, 3))
    encoder = cil.encoders.load_encoder(directory)
    encoder.features(images_uint8)      # (N, 2048): torchvision's pooled, flattened features

``--weights``: a file written by ``torch.save(model.state_dict(), path)`` from torchvision's
``resnet18`` / ``resnet50`` or timm's (same parameter names); a dict holding it under "state_dict"
or "model", and keys prefixed by "module." (DataParallel) are accepted too. A whole pickled model
is refused unless ``--allow_pickle`` (unpickling runs code from the file: only for files you
trust). BatchNorm's ``num_batches_tracked`` is ignored. Other layouts (timm's resnet50d deep stem,
SE blocks, ...) are refused with one line naming the first key that does not fit.

The weights go into ``cil.models``' ``resnet18_imagenet`` / ``resnet50_imagenet`` (torchvision's
architectures, PyTorch's paddings): conv kernels OIHW -> HWIO, the linear head (out, in) ->
(in, out), BatchNorm weight / bias / running_mean / running_var -> scale / bias / mean / var.
The record (cil/encoders.py) holds ``input_mean`` / ``input_std`` = ImageNet's, so cil's uint8 ->
float step is torchvision's ToTensor + Normalize; ``image_shape`` is (image_size, image_size, 3),
and cil does not resize: the stream's images must have that size already (torchvision's eval
resizes to 256 and crops 224). The features are the head's input (encoder_stages = None); the head
keeps its classes (``num_classes`` = the rows of ``fc.weight``). tests/test_torch_weights.py checks
the features against torchvision's, BatchNorm in eval mode.

torch is needed only here, imported when a file is read; without it the command says
``pip install torch`` and exits with status 2, as every error a user can fix (cil/errors.py).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from pathlib import Path

import ml_collections
import numpy as np
from flax import nnx

from cil import encoders, models
from cil.errors import CilError, ConfigError, DataError

# PyTorch name -> (cil model name, blocks per width group); torchvision's names.
ARCHS = {"resnet18": ("resnet18_imagenet", (2, 2, 2, 2)),
         "resnet50": ("resnet50_imagenet", (3, 4, 6, 3))}
# torchvision's ImageNet preprocessing (transforms.Normalize after ToTensor), on [0, 1] pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
IGNORED_SUFFIX = "num_batches_tracked"  # BatchNorm's step counter: no cil counterpart

# cil names -> PyTorch names: modules of a block (the stem's are mapped apart), and leaves.
_BLOCK_MODULES = {"project": "downsample.0", "project_bn": "downsample.1"}
_STEM_MODULES = {"conv": "conv1", "bn": "bn1"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def read_state_dict(path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch weights file as float32 NumPy arrays, by state_dict key."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"reading {path} needs torch, which is not installed: pip install "
                          f"torch (the CPU build is enough)") from None
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"no weights file at {path}; pass --weights=FILE, a file written by "
                          f"torch.save(model.state_dict(), FILE)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        if not allow_pickle and "weights_only" in str(error):
            raise ConfigError(
                f"{path} holds Python objects, not only tensors (a whole pickled model?); "
                f"re-save it with torch.save(model.state_dict(), FILE), or pass --allow_pickle "
                f"to unpickle it (this runs code from the file: only for files you trust)"
            ) from None
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DataError(f"cannot read {path} as PyTorch weights ({reason}); pass a file written "
                        f"by torch.save(model.state_dict(), FILE)") from None
    state = _unwrap(loaded, torch)
    if state is None:
        raise DataError(f"{path} holds a {type(loaded).__name__}, not a state_dict of tensors "
                        f"(nor a dict with one under 'state_dict' or 'model'); save it with "
                        f"torch.save(model.state_dict(), FILE)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in state.items()
            if not k.endswith(IGNORED_SUFFIX)}


def _unwrap(loaded, torch):
    """The state_dict inside what torch.load returned, or None if there is none."""
    for _ in range(2):  # a dict holding a model holding its state
        if isinstance(loaded, torch.nn.Module):
            loaded = loaded.state_dict()
        elif isinstance(loaded, dict) and not _all_tensors(loaded, torch):
            inner = [loaded[k] for k in ("state_dict", "model") if k in loaded]
            if not inner:
                return None
            loaded = inner[0]
    if isinstance(loaded, dict) and _all_tensors(loaded, torch):
        return {str(k): v for k, v in loaded.items()}
    return None


def _all_tensors(mapping, torch) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def model_config(arch: str) -> dict:
    """``config.model`` of the cil network for the PyTorch architecture ``arch``."""
    return {"name": ARCHS[arch][0], "input_mean": list(IMAGENET_MEAN),
            "input_std": list(IMAGENET_STD)}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"--arch={arch!r} is not a converted architecture; choose one of "
                          f"{', '.join(ARCHS)}")


def _abstract(arch: str, image_shape, num_classes: int):
    """The cil network for ``arch`` as shapes only, split: graphdef, {params, model_state}."""
    network = nnx.eval_shape(lambda: models.build(
        ml_collections.ConfigDict(model_config(arch)), image_shape, num_classes, seed=0))
    graphdef, params, model_state = nnx.split(network, nnx.Param, ...)
    return graphdef, {"params": params, "model_state": model_state}


def _leaves(tree, path=()):
    """(path, leaf) of a nested dict, depth first."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, tree


def torch_key(arch: str, path: tuple) -> str:
    """The PyTorch state_dict key of the cil weight at ``path`` (("stages", 3, "bn1", "scale"))."""
    if path[0] == "head":
        return f"fc.{_LEAVES[path[-1]]}"
    _, stage, module, leaf = path
    if stage == 0:
        return f"{_STEM_MODULES[module]}.{_LEAVES[leaf]}"
    block = stage - 1
    for group, blocks in enumerate(ARCHS[arch][1], start=1):
        if block < blocks:
            return f"layer{group}.{block}.{_BLOCK_MODULES.get(module, module)}.{_LEAVES[leaf]}"
        block -= blocks
    raise ValueError(f"stage {stage} is past {arch}'s blocks")


def _torch_order(key: str) -> tuple:
    """torchvision's state_dict order: conv1, bn1, layer1.0.conv1, .bn1, ..., downsample, fc;
    keys of other layouts after them, by name."""
    parts = key.split(".")
    leaf = _LEAF_ORDER.get(parts[-1], 9)
    try:
        if parts[0] == "fc":
            return (9, 0, 0, 0, leaf, key)
        if parts[0].startswith("layer"):
            group, block, module = int(parts[0][5:]), int(parts[1]), parts[2]
            if module == "downsample":
                return (group, block, 99, int(parts[3]), leaf, key)
            return (group, block, int(module[-1]), int(module.startswith("bn")), leaf, key)
        return (0, 0, 0, int(parts[0] == "bn1"), leaf, key)
    except (ValueError, IndexError):
        return (50, 0, 0, 0, leaf, key)


def _torch_shape(shape) -> tuple:
    """The PyTorch layout of a cil weight's shape: HWIO -> OIHW, (in, out) -> (out, in)."""
    shape = tuple(shape)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if len(shape) == 2 else shape


def _to_cil(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)  # (out, in) -> (in, out)
    return array


def expected(arch: str, num_classes: int = 1000) -> dict[str, tuple]:
    """The state_dict keys (in torchvision's order) and PyTorch shapes that ``arch`` needs."""
    return dict(_expected(arch, num_classes))


@functools.lru_cache(maxsize=8)
def _expected(arch: str, num_classes: int) -> tuple:
    _, weights = _abstract(arch, (32, 32, 3), num_classes)  # weight shapes do not depend on it
    shapes = {}
    for state in weights.values():
        for path, leaf in _leaves(nnx.to_pure_dict(state)):
            shapes[torch_key(arch, path)] = _torch_shape(leaf.shape)
    return tuple(sorted(shapes.items(), key=lambda item: _torch_order(item[0])))


def _guess_arch(keys) -> str | None:
    for arch in ARCHS:
        if set(expected(arch)) == set(keys):
            return arch
    return None


def to_network(arch: str, state_dict: dict[str, np.ndarray], image_shape,
               source: str = "the weights"):
    """The cil network for ``arch`` holding ``state_dict``'s weights; ConfigError naming the first
    key that is missing, unexpected or of another shape."""
    _check_arch(arch)
    if "fc.weight" not in state_dict or state_dict["fc.weight"].ndim != 2:
        num_classes = 1000  # only to name what else is missing or wrong
    else:
        num_classes = int(state_dict["fc.weight"].shape[0])
    need = expected(arch, num_classes)
    missing = [k for k in need if k not in state_dict]
    extra = sorted((k for k in state_dict if k not in need), key=_torch_order)
    if missing or extra:
        guess = _guess_arch(state_dict)
        if guess and guess != arch:
            hint = f"it looks like torchvision's {guess}: pass --arch={guess}"
        else:
            hint = f"it must be a state_dict of torchvision's (or timm's) {arch}"
        if missing == ["fc.weight", "fc.bias"]:
            hint = ("cil keeps the classification head: save the weights with an fc layer of any "
                    "number of classes (load them into torchvision's model with strict=False)")
        if missing:
            problem = f"it lacks {missing[0]}{_others(missing)}"
        else:
            problem = f"it has {extra[0]}{_others(extra)}, which {arch} does not"
        raise ConfigError(f"{source} do not fit {arch}: {problem}; {hint}")
    for key, shape in need.items():
        if tuple(state_dict[key].shape) != shape:
            raise ConfigError(f"{source} do not fit {arch}: {key} has shape "
                              f"{tuple(state_dict[key].shape)} where {arch} has {shape}; pass the "
                              f"--arch the weights were trained with")
    graphdef, weights = _abstract(arch, image_shape, num_classes)
    for state in weights.values():
        pure = nnx.to_pure_dict(state)
        filled = _fill(pure, lambda path: _to_cil(state_dict[torch_key(arch, path)]))
        nnx.replace_by_pure_dict(state, filled)
    return nnx.merge(graphdef, weights["params"], weights["model_state"])


def _others(keys) -> str:
    count = len(keys) - 1
    return f" (and {count} other key{'s' if count > 1 else ''})" if count else ""


def _fill(tree, value, path=()):
    if isinstance(tree, dict):
        return {k: _fill(v, value, (*path, k)) for k, v in tree.items()}
    return value(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(arch: str, weights, out, image_shape=(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3),
            allow_pickle: bool = False, trained_on: str = "") -> Path:
    """Writes the cil encoder checkpoint of the PyTorch ``arch`` weights file ``weights`` to
    ``out`` (cil.encoders.save_encoder) and returns its directory."""
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or image_shape[-1] != 3 or min(image_shape) < 1:
        raise ConfigError(f"image shape {image_shape} is not (height, width, 3) with height and "
                          f"width >= 1; the ResNets take RGB images: pass --image_size=SIZE "
                          f"(default {DEFAULT_IMAGE_SIZE})")
    _check_arch(arch)
    path = Path(weights).expanduser().resolve()
    state_dict = read_state_dict(path, allow_pickle)
    network = to_network(arch, state_dict, image_shape, source=f"the weights in {path}")
    num_classes = int(state_dict["fc.weight"].shape[0])
    meta = {"model": model_config(arch), "image_shape": list(image_shape),
            "num_classes": num_classes, "encoder_stages": None,
            "trained_on": {"data": "pytorch_weights", "arch": arch, "file": str(path),
                           "sha256": _sha256(path), "description": trained_on or "not stated"}}
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={out} is a file; name a directory for the encoder checkpoint")
    try:
        return encoders.save_encoder(out, network, meta)
    except OSError as error:
        raise ConfigError(f"cannot write the encoder to {out}: {error.strerror or error}; "
                          f"name a writable directory with --out") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cil.torch_weights",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS),
                        help="the torchvision/timm architecture the weights are for")
    parser.add_argument("--weights", required=True,
                        help="a file written by torch.save(model.state_dict(), FILE)")
    parser.add_argument("--out", required=True, help="the encoder checkpoint directory to write")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="the (square) size of the images the encoder will take")
    parser.add_argument("--trained_on", default="",
                        help="what the weights were trained on, kept in the record")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="unpickle a whole saved model (runs code from the file)")
    args = parser.parse_args(argv)
    try:
        directory = convert(args.arch, args.weights, args.out,
                            (args.image_size, args.image_size, 3), args.allow_pickle,
                            args.trained_on)
    except CilError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"wrote {directory}: {ARCHS[args.arch][0]} encoder for "
          f"{args.image_size}x{args.image_size}x3 images; use it with "
          f"--config.ncm.encoder.checkpoint={directory} (or dkvb.encoder.checkpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
