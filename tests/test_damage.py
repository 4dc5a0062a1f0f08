"""Damaged workdirs never stop work; diverging runs and unusable workdirs stop with one line."""

import errno
import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest

from cil import experiment, results
from cil.errors import DivergenceError, WorkdirError
from cil.results import DAMAGED_FILE, ResultsWriter, read_records, read_summaries
from tests.helpers import tiny_config
from tests.test_experiment import Interrupt, interrupt_at, quiet
from tests.test_sources import load, make_folder


def finetune_config():
    config = tiny_config()
    config.strategies = ("finetune",)
    return config


def test_a_damaged_results_line_is_reported_set_aside_and_skipped(tmp_path, capsys):
    writer = ResultsWriter(tmp_path)
    for record in ({"kind": "task", "run_id": "a", "task": 0}, {"kind": "summary", "run_id": "a"},
                   {"kind": "summary", "run_id": "b"}):
        writer.append(record)
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    cut = lines[1][:12] + "\n"
    lines[1] = cut  # damaged in the middle of the file
    lines.insert(0, "[1, 2]\n")  # JSON, but not a record
    (tmp_path / "results.jsonl").write_text("".join(lines))

    # Readers name each damaged line and read the others; they change nothing.
    assert [r["run_id"] for r in read_summaries(tmp_path)] == ["b"]
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.jsonl'} line 1 is damaged (not a results record" in err
    assert "line 3 is damaged (not JSON" in err
    # The writer moves them aside, with their text and line numbers, and reports each.
    reports = []
    writer = ResultsWriter(tmp_path, report=reports.append)
    assert len(reports) == 2 and "line 3 is damaged" in reports[1] and DAMAGED_FILE in reports[1]
    aside = [json.loads(line) for line in (tmp_path / DAMAGED_FILE).read_text().splitlines()]
    assert [(a["line"], a["text"]) for a in aside] == [(1, "[1, 2]\n"), (3, cut)]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert not writer.is_complete("a") and writer.is_complete("b")
    ResultsWriter(tmp_path, report=reports.append)
    assert len(reports) == 2  # nothing left to report


def test_a_run_finishes_in_a_workdir_with_a_damaged_line(tmp_path):
    config = finetune_config()
    [first] = experiment.run_experiment(config, str(tmp_path), progress=quiet)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ["{garbage\n"] + lines[2:]))
    messages = []
    assert experiment.run_experiment(config, str(tmp_path), progress=messages.append) == []
    assert any("line 3 is damaged" in m for m in messages)
    assert any("already in" in m for m in messages)  # the finished run is still found
    assert [s["run_id"] for s in read_summaries(tmp_path)] == [first["run_id"]]


def damage(step, change) -> None:
    """Rewrites every file of a checkpoint step with ``change(its bytes)``."""
    for path in step.rglob("*"):
        if path.is_file():
            path.write_bytes(change(path.read_bytes()))


def interrupted_run(workdir, at="task 4/5"):
    """A finetune run stopped after task 3 of 5: two checkpoints on disk (after tasks 2 and 3)."""
    with pytest.raises(Interrupt):
        experiment.run_experiment(finetune_config(), str(workdir), progress=interrupt_at(at))
    [run] = (workdir / "checkpoints").iterdir()
    return run / "3", run / "2"  # Orbax steps: the next task to learn


