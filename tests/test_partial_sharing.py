"""Partial network sharing: a frozen trunk, untouched old branches, exact byte accounting."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cil.baselines.partial_sharing import PartialSharing, clone_branch, count_params, sharing_point
from cil import encoders, experiment, models
from cil.errors import ConfigError
from cil.strategy import strategy_config
from configs.partial_sharing_fmnist import get_config as fmnist_config
from tests.helpers import tiny_config, tiny_stream


def make_strategy(model, **settings):
    config = tiny_config(partial_sharing=settings)
    config.model = ml_collections.ConfigDict(model)
    config.train.update({"epochs": 2, "batch_size": 16, "learning_rate": 0.1})
    return PartialSharing(strategy_config("partial_sharing", config))


def setup(model, **settings):
    stream = tiny_stream(num_classes=6, increment=2, per_class=16)
    config = tiny_config()
    strategy = make_strategy(model, **settings)
    spec = experiment.stream_spec(stream, config.memory)
    return strategy, stream, strategy.init(jax.random.key(0), spec)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


MLP = {"name": "mlp", "hidden": (16, 16)}
CNN = {"name": "cnn", "channels": (4, 8)}


@pytest.mark.parametrize("merge,per_class", [("softmax", 0), ("logits", 3)])
def test_trunk_and_old_branches_are_untouched_by_later_tasks(merge, per_class):
    strategy, stream, state = setup(MLP, shared_stages=1, merge=merge,
                                    calibration_per_class=per_class)
    test = stream.test_seen(2)
    state = strategy.learn(state, stream.train_task(0), jax.random.key(1)).state
    base_after_task0 = leaves(state["base"])
    state = strategy.learn(state, stream.train_task(1), jax.random.key(2)).state
    scores_after_task1 = np.asarray(strategy.predict(state, test.images))
    calibration_after_task1 = np.asarray(state["calibration"])
    state = strategy.learn(state, stream.train_task(2), jax.random.key(3)).state

    # The base network (the trunk, stage 0, and its own tail) is bitwise what task 0 left.
    for before, after in zip(base_after_task0, leaves(state["base"])):
        np.testing.assert_array_equal(before, after)
    # Tasks 0 and 1 score their own classes (0..3) exactly as before task 2 was learned...
    scores = np.asarray(strategy.predict(state, test.images))
    np.testing.assert_array_equal(scores_after_task1[:, :4], scores[:, :4])
    np.testing.assert_array_equal(calibration_after_task1[:2], np.asarray(state["calibration"])[:2])
    # ...while task 2's new branch does score its classes, and differently from an empty slot.
    assert int(state["num_branches"]) == 2
    assert not np.array_equal(scores_after_task1[:, 4:], scores[:, 4:])
    if per_class:
        assert np.any(np.asarray(state["calibration"])[2] != 0.0)  # fitted on the kept images


def test_branch_is_a_clone_of_the_base_later_stages_with_a_fresh_head():
    base = models.build(ml_collections.ConfigDict(CNN), (4, 4, 1), 2, seed=0)
    branch = clone_branch(base, 1, 3, jax.random.key(5))
    assert len(branch.stages) == len(base.stages) - 1 and branch.head.out_features == 3
    cloned, original = branch.stages[0].conv.kernel, base.stages[1].conv.kernel
    np.testing.assert_array_equal(cloned[...], original[...])
    branch.stages[0].conv.kernel[...] = branch.stages[0].conv.kernel[...] + 1.0
    assert not np.array_equal(branch.stages[0].conv.kernel[...], base.stages[1].conv.kernel[...])


def test_memory_is_parameter_count_times_dtype_size():
    strategy, stream, state = setup(CNN, shared_stages=1)
    base = models.build(ml_collections.ConfigDict(CNN), stream.image_shape, 2, seed=0)
    branch = clone_branch(base, 1, 2, jax.random.key(0))
    for t in range(stream.num_tasks):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t)).state
        report = strategy.memory(state)
        assert report.learner_params == (count_params(base) + t * count_params(branch)) * 4
        assert report.side_state == 0 and report.exemplars == 0  # no BatchNorm, nothing kept
        stats = strategy.extras(state)
        assert stats["stored_bytes"] == report.learner_params
        assert stats["params_trained"] == (count_params(branch) if t else count_params(base))
        assert stats["one_network_per_task_bytes"] == (count_params(base) * (t + 1)) * 4
        if t:  # a branch trains fewer FLOPs than the whole network
            assert 0 < stats["train_flops_per_example_epoch"] < stats[
                "finetune_train_flops_per_example_epoch"]


def test_kept_images_are_charged_as_exemplars():
    strategy, stream, state = setup(MLP, shared_stages=2, calibration_per_class=3)
    for t in range(2):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t)).state
    report = strategy.memory(state)
    assert report.num_exemplars == 4 * 3
    assert report.exemplars == 12 * (int(np.prod(stream.image_shape)) + 4)
    base = models.build(ml_collections.ConfigDict(MLP), stream.image_shape, 2, seed=0)
    head = count_params(clone_branch(base, 2, 2, jax.random.key(0)))
    assert report.learner_params == (count_params(base) + head) * 4 + 2 * 4  # + the calibration


def test_sharing_point_by_stages_or_parameter_fraction():
    base = models.build(ml_collections.ConfigDict(MLP), (4, 4, 1), 2, seed=0)
    stages, total = list(base.stages), count_params(base)  # stages: 16*16+16, 16*16+16; head 34
    assert sharing_point(stages, total, 2, 0.0) == 2
    assert sharing_point(stages, total, None, 0.0) == 0
    assert sharing_point(stages, total, None, 0.5) == 1
    assert sharing_point(stages, total, None, 1.0) == 2
    with pytest.raises(ConfigError, match="shared_stages"):
        sharing_point(stages, total, 3, 0.5)
    with pytest.raises(ConfigError, match="merge"):
        make_strategy(MLP, merge="vote")


def test_resnet32_branches_share_its_stem_and_first_blocks():
    # Shapes only (nnx.eval_shape): a ResNet-32 is slow to build and run on this CPU.
    base = nnx.eval_shape(lambda: models.build(ml_collections.ConfigDict({"name": "resnet32"}),
                                               (8, 8, 3), 2, seed=0))
    k = 6  # stem + the five 16-channel blocks: the branch starts at the first strided block
    branch = clone_branch(base, k, 3, jax.random.key(1))
    tail = sum(count_params(s) for s in list(base.stages)[k:])
    assert count_params(branch) == tail + 64 * 3 + 3
    assert len(jax.tree.leaves(nnx.state(branch, nnx.BatchStat))) > 0  # BatchNorm statistics cloned
    (base_def, base_state), (branch_def, branch_state) = nnx.split(base), nnx.split(branch)
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), np.uint8)
    features = jax.eval_shape(lambda s, x: nnx.merge(base_def, s).features(x, stop=k),
                              base_state, images)
    assert features.shape == (2, 8, 8, 16)
    logits = jax.eval_shape(lambda s, x: nnx.merge(branch_def, s)(x), branch_state, features)
    assert logits.shape == (2, 3)


def test_fashion_mnist_config_is_valid():
    config = fmnist_config("smoke")
    experiment.validate_config(config)
    assert "partial_sharing" in config.strategies
    assert (config.stream.initial, config.stream.increment) == (2, 2)


def test_base_from_a_checkpoint_replaces_training_on_task_0(tmp_path):
    strategy, stream, state = setup(MLP, shared_stages=1)
    state = strategy.learn(state, stream.train_task(0), jax.random.key(1)).state
    meta = {"model": MLP, "image_shape": stream.image_shape, "num_classes": 2,
            "encoder_stages": None, "trained_on": {"data": "base_task", "dataset": "blobs"}}
    encoders.save_encoder(tmp_path / "base", strategy._base(state), meta)

    loaded, _, loaded_state = setup(MLP, shared_stages=1, base_checkpoint=str(tmp_path / "base"))
    learned = loaded.learn(loaded_state, stream.train_task(0), jax.random.key(7))
    assert learned.trained_examples == 0
    for saved, used in zip(leaves(state["base"]), leaves(learned.state["base"])):
        np.testing.assert_array_equal(saved, used)
    report = loaded.memory(learned.state)
    assert report.learner_params == 0
    assert report.encoder_params == strategy.memory(state).learner_params  # MLP: no statistics
    images = stream.test_seen(0).images
    np.testing.assert_array_equal(np.asarray(strategy.predict(state, images))[:, :2],
                                  np.asarray(loaded.predict(learned.state, images))[:, :2])
    # A network pretrained on other data is no base for this stream's task 0.
    meta_file = tmp_path / "base" / encoders.META_FILE
    meta_file.write_text(meta_file.read_text().replace('"base_task"', '"dataset"'))
    with pytest.raises(ConfigError, match="task 0"):
        setup(MLP, base_checkpoint=str(tmp_path / "base"))
