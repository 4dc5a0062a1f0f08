#!/usr/bin/env bash
# The GPU check: the same code, unchanged, on one accelerator. Run from the repo root on a machine
# with JAX for CUDA (the device tool here); ml_collections travels as a wheel in .whl/, the
# Fashion-MNIST IDX files in .gpudata/fashion-mnist/. Output and results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
echo "== tests (harness)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_models.py tests/test_evaluation.py \
    tests/test_experiment.py "tests/test_baselines.py" 2>&1 | tail -8
echo "== default run"
( time python3 run.py --workdir="$OUT/digits" ) 2>&1 | tail -8
echo "== Split-Fashion-MNIST, finetune + joint, 5 epochs, 3 seeds"
( time python3 run.py --config=configs/fashion_mnist.py:epochs5 \
    --config.dataset.path=.gpudata/fashion-mnist --workdir="$OUT/fm5" ) 2>&1 | tail -8
echo "== throughput: Trainer against bare steps (benchmarks/train_throughput.md's columns)"
python3 benchmarks/train_throughput.py --model=mlp --shape=28,28,1 --steps=400 --loop_steps=400 2>&1 | grep '^|'
python3 benchmarks/train_throughput.py --model=cnn --shape=32,32,3 --steps=100 --loop_steps=100 2>&1 | grep '^|'
python3 benchmarks/train_throughput.py --model=resnet32 --shape=32,32,3 --steps=100 --loop_steps=100 2>&1 | grep '^|'
python3 benchmarks/train_throughput.py --model=resnet32 --shape=32,32,3 --steps=100 --loop_steps=100 \
    --compute_dtype=bfloat16 2>&1 | grep '^|'
python3 benchmarks/train_throughput.py --model=resnet18 --shape=32,32,3 --steps=50 --loop_steps=50 2>&1 | grep '^|'
echo "== CIFAR-10 (JPEG) B0-Inc2, replay, the full recipe (ResNet-32, 200 + 4 x 70 epochs)"
( time timeout 420 python3 run.py --config=configs/cifar_gpu.py:cifar10_jpeg \
    --config.strategies='("replay",)' \
    --config.dataset.path="${CIFAR_JPEG:-../shared/data/cifar10-jpeg.tar.gz}" \
    --workdir="$OUT/cifar10_replay" ) 2>&1 | tail -12