def test_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path):
    [reference] = experiment.run_experiment(finetune_config(), str(tmp_path / "straight"),
                                            progress=quiet)
    workdir = tmp_path / "damaged"
    latest, previous = interrupted_run(workdir)
    assert previous.exists()
    damage(latest, lambda data: data[: len(data) // 2])  # every file cut short
    messages = []
    [resumed] = experiment.run_experiment(finetune_config(), str(workdir),
                                          progress=messages.append)
    assert any(f"checkpoint {latest} is damaged" in m for m in messages)
    assert any("resuming at task 2" in m for m in messages)  # from the checkpoint after task 2
    assert resumed["acc_matrix"] == reference["acc_matrix"]
    aside = list(latest.parent.parent.glob(f"{latest.parent.name}.3.damaged-*"))
    assert len(aside) == 1  # kept, not deleted
    assert not latest.parent.exists()  # the run finished: its checkpoints are gone


def test_with_every_checkpoint_damaged_the_run_starts_again(tmp_path):
    [reference] = experiment.run_experiment(finetune_config(), str(tmp_path / "straight"),
                                            progress=quiet)
    workdir = tmp_path / "damaged"
    for path in interrupted_run(workdir):
        damage(path, lambda data: b"\x00 not a checkpoint")
    messages = []
    [rerun] = experiment.run_experiment(finetune_config(), str(workdir), progress=messages.append)
    assert sum("is damaged" in m for m in messages) == 2
    assert not any("resuming" in m for m in messages)
    assert rerun["acc_matrix"] == reference["acc_matrix"]


def test_a_diverging_run_stops_with_one_line_and_no_summary(tmp_path):
    config = finetune_config()
    config.train.learning_rate = 1e15  # 1e3 only kills the ReLUs (finite, one class predicted)
    with pytest.raises(DivergenceError) as raised:
        experiment.run_experiment(config, str(tmp_path), progress=quiet)
    message = str(raised.value)
    assert message.startswith("[finetune seed 0] task 1/5: training diverged: the loss is ")
    assert "after epoch 1/1 at learning rate 1e+15; lower the learning rate" in message
    assert "\n" not in message
    assert read_summaries(tmp_path) == []


def test_non_finite_state_stops_a_strategy_that_checks_no_loss():
    # The backstop after every task, for strategies without a loss to check (NCM, DKVB's keys).
    state = {"means": jnp.zeros((3, 2)).at[1, 1].set(jnp.nan), "images": np.zeros(4, np.uint8)}
    with pytest.raises(DivergenceError, match=r"^task 1: the state's \['means'\] holds NaN"):
        experiment.check_finite(state, "task 1")
    experiment.check_finite({**state, "means": jnp.zeros((3, 2))}, "task 1")


def test_unusable_workdirs_give_one_line(tmp_path):
    a_file = tmp_path / "results_here"
    a_file.write_text("not a folder")
    with pytest.raises(WorkdirError, match=f"--workdir={a_file} is a file, not a folder"):
        experiment.run_experiment(finetune_config(), str(a_file), progress=quiet)
    with pytest.raises(WorkdirError, match=f"cannot write {a_file / 'sub'}: Not a directory"):
        experiment.run_experiment(finetune_config(), str(a_file / "sub"), progress=quiet)


def test_an_unwritable_workdir_gives_one_line():
    # sysfs refuses new folders even to root (chmod would not stop root, who runs CI).
    try:
        os.mkdir("/sys/cil_probe")
    except OSError:
        pass
    else:
        os.rmdir("/sys/cil_probe")
        pytest.skip("/sys is writable here")
    with pytest.raises(WorkdirError, match="cannot write /sys/cil_workdir: .*; make it writable "
                                           "or choose another --workdir"):
        experiment.run_experiment(finetune_config(), "/sys/cil_workdir", progress=quiet)


def test_a_full_disk_gives_one_line(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # Only the results module's writes fail: a stand-in for a disk that fills during the run.
    monkeypatch.setattr(results, "os", types.SimpleNamespace(**{**vars(os), "write": full_disk}))
    with pytest.raises(WorkdirError, match="results.jsonl: No space left on device; free space on its disk"):
        experiment.run_experiment(finetune_config(), str(tmp_path), progress=quiet)
    assert read_records(tmp_path) == []


def test_a_damaged_data_cache_is_built_again(tmp_path, capsys):
    root = make_folder(tmp_path / "images")
    first = load("folder", path=str(root), data_dir=str(tmp_path / "cache"))
    [cache] = (tmp_path / "cache").rglob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    again = load("folder", path=str(root), data_dir=str(tmp_path / "cache"))
    assert f"cache {cache} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(again.train_images, first.train_images)
    assert again.class_names == first.class_names
    assert load("folder", path=str(root), data_dir=str(tmp_path / "cache")).class_names == (
        first.class_names)  # the rebuilt cache reads back
