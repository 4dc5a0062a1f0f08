"""Frozen encoders: checkpoint round trip, clear errors, and batched, order-free feature extraction."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from cil import encoders, models
from cil.data import augment
from cil.errors import ConfigError, DataError
from cil.fields import defaults
from cil.strategy import pytree_bytes

SHAPE = (8, 8, 1)
MODEL = {"name": "cnn", "channels": (4, 8)}


def tiny_network():
    return models.build(ml_collections.ConfigDict(MODEL), SHAPE, 3, seed=0)


def meta(**changes):
    return {"model": MODEL, "image_shape": SHAPE, "num_classes": 3, "encoder_stages": None,
            "trained_on": {"data": "test"}, **changes}


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE)).astype(np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    network = tiny_network()
    directory = encoders.save_encoder(tmp_path_factory.mktemp("enc") / "cnn", network, meta())
    return network, directory


def test_round_trip_gives_the_networks_features_and_its_bytes(saved):
    network, directory = saved
    encoder = encoders.load_encoder(directory, expected_image_shape=SHAPE)
    x = images(37)
    np.testing.assert_allclose(np.asarray(encoder.features(x)), np.asarray(network.features(x)),
                               rtol=1e-5, atol=1e-6)
    assert encoder.feature_dim == 8 and encoder.image_shape == SHAPE
    record = json.loads((directory / encoders.META_FILE).read_text())
    assert record["trained_on"] == {"data": "test"} and record["feature_dim"] == 8
    from flax import nnx
    _, params, rest = nnx.split(network, nnx.Param, ...)
    assert encoder.num_bytes == pytree_bytes(params) + pytree_bytes(rest) > 0


def test_encoder_stages_cut_the_network(saved, tmp_path):
    network = saved[0]
    encoder = encoders.load_encoder(encoders.save_encoder(tmp_path, network, meta(encoder_stages=1)))
    x = images(5)
    assert encoder.feature_dim == 4 * 4 * 4  # after the first conv block: 4x4 spatial, 4 channels
    np.testing.assert_allclose(np.asarray(encoder.features(x)),
                               np.asarray(network.features(x, stop=1)).reshape(5, -1), atol=1e-6)


def test_missing_or_mismatched_checkpoints_are_one_line_errors(saved, tmp_path):
    _, directory = saved
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        encoders.load_encoder(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="takes images"):
        encoders.load_encoder(directory, expected_image_shape=(32, 32, 3))
    # Weights that do not fit the architecture the record names.
    wrong = encoders.save_encoder(tmp_path / "wrong", saved[0], meta())
    record = json.loads((wrong / encoders.META_FILE).read_text())
    record["model"]["channels"] = [4, 16]
    (wrong / encoders.META_FILE).write_text(json.dumps(record))
    with pytest.raises(DataError, match="pretrain it again"):
        encoders.load_encoder(wrong)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / encoders.META_FILE).write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        encoders.load_encoder(tmp_path / "bad")


def test_encoder_from_config(saved):
    _, directory = saved
    cfg = defaults(encoders.ENCODER_FIELDS)
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        encoders.encoder_from_config(cfg, SHAPE)
    cfg.checkpoint = str(directory)
    assert encoders.encoder_from_config(cfg, SHAPE).feature_dim == 8
    cfg.name = "identity"
    identity = encoders.encoder_from_config(cfg, SHAPE)
    x = images(3)
    np.testing.assert_allclose(np.asarray(identity.features(x)), x.reshape(3, -1) / 255.0, atol=1e-7)
    assert identity.num_bytes == 0 and identity.feature_dim == 64
    cfg.name = "resnet"
    with pytest.raises(ConfigError, match="encoder.name='resnet' is not allowed"):
        encoders.encoder_from_config(cfg, SHAPE)


def test_extract_features_views_are_batch_and_order_independent(saved):
    _, directory = saved
    encoder = encoders.load_encoder(directory)
    cfg = augment.resolve(augment.default_config(), "fashion_mnist")
    x = images(23)
    key = jax.random.key(7)
    feats = np.asarray(encoders.extract_features(encoder, x, key, 3, cfg, batch_size=8))
    assert feats.shape == (3, 23, 8) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], np.asarray(encoder.features(x)), atol=1e-6)
    again = np.asarray(encoders.extract_features(encoder, x, key, 3, cfg, batch_size=16))
    np.testing.assert_allclose(again, feats, atol=1e-6)
    perm = np.random.default_rng(0).permutation(23)
    permuted = np.asarray(encoders.extract_features(encoder, x[perm], key, 3, cfg, batch_size=8))
    np.testing.assert_allclose(permuted, feats[:, perm], atol=1e-6)
    assert not np.allclose(feats[1], feats[0])  # augmented views differ from the image
    # Fixed batch shapes: one compile per batch size (8 and 16 here), whatever the number of images.
    encoders.extract_features(encoder, images(5), key, 3, cfg, batch_size=8)
    assert encoder.batch_function(3, cfg)._cache_size() == 2


def test_features_reject_images_of_another_shape(saved):
    encoder = encoders.load_encoder(saved[1])
    with pytest.raises(ConfigError, match="takes images"):
        encoder.features(np.zeros((2, 28, 28, 1), np.uint8))
