"""PyTorch ResNet weights -> cil encoder: the features equal torchvision's, errors are one line.

Randomly initialised torchvision models (no download), BatchNorm statistics and affine parameters
randomised so eval-mode BatchNorm is really compared. ``pytest -s`` prints the differences.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cil import encoders, torch_weights  # noqa: E402
from cil.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The networks are fully convolutional up to a global mean, so small images test every layer:
# 64 -> 32 (stem conv) -> 16 (max-pool) -> 16, 8, 4, 2 (layer1-4), even sizes at every stride-2
# layer, where Flax's 'SAME' and PyTorch's paddings differ. 64 x 80 (ResNet-50) also takes
# height and width apart and reaches an odd size (80 -> ... -> 5 -> 3).
CASES = {"resnet18": (64, 64, 3), "resnet50": (64, 80, 3)}
NUM_IMAGES = 6


def torchvision_model(arch: str, seed: int = 0, num_classes: int = 1000):
    """A torchvision ``arch`` with random weights, random BatchNorm running statistics (from one
    train-mode pass over noise, so each BatchNorm's input is about standardised, then perturbed)
    and random BatchNorm scales and shifts; in eval mode.

    The last BatchNorm of each residual branch gets scales in [0.1, 0.5], as trained ResNets have
    (and torchvision's zero_init_residual starts from 0): the residual sums then stay small and
    the pooled features are like a pretrained ResNet's (mean about 0.4, up to a few units). With
    scales in [0.5, 1.5] there too, ResNet-50's features reach 143 and float32 rounding alone
    differs by 4e-4 (relative 2.5e-6, as here)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, its statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
        for norm in norms:
            norm.running_mean += 0.1 * torch.randn_like(norm.running_mean)
            norm.running_var *= torch.empty_like(norm.running_var).uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
        for block in model.modules():
            if isinstance(block, (torchvision.models.resnet.BasicBlock,
                                  torchvision.models.resnet.Bottleneck)):
                last = block.bn3 if hasattr(block, "bn3") else block.bn2
                last.weight.uniform_(0.1, 0.5)
    return model.eval()


def torchvision_features(model, images: np.ndarray) -> np.ndarray:
    """torchvision's pooled features of uint8 NHWC images, preprocessed as torchvision does."""
    x = (images.astype(np.float32) / 255.0 - np.float32(torch_weights.IMAGENET_MEAN)) \
        / np.float32(torch_weights.IMAGENET_STD)
    head, model.fc = model.fc, torch.nn.Identity()
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        model.fc = head


def random_images(shape, n=NUM_IMAGES, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


def run_command(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cil.torch_weights", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    model = torchvision_model("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("arch", list(CASES))
def test_converted_features_equal_torchvisions(arch, tmp_path, resnet18_file):
    shape = CASES[arch]
    if arch == "resnet18":  # the command line, once
        model, path = resnet18_file
        result = run_command("--arch=resnet18", f"--weights={path}", f"--out={tmp_path / 'enc'}",
                             f"--image_size={shape[0]}", "--trained_on=random init (test)")
        assert result.returncode == 0, result.stderr
        assert "wrote" in result.stdout
        directory = tmp_path / "enc"
    else:  # the Python function
        model = torchvision_model(arch)
        path = tmp_path / f"{arch}.pth"
        torch.save(model.state_dict(), path)
        directory = torch_weights.convert(arch, path, tmp_path / "enc", image_shape=shape)
    encoder = encoders.load_encoder(directory, expected_image_shape=shape, batch_size=8)
    assert encoder.meta["model"]["name"] == f"{arch}_imagenet"
    assert encoder.meta["num_classes"] == 1000 and encoder.meta["trained_on"]["arch"] == arch
    images = random_images(shape)
    ours = np.asarray(encoder.features(images))
    theirs = torchvision_features(model, images)
    assert ours.shape == theirs.shape == (NUM_IMAGES, model.fc.in_features)
    difference = float(np.max(np.abs(ours - theirs)))
    scale = float(np.max(np.abs(theirs)))
    print(f"\n{arch} on {NUM_IMAGES} images {shape[0]}x{shape[1]}: max |cil - torchvision| = "
          f"{difference:.3g} (features up to {scale:.3g}, mean {float(np.mean(theirs)):.3g}; "
          f"relative {difference / scale:.2g})")
    # float32 on both sides, features O(1) (torchvision_model), so an absolute 1e-4 is a bound
    # relative to their scale too: float32 rounding measured ~1e-6. Bugs measured on these
    # models: Flax's 'SAME' padding on the 3x3 convs shifts features by 0.7, BatchNorm epsilon
    # 1e-3 instead of 1e-5 by 0.02.
    assert 0.5 < scale < 50 and difference < 1e-4


def test_a_head_of_other_classes_converts_and_scores_as_torchs(tmp_path):
    model = torchvision_model("resnet18", seed=1, num_classes=7)
    path = tmp_path / "r18_7.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)  # a training checkpoint
    directory = torch_weights.convert("resnet18", path, tmp_path / "enc", image_shape=(32, 32, 3))
    meta = encoders.read_meta(directory)
    assert meta["num_classes"] == 7 and meta["feature_dim"] == 512
    network = torch_weights.to_network("resnet18", torch_weights.read_state_dict(path), (32, 32, 3))
    features = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    with torch.no_grad():
        expected = model.fc(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(np.asarray(network.scores(features)), expected, atol=1e-5)


def test_wrapped_and_dataparallel_state_dicts_read_as_plain_ones(tmp_path, resnet18_file):
    model, path = resnet18_file
    plain = torch_weights.read_state_dict(path)
    assert len(plain) == 102 and not any(k.endswith("num_batches_tracked") for k in plain)
    prefixed = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, prefixed)
    again = torch_weights.read_state_dict(prefixed)
    assert list(again) == list(plain)
    assert all(np.array_equal(again[k], plain[k]) for k in plain)


def one_line_error(capsys, *args) -> str:
    """Runs the command in-process; asserts exit status 2 and a single ``error:`` line."""
    assert torch_weights.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_mismatched_state_dicts_are_one_line_errors(tmp_path, resnet18_file, capsys):
    model, path = resnet18_file
    state = model.state_dict()
    out = f"--out={tmp_path / 'enc'}"

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "layer2.0.bn1.running_var"}, missing)
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={missing}", out)
    assert "lacks layer2.0.bn1.running_var" in err and str(missing) in err
    with pytest.raises(ConfigError, match="lacks layer2.0.bn1.running_var"):
        torch_weights.convert("resnet18", missing, tmp_path / "enc")

    wrong_shape = tmp_path / "shape.pth"
    torch.save({**state, "layer3.1.conv2.weight": torch.zeros(256, 256, 1, 1)}, wrong_shape)
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={wrong_shape}", out)
    assert ("layer3.1.conv2.weight has shape (256, 256, 1, 1) where resnet18 has (256, 256, 3, 3)"
            in err)

    extra = tmp_path / "extra.pth"
    torch.save({**state, "layer4.1.se.fc.weight": torch.zeros(3, 3)}, extra)
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={extra}", out)
    assert "it has layer4.1.se.fc.weight, which resnet18 does not" in err

    # ResNet-18 weights named as ResNet-50: the message says which --arch they fit.
    err = one_line_error(capsys, "--arch=resnet50", f"--weights={path}", out)
    assert "pass --arch=resnet18" in err
    assert not (tmp_path / "enc").exists()  # nothing written on an error


def test_missing_file_pickled_model_and_missing_torch(tmp_path, resnet18_file, capsys,
                                                      monkeypatch):
    model, _ = resnet18_file
    out = f"--out={tmp_path / 'enc'}"
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={tmp_path / 'none.pth'}", out)
    assert "no weights file at" in err
    whole = tmp_path / "whole.pth"
    torch.save(model, whole)
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={whole}", out)
    assert "--allow_pickle" in err
    assert len(torch_weights.read_state_dict(whole, allow_pickle=True)) == 102
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    err = one_line_error(capsys, "--arch=resnet18", f"--weights={whole}", out)
    assert "pip install torch" in err


def test_ncm_learns_on_a_converted_encoder(tmp_path, resnet18_file):
    """The converted checkpoint is an ordinary encoder.checkpoint: ncm (TILDA) runs on it."""
    import jax

    from cil import experiment
    from cil.strategy import load_strategy
    from tests.helpers import tiny_config, tiny_stream

    _, path = resnet18_file
    shape = (32, 32, 3)
    directory = torch_weights.convert("resnet18", path, tmp_path / "enc", image_shape=shape)
    stream = tiny_stream(num_classes=4, increment=2, per_class=8, shape=shape)
    config = tiny_config(ncm={"encoder": {"checkpoint": str(directory), "batch_size": 16},
                              "subspaces": 4, "train_views": 1, "test_views": 1})
    strategy = load_strategy("ncm", config)
    state = strategy.init(jax.random.key(0), experiment.stream_spec(stream, config.memory))
    for task in range(2):
        state = strategy.learn(state, stream.train_task(task), jax.random.key(task)).state
    votes = np.asarray(strategy.predict(state, stream.test_images))
    # 4 subspaces x 1 view: 4 votes per image (plus the tie-break's fraction of a vote)
    assert votes.shape == (len(stream.test_labels), 4)
    np.testing.assert_array_equal(np.floor(votes).sum(axis=1), 4)
    accuracy = np.mean(np.argmax(votes, -1) == stream.test_labels)
    assert accuracy > 0.5  # chance is 0.25; random ResNet features still separate the blobs
    assert strategy.memory(state).encoder_params == strategy.encoder.num_bytes > 40_000_000
