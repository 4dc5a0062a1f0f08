"""Runs a benchmark config: every strategy and seed it lists, then prints the results table.

    python run.py                                               # Split-Digits, finetune + joint
    python run.py --config=configs/fashion_mnist.py:smoke --workdir=/tmp/fm
    python run.py --config=configs/digits.py --config.train.epochs=3 --config.seeds='(0,)'

Intentionally short: the work happens in cil.experiment; errors a user can fix print one line.
"""

import sys

from cil import parallel

parallel.use_host_devices()  # before JAX starts: XLA:CPU gets one device per core

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cil import experiment, tables  # noqa: E402
from cil.errors import CilError  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/digits.py", "Benchmark config file[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdir/default", "Where results, config and checkpoints go.")


def main(argv):
    del argv
    try:
        experiment.run_experiment(flags.FLAGS.config, flags.FLAGS.workdir)
        print(tables.markdown_table(tables.load(flags.FLAGS.workdir)))
    except CilError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
