"""Tests of cil/data/sources.py: image folders, Fashion-MNIST IDX files, TFDS (mocked, offline).

The Fashion-MNIST tests on real data need Debian's dataset-fashion-mnist (CI installs it); the
full comparison with TFDS's own builder also needs TensorFlow and CIL_TFDS_CANONICAL=1.
"""

import atexit
import gzip
import hashlib
import importlib.util
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from cil.data import sources
from cil.errors import ConfigError, DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = tempfile.mkdtemp(prefix="cil-test-cache-")  # decoded folders are cached here, not in ~
atexit.register(shutil.rmtree, CACHE, True)


def config(name, **fields):
    return ConfigDict({"name": name, "data_dir": CACHE, "download": False, "path": None, **fields})


def load(name, **fields):
    return sources.load(config(name, **fields))


# --- Image folders ------------------------------------------------------------------------------

def write_image(path, array, suffix=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path.with_suffix(suffix))


def make_folder(root, classes=("zebra", "ant"), counts=None, size=(4, 5), rgb=False):
    """root/{train,test}/<class>/<i>.png, each image filled with 10 * class index + i."""
    counts = counts or {"train": 3, "test": 2}
    for split, count in counts.items():
        for c, name in enumerate(classes):
            for i in range(count):
                shape = (*size, 3) if rgb else size
                write_image(root / split / name / f"{i:02d}", np.full(shape, 10 * c + i))
    return root


def test_folder_grayscale_sorted_classes_and_labels(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored
    ds = load("folder", path=str(root))
    assert ds.class_names == ("ant", "zebra")  # sorted, not creation order
    assert ds.train_images.shape == (6, 4, 5, 1) and ds.test_images.shape == (4, 4, 5, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    # "zebra" was written as class index 0 (pixel 0..2), "ant" as index 1 (pixel 10..12).
    pixel = ds.train_images[:, 0, 0, 0]
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(pixel, [10, 11, 12, 0, 1, 2])
    np.testing.assert_array_equal(ds.test_images[:, 0, 0, 0], [10, 11, 0, 1])


def test_folder_rgb_jpeg_and_mixed_gray_colour(tmp_path):
    root = tmp_path / "rgb"
    for split in ("train", "test"):
        write_image(root / split / "red" / "a", np.full((6, 6, 3), (200, 0, 0)), ".jpg")
        write_image(root / split / "gray" / "a", np.full((6, 6), 90), ".png")
    ds = load("folder", path=str(root))
    assert ds.class_names == ("gray", "red") and ds.image_shape == (6, 6, 3)
    np.testing.assert_array_equal(ds.train_images[0], np.full((6, 6, 3), 90))  # gray -> RGB
    assert abs(ds.train_images[1, ..., 0].mean() - 200) < 3  # JPEG is lossy
    assert ds.train_images[1, ..., 1:].max() < 5


@pytest.mark.parametrize("problem, match", [
    ("no_path", "needs path"),
    ("no_test", r"test is missing"),
    ("empty_class", r"test/ant has no \.png/\.jpg images"),
    ("mixed_sizes", r"01\.png is 7x4 but .*00\.png is 5x4"),
    ("class_mismatch", r"only in train: \['zebra'\]; only in test: \['bee'\]"),
])
def test_folder_errors_name_the_problem(tmp_path, problem, match):
    root = make_folder(tmp_path / "data")
    if problem == "no_test":
        for f in sorted((root / "test").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (root / "test").rmdir()
    elif problem == "empty_class":
        for f in (root / "test" / "ant").iterdir():
            f.unlink()
    elif problem == "mixed_sizes":
        write_image(root / "train" / "ant" / "01", np.zeros((4, 7)))
    elif problem == "class_mismatch":
        (root / "test" / "zebra").rename(root / "test" / "bee")
    error = ConfigError if problem == "no_path" else DataError
    with pytest.raises(error, match=match) as raised:
        load("folder", path=None if problem == "no_path" else str(root))
    assert "\n" not in str(raised.value)


def test_folder_is_decoded_once_and_read_anew_when_a_file_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images")
    cache_dir = tmp_path / "cache"
    first = load("folder", path=str(root), data_dir=str(cache_dir))
    assert len(list(cache_dir.glob("cil/folder-*.npz"))) == 1
    decoded = []
    monkeypatch.setattr(sources, "_read_image", lambda *a: decoded.append(a) or None)
    again = load("folder", path=str(root), data_dir=str(cache_dir))  # from the cache: no decoding
    assert decoded == [] and again.name == first.name == "folder:images"
    np.testing.assert_array_equal(again.train_images, first.train_images)
    monkeypatch.undo()
    write_image(root / "train" / "ant" / "00", np.full((4, 5), 99))  # one image changes
    changed = load("folder", path=str(root), data_dir=str(cache_dir))
    assert changed.train_images.max() == 99 and first.train_images.max() < 99
    assert len(list(cache_dir.glob("cil/folder-*.npz"))) == 2
    # A cache kept inside the folder itself is not part of the folder's fingerprint.
    load("folder", path=str(root), data_dir=str(root))
    monkeypatch.setattr(sources, "_read_image", lambda *a: decoded.append(a) or None)
    load("folder", path=str(root), data_dir=str(root))
    assert decoded == [] and len(list(root.glob("cil/folder-*.npz"))) == 1


def test_folder_archive_reads_as_the_folder(tmp_path):
    import tarfile

    root = make_folder(tmp_path / "images", rgb=True)
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(root / split, arcname=split)
    from_folder = load("folder", path=str(root), data_dir=str(tmp_path / "a"))
    from_archive = load("folder", path=str(archive), data_dir=str(tmp_path / "b"))
    assert from_archive.class_names == from_folder.class_names
    assert from_archive.name == from_folder.name == "folder:images"  # named after the data
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(from_archive, field), getattr(from_folder, field))


def test_an_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "images")
    bad = root / "train" / "zebra" / "01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{bad} is not a readable image"):
        load("folder", path=str(root), data_dir=str(tmp_path))


