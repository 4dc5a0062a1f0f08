"""Networks: shapes, staged features, and one real training step for each (ResNets included)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cil import models, parallel
from cil.errors import ConfigError
from cil.training import Trainer

CASES = [("mlp", (8, 8, 1)), ("cnn", (28, 28, 1)), ("small_cnn", (28, 28, 1)),
         ("resnet32", (32, 32, 3)), ("resnet18", (32, 32, 3))]


@pytest.mark.parametrize("name, shape", CASES)
def test_shapes_and_staged_features(name, shape):
    net = models.build(ml_collections.ConfigDict({"name": name}), shape, 7, seed=0)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, *shape)), jnp.uint8)
    assert net(images).shape == (2, 7)
    k = len(net.stages) // 2
    split = net.features(net.features(images, stop=k), start=k)
    np.testing.assert_allclose(split, net.features(images), rtol=1e-5, atol=1e-5)


def test_resnet32_has_31_conv_layers_and_a_head():
    net = models.build(ml_collections.ConfigDict({"name": "resnet32"}), (32, 32, 3), 100, seed=0)
    convs = [m for _, m in nnx.iter_graph(net) if isinstance(m, nnx.Conv) and m.kernel_size == (3, 3)]
    assert len(convs) == 31  # stem + 3 stages x 5 blocks x 2: with the head, 32 weighted layers


def test_small_cnn_is_the_peer_protocols_network():
    net = models.build(ml_collections.ConfigDict({"name": "small_cnn"}), (28, 28, 1), 10, seed=0)
    layers = [(m.kernel.shape, m.bias.shape) for _, m in nnx.iter_graph(net)
              if isinstance(m, (nnx.Conv, nnx.Linear))]
    assert sorted(layers) == sorted([((3, 3, 1, 32), (32,)), ((3, 3, 32, 64), (64,)),
                                     ((3136, 128), (128,)), ((128, 10), (10,))])
    # PyTorch counts 320 + 18,496 + 401,536 + 1,290 parameters for the same network.
    assert sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param))) == 421_642
    images = jnp.zeros((2, 28, 28, 1), jnp.uint8)
    assert net.features(images, stop=2).shape == (2, 7, 7, 64)  # two 2x2 pools: 28 -> 7


@pytest.mark.parametrize("name, shape", CASES)
def test_one_training_step_lowers_the_loss_on_its_batch(name, shape):
    net = models.build(ml_collections.ConfigDict({"name": name}), shape, 4, seed=0)
    graphdef, params, model_state = nnx.split(net, nnx.Param, ...)
    train = ml_collections.ConfigDict({"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.0,
                                       "weight_decay": 0.0, "batch_size": 8})
    trainer = Trainer(graphdef, train, parallel.data_mesh(), capacity=8)
    rng = np.random.default_rng(0)
    data = trainer.put(rng.integers(0, 256, (8, *shape)).astype(np.uint8),
                       np.arange(8, dtype=np.int32) % 4)
    state = trainer.init(params, model_state)
    losses = []
    for _ in range(3):
        state, loss = trainer.epoch(state, data, jax.random.key(0), num_seen=4)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_unknown_model_or_option_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name='mpl' is not allowed"):
        models.build(ml_collections.ConfigDict({"name": "mpl"}), (8, 8, 1), 2, seed=0)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) model.hiden; model has"):
        models.build(ml_collections.ConfigDict({"name": "mlp", "hiden": (3,)}), (8, 8, 1), 2, seed=0)


def test_cifar_resnet_is_resnet32_and_its_smaller_variants():
    def params(config):
        network = models.build(ml_collections.ConfigDict(config), (32, 32, 3), 10, seed=0)
        return network, sum(x.size for x in jax.tree.leaves(nnx.state(network, nnx.Param)))

    assert params({"name": "cifar_resnet"})[1] == params({"name": "resnet32"})[1] == 466_906
    network, count = params({"name": "cifar_resnet", "depth": 8, "widths": (8, 16, 32)})
    # ResNet-8, widths 8/16/32, by hand: stem 3x3x3x8 + BatchNorm 16 = 232; block 8->8: two 3x3
    # convs 576 each + two BatchNorms 16 = 1,184; block 8->16 (stride 2): 1,152 + 2,304 + 1x1
    # projection 128 + three BatchNorms 32 = 3,680; block 16->32: 4,608 + 9,216 + 512 + 3 x 64 =
    # 14,528; head 32 x 10 + 10 = 330.
    assert count == 232 + 1_184 + 3_680 + 14_528 + 330
    assert len(network.stages) == 1 + 3 + 1  # stem, one block a width, pooling
    assert len(params({"name": "cifar_resnet", "depth": 20})[0].stages) == 1 + 9 + 1
    for bad in ({"depth": 9}, {"widths": (8, 16)}):
        with pytest.raises(ConfigError, match="cifar_resnet|depth|widths"):
            models.check(ml_collections.ConfigDict({"name": "cifar_resnet", **bad}))
