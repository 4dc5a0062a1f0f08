"""The command line: runs a benchmark config (every strategy and seed), then prints the table.

    python run.py                                               # Split-Digits, finetune + joint
    cil --config=configs/fashion_mnist.py:smoke --workdir=/tmp/fm     # the same, installed
    python run.py --config=configs/digits.py --config.train.epochs=3 --config.seeds='(0,)'
    python run.py --config=configs/pretrain_fmnist.py --workdir=workdir/encoders/fmnist_b4_cnn
    python run.py --config=configs/sweep_digits.py --workdir=/tmp/s/0 --shard_index=0 --num_shards=2

``run.py`` and the ``cil`` console script (``pip install -e .``, pyproject.toml) both call
``main``. Config files are files, loaded by path; the ones in the repository's ``configs/`` import
each other as ``configs.<name>``, so the folder holding ``configs/`` goes on the import path (the
repository root, from wherever the command runs).

Intentionally short: the work happens in cil.sweep and cil.experiment; errors a user can fix print
one line.
"""


import logging
import os
import sys
from pathlib import Path

from cil import parallel

parallel.use_host_devices()  # before JAX starts: XLA:CPU gets one device per usable core
parallel.use_compilation_cache()  # a rerun of a config loads its programs instead of compiling

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cil import launch, pretrain, sweep, tables  # noqa: E402
from cil.errors import CilError, ConfigError  # noqa: E402

DEFAULT_CONFIG = "configs/digits.py"
# No default here: absl would load it at import, before ``main`` can make configs/ importable.
config_flags.DEFINE_config_file("config", None, f"Benchmark config file[:arg] (default: "
                                f"{DEFAULT_CONFIG}).", lock_config=True)
flags.DEFINE_string("workdir", "workdir/default", "Where results, config and checkpoints go.")
flags.DEFINE_integer("shard_index", 0, "Run only this shard of the config's grid (cil/sweep.py).")
flags.DEFINE_integer("num_shards", 1, "Split the grid into this many shards, one per machine or job.")
flags.DEFINE_enum("launcher", None, launch.LAUNCHERS,
                  "Run the grid as config.launch.shards jobs (cil/launch.py): a SLURM job array "
                  "(returns once submitted, unless --wait) or local processes (waits).")
flags.DEFINE_boolean("wait", False, "With --launcher=slurm: wait, then print the merged table.")
flags.FLAGS.set_default("verbosity", -1)  # warnings and up; progress lines go to stdout
# JAX reports at INFO each accelerator plugin it did not find; that is noise on a CPU machine.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def fail(error) -> None:
    """One line naming the problem and its fix, exit status 2, nothing written."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


def one_line(error) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(text).replace("\\'", "'").replace("\\n", " ").split())
    return text[1:-1] if text[:2] == "''" and text.endswith("'") else text


def parse_flags(argv):
    # Config files load while flags parse: a bad ':arg' or a mistyped --config.x must fail here
    # with one line, not a traceback from inside absl.
    try:
        remaining = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # the config file loads lazily: load it now
        return remaining
    except OSError as e:
        fail(f"cannot load the config: {str(e).splitlines()[-1].strip()}; "
             f"pass --config=configs/<benchmark>.py[:arg]")
    except (CilError, flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        error = e.__cause__ if isinstance(e.__cause__, (CilError, KeyError)) else e
        text = one_line(error)
        if "Did you mean" in text and "command line flag" not in text:
            text = f"unknown config key {text} Overrides must name a field the config file defines."
        fail(text)


def run(argv):
    del argv
    # Warnings and up: absl's app.run sets INFO, and Orbax logs every checkpoint step at INFO.
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        if parallel.initialize_distributed() and not parallel.first_process():
            # The first process prints (all compute); gloo's own lines go to fd 1 too.
            sys.stdout.flush()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if "pretrain" in flags.FLAGS.config:  # a pretraining config: train and save an encoder
            pretrain.run_pretrain(flags.FLAGS.config, flags.FLAGS.workdir)
            return
        if flags.FLAGS.launcher:
            submit_grid(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.launcher)
            return
        sweep.run_grid(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.shard_index,
                       flags.FLAGS.num_shards)
        print(tables.markdown_table(tables.load(flags.FLAGS.workdir)))
    except CilError as e:
        fail(e)


def submit_grid(config, workdir: str, launcher: str) -> None:
    """The grid as jobs; local ones are this process's children, so it always waits for them."""
    if flags.FLAGS.num_shards != 1 or flags.FLAGS.shard_index != 0:
        raise ConfigError("--launcher splits the grid into config.launch.shards jobs itself; "
                          "drop --shard_index/--num_shards (or drop --launcher)")
    jobs = launch.submit(config, workdir, launcher)
    if launcher == "local" or flags.FLAGS.wait:
        print(launch.wait(workdir, jobs))
    else:
        print(f"python -m cil.launch {workdir}   waits for them, then prints the merged table")


def default_config() -> str:
    """configs/digits.py of the working directory, else of the repository cil runs from."""
    if Path(DEFAULT_CONFIG).exists():
        return DEFAULT_CONFIG
    return str(Path(__file__).resolve().parents[1] / DEFAULT_CONFIG)


def configs_importable(argv) -> None:
    """Puts the folder that holds the config file's ``configs/`` package on the import path."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    given += [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]
    path = Path(given[-1].split(":")[0])
    if path.parent.name == "configs":
        sys.path.insert(0, str(path.resolve().parent.parent))


def main(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv.insert(1, f"--config={default_config()}")
    configs_importable(argv)
    app.run(run, argv=argv, flags_parser=parse_flags)
