"""MEMO (cil/baselines/memo.py): the default split of resnet32 is PyCIL's; frozen specialized
blocks stay bitwise unchanged; the shared stages keep training after task 0 (PyCIL's default
``train_base``) or stay frozen with ``train_shared=False``; the memory report by hand; and on the
tiny stream it keeps old tasks where finetune forgets."""

import statistics

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cil import experiment
from cil.baselines.memo import MEMO, default_shared_stages
from cil.errors import ConfigError
from cil.experiment import stream_spec
from cil.models.networks import (ConvBlock, GlobalPool, Network, ResidualBlock, Stem, mlp,
                                 resnet32)
from cil.strategy import strategy_config
from tests.helpers import tiny_config, tiny_stream

EXEMPLARS = 12
CHANNELS = 4  # the specialized block's feature width d


class BatchNormMEMO(MEMO):
    """MEMO over a tiny network with BatchNorm: a shared stem (3x3 conv without bias, BatchNorm,
    ReLU; 4 channels), then a specialized stem of the same shape and global pooling. The suite's
    ResNets compile for a minute on a CPU."""

    def backbone_network(self, spec, key):
        rngs = nnx.Rngs(key)
        return Network([Stem(spec.image_shape[-1], CHANNELS, rngs=rngs),
                        Stem(CHANNELS, CHANNELS, rngs=rngs), GlobalPool()], CHANNELS,
                       spec.num_classes, rngs=rngs)


def batch_norm_memo(**settings):
    config = tiny_config(memo=settings)
    config.train.epochs = 2
    config.memory.exemplars = EXEMPLARS
    return BatchNormMEMO(strategy_config("memo", config))


def run_three_tasks(**settings):
    """The BatchNorm MEMO through 3 tasks of 2 classes: (strategy, spec, [state after init, after
    task 0, 1, 2]), each state copied to the host."""
    stream = tiny_stream(num_classes=6, increment=2)
    strategy = batch_norm_memo(**settings)
    spec = stream_spec(stream, strategy.config.memory)
    state = strategy.init(jax.random.key(0), spec)
    states = [jax.device_get(state)]
    for t in range(3):
        state = strategy.learn(state, stream.train_task(t), jax.random.key(t + 1)).state
        states.append(jax.device_get(state))
    return strategy, spec, states


@pytest.fixture(scope="module")
def three_tasks():
    return run_three_tasks()


def slot(tree, s):
    return [np.asarray(leaf)[s] for leaf in jax.tree.leaves(tree)]


def part(state, kind, name):
    """The specialized blocks' ("backbones") or the trunk's parameters ("params") or BatchNorm
    statistics ("model_state")."""
    return state["net"][kind][name]


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_default_split_of_resnet32_is_pycils():
    # PyCIL's memo_resnet32: GeneralizedResNet_cifar = conv + BN + stage_1 + stage_2 (16 and 32
    # channels), SpecializedResNet_cifar = stage_3 (64 channels) + pooling.
    network = nnx.eval_shape(lambda: resnet32((32, 32, 3), 10, rngs=nnx.Rngs(0)))
    stages = list(network.stages)
    shared = default_shared_stages(network)
    assert shared == 11
    assert isinstance(stages[0], Stem)
    assert [s.conv2.out_features for s in stages[1:shared]] == [16] * 5 + [32] * 5
    assert [s.conv2.out_features for s in stages[shared:-1]] == [64] * 5
    assert isinstance(stages[-1], GlobalPool)
    # Through the strategy, on config.model.
    config = tiny_config()
    config.model = ml_collections.ConfigDict({"name": "resnet32"})
    strategy = MEMO(strategy_config("memo", config))
    spec = stream_spec(tiny_stream(num_classes=4, increment=2, shape=(32, 32, 3)), config.memory)
    assert strategy.shared_stages(spec) == 11
    # Other networks: all but the last parameterised stage.
    assert default_shared_stages(mlp((8, 8, 1), 4, hidden=(8, 8), rngs=nnx.Rngs(0))) == 1
    assert default_shared_stages(mlp((8, 8, 1), 4, hidden=(8,), rngs=nnx.Rngs(0))) == 0  # = DER
    rngs = nnx.Rngs(0)
    conv = Network([ConvBlock(1, 4, True, rngs=rngs), ConvBlock(4, 4, True, rngs=rngs),
                    GlobalPool()], 4, 4, rngs=rngs)
    assert default_shared_stages(conv) == 1
    assert isinstance(stages[shared], ResidualBlock) and stages[shared].project is not None


def test_too_many_shared_stages_is_an_error():
    strategy = batch_norm_memo(shared_stages=2)  # stage 2 is the pooling: nothing left to train
    spec = stream_spec(tiny_stream(num_classes=4, increment=2), strategy.config.memory)
    with pytest.raises(ConfigError, match="shared_stages"):
        strategy.shared_stages(spec)
    assert batch_norm_memo().shared_stages(spec) == 1


