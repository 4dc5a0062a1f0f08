"""Whole runs on a frozen encoder's features (config.features) and held-out training images
(config.dataset.held_out): what the stream holds, what is charged, and the ids of older runs."""

import ml_collections
import numpy as np
import pytest

from cil import encoders, experiment, pretrain
from cil.data import sources
from cil.errors import ConfigError
from configs.pretrain_digits import get_config as pretrain_config
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A small CNN trained on all ten digits (8 features), saved as a frozen encoder: features
    that separate every class of the stream, so a linear head can learn each task."""
    config = pretrain_config()
    config.pretrain.data = "dataset"
    config.train.epochs = 5
    config.model.channels = (4, 8)
    directory = tmp_path_factory.mktemp("encoder")
    pretrain.run_pretrain(config, str(directory), progress=lambda _: None)
    return str(directory)


def features_config(encoder_dir, *strategies):
    config = tiny_config()
    config.strategies = strategies
    config.features.encoder = encoder_dir
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": ()})
    config.train.update({"optimizer": "adam", "learning_rate": 1e-2, "epochs": 5})
    return config


def test_the_stream_holds_the_encoders_features_of_every_image(encoder_dir):
    config = features_config(encoder_dir, "finetune")
    stream = experiment.build_stream(config)
    encoder = encoders.load_encoder(encoder_dir)
    plain = experiment.build_stream(tiny_config())
    assert stream.train_images.dtype == np.float32 and stream.image_shape == (8,)
    np.testing.assert_array_equal(stream.train_labels, plain.train_labels)
    np.testing.assert_allclose(stream.test_images, np.asarray(encoder.features(plain.test_images)),
                               rtol=0, atol=0)
    assert stream.input_encoder_bytes == encoder.num_bytes > 0
    spec = experiment.stream_spec(stream, config.memory)
    assert spec.input_dtype == "float32" and spec.image_bytes == 8 * 4


def test_runs_on_features_learn_and_report_the_encoder(encoder_dir, tmp_path):
    config = features_config(encoder_dir, "finetune", "replay")
    config.memory.exemplars = 50
    summaries = {s["strategy"]: s for s in experiment.run_experiment(
        config, str(tmp_path), progress=lambda _: None)}
    encoder_bytes = encoders.load_encoder(encoder_dir).num_bytes
    for summary in summaries.values():
        assert summary["acc_matrix"][0][0] > 0.8  # a linear head on the features learns task 0
        assert summary["memory_by_category"]["encoder_params"] == encoder_bytes
        assert summary["config"]["features"] == {"encoder": encoder_dir}
    replay = summaries["replay"]
    # 50 float32 feature vectors of 8 values and their uint8 labels; nothing rounded to uint8.
    assert replay["memory_by_category"]["exemplars"] == 50 * (8 * 4 + 1)
    old = np.mean(replay["acc_matrix"][-1][:-1])
    assert old > np.mean(summaries["finetune"]["acc_matrix"][-1][:-1]) + 0.2


def test_held_out_images_leave_the_stream_and_feed_pretraining(tmp_path):
    config = tiny_config()
    config.dataset.held_out = 300
    full = sources.load(tiny_config().dataset)
    kept, held = sources.load(config.dataset), sources.load_held_out(config.dataset)
    assert len(kept.train_labels) + len(held.train_labels) == len(full.train_labels)
    assert len(held.train_labels) == 300 and "300 training images held out" in kept.name
    rows = {image.tobytes() for image in full.train_images}
    assert {i.tobytes() for i in kept.train_images} | {i.tobytes() for i in held.train_images} == rows
    np.testing.assert_array_equal(held.test_labels, full.test_labels)
    assert len(experiment.build_stream(config).train_labels) == len(kept.train_labels)

    pre = pretrain_config()
    pre.dataset.held_out = 300
    pre.pretrain.data = "held_out"
    data, seen = pretrain.pretraining_data(pre)
    np.testing.assert_array_equal(data.train_images, held.train_images)
    assert seen["data"] == "held_out" and seen["images"] == 300 and data.num_classes == 10

    with pytest.raises(ConfigError, match="no training image"):
        config.dataset.held_out = len(full.train_labels)
        sources.load(config.dataset)
    with pytest.raises(ConfigError, match="dataset.held_out is 0"):
        sources.load_held_out(tiny_config().dataset)


def test_dkvb_keys_from_held_out_images_need_them():
    config = tiny_config()
    config.strategies = ("dkvb",)
    config.dkvb = ml_collections.ConfigDict({"encoder": {"name": "identity"},
                                             "key_init": {"source": "held_out"}})
    with pytest.raises(ConfigError, match="needs dataset.held_out"):
        experiment.validate_config(config)


def test_configs_that_leave_the_new_fields_at_their_defaults_keep_their_run_ids():
    """A run recorded before config.features and dataset.held_out existed keeps its id: both
    stay out of the hashed settings at their defaults, and change them when set."""
    config = tiny_config()
    settings = experiment.run_config("finetune", config)
    assert "features" not in settings and "held_out" not in settings["dataset"]
    config.dataset.held_out = 10
    config.features.encoder = "somewhere"
    settings = experiment.run_config("finetune", config)
    assert settings["dataset"]["held_out"] == 10 and settings["features"] == {"encoder": "somewhere"}
