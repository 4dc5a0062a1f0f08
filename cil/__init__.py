"""cil: class-incremental learning benchmarks in JAX.

    python run.py                                   # Split-Digits, finetune and joint
    python run.py --config=configs/fashion_mnist.py:smoke --workdir=/tmp/fm
    python -m cil.tables /tmp/fm                    # results table from a workdir

The flow runs one way (DESIGN.md): ``cil.data`` -> ``cil.baselines`` strategy ->
``cil.evaluation`` -> ``cil.results`` -> ``cil.tables``.
"""
