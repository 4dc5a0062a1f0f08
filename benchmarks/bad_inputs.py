"""Tries a new user's mistakes on run.py, one at a time, and reports what each gives.

    python benchmarks/bad_inputs.py > benchmarks/bad_inputs.md      # about 3 minutes on 2 cores

Each case runs ``run.py --config=configs/digits.py:smoke`` with one mistake (a bad flag, bad data,
a damaged or unusable workdir) in a fresh temporary folder, and records the exit status, the first
line of stderr (or "TRACEBACK" when Python printed one) and whether any result was written. The
wanted outcome for every case: status 2, one line naming the problem and its fix, no summary line.
The rerun cases (a damaged results line, a truncated checkpoint) are the exception: there the run
must finish (status 0), reporting on stdout what it set aside, and write its summaries.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
import numpy as np  # noqa: E402


def environment() -> dict:
    return {**os.environ, "CIL_HOST_DEVICES": "2", "CIL_COMPILATION_CACHE": ""}


def command(flags, workdir) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "--config=configs/digits.py:smoke",
            f"--workdir={workdir}", *flags]


def run(flags, workdir):
    return subprocess.run(command(flags, workdir), cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=600)


def image_folder(root: pathlib.Path, bad: str | None = None) -> pathlib.Path:
    """A 2-class folder dataset of 8x8 images; ``bad`` names a file replaced by garbage bytes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    if bad:
        (root / bad).write_bytes(b"this is not a png")
    return root


