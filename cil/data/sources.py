"""Named data sources: each returns a whole ``Dataset`` of uint8 NHWC images held in memory.

    from cil.data import sources
    ds = sources.load(ml_collections.ConfigDict({"name": "digits"}))
    ds.train_images.shape   # (1347, 8, 8, 1), uint8
    ds.class_names          # ('0', '1', ..., '9')

    sources.load(ConfigDict({"name": "fashion_mnist"}))        # Debian's IDX files, offline
    sources.load(ConfigDict({"name": "folder", "path": "/data/pets"}))  # {train,test}/<class>/
    sources.load(ConfigDict({"name": "folder", "path": "../shared/data/cifar10-jpeg.tar.gz"}))
    sources.load(ConfigDict({"name": "cifar100", "data_dir": "/data/tfds", "download": False}))
    sources.load(ConfigDict({"name": "cifar100", "path": "~/data/cifar-100-python.tar.gz"}))

``config`` fields: ``name``; ``data_dir`` (TFDS data_dir, also where decoded arrays are cached as
.npz; default TFDS's own and ~/.cache/cil), ``download`` (let TFDS download and prepare), ``path``
(a local folder or archive). Missing fields take those defaults.

Sources:
- ``digits``: scikit-learn's bundled 8x8 digits, no download.
- ``fashion_mnist``: the four IDX files from ``path`` or Debian's ``dataset-fashion-mnist``, in
  TFDS's order (see the note above ``load_fashion_mnist``); else a prepared TFDS copy.
- ``folder``: ``path/{train,test}/<class>/<image>.png|jpg``, or a .tar(.gz) archive of that
  layout (such as the JPEG CIFAR-10 archive), decoded with Pillow once and cached.
- ``cifar10``, ``cifar100`` with ``path``: the pickled python archives CIFAR is distributed as.
- ``tfds:<name>``, or any TFDS catalog name that is not one of the above (``cifar10``,
  ``cifar100``, ``mnist``, ...): read once through ``tfds.data_source`` and cached.

Decoded arrays are cached under a fingerprint of the files they came from (``cached``): a changed
file is read anew, never served stale.

Every source goes through ``validate`` so that an empty class or a malformed array is a one-line
``DataError``. Importing this module, ``digits``, ``fashion_mnist`` from IDX files and ``folder``
never import TensorFlow (nor TFDS); only TFDS paths that TFDS itself cannot run without it do.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import pickle
import struct
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import ml_collections
import numpy as np

from cil import npz_cache
from cil.errors import ConfigError, DataError
from cil.fields import Field, Flag, Integer, Optional, Text


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


SPLITS = ("train", "test")

# config.dataset; ``load`` checks that the name is a source it knows.
FIELDS = {
    "name": Field("digits", Text(), "digits, fashion_mnist, folder, cifar10/100, tfds:<name>"),
    "data_dir": Field(None, Optional(Text()), "TFDS data_dir / cache (default ~/.cache/cil)"),
    "download": Field(False, Flag(), "let TFDS download (never possible offline)"),
    "path": Field(None, Optional(Text()), "a local folder or archive (images, IDX, CIFAR)"),
    "held_out": Field(0, Integer(min=0), "training images set aside, never in the stream "
                      "(pretrain.data / dkvb.key_init.source 'held_out' use them)"),
}
# The held-out training images: a uniformly random draw with this fixed seed.
HELD_OUT_SEED = 0

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


# --- Fashion-MNIST from IDX files ---------------------------------------------------------------
#
# Route: parse the IDX files with NumPy and put the examples in the order TFDS writes them.
# Why not TFDS's own builder: preparing `fashion_mnist` needs TensorFlow (it reads the files with
# tf.io.gfile, encodes each image with tf.image.encode_png, serialises tf.train.Example protos:
# +1.4 GB, 3.7 s to import), and its checksums reject Debian's files as they are (same deflate
# streams as upstream, but a gzip header without upstream's file name and mtime). What the builder
# does is simple to reproduce exactly: `_generate_examples` yields the bytes after the 16/8-byte
# IDX headers in file order under the key `index`; TFDS's writer sorts a split by
# md5(split name + str(key)) (tensorflow_datasets/core/hashing.py, shuffle.py) and readers keep
# that order; PNG is lossless. So these arrays are TFDS's canonical `fashion_mnist` 3.0.1, which
# tests/test_sources.py checks link by link: Debian's files given upstream's gzip header have the
# sha256s in TFDS's url_checksums; TFDS's own Shuffler gives `tfds_order`; the arrays hash to
# those TFDS + TensorFlow prepared from these files (rerun with tensorflow-cpu installed and
# CIL_TFDS_CANONICAL=1, which runs the builder, checksums on, and compares every array).

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {  # split: (images, labels), upstream's names
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")  # TFDS's label names


def read_idx(path: pathlib.Path) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes as an array of its stated shape."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error}; reinstall or re-download the file")
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    # then each dimension as a big-endian uint32.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != np.prod(shape):
        raise DataError(f"{path}: header says shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def tfds_order(split: str, num_examples: int) -> np.ndarray:
    """The order in which TFDS writes examples keyed 0..n-1: by md5(split name + str(key))."""
    salted = hashlib.md5(split.encode())

    def hashed(key: int) -> bytes:
        md5 = salted.copy()
        md5.update(str(key).encode())
        return md5.digest()  # same order as TFDS's int(hexdigest, 16)

    return np.array(sorted(range(num_examples), key=hashed), dtype=np.int64)


def load_fashion_mnist(config) -> Dataset:
    """Fashion-MNIST from the IDX files in ``path`` (default Debian's folder), in TFDS's order.

    Without the files, falls back to a TFDS copy in ``data_dir`` (see ``load_tfds``).
    """
    folder = pathlib.Path(config.get("path") or FASHION_MNIST_DIR).expanduser()
    files = [folder / name for pair in FASHION_MNIST_FILES.values() for name in pair]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        hint = (f"Fashion-MNIST IDX files {', '.join(missing)} not found in {folder}; run "
                f"`apt-get install -y dataset-fashion-mnist` or set path to a folder holding them")
        if config.get("path"):
            raise DataError(hint)
        try:
            return load_tfds(config, "fashion_mnist")
        except DataError as error:
            raise DataError(f"{hint} (no TFDS copy either: {error})") from None
    arrays = []
    for split, (image_file, label_file) in FASHION_MNIST_FILES.items():
        images = read_idx(folder / image_file)
        labels = read_idx(folder / label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} and labels "
                            f"{labels.shape} do not match; reinstall the files")
        order = tfds_order(split, len(labels))
        arrays += [images[order][..., None], labels[order].astype(np.int32)]
    return Dataset(config.name, *arrays, FASHION_MNIST_CLASSES)


# --- Image folders ------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("P", "RGB", "RGBA", "CMYK", "YCbCr")


def _read_image(source, name=None) -> np.ndarray:
    """(H, W) for a grayscale file, (H, W, 3) for a colour one; alpha is dropped. ``source``: a
    path, or a file object named ``name`` in messages."""
    from PIL import Image, UnidentifiedImageError

    path = name or source
    try:
        with Image.open(source) as image:
            mode = image.mode
            if mode in _GRAY_MODES + _COLOR_MODES:
                return np.asarray(image.convert("L" if mode in _GRAY_MODES else "RGB"))
    except (UnidentifiedImageError, OSError) as error:  # not an image, truncated, unreadable
        raise DataError(f"{path} is not a readable image ({error}); replace or remove it") from None
    raise DataError(f"{path}: image mode {mode} is not 8-bit grayscale or colour; save it as "
                    f"8-bit PNG or JPEG")


def load_folder(config) -> Dataset:
    """Images from ``path/<split>/<class>/<image>`` (png/jpg), a folder or a .tar(.gz) archive of
    one; class names are sorted folder names. All grayscale gives C=1; any colour image makes every
    image RGB (C=3).

    Decoding is slow (60,000 CIFAR JPEGs: 19 s on two cores, README), so the arrays are cached in
    ``<data_dir or ~/.cache>/cil/`` under a fingerprint of every file's name, size and time of
    change: a changed, added or removed image makes a new cache.
    """
    if not config.get("path"):
        raise ConfigError("dataset 'folder' needs path: a folder laid out as "
                          "<path>/{train,test}/<class>/<image>.png, or a .tar.gz archive of one")
    root = pathlib.Path(config.path).expanduser()
    # Named after the folder or archive, so that runs on two different folders never pass for
    # runs on the same data (streams are compared by their dataset's name).
    name = f"{config.name}:{root.name.removesuffix('.tgz').removesuffix('.gz').removesuffix('.tar')}"
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise DataError(f"{root} is neither a folder nor a .tar/.tar.gz archive of one")
        return cached(config, "folder", root, lambda: read_folder_archive(name, root), name)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; lay images out as "
                        f"{root}/{{train,test}}/<class>/<image>.png")
    return cached(config, "folder", root, lambda: read_folder(name, root), name)


def read_folder(name: str, root: pathlib.Path) -> Dataset:
    """The images under a folder ``root/{train,test}/<class>/``, decoded."""
    files = {}  # split -> class name -> sorted image paths
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"image folder {split_dir} is missing; lay images out as "
                            f"{root}/{{train,test}}/<class>/<image>.png")
        files[split] = {
            class_dir.name: sorted(p for p in class_dir.iterdir()
                                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            for class_dir in sorted(split_dir.iterdir())
            if class_dir.is_dir() and not class_dir.name.startswith(".")}
    class_names = tuple(files["train"])
    if class_names != tuple(files["test"]):
        only_train = sorted(set(files["train"]) - set(files["test"])) or "none"
        only_test = sorted(set(files["test"]) - set(files["train"])) or "none"
        raise DataError(f"{root}: class folders differ between train and test (only in train: "
                        f"{only_train}; only in test: {only_test}); give both the same classes")
    if not class_names:
        raise DataError(f"{root}/train has no class folders; add <class>/<image>.png folders")
    for split in SPLITS:
        for class_name, paths in files[split].items():
            if not paths:
                raise DataError(f"{root / split / class_name} has no .png/.jpg images; add images or "
                                f"remove the class from both splits")

    paths = [p for split in SPLITS for name in class_names for p in files[split][name]]
    with ThreadPoolExecutor() as pool:  # Pillow decodes without the GIL
        images = list(pool.map(_read_image, paths))
    counts = {split: [len(files[split][c]) for c in class_names] for split in SPLITS}
    return stack_images(name, paths, images, class_names, counts)


def read_folder_archive(name: str, archive: pathlib.Path) -> Dataset:
    """The images of a .tar(.gz) archive laid out as ``{train,test}/<class>/<image>``, decoded
    from memory without extracting it (the archive is read once, in order)."""
    def image_member(name: str) -> bool:  # {train,test}/<class>/<image>, "./" allowed in front
        parts = pathlib.PurePosixPath(name).parts
        parts = parts[1:] if parts[:1] == (".",) else parts
        return (len(parts) == 3 and parts[0] in SPLITS
                and pathlib.PurePosixPath(parts[2]).suffix.lower() in IMAGE_SUFFIXES)

    members = {}  # (split, class) -> [(member name, bytes)]
    for member, data in read_tar(archive, image_member).items():
        split, class_name = pathlib.PurePosixPath(member).parts[-3:-1]
        members.setdefault((split, class_name), []).append((member, data))
    class_names = tuple(sorted({c for split, c in members if split == "train"}))
    for split in SPLITS:
        found = tuple(sorted({c for s, c in members if s == split}))
        if found != class_names or not found:
            raise DataError(f"{archive}: class folders of {split} are {found or 'none'}, of train "
                            f"{class_names or 'none'}; lay images out as {{train,test}}/<class>/")
    entries = [entry for split in SPLITS for c in class_names
               for entry in sorted(members[(split, c)])]
    paths = [f"{archive}:{member}" for member, _ in entries]
    with ThreadPoolExecutor() as pool:
        images = list(pool.map(lambda e: _read_image(io.BytesIO(e[1]), f"{archive}:{e[0]}"),
                               entries))
    counts = {split: [len(members[(split, c)]) for c in class_names] for split in SPLITS}
    return stack_images(name, paths, images, class_names, counts)


def stack_images(name, paths, images, class_names, counts) -> Dataset:
    """One dataset from decoded images in (split, class) order; ``counts[split]`` per class."""
    for path, image in zip(paths, images):
        if image.shape[:2] != images[0].shape[:2]:
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]} (width x height); resize "
                            f"all images to one size")
    if any(image.ndim == 3 for image in images):
        images = [np.repeat(i[..., None], 3, -1) if i.ndim == 2 else i for i in images]
    else:
        images = [i[..., None] for i in images]
    arrays, start = [], 0
    for split in SPLITS:
        end = start + sum(counts[split])
        arrays += [np.stack(images[start:end]),
                   np.repeat(np.arange(len(class_names), dtype=np.int32), counts[split])]
        start = end
    return Dataset(name, *arrays, class_names)


def read_tar(archive: pathlib.Path, wanted) -> dict[str, bytes]:
    """The bytes of every file of a .tar(.gz) archive whose name ``wanted(name)`` accepts, read in
    one pass; a damaged archive is a DataError naming it."""
    found = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {archive}: {error}; download or build the archive "
                        f"again") from None
    return found


# --- Cache of decoded arrays ------------------------------------------------------------------------

def cache_root(config) -> pathlib.Path:
    """Where decoded arrays are kept: ``<data_dir or ~/.cache>/cil``."""
    return pathlib.Path(config.get("data_dir") or "~/.cache").expanduser() / "cil"


def cached(config, label: str, source: pathlib.Path, build, name: str | None = None) -> Dataset:
    """``build()``'s dataset, decoded once and kept as ``cache_root/<label>-<key>.npz``; read back
    under ``name`` (default ``config.name``).

    ``key`` is a hash of the name, size and time of change of every file under ``source`` (the
    cache's own folder left out, should it lie inside): a changed file gives a new key, so a stale
    cache is never read. It is taken again after ``build``, which may have prepared the files
    (TFDS's download). cil/npz_cache.py writes it whole, then renames it; a damaged cache is
    reported and built again.
    """
    root = cache_root(config)

    def path() -> pathlib.Path:
        files = file_fingerprint(source, exclude=root)
        digest = hashlib.sha256(json.dumps([label, files]).encode()).hexdigest()[:16]
        return root / f"{label.replace('/', '_').replace(':', '_')}-{digest}.npz"

    found = npz_cache.read(path(), lambda arrays: Dataset(
        name or config.name, *(arrays[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")),
        tuple(str(c) for c in arrays["class_names"])))
    if found is not None:
        return found
    dataset = build()
    validate(dataset)  # never cache a dataset that cannot be used
    npz_cache.write(path(), class_names=np.array(dataset.class_names),
                    **{f"{s}_{k}": getattr(dataset, f"{s}_{k}") for s in SPLITS
                       for k in ("images", "labels")})
    return dataset


def file_fingerprint(source: pathlib.Path, exclude: pathlib.Path) -> list:
    """(relative name, size, time of change) of every file under ``source`` but those under
    ``exclude`` (``source`` a file: itself; missing: nothing)."""
    if source.is_file():
        return [(source.name, source.stat().st_size, source.stat().st_mtime_ns)]
    source, exclude = source.resolve(), exclude.resolve()
    return [(str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(source.rglob("*")) if p.is_file() and exclude not in p.parents]


# --- CIFAR as distributed (pickled batches) --------------------------------------------------------
#
# The archives users download from the CIFAR page, cifar-10-python.tar.gz and
# cifar-100-python.tar.gz (or the folder they unpack to): pickled dicts whose b"data" is
# (N, 3072) uint8, each row the red, green then blue 32x32 planes. Examples keep the archive's
# order (TFDS's cifar10/cifar100 hold the same images and labels in another order).

CIFAR_PYTHON = {  # name: (train members, test member, meta member, label key, label names key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                b"labels", b"label_names"),
    "cifar100": (["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}


def load_cifar_python(config) -> Dataset:
    """CIFAR-10 or CIFAR-100 from ``path``: the python archive (.tar.gz) or its unpacked folder."""
    root = pathlib.Path(config.path).expanduser()
    if not root.exists():
        raise DataError(f"{config.name}: {root} does not exist; set dataset.path to "
                        f"cifar-{config.name[5:]}-python.tar.gz or the folder it unpacks to")
    return cached(config, config.name, root, lambda: read_cifar_python(config.name, root))


def read_cifar_python(name: str, root: pathlib.Path) -> Dataset:
    train_members, test_member, meta_member, label_key, names_key = CIFAR_PYTHON[name]
    wanted = [*train_members, test_member, meta_member]
    found = {}
    if root.is_file():
        found = {pathlib.PurePosixPath(member).name: data for member, data in read_tar(
            root, lambda member: pathlib.PurePosixPath(member).name in wanted).items()}
    else:
        for path in root.rglob("*"):
            if path.is_file() and path.name in wanted:
                found[path.name] = path.read_bytes()
    missing = [m for m in wanted if m not in found]
    if missing:
        raise DataError(f"{root} lacks {', '.join(missing)}: not the {name} python archive "
                        f"(cifar-{name[5:]}-python.tar.gz)")

    def unpickle(member):
        try:
            return pickle.loads(found[member], encoding="bytes")
        except Exception as error:  # a damaged pickle raises any of several types
            raise DataError(f"{root}: {member} is damaged ({type(error).__name__}: {error})") from None

    arrays = []
    for members in (train_members, [test_member]):
        batches = [unpickle(m) for m in members]
        try:
            data = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
            labels = np.concatenate([np.asarray(b[label_key], np.int32) for b in batches])
        except (KeyError, ValueError) as error:
            raise DataError(f"{root}: batches {members} lack {error} or are malformed") from None
        arrays += [data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels]
    names = tuple(n.decode() for n in unpickle(meta_member)[names_key])
    return Dataset(name, *arrays, names)


# --- TFDS ---------------------------------------------------------------------------------------
#
# Preparing a dataset (download=True) and reading one prepared as tfrecord need TensorFlow; a
# dataset prepared as array_record (what download=True writes here) is read with
# `tfds.data_source`, which does not. Each split is read once, in batches (about 80 us a record,
# all of it decoding), and the arrays are cached (``cached``) under a fingerprint of the prepared
# files in the TFDS data_dir, so that later loads skip TFDS and a re-prepared dataset is read anew.

TFDS_PREFIX = "tfds:"
_READ_BATCH = 1024
_TENSORFLOW_HINT = "`pip install tensorflow-cpu`"


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0]


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"TFDS datasets need tensorflow-datasets ({error}); "
                        f"`pip install tensorflow-datasets`") from None
    return tfds


def _in_tfds_catalog(name: str) -> bool:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return False
    # with_community_datasets=False: the community index lives on GCS, unreachable offline.
    return name.split(":")[0].split("/")[0] in tfds.list_builders(with_community_datasets=False)


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None  # finds it without importing it


def _import_tensorflow_without_gpus(why: str) -> None:
    """Imports TensorFlow for TFDS with no GPU, which it would otherwise fill before JAX runs."""
    if not _tensorflow_installed():
        raise DataError(f"{why} needs TensorFlow: {_TENSORFLOW_HINT}")
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices
        pass


def _read_split(tfds, builder, split: str, image_key: str, label_key: str):
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError:  # prepared as tfrecord: only tf.data reads it
        _import_tensorflow_without_gpus(f"reading {builder.name} as tfrecord in {builder.data_dir}")
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        return arrays[image_key], arrays[label_key]
    images = np.empty((len(source), *builder.info.features[image_key].shape), np.uint8)
    labels = np.empty(len(source), np.int64)
    for start in range(0, len(source), _READ_BATCH):
        keys = list(range(start, min(start + _READ_BATCH, len(source))))
        for i, record in zip(keys, source.__getitems__(keys)):
            images[i], labels[i] = record[image_key], record[label_key]
    return images, labels


def tfds_data_dir(config) -> pathlib.Path:
    """Where TFDS keeps prepared datasets: ``data_dir``, else TFDS_DATA_DIR, else its default."""
    return pathlib.Path(config.get("data_dir") or os.environ.get("TFDS_DATA_DIR")
                        or "~/tensorflow_datasets").expanduser()


def load_tfds(config, name: str | None = None) -> Dataset:
    """A TFDS image-classification dataset (``tfds:<name>`` or a catalog name), both splits,
    cached under a fingerprint of its prepared files (read without importing TFDS)."""
    name = name or config.name.removeprefix(TFDS_PREFIX)
    prepared = tfds_data_dir(config) / name.split(":")[0].split("/")[0]
    return cached(config, name, prepared, lambda: read_tfds(config, name))


def read_tfds(config, name: str) -> Dataset:
    """Both splits of TFDS dataset ``name``, prepared first if ``download`` allows it."""
    data_dir = config.get("data_dir")
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as error:  # unknown name, version or config
        raise ConfigError(f"TFDS cannot build '{name}': {_first_line(error)}") from None
    if not builder.is_prepared():
        if not config.get("download", False):
            raise DataError(f"TFDS dataset {name} is not prepared in {builder.data_dir}; set "
                            f"download=True (needs network and {_TENSORFLOW_HINT}) or set "
                            f"data_dir to a folder holding a prepared copy")
        # Checked first: without it TFDS would download everything, then fail to encode images.
        _import_tensorflow_without_gpus(f"preparing TFDS dataset {name}")
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as error:  # offline, disk full, ...: one line for run.py
            raise DataError(f"TFDS could not download and prepare {name} in {builder.data_dir}: "
                            f"{type(error).__name__}: {_first_line(error)}") from error

    if not builder.info.supervised_keys:
        raise ConfigError(f"TFDS dataset {name} has no (image, label) supervised keys; "
                          f"choose an image-classification dataset")
    image_key, label_key = builder.info.supervised_keys
    features = builder.info.features
    image = features[image_key]
    if not isinstance(image, tfds.features.Image) or None in image.shape:
        raise ConfigError(f"TFDS dataset {name}: '{image_key}' is not an image of fixed size "
                          f"({image!r}); choose another dataset")
    splits = list(builder.info.splits)  # empty under tfds.testing.mock_data
    if splits and not set(SPLITS) <= set(splits):
        raise DataError(f"TFDS dataset {name} has splits {splits}, not train and test")
    arrays = []
    for split in SPLITS:
        images, labels = _read_split(tfds, builder, split, image_key, label_key)
        arrays += [np.asarray(images, np.uint8), np.asarray(labels, np.int32)]
    return Dataset(config.name, *arrays, tuple(features[label_key].names))


# --- Dispatch -----------------------------------------------------------------------------------

_LOADERS = {
    "digits": lambda config: load_digits(),
    "fashion_mnist": load_fashion_mnist,
    "folder": load_folder,
}


def load(config: ml_collections.ConfigDict) -> Dataset:
    """Loads the source named by ``config.name`` and checks it (see ``validate``)."""
    loader = _LOADERS.get(config.name)
    if config.name in CIFAR_PYTHON and config.get("path"):
        loader = load_cifar_python
    if loader is None and (config.name.startswith(TFDS_PREFIX) or _in_tfds_catalog(config.name)):
        loader = load_tfds
    if loader is None:
        raise ConfigError(
            f"unknown dataset '{config.name}'; choose one of: {', '.join(sorted(_LOADERS))}, "
            f"or a TFDS catalog name (tfds:<name>, e.g. cifar100)")
    dataset = loader(config)
    validate(dataset)
    return split_held_out(dataset, config.get("held_out") or 0)[0]


def load_held_out(config: ml_collections.ConfigDict) -> Dataset:
    """The ``config.held_out`` training images that ``load`` leaves out (and the test split)."""
    if not config.get("held_out"):
        raise ConfigError(f"dataset.held_out is 0: no training images of {config.name} are held "
                          f"out; set dataset.held_out to how many the stream should give up")
    full = ml_collections.ConfigDict({**config.to_dict(), "held_out": 0})
    return split_held_out(load(full), config.held_out)[1]


def split_held_out(dataset: Dataset, count: int) -> tuple[Dataset, Dataset]:
    """(``dataset`` without ``count`` random training images, a dataset of those images).

    The draw is a permutation with ``HELD_OUT_SEED``, so every run holds out the same images; the
    stream's name says how many it lacks, so its runs are never compared with the full dataset's.
    """
    if not count:
        return dataset, dataset
    total = len(dataset.train_labels)
    if count >= total:
        raise ConfigError(f"dataset.held_out={count:,} leaves no training image of {dataset.name} "
                          f"({total:,}) for the stream")
    order = np.random.default_rng(HELD_OUT_SEED).permutation(total)
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    part = lambda rows, name: dataclasses.replace(  # noqa: E731
        dataset, name=name, train_images=dataset.train_images[rows],
        train_labels=dataset.train_labels[rows])
    return (part(kept, f"{dataset.name} ({count:,} training images held out)"),
            part(held, f"{dataset.name} (its {count:,} held-out training images)"))


def validate(dataset: Dataset) -> None:
    """Raises DataError naming the problem if the dataset cannot feed a stream."""
    for split in SPLITS:
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