def write_cifar_python(path, name, per_split=(6, 4), classes=3):
    """A small archive in the format of cifar-10-python.tar.gz / cifar-100-python.tar.gz."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    folder, train_members, test_member, meta, label_key, names_key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                    "batches.meta", b"labels", b"label_names"),
        "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels",
                     b"fine_label_names")}[name]
    expected = {}
    members = {}
    for split, members_of_split, n in (("train", train_members, per_split[0]),
                                       ("test", [test_member], per_split[1])):
        images = rng.integers(0, 256, (n * len(members_of_split), 32, 32, 3), dtype=np.uint8)
        labels = np.arange(len(images)) % classes
        expected[split] = (images, labels)
        for i, member in enumerate(members_of_split):
            rows = slice(i * n, (i + 1) * n)
            # Each row: the red plane, then green, then blue, each 32 x 32 row-major.
            data = images[rows].transpose(0, 3, 1, 2).reshape(n, 3072)
            members[member] = {b"data": data, label_key: labels[rows].tolist(), b"coarse_labels": []}
    members[meta] = {names_key: [f"class{c}".encode() for c in range(classes)]}
    with tarfile.open(path, "w:gz") as tar:
        for member, content in members.items():
            blob = pickle.dumps(content)
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return expected


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_archive(tmp_path, name):
    archive = tmp_path / f"{name}-python.tar.gz"
    expected = write_cifar_python(archive, name)
    ds = load(name, path=str(archive), data_dir=str(tmp_path))
    assert ds.class_names == ("class0", "class1", "class2") and ds.image_shape == (32, 32, 3)
    for split, (images, labels) in expected.items():
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), images)
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), labels)
    with pytest.raises(DataError, match="lacks"):
        load("cifar100" if name == "cifar10" else "cifar10", path=str(archive),
             data_dir=str(tmp_path))


# --- Fashion-MNIST ------------------------------------------------------------------------------

def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_idx_folder(root, n_train=30, n_test=20):
    """Tiny IDX files: image i of a split is filled with i, its label is i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        image_file, label_file = sources.FASHION_MNIST_FILES[split]
        write_idx(root / image_file, np.arange(n)[:, None, None] * np.ones((1, 28, 28)))
        write_idx(root / label_file, np.arange(n) % 10)
    return root


def test_fashion_mnist_idx_files_in_tfds_order(tmp_path):
    ds = load("fashion_mnist", path=str(make_idx_folder(tmp_path)))
    assert ds.image_shape == (28, 28, 1) and ds.class_names[0] == "T-shirt/top"
    for split, n in (("train", 30), ("test", 20)):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        file_index = images[:, 0, 0, 0]
        np.testing.assert_array_equal(file_index, sources.tfds_order(split, n))
        assert sorted(file_index) == list(range(n)) and list(file_index) != list(range(n))
        np.testing.assert_array_equal(labels, file_index % 10)  # labels travel with images


def test_tfds_order_is_what_tfds_shuffler_writes(tmp_path):
    """TFDS's own writer shuffle (core/shuffle.py), fed keys 0..n-1 as fashion_mnist yields them."""
    shuffle = pytest.importorskip("tensorflow_datasets.core.shuffle")
    for split, n in (("train", 60_000), ("test", 10_000)):
        shuffler = shuffle.Shuffler(tmp_path, hash_salt=split)
        for key in range(n):
            shuffler.add(key, struct.pack("<I", key))
        written = [struct.unpack("<I", data)[0] for _, data in shuffler]
        np.testing.assert_array_equal(written, sources.tfds_order(split, n))