@pytest.mark.parametrize("kind", ["params", "model_state"])
def test_old_specialized_blocks_stay_bitwise_unchanged(three_tasks, kind):
    strategy, _, states = three_tasks
    assert leaves(part(states[0], "model_state", "backbones"))  # the test needs BatchNorm
    for t in (1, 2):
        before, after = states[t], states[t + 1]
        for s in range(t):
            for a, b in zip(slot(part(before, kind, "backbones"), s),
                            slot(part(after, kind, "backbones"), s)):
                np.testing.assert_array_equal(a, b)
        assert any(not np.array_equal(a, b) for a, b in
                   zip(slot(part(before, kind, "backbones"), t - 1),
                       slot(part(after, kind, "backbones"), t)))
    for a, b in zip(slot(part(states[0], kind, "backbones"), 2),
                    slot(part(states[2], kind, "backbones"), 2)):
        np.testing.assert_array_equal(a, b)
    assert strategy._trainer._steps._cache_size() == 1


@pytest.mark.parametrize("kind", ["params", "model_state"])
def test_shared_stages_keep_training_by_default(three_tasks, kind):
    # PyCIL's exps/memo.json: train_base = true: the generalized blocks train in every task, in
    # training mode (their running statistics move too).
    _, _, states = three_tasks
    assert leaves(part(states[0], "model_state", "trunk"))
    for t in range(3):
        assert any(not np.array_equal(a, b) for a, b in
                   zip(leaves(part(states[t], kind, "trunk")),
                       leaves(part(states[t + 1], kind, "trunk"))))


@pytest.mark.parametrize("kind", ["params", "model_state"])
def test_shared_stages_frozen_after_task_0_when_asked(kind):
    strategy, _, states = run_three_tasks(train_shared=False)
    # Task 0 trains them; tasks 1 and 2 leave them bitwise unchanged, statistics included.
    assert any(not np.array_equal(a, b) for a, b in
               zip(leaves(part(states[0], kind, "trunk")), leaves(part(states[1], kind, "trunk"))))
    for t in (1, 2):
        for a, b in zip(leaves(part(states[t], kind, "trunk")),
                        leaves(part(states[t + 1], kind, "trunk"))):
            np.testing.assert_array_equal(a, b)
        assert any(not np.array_equal(a, b) for a, b in  # while block t trained
                   zip(slot(part(states[t], kind, "backbones"), t - 1),
                       slot(part(states[t + 1], kind, "backbones"), t)))
    assert strategy._trainer._steps._cache_size() == 1


def test_memory_by_hand(three_tasks):
    strategy, spec, states = three_tasks
    # Shared stem: conv 3x3x1x4 (36) + BatchNorm scale and bias (8) = 44 float32 = 176 B of
    # parameters, BatchNorm mean and variance 8 float32 = 32 B of statistics: charged once.
    # A specialized block: conv 3x3x4x4 (144) + BatchNorm (8) = 152 float32 = 608 B, statistics
    # 32 B; d = 4 features. After task t: t + 1 blocks, 2 (t + 1) classes seen, a classifier of
    # (t + 1) 4 features x seen classes + seen biases; 12 exemplars of 4x4x1 uint8 + a label
    # (17 B). Side state: statistics + the active count (4 B) + the buffer's counters (8 B).
    expected = {
        1: dict(learner_params=176 + 608 + (1 * 4 * 2 + 2) * 4, side_state=32 + 32 + 4 + 8),
        2: dict(learner_params=176 + 2 * 608 + (2 * 4 * 4 + 4) * 4,
                side_state=32 + 64 + 4 + 8),
        3: dict(learner_params=176 + 3 * 608 + (3 * 4 * 6 + 6) * 4,
                side_state=32 + 96 + 4 + 8),
    }
    for k, want in expected.items():
        report = strategy.memory(states[k])
        assert report.learner_params == want["learner_params"], k
        assert report.side_state == want["side_state"], k
        assert report.num_exemplars == EXEMPLARS and report.exemplars == EXEMPLARS * 17
        assert report.teacher_params == 0 and report.encoder_params == 0
        assert strategy.extras(states[k]) == {"backbones": k, "feature_dim": 4 * k,
                                              "param_bytes": want["learner_params"],
                                              "shared_stages": 1}
    assert strategy.memory(states[0]).learner_params == 0  # nothing active before task 0
    # A byte budget leaves room for the network at its largest: trunk + 3 blocks + classifier,
    # statistics included.
    assert strategy.network_bytes(spec) == (176 + 3 * 608 + 78 * 4) + (32 + 96)
    assert strategy.side_bytes(spec) == 4


def test_memo_keeps_old_tasks_where_finetune_forgets(tmp_path):
    # Split-Digits, 5 tasks of 10 epochs at lr 0.2, 200 exemplars (as test_der's), with an MLP of
    # two hidden layers so that the first is shared: finetune keeps 0.00 of tasks 0-3. MEMO's
    # old-task mean measured 0.609-0.779 over seeds 0-5 (2026-12-03; this test runs seed 0:
    # 0.738; with train_shared=False 0.318-0.701); the bar is half the lowest.
    config = tiny_config()
    config.model.hidden = (32, 32)
    config.train.update({"epochs": 10, "learning_rate": 0.2})
    config.memory.exemplars = 200
    config.strategies = ("finetune", "memo")
    summaries = {s["strategy"]: s for s in experiment.run_experiment(config, str(tmp_path),
                                                                     progress=lambda _: None)}
    old = {name: statistics.fmean(s["acc_matrix"][-1][:-1]) for name, s in summaries.items()}
    assert old["finetune"] < 0.05, old
    assert old["memo"] > old["finetune"] + 0.30, old
