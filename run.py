"""Runs a benchmark config: every strategy and seed it lists, then prints the results table.

    python run.py                                               # Split-Digits, finetune + joint
    python run.py --config=configs/fashion_mnist.py:smoke --workdir=/tmp/fm

The command line is cil/cli.py (also the ``cil`` console script of ``pip install -e .``).
"""

from cil.cli import main

if __name__ == "__main__":
    main()