def test_fashion_mnist_errors(tmp_path, monkeypatch):
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError, match=r"not found in .*bad; run `apt-get install -y "
                                         r"dataset-fashion-mnist`"):
        load("fashion_mnist", path=str(tmp_path / "bad"))
    # Default folder missing and no TFDS copy: both named.
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path / "none"))
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=r"none; run `apt-get install.*no TFDS copy either.*"
                                        r"not prepared in " + str(tmp_path / "tfds")):
        load("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    folder = make_idx_folder(tmp_path / "corrupt")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read .*train-labels-idx1-ubyte.gz"):
        load("fashion_mnist", path=str(folder))


DEBIAN = pathlib.Path(sources.FASHION_MNIST_DIR)
needs_debian = pytest.mark.skipif(
    not DEBIAN.is_dir(), reason=f"{DEBIAN} missing: apt-get install -y dataset-fashion-mnist")

# sha256 of images.tobytes() + labels as little-endian int32, for the arrays that TFDS 4.9.10 with
# TensorFlow 2.21 prepared from Debian's files (fashion_mnist 3.0.1, array_record and tfrecord,
# both read back in order): see test_fashion_mnist_equals_tfds_builder, which recomputes them.
TFDS_FASHION_MNIST_SHA256 = {
    "train": "1fc8802f422a8de6f04d0f4f78a3712fc03fb8474221d84707982f873bd60239",
    "test": "1c706ad5aa51c27f729eade5e233f3a7464291b1294967130c0fe6b9a7406fcd",
}
# Upstream's gzip headers: FNAME set, these mtimes (2017-08-31), no extra flags, OS Unix.
UPSTREAM_MTIME = {"train": 1504176606, "test": 1504176627}


def digest(images, labels):
    return hashlib.sha256(images.tobytes() + labels.astype("<i4").tobytes()).hexdigest()


def upstream_gzip(split, name):
    """Debian's file with upstream's gzip header: the bytes TFDS downloads, if the claim holds."""
    body = (DEBIAN / name).read_bytes()[10:]  # Debian's header: 10 bytes, no file name
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", UPSTREAM_MTIME[split]) + b"\x00\x03"
    return header + name.removesuffix(".gz").encode() + b"\0" + body


@pytest.fixture(scope="module")
def fashion_mnist():
    return load("fashion_mnist")


@needs_debian
def test_fashion_mnist_real_data(fashion_mnist):
    ds = fashion_mnist
    assert ds.train_images.shape == (60_000, 28, 28, 1)
    assert ds.test_images.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1_000] * 10)
    assert round(float(ds.train_images.mean()), 2) == 72.94
    assert ds.class_names == sources.FASHION_MNIST_CLASSES


@needs_debian
def test_fashion_mnist_equals_canonical_tfds_arrays(fashion_mnist):
    for split in ("train", "test"):
        images = getattr(fashion_mnist, f"{split}_images")
        labels = getattr(fashion_mnist, f"{split}_labels")
        assert digest(images, labels) == TFDS_FASHION_MNIST_SHA256[split]


@needs_debian
def test_debian_files_are_the_bytes_tfds_downloads():
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None:
        pytest.skip("tensorflow_datasets is not installed")
    checksums = pathlib.Path(spec.origin).parent / "url_checksums" / "fashion_mnist.txt"
    expected = {line.split("\t")[3].strip(): line.split("\t")[2]
                for line in checksums.read_text().splitlines() if line}
    assert len(expected) == 4
    for split, names in sources.FASHION_MNIST_FILES.items():
        for name in names:
            assert hashlib.sha256(upstream_gzip(split, name)).hexdigest() == expected[name]


@needs_debian
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                    or not os.environ.get("CIL_TFDS_CANONICAL"),
                    reason="prepares TFDS's fashion_mnist (15 s to minutes): needs tensorflow-cpu "
                           "and CIL_TFDS_CANONICAL=1")