def damaged_results_line(workdir: pathlib.Path) -> list[str]:
    """A workdir whose finished smoke run has its fourth results line cut in half."""
    assert run([], workdir).returncode == 0
    lines = (workdir / "results.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"
    (workdir / "results.jsonl").write_text("".join(lines))
    return []


def truncated_checkpoint(workdir: pathlib.Path) -> list[str]:
    """A run killed after its second task, its newest checkpoint then cut to half its size."""
    flags = ["--config.strategies=('finetune',)", "--config.train.epochs=10"]
    process = subprocess.Popen(command(flags, workdir), cwd=ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if "task 2/5" in line:
            process.kill()
            break
    process.wait()
    [checkpoint] = (workdir / "checkpoints").glob("*[0-9a-f].pkl")
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    return flags


def workdir_is_a_file(workdir: pathlib.Path) -> list[str]:
    workdir.write_text("a file where the workdir should be")
    return []


def bad_image(workdir: pathlib.Path) -> list[str]:
    root = image_folder(workdir.parent / f"{workdir.name}-images", "train/a/3.png")
    return ["--config.dataset.name=folder", "--config.stream.increment=1",
            f"--config.dataset.path={root}"]


FLAG_CASES = [
    # (what the user did, extra flags)
    ("mistyped nested key", ["--config.train.epoch=3"]),
    ("mistyped top-level key", ["--config.trian.epochs=3"]),
    ("eval batch size 0", ["--config.eval_batch_size=0"]),
    ("negative exemplar count", ["--config.memory.exemplars=-5"]),
    ("negative byte budget", ["--config.memory.budget_bytes=-1"]),
    ("negative learning rate", ["--config.train.learning_rate=-0.1"]),
    ("zero epochs", ["--config.train.epochs=0"]),
    ("empty seed list", ["--config.seeds=()"]),
    ("negative seed", ["--config.seeds=(-1,)"]),
    ("repeated seed", ["--config.seeds=(0,0)"]),
    ("seed as a float", ["--config.seeds=(0.5,)"]),
    ("learning rate so large that the loss becomes NaN", ["--config.train.learning_rate=1e15"]),
    ("learning rate so large the ReLUs die (finite: one class predicted)",
     ["--config.train.learning_rate=1e6"]),
    ("momentum 1.5", ["--config.train.momentum=1.5"]),
    ("negative momentum", ["--config.train.momentum=-0.5"]),
    ("unknown optimizer", ["--config.train.optimizer=sgdd"]),
    ("batch size 0", ["--config.train.batch_size=0"]),
    ("negative batch size", ["--config.train.batch_size=-32"]),
    ("string for a number", ["--config.train.learning_rate=fast"]),
    ("milestone past the last epoch", ["--config.train.schedule=multistep",
                                       "--config.train.milestones=(5,)"]),
    ("unsorted milestones", ["--config.train.schedule=multistep", "--config.train.milestones=(3,2)"]),
    ("negative weight decay", ["--config.train.weight_decay=-1e-4"]),
    ("gamma 0", ["--config.train.gamma=0"]),
    ("warmup longer than training", ["--config.train.schedule=cosine",
                                     "--config.train.warmup_epochs=5"]),
    ("increment 0", ["--config.stream.increment=0"]),
    ("negative increment", ["--config.stream.increment=-2"]),
    ("initial task larger than the dataset", ["--config.stream.initial=12"]),
    ("class order with a repeat", ["--config.stream.class_order=(0,0,1,2,3,4,5,6,7,8)"]),
    ("class order too short", ["--config.stream.class_order=(0,1,2)"]),
    ("unknown dataset", ["--config.dataset.name=digitz"]),
    ("unknown model", ["--config.model.name=mpl"]),
    ("hidden layer of width 0", ["--config.model.hidden=(0,)"]),
    ("unknown init", ["--config.model.init=torch"]),
    ("input_mean without input_std", ["--config.model.input_mean=(0.5,)"]),
    ("input_mean of the wrong length", ["--config.model.input_mean=(0.5,0.5,0.5)",
                                        "--config.model.input_std=(0.2,0.2,0.2)"]),
    ("input_std of 0", ["--config.model.input_mean=(0.5,)", "--config.model.input_std=(0.0,)"]),
    ("input_mean=None", ["--config.model.input_mean=None"]),
    ("unknown strategy", ["--config.strategies=('finetune','replai')"]),
    ("strategies as a string", ["--config.strategies=finetune"]),
    ("empty strategy list", ["--config.strategies=()"]),
    ("strategy listed twice", ["--config.strategies=('finetune','finetune')"]),
    ("override of an absent strategy section", ["--config.replay.selection=herding"]),
    ("unknown augmentation flip", ["--config.train.augment.flip=yes"]),
    ("brightness above 1", ["--config.train.augment.brightness=1.5"]),
    ("negative crop padding", ["--config.train.augment.crop_padding=-1"]),
    ("unknown compute dtype", ["--config.train.compute_dtype=float16"]),
    ("negative steps per call", ["--config.train.steps_per_call=-1"]),
    ("batch size not a multiple of the devices", ["--config.train.batch_size=33"]),
    ("shard index past the shards", ["--shard_index=3", "--num_shards=2"]),
    ("zero shards", ["--num_shards=0"]),
    ("unknown config argument", ["--config=configs/digits.py:smok"]),
    ("missing config file", ["--config=configs/nope.py"]),
    ("folder dataset without a path", ["--config.dataset.name=folder"]),
    ("folder dataset path that does not exist", ["--config.dataset.name=folder",
                                                 "--config.dataset.path=/nonexistent/images"]),
    ("checkpoint as a string", ["--config.checkpoint=maybe"]),
    ("learning rate nan", ["--config.train.learning_rate=nan"]),
    ("learning rate inf", ["--config.train.learning_rate=inf"]),
    ("first task of zero epochs", ["--config.train.first_task.epochs=0"]),
    ("negative class order seed", ["--config.stream.class_order_seed=-1"]),
    ("unknown replay selection", ["--config.strategies=('replay',)",
                                  "--config.replay.selection=best"]),
    ("iCaRL temperature 0", ["--config.strategies=('icarl',)", "--config.icarl.temperature=0"]),
    ("unknown field of a strategy", ["--config.replay.exemplar=10"]),
    ("empty dataset name", ["--config.dataset.name="]),
    ("epochs as a float", ["--config.train.epochs=2.5"]),
]


# (what the user did or found, a function that prepares the workdir and returns the flags)
PREPARED_CASES = [
    ("image file that is not an image", bad_image),
    ("workdir is an existing file", workdir_is_a_file),
    ("results line damaged in the middle (rerun)", damaged_results_line),
    ("newest checkpoint truncated (rerun)", truncated_checkpoint),
]


def main() -> None:
    print("| mistake | flags | status | stderr's first line (a traceback's last; status 0: the "
          "warnings on stdout) | summaries written |")
    print("|---|---|---|---|---|")
    cases = [(what, lambda w, f=flags: f) for what, flags in FLAG_CASES] + PREPARED_CASES
    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, prepare) in enumerate(cases):
            workdir = pathlib.Path(tmp) / f"case{i}"
            flags = prepare(workdir)
            summaries_before = summary_count(workdir)
            result = run(flags, workdir)
            lines = result.stderr.strip().splitlines()
            warnings = [line for line in result.stdout.splitlines() if "warning:" in line]
            first = ("TRACEBACK: " + lines[-1]) if "Traceback" in result.stderr else (
                lines[0] if lines else "; ".join(warnings))
            written = summary_count(workdir) - summaries_before
            shown = " ".join(flags).replace(tmp, "$TMP")
            print(f"| {what} | `{shown}` | {result.returncode} | {first.replace(tmp, '$TMP')} | "
                  f"{written} |", flush=True)


def summary_count(workdir: pathlib.Path) -> int:
    path = workdir / "results.jsonl"
    if not workdir.is_dir() or not path.exists():
        return 0
    return path.read_text().count('"kind": "summary"')


if __name__ == "__main__":
    main()
