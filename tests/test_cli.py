"""run.py from the shell: the default job works, and mistakes give one line, exit 2, no results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "CIL_HOST_DEVICES": "2"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_smoke_run_prints_progress_and_a_table(tmp_path):
    result = run_cli("--config=configs/digits.py:smoke", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("task 5/5") == 2  # finetune and joint
    assert "| finetune | 1 |" in result.stdout and "| joint | 1 |" in result.stdout
    assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--config.dataset.name=digitz"], "unknown dataset 'digitz'"),
    (["--config.strategies=('finetune','replai')"], "'replai' is not one of 'agem', 'bic', 'der', 'dkvb'"),
    (["--config.stream.class_order=(0,1,2)"], "not a permutation"),
    (["--config.stream.increment=3"], "does not fit 10 classes"),
    (["--config.trian.epochs=2"], "unknown config key 'trian'"),
    (["--config.train.epochz=2"], "unknown config key 'epochz'"),
    (["--config.model.name=mpl"], "model.name='mpl' is not allowed"),
    (["--config.train.batch_size=33"], "multiple of the 2 devices"),
    (["--config.train.schedule=step"], "train.schedule='step' is not allowed"),
    (["--config.train.first_task.epochs=0"], "train.first_task.epochs=0"),
    (["--config.seeds=()"], "seeds=() is not allowed"),
    (["--config.strategies=()"], "strategies=() is not allowed"),
    (["--config.train.learning_rate=1e15"],
     "[finetune seed 0] task 1/5: training diverged: the loss is nan after epoch 1/1 at learning "
     "rate 1e+15"),
    (["--config.train.augment.flip=auto"],
     "train.augment.flip='auto' is not allowed: set --config.train.augment.flip to one of 'on', 'off'"),
])
def test_mistakes_give_one_line_and_no_results(tmp_path, args, message):
    result = run_cli("--config=configs/digits.py:smoke", *args, f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    results = tmp_path / "results.jsonl"  # nothing, or a run's 'failed' line: no result
    assert not results.exists() or {json.loads(line)["kind"] for line in
                                     results.read_text().splitlines()} == {"failed"}


def test_the_command_runs_from_another_folder(tmp_path):
    """What the ``cil`` console script runs (cil.cli.main), from a folder outside the repository:
    the repository's config files import each other as ``configs.<name>`` all the same."""
    env = {**os.environ, "CIL_HOST_DEVICES": "2"}  # cil comes from its install (requirements.txt)
    command = [sys.executable, "-c", "from cil.cli import main; main()"]
    for config in [f"--config={ROOT / 'configs' / 'digits.py'}:smoke", "--config.seeds=(0,)"]:
        workdir = tmp_path / config[-4:]
        result = subprocess.run([*command, config, "--config.train.epochs=1",
                                 "--config.strategies=('finetune',)", f"--workdir={workdir}"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "| finetune | 1 |" in result.stdout
        assert (workdir / "results.jsonl").exists()


def test_unknown_config_argument_and_missing_file(tmp_path):
    for config, message in [("configs/digits.py:smok", "unknown config argument 'smok'"),
                            ("configs/nope.py", "No such file")]:
        result = run_cli(f"--config={config}", f"--workdir={tmp_path}")
        assert result.returncode == 2 and message in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "results"
    a_file.write_text("a file")
    result = run_cli("--config=configs/digits.py:smoke", f"--workdir={a_file}")
    assert result.returncode == 2
    assert result.stderr == (f"error: --workdir={a_file} is a file, not a folder; choose another "
                             f"--workdir\n")