def test_fashion_mnist_equals_tfds_builder(fashion_mnist, tmp_path):
    """TFDS's own fashion_mnist builder, checksums checked, prepares the same arrays.

    It takes upstream-identical files from a manual_dir (Debian's own would fail its checksums).
    """
    import tensorflow_datasets as tfds

    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    for split, names in sources.FASHION_MNIST_FILES.items():
        for name in names:
            (manual_dir / name).write_bytes(upstream_gzip(split, name))
    builder = tfds.builder("fashion_mnist", data_dir=tmp_path / "tfds")
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(
                                     manual_dir=manual_dir, try_download_gcs=False))
    ds = load("tfds:fashion_mnist", data_dir=str(tmp_path / "tfds"))
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            np.testing.assert_array_equal(getattr(ds, f"{split}_{kind}"),
                                          getattr(fashion_mnist, f"{split}_{kind}"))
        assert digest(getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")) == \
            TFDS_FASHION_MNIST_SHA256[split]


# --- TFDS, mocked -------------------------------------------------------------------------------

@pytest.fixture
def mock_tfds(monkeypatch):
    """tfds.testing.mock_data, with the dataset reported as prepared (so nothing downloads)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.data_sources import array_record

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    # TFDS 4.9.10's mock sets __getitems__ on a MagicMock without binding it, so batched reads
    # fail under the mock only; read one record at a time there.
    monkeypatch.setattr(array_record.ArrayRecordDataSource, "__getitems__",
                        lambda self, keys: [self[k] for k in keys])
    return lambda n: tfds.testing.mock_data(num_examples=n)


def mocked_records(name, split, n):
    """What tfds.data_source yields under the mock, one record at a time."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split)
    records = [source[i] for i in range(n)]
    return np.stack([r["image"] for r in records]), np.array([r["label"] for r in records])


def tfds_label_names(name):
    import tensorflow_datasets as tfds

    return tuple(tfds.builder(name).info.features["label"].names)


def test_tfds_fashion_mnist_mocked_then_cached(tmp_path, mock_tfds):
    data_dir = str(tmp_path)
    with mock_tfds(200):
        ds = load("tfds:fashion_mnist", data_dir=data_dir)
        expected = {split: mocked_records("fashion_mnist", split, 200)
                    for split in ("train", "test")}
    assert ds.train_images.shape == (200, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.class_names == sources.FASHION_MNIST_CLASSES
    for split, (images, labels) in expected.items():
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), images)
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), labels)
    assert len(list((tmp_path / "cil").glob("fashion_mnist-*.npz"))) == 1
    # Outside the mock TFDS has no data in tmp_path: only the cache can answer.
    again = load("tfds:fashion_mnist", data_dir=data_dir)
    for field in ("train_images", "train_labels", "test_images", "test_labels", "class_names"):
        np.testing.assert_array_equal(getattr(again, field), getattr(ds, field))


@pytest.mark.parametrize("num_examples", [20, 1000])
def test_tfds_catalog_name_cifar100_mocked(tmp_path, mock_tfds, num_examples):
    """Mocked labels are random: with 20 examples classes are empty, with 1000 most likely not."""
    with mock_tfds(num_examples):
        _, labels = mocked_records("cifar100", "train", num_examples)
        names = tfds_label_names("cifar100")  # '0'..'99' under the mock: no metadata shipped
        empty = 100 - len(np.unique(labels))
        if empty:
            with pytest.raises(DataError, match=r"train: class\(es\) .* have no examples"):
                load("cifar100", data_dir=str(tmp_path))
        else:
            ds = load("cifar100", data_dir=str(tmp_path))
    if num_examples == 20:
        assert empty  # 20 examples cannot cover 100 classes
    if empty:
        assert not list(tmp_path.glob("cil/cifar100*"))  # a bad dataset is not cached
    else:
        assert ds.train_images.shape == (num_examples, 32, 32, 3) and ds.num_classes == 100
        np.testing.assert_array_equal(ds.train_labels, labels)
        assert ds.class_names == names and len(names) == 100


def test_tfds_not_prepared_and_no_download(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=f"cifar10 is not prepared in {tmp_path}/cifar10/.*"
                                        "set download=True") as raised:
        load("tfds:cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(raised.value)


def test_tfds_download_without_tensorflow(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "_tensorflow_installed", lambda: False)
    with pytest.raises(DataError, match="preparing TFDS dataset mnist needs TensorFlow: "
                                        "`pip install tensorflow-cpu`"):
        load("mnist", data_dir=str(tmp_path), download=True)


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'; choose one of: digits, "
                                          "fashion_mnist, folder, or a TFDS catalog name"):
        load("cifar1000")
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ConfigError, match="TFDS cannot build 'no_such_set'"):
        load("tfds:no_such_set")


# --- No TensorFlow where it is not needed -------------------------------------------------------

def test_digits_folder_and_idx_never_import_tensorflow(tmp_path):
    """A fake `tensorflow` on sys.path lands in sys.modules if anything imports it."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    folder = make_folder(tmp_path / "images")
    idx = make_idx_folder(tmp_path / "idx")
    script = f"""
import sys
from ml_collections import ConfigDict
from cil.data import sources
import tensorflow  # the fake is importable: anything that imports it would succeed
del sys.modules["tensorflow"]
for name, path in [("digits", None), ("folder", {str(folder)!r}), ("fashion_mnist", {str(idx)!r})]:
    sources.load(ConfigDict({{"name": name, "path": path, "data_dir": {str(tmp_path)!r}}}))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
